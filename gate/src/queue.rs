//! A gate's durable queue of offline taps (`docs/offline.md`): one file of records,
//! appended and synced before the gate opens, read back after a restart, and rewritten
//! without the taps the engine answered for good.
//!
//! A record is a length (`u32`, big-endian), the tap's bytes, and the first 8 bytes of
//! the SHA-256 of those bytes. The tap: format version (1), transaction id (16), gate id
//! (4), scan time in ms (8), kind (1: entry, 2: exit, 3: bus), station or route (4),
//! opened (1), the code's text length (2) and text. A record cut short or failing its
//! checksum at the end of the file is a write torn by a crash: its gate never opened
//! (the decision waits for the sync), and it is dropped. Anywhere else it is corruption,
//! and the queue refuses to open rather than lose the taps after it.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use crate::clock::UnixMillis;
use crate::fares::TapKind;
use crate::token::format::TEXT_LEN_MAX;

/// Most taps a queue holds: a gate offline for days at a busy station takes tens of
/// thousands; past this it refuses to open rather than take taps it cannot keep.
pub const QUEUED_TAPS_MAX: usize = 1_000_000;

/// The record format this build writes and reads.
const RECORD_VERSION: u8 = 1;
/// A record's bytes besides its text: the fixed fields.
const FIXED_LEN: usize = 1 + 16 + 4 + 8 + 1 + 4 + 1 + 2;
const CHECKSUM_LEN: usize = 8;

/// One tap a gate decided alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedTap {
    /// Chosen by the gate for the scan; the upload reuses it on every retry.
    pub id: u128,
    /// The gate.
    pub gate_id: u32,
    /// When the gate scanned the code.
    pub scan_time: UnixMillis,
    /// Entry, exit or bus, and where.
    pub kind: TapKind,
    /// The code's text as scanned.
    pub code_text: String,
    /// Whether the gate opened.
    pub opened: bool,
}

/// Why the queue could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The file system failed.
    #[error("upload queue {path}: {source}")]
    Io {
        /// The queue's file.
        path: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A record before the file's end does not check: taps would be lost past it.
    #[error(
        "upload queue {path}: the record at byte {offset} is damaged ({problem}); the taps after it cannot be trusted to be read"
    )]
    Corrupt {
        /// The queue's file.
        path: String,
        /// Where the record starts.
        offset: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The queue holds [`QUEUED_TAPS_MAX`] taps.
    #[error("upload queue {path} holds {QUEUED_TAPS_MAX} taps: upload them before taking more")]
    Full {
        /// The queue's file.
        path: String,
    },
    /// A tap's code is longer than any code.
    #[error("a code of {0} bytes is longer than any code ({TEXT_LEN_MAX})")]
    CodeTooLong(usize),
    /// An earlier write failed in a way that leaves the file's state unknown to this
    /// process: reopen the queue (it reads back exactly what the file holds).
    #[error("upload queue {path}: an earlier write failed; reopen the queue before taking taps")]
    Broken {
        /// The queue's file.
        path: String,
    },
}

/// The queue: its file, and its taps in the order they were taken.
#[derive(Debug)]
pub struct UploadQueue {
    path: PathBuf,
    file: File,
    taps: Vec<QueuedTap>,
    /// The file's length: every byte of it a whole record.
    len: u64,
    /// Set when a write failed and could not be undone: the file may not be what
    /// `taps` says, so nothing more is written until the queue is reopened.
    broken: bool,
}

