//! Offline checks of a settlement file and its manifest, as a provider (or `fareway
//! settle verify`) makes them: the manifest is signed by the engine's key, the file has
//! the manifest's length and SHA-256, and its header, lines and trailer agree with each
//! other and with the manifest.

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use super::manifest::{Manifest, SignatureError};
use super::{
    DETAIL, FILE_FORMAT_VERSION, HEADER, HashingWriter, JOINED_FILE_FORMAT_VERSION, SHARD, TRAILER,
    Totals, manifest_name,
};
use crate::money::Amount;
use crate::token::format::PUBLIC_KEY_LEN;

/// Why a pulled file does not check.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not a manifest.
    #[error("manifest {path} does not parse: {message}")]
    Manifest {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The signature does not check.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The file is not the one the manifest describes.
    #[error(
        "the file is {found_bytes} bytes with SHA-256 {found_sha256}; the manifest says {expected_bytes} bytes with SHA-256 {expected_sha256}"
    )]
    Hash {
        /// From the manifest.
        expected_bytes: u64,
        /// From the manifest.
        expected_sha256: String,
        /// Of the file.
        found_bytes: u64,
        /// Of the file.
        found_sha256: String,
    },
    /// The file's records disagree with each other or with the manifest.
    #[error("record {record}: {problem}")]
    Content {
        /// The record (line) number in the file, from 1.
        record: u64,
        /// What is wrong.
        problem: String,
    },
}

/// The manifest path beside a CSV file.
pub fn manifest_path(csv_path: &Path) -> PathBuf {
    let name = csv_path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    csv_path.with_file_name(manifest_name(&name))
}

/// Checks a CSV file and the manifest beside it against the engine's public key.
pub fn verify_pulled(
    csv_path: &Path,
    public_key: &[u8; PUBLIC_KEY_LEN],
) -> Result<Manifest, VerifyError> {
    let manifest_path = manifest_path(csv_path);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| VerifyError::Io { path, source }
    };
    let manifest_bytes = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
    let manifest = Manifest::from_bytes(&manifest_bytes).map_err(|err| VerifyError::Manifest {
        path: manifest_path.display().to_string(),
        message: err.to_string(),
    })?;
    let file = std::fs::File::open(csv_path).map_err(io(csv_path))?;
    verify(&manifest, file, public_key)?;
    Ok(manifest)
}

/// Checks a file's bytes (read once, streaming) against its manifest and the engine's key.
pub fn verify(
    manifest: &Manifest,
    file: impl Read,
    public_key: &[u8; PUBLIC_KEY_LEN],
) -> Result<(), VerifyError> {
    manifest.verify(public_key)?;
    let mut reader = HashingReader {
        inner: file,
        hashing: HashingWriter::new(std::io::sink()),
    };
    let content = check_content(manifest, &mut reader);
    // Whatever the content check found, the hash says first whether this is the file.
    let io = |source| VerifyError::Io {
        path: manifest.file_name.clone(),
        source,
    };
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(io)?;
    let (found_bytes, found_sha256) = reader.hashing.finish();
    if found_bytes != manifest.file_bytes || found_sha256 != manifest.file_sha256 {
        return Err(VerifyError::Hash {
            expected_bytes: manifest.file_bytes,
            expected_sha256: manifest.file_sha256.clone(),
            found_bytes,
            found_sha256,
        });
    }
    content
}

/// Checks the file's records: the header against the manifest, the detail lines in order,
/// the trailer against the lines, the totals against the manifest, and nothing after.
fn check_content(manifest: &Manifest, file: impl Read) -> Result<(), VerifyError> {
    let mut records = Records::new(file);
    if !records.read_next()? {
        return Err(content(1, "the file is empty".into()));
    }
    check_header(manifest, &records.record)?;
    let totals = sum_details(manifest, &mut records)?;
    check_trailer(&records.record, records.number, &totals)?;
    check_totals(manifest, &totals, records.number)?;
    if records.read_next()? {
        return Err(content(
            records.number,
            "there is more after the trailer".into(),
        ));
    }
    Ok(())
}

/// A content error at record `record`.
fn content(record: u64, problem: String) -> VerifyError {
    VerifyError::Content { record, problem }
}

/// The file's CSV records, read one at a time, and the current one's number (from 1).
struct Records<R> {
    csv: csv::Reader<R>,
    record: csv::StringRecord,
    number: u64,
}

impl<R: Read> Records<R> {
    fn new(file: R) -> Records<R> {
        let csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(file);
        Records {
            csv,
            record: csv::StringRecord::new(),
            number: 0,
        }
    }