impl UploadQueue {
    /// Opens the queue at `path` (made if missing), reading the taps it holds and
    /// dropping a torn last record.
    pub fn open(path: &Path) -> Result<UploadQueue, QueueError> {
        let io = |source| QueueError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes).map_err(io)?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io(err)),
        }
        let (taps, good_len) =
            read_records(&bytes).map_err(|(offset, problem)| QueueError::Corrupt {
                path: path.display().to_string(),
                offset,
                problem,
            })?;
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if !existed {
            // The new file's name must survive a crash as its records do.
            let folder = path
                .parent()
                .filter(|folder| !folder.as_os_str().is_empty());
            File::open(folder.unwrap_or(Path::new(".")))
                .and_then(|folder| folder.sync_all())
                .map_err(io)?;
        }
        if good_len < bytes.len() {
            // A torn last record: cut it off, so that the next append follows a whole one.
            file.set_len(good_len as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok(UploadQueue {
            path: path.to_path_buf(),
            file,
            taps,
            len: good_len as u64,
            broken: false,
        })
    }

    /// The taps waiting for upload, oldest first.
    pub fn pending(&self) -> &[QueuedTap] {
        &self.taps
    }

    /// Appends a tap and syncs it: once this returns, the tap survives a crash. On an
    /// error the file is cut back to the records before it, so that a tap whose gate
    /// stayed shut is never uploaded.
    pub fn push(&mut self, tap: QueuedTap) -> Result<(), QueueError> {
        self.check_usable()?;
        if self.taps.len() >= QUEUED_TAPS_MAX {
            return Err(QueueError::Full {
                path: self.path.display().to_string(),
            });
        }
        let record = encode_record(&tap)?;
        let written = self
            .file
            .write_all(&record)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            let undone = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data());
            self.broken = undone.is_err();
            return Err(self.io(source));
        }
        self.len += record.len() as u64;
        self.taps.push(tap);
        Ok(())
    }

    /// Removes the taps with these ids (the engine answered them for good): the rest go
    /// to a new file, synced, which then replaces the old one.
    pub fn remove(&mut self, ids: &std::collections::HashSet<u128>) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let kept: Vec<QueuedTap> = self
            .taps
            .iter()
            .filter(|tap| !ids.contains(&tap.id))
            .cloned()
            .collect();
        self.check_usable()?;
        let mut bytes = Vec::new();
        for tap in &kept {
            bytes.extend_from_slice(&encode_record(tap)?);
        }
        // From the rename on, the old handle appends to a file no longer there: until a
        // new handle is open, the queue takes nothing.
        self.broken = true;
        crate::files::write_atomically(&self.path, &bytes, 0o600)
            .map_err(|source| self.io(source))?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|source| self.io(source))?;
        self.broken = false;
        self.len = bytes.len() as u64;
        self.taps = kept;
        Ok(())
    }

    fn check_usable(&self) -> Result<(), QueueError> {
        if self.broken {
            return Err(QueueError::Broken {
                path: self.path.display().to_string(),
            });
        }
        Ok(())
    }

    fn io(&self, source: std::io::Error) -> QueueError {
        QueueError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }
}

/// A tap's record: length, bytes, checksum.
fn encode_record(tap: &QueuedTap) -> Result<Vec<u8>, QueueError> {
    let text = tap.code_text.as_bytes();
    if text.len() > TEXT_LEN_MAX {
        return Err(QueueError::CodeTooLong(text.len()));
    }
    let (kind, place) = match tap.kind {
        TapKind::MetroEntry { station } => (1u8, station),
        TapKind::MetroExit { station } => (2, station),
        TapKind::Bus { route } => (3, route),
    };
    let mut body = Vec::with_capacity(FIXED_LEN + text.len());
    body.push(RECORD_VERSION);
    body.extend_from_slice(&tap.id.to_be_bytes());
    body.extend_from_slice(&tap.gate_id.to_be_bytes());
    body.extend_from_slice(&tap.scan_time.0.to_be_bytes());
    body.push(kind);
    body.extend_from_slice(&place.to_be_bytes());
    body.push(u8::from(tap.opened));
    body.extend_from_slice(&(text.len() as u16).to_be_bytes());
    body.extend_from_slice(text);
    let mut record = Vec::with_capacity(4 + body.len() + CHECKSUM_LEN);
    record.extend_from_slice(&(body.len() as u32).to_be_bytes());
    record.extend_from_slice(&body);
    record.extend_from_slice(&checksum(&body));
    Ok(record)
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut sum = [0u8; CHECKSUM_LEN];
    sum.copy_from_slice(&digest.as_ref()[..CHECKSUM_LEN]);
    sum
}

/// Every whole record of a queue file, and the length they take; a damaged record
/// before the last is an error (its offset and what is wrong).
fn read_records(bytes: &[u8]) -> Result<(Vec<QueuedTap>, usize), (usize, &'static str)> {
    let mut taps = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match read_record(&bytes[at..]) {
            Ok((tap, len)) => {
                taps.push(tap);
                at += len;
            }
            Err(_) if is_torn_tail(&bytes[at..]) => break,
            Err(problem) => return Err((at, problem)),
        }
    }
    Ok((taps, at))
}

/// Whether a record that does not read is the tail of a write a crash cut short: fewer
/// bytes than a length, a possible length whose record runs to or past the file's end,
/// or nothing but zeros (space the file system gave the write before its bytes). Any
/// other bad record has bytes after it: damage, not a torn write.
fn is_torn_tail(rest: &[u8]) -> bool {
    let Some(len) = rest.get(..4) else {
        return true;
    };
    let len = u32::from_be_bytes(len.try_into().unwrap_or_default()) as usize;
    let possible = (FIXED_LEN..=FIXED_LEN + TEXT_LEN_MAX).contains(&len);
    (possible && 4 + len + CHECKSUM_LEN >= rest.len()) || rest.iter().all(|byte| *byte == 0)
}