    /// Reads the next record into `record`; false at the end of the file.
    fn read_next(&mut self) -> Result<bool, VerifyError> {
        self.number += 1;
        let number = self.number;
        self.csv
            .read_record(&mut self.record)
            .map_err(|err| content(number, format!("not CSV: {err}")))
    }
}

/// The header (record 1) must say what the manifest says. A cluster batch's header has
/// no sequences (its shard records do).
fn check_header(manifest: &Manifest, record: &csv::StringRecord) -> Result<(), VerifyError> {
    let (version, after, through) = if manifest.shards.is_empty() {
        (
            FILE_FORMAT_VERSION,
            manifest.after_sequence.to_string(),
            manifest.through_sequence.to_string(),
        )
    } else {
        (JOINED_FILE_FORMAT_VERSION, String::new(), String::new())
    };
    let expected_header = [
        HEADER.to_string(),
        version.to_string(),
        manifest.provider_id.to_string(),
        manifest.batch_id.to_string(),
        after,
        through,
        manifest.cutoff.clone(),
        manifest.currency.clone(),
        manifest.created_at.clone(),
    ];
    if !record.iter().eq(expected_header.iter().map(String::as_str)) {
        return Err(content(
            1,
            format!("the header {record:?} does not match the manifest"),
        ));
    }
    Ok(())
}

/// Reads the detail lines up to the trailer, checking that they are numbered in order (and,
/// in a cluster batch, that each shard's record is the manifest's, in order), and sums
/// their amounts. The trailer is left as the current record.
fn sum_details<R: Read>(
    manifest: &Manifest,
    records: &mut Records<R>,
) -> Result<Totals, VerifyError> {
    let mut totals = Totals::default();
    let mut shards = manifest.shards.iter();
    loop {
        if !records.read_next()? {
            return Err(content(
                records.number,
                "the file ends without a trailer".into(),
            ));
        }
        let (record, number) = (&records.record, records.number);
        match record.get(0) {
            Some(SHARD) => {
                let expected = shards.next().map(|range| {
                    [
                        SHARD.to_string(),
                        range.shard.to_string(),
                        range.after_sequence.to_string(),
                        range.through_sequence.to_string(),
                    ]
                });
                if !expected
                    .is_some_and(|fields| record.iter().eq(fields.iter().map(String::as_str)))
                {
                    return Err(content(
                        number,
                        format!("the shard record {record:?} is not the manifest's next shard"),
                    ));
                }
            }
            Some(DETAIL) => {
                let line = totals.line_count + 1;
                if record.get(1) != Some(line.to_string().as_str()) {
                    return Err(content(
                        number,
                        format!("detail line {line} is out of order"),
                    ));
                }
                let amount = record
                    .get(15)
                    .and_then(|amount| amount.parse::<i64>().ok())
                    .ok_or_else(|| content(number, "the amount is not a whole number".into()))?;
                totals
                    .add(Amount(amount))
                    .ok_or_else(|| content(number, "the totals overflow".into()))?;
            }
            Some(TRAILER) if shards.next().is_some() => {
                return Err(content(
                    number,
                    "the file ends before every shard of the manifest".into(),
                ));
            }
            Some(TRAILER) => return Ok(totals),
            other => {
                return Err(content(number, format!("unexpected record type {other:?}")));
            }
        }
    }
}

/// The trailer (record `number`) must hold the totals of the lines above it.
fn check_trailer(
    record: &csv::StringRecord,
    number: u64,
    totals: &Totals,
) -> Result<(), VerifyError> {
    let expected_trailer = [
        TRAILER.to_string(),
        totals.line_count.to_string(),
        totals.total_charged.to_string(),
        totals.total_refunded.to_string(),
        totals.net().to_string(),
    ];
    if !record
        .iter()
        .eq(expected_trailer.iter().map(String::as_str))
    {
        return Err(content(
            number,
            format!(
                "the trailer {record:?} does not match the lines above it ({expected_trailer:?})"
            ),
        ));
    }
    Ok(())
}

/// The file's totals must be the manifest's (reported at the trailer, record `number`).
fn check_totals(manifest: &Manifest, totals: &Totals, number: u64) -> Result<(), VerifyError> {
    let matches_manifest = totals.line_count == manifest.line_count
        && totals.charge_count == manifest.charge_count
        && totals.refund_count == manifest.refund_count
        && totals.total_charged.minor() == manifest.total_charged_minor
        && totals.total_refunded.minor() == manifest.total_refunded_minor
        && totals.net().minor() == manifest.net_minor;
    if !matches_manifest {
        return Err(content(
            number,
            "the totals do not match the manifest".into(),
        ));
    }
    Ok(())
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hashing: HashingWriter<std::io::Sink>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hashing.write_all(&buf[..read])?;
        Ok(read)
    }
}