/// One record at the start of `bytes`, and its length.
fn read_record(bytes: &[u8]) -> Result<(QueuedTap, usize), &'static str> {
    let len = bytes.get(..4).ok_or("cut short")?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| "cut short")?) as usize;
    if !(FIXED_LEN..=FIXED_LEN + TEXT_LEN_MAX).contains(&len) {
        return Err("impossible length");
    }
    let body = bytes.get(4..4 + len).ok_or("cut short")?;
    let sum = bytes
        .get(4 + len..4 + len + CHECKSUM_LEN)
        .ok_or("cut short")?;
    if sum != checksum(body) {
        return Err("checksum mismatch");
    }
    Ok((decode_body(body)?, 4 + len + CHECKSUM_LEN))
}

fn decode_body(body: &[u8]) -> Result<QueuedTap, &'static str> {
    let number = |from: usize, to: usize| -> u128 {
        body[from..to]
            .iter()
            .fold(0u128, |value, byte| (value << 8) | u128::from(*byte))
    };
    if body[0] != RECORD_VERSION {
        return Err("unknown record version");
    }
    let place = number(30, 34) as u32;
    let kind = match body[29] {
        1 => TapKind::MetroEntry { station: place },
        2 => TapKind::MetroExit { station: place },
        3 => TapKind::Bus { route: place },
        _ => return Err("unknown tap kind"),
    };
    let opened = match body[34] {
        0 => false,
        1 => true,
        _ => return Err("bad opened flag"),
    };
    let text_len = number(35, 37) as usize;
    if FIXED_LEN + text_len != body.len() {
        return Err("text length does not match the record");
    }
    let code_text =
        String::from_utf8(body[FIXED_LEN..].to_vec()).map_err(|_| "code is not UTF-8")?;
    Ok(QueuedTap {
        id: number(1, 17),
        gate_id: number(17, 21) as u32,
        scan_time: UnixMillis(number(21, 29) as u64),
        kind,
        code_text,
        opened,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(id: u128) -> QueuedTap {
        QueuedTap {
            id,
            gate_id: 7,
            scan_time: UnixMillis(1_800_000_000_000 + id as u64),
            kind: TapKind::MetroExit { station: 104 },
            code_text: format!("CODE{id}"),
            opened: id.is_multiple_of(2),
        }
    }

    #[test]
    fn taps_survive_a_reopen_and_acknowledged_ones_are_gone_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue");
        let mut queue = UploadQueue::open(&path).unwrap();
        for id in 1..=4 {
            queue.push(tap(id)).unwrap();
        }
        drop(queue);
        let mut queue = UploadQueue::open(&path).unwrap();
        assert_eq!(queue.pending(), &[tap(1), tap(2), tap(3), tap(4)]);
        queue.remove(&[2, 3].into()).unwrap();
        queue.push(tap(5)).unwrap();
        drop(queue);
        let queue = UploadQueue::open(&path).unwrap();
        assert_eq!(queue.pending(), &[tap(1), tap(4), tap(5)]);
        // Exact bytes: three records of 37 fixed bytes and a 5-byte text, each framed by
        // its length and checksum.
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            3 * (4 + 37 + 5 + 8)
        );
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_damage_before_it_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue");
        let mut queue = UploadQueue::open(&path).unwrap();
        queue.push(tap(1)).unwrap();
        queue.push(tap(2)).unwrap();
        drop(queue);
        let whole = std::fs::read(&path).unwrap();
        // Every cut inside the last record: the first tap stays, the torn one goes, and
        // the file is cut back to the first record, ready for the next append.
        let record = whole.len() / 2;
        for cut in record + 1..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let mut queue = UploadQueue::open(&path).unwrap();
            assert_eq!(queue.pending(), &[tap(1)], "cut at {cut}");
            queue.push(tap(3)).unwrap();
            drop(queue);
            assert_eq!(
                UploadQueue::open(&path).unwrap().pending(),
                &[tap(1), tap(3)]
            );
        }
        // A length damaged to something impossible, with a whole record after it: damage,
        // not a torn write; nothing is cut off.
        let mut huge = whole.clone();
        huge[0] = 0x7f;
        std::fs::write(&path, &huge).unwrap();
        let err = UploadQueue::open(&path).unwrap_err();
        assert!(
            matches!(err, QueueError::Corrupt { offset: 0, .. }),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), huge);
        // Zeros after the records (space given to a write that never landed): dropped.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0; 100]);
        std::fs::write(&path, &zeros).unwrap();
        assert_eq!(
            UploadQueue::open(&path).unwrap().pending(),
            &[tap(1), tap(2)]
        );
        // A flipped byte in the first record, with a whole one after it: refused, naming
        // where.
        let mut damaged = whole.clone();
        damaged[10] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        let err = UploadQueue::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                QueueError::Corrupt {
                    offset: 0,
                    problem: "checksum mismatch",
                    ..
                }
            ),
            "{err}"
        );
    }
}
