//! A gate and its link to the engine (`docs/offline.md`): while the link is down the
//! gate decides alone ([`OfflineGate`]) and queues every scan durably ([`UploadQueue`])
//! before it answers the turnstile; when the link is back it uploads the queue
//! (`GateService.UploadOfflineTaps`, the same ids on every retry) and refreshes its
//! bundle (`GateService.GetGateBundle`). The gate's firmware calls [`GateLink::sync`] on
//! reconnect and every refresh interval (`docs/offline.md`, "Refresh").

use std::collections::HashSet;
use std::path::Path;

use fareway_proto::v1 as pb;

use crate::bundle::{self, Bundle, BundleError};
use crate::client::GateClient;
use crate::clock::UnixMillis;
use crate::fares::TapKind;
use crate::offline::{OfflineDecision, OfflineGate};
use crate::queue::{QueueError, QueuedTap, UploadQueue};
use crate::token::format::PUBLIC_KEY_LEN;

/// Most taps in one upload call: the engine's limit (a gate request is at most 16 KiB).
pub const UPLOAD_BATCH_MAX: usize = 32;

/// Why a gate could not sync with the engine.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The engine did not answer (the link is down, or it refused the call): try again.
    #[error("the engine did not answer: {0}")]
    Engine(#[from] tonic::Status),
    /// The engine's bundle was refused; the gate keeps the one it holds.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The queue could not be read or written.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The gate's saved bundle could not be read or written.
    #[error("the gate's saved bundle {path}: {problem}")]
    SavedBundle {
        /// Its file.
        path: String,
        /// What went wrong.
        problem: String,
    },
}

/// What one upload did.
#[derive(Debug, Clone, Default)]
pub struct Uploaded {
    /// The engine's answer to each tap it answered, with the tap's id, in upload order.
    pub results: Vec<(u128, pb::OfflineTapResult)>,
    /// Taps the engine answered for good (charged, corrected, duplicate or rejected),
    /// now gone from the queue.
    pub answered: usize,
    /// Of those, the ones it rejected.
    pub rejected: usize,
    /// Taps it asked to be sent again; they stay queued.
    pub to_retry: usize,
    /// The engine's status when a call failed and the upload stopped there (the link
    /// went down again, say): what was answered before it is in `results` and gone from
    /// the queue; the rest stays queued.
    pub interrupted: Option<tonic::Status>,
    /// Why the bundle's refresh after the upload failed, if it did (`sync` only): the
    /// gate keeps the bundle it holds.
    pub refresh_failed: Option<String>,
}

/// A gate: its decisions, its queue, and what it needs to talk to the engine.
#[derive(Debug)]
pub struct GateLink {
    gate_id: u32,
    engine_key: [u8; PUBLIC_KEY_LEN],
    gate: OfflineGate,
    queue: UploadQueue,
    /// Where the bundle in force is kept (the queue's file name and `.bundle`), so that a
    /// gate restarting while its link is down still decides.
    bundle_path: std::path::PathBuf,
}

impl GateLink {
    /// Gate `gate_id`, holding `bundle` (opened with `engine_key`) or the newer one it
    /// saved before a restart, with its queue at `queue_path` (taps queued before a
    /// restart are still there, and their codes count as used here).
    pub fn open(
        gate_id: u32,
        engine_key: [u8; PUBLIC_KEY_LEN],
        bundle: Bundle,
        queue_path: &Path,
    ) -> Result<GateLink, LinkError> {
        // A saved bundle that cannot be read, or was saved under another engine key, is
        // replaced by the one given.
        let saved = read_saved(&bundle_path_of(queue_path), &engine_key).unwrap_or(None);
        let bundle = match saved {
            Some(saved) if saved.version > bundle.version => saved,
            _ => bundle,
        };
        Self::with_bundle(gate_id, engine_key, bundle, queue_path)
    }

    /// Gate `gate_id` after a restart with no link: the bundle it saved, and its queue at
    /// `queue_path`. `Ok(None)` when it never saved one.
    pub fn reopen(
        gate_id: u32,
        engine_key: [u8; PUBLIC_KEY_LEN],
        queue_path: &Path,
    ) -> Result<Option<GateLink>, LinkError> {
        match read_saved(&bundle_path_of(queue_path), &engine_key)? {
            Some(saved) => Self::with_bundle(gate_id, engine_key, saved, queue_path).map(Some),
            None => Ok(None),
        }
    }

    fn with_bundle(
        gate_id: u32,
        engine_key: [u8; PUBLIC_KEY_LEN],
        bundle: Bundle,
        queue_path: &Path,
    ) -> Result<GateLink, LinkError> {
        let mut link = GateLink {
            gate_id,
            engine_key,
            gate: OfflineGate::new(bundle)?,
            queue: UploadQueue::open(queue_path)?,
            bundle_path: bundle_path_of(queue_path),
        };
        // The codes it opened for: a refused one (a code from the future, say) may
        // still open later.
        for tap in link.queue.pending().iter().filter(|tap| tap.opened) {
            link.gate.remember(&tap.code_text);
        }
        link.save_bundle()?;
        Ok(link)
    }

    /// Keeps the bundle in force on disk, atomically, after the engine key it came under.
    fn save_bundle(&self) -> Result<(), LinkError> {
        let mut saved = self.engine_key.to_vec();
        saved.extend_from_slice(&self.gate.bundle().encode());
        crate::files::write_atomically(&self.bundle_path, &saved, 0o600).map_err(|err| {
            LinkError::SavedBundle {
                path: self.bundle_path.display().to_string(),
                problem: err.to_string(),
            }
        })
    }

    /// The bundle in force.
    pub fn bundle(&self) -> &Bundle {
        self.gate.bundle()
    }

    /// The taps waiting for upload.
    pub fn pending(&self) -> &[QueuedTap] {
        self.queue.pending()
    }

    /// Decides on a scan alone and queues it, synced, before returning: the turnstile
    /// opens only for a tap that will be uploaded. `id` is the scan's transaction id,
    /// chosen once per physical scan.
    pub fn scan(
        &mut self,
        id: u128,
        kind: TapKind,
        code_text: &str,
        now: UnixMillis,
    ) -> Result<OfflineDecision, QueueError> {
        let decision = self.gate.decide(code_text, now);
        let queued = self.queue.push(QueuedTap {
            id,
            gate_id: self.gate_id,
            scan_time: now,
            kind,
            code_text: code_text.to_string(),
            opened: matches!(decision, OfflineDecision::Open(_)),
        });
        if let (Err(_), OfflineDecision::Open(code)) = (&queued, &decision) {
            // The gate stays shut: the code was not used here.
            self.gate.forget(code);
        }
        queued?;
        Ok(decision)
    }

    /// What a gate does when its link comes back, and every refresh interval while it
    /// is up: uploads its queue, then refreshes its bundle. A failed refresh does not
    /// lose the upload's answers: it is in `Uploaded::refresh_failed`.
    pub async fn sync(&mut self, client: &mut GateClient) -> Result<Uploaded, LinkError> {
        let mut uploaded = self.upload(client).await?;
        if let Err(err) = self.refresh(client).await {
            uploaded.refresh_failed = Some(err.to_string());
        }
        Ok(uploaded)
    }

    /// Uploads the queue in batches, then removes every tap the engine answered for
    /// good, in one rewrite of the queue (a crash before it uploads them again: the
    /// engine answers duplicates). Stops at the first batch with taps to retry (the
    /// engine is busy: later), or at a failed call (`Uploaded::interrupted`), keeping
    /// what was answered before it. An error only when the queue cannot be rewritten.
    pub async fn upload(&mut self, client: &mut GateClient) -> Result<Uploaded, LinkError> {
        let pending = self.queue.pending().to_vec();
        let mut uploaded = Uploaded::default();
        let mut done = HashSet::new();
        for batch in pending.chunks(UPLOAD_BATCH_MAX) {
            let request = pb::UploadOfflineTapsRequest {
                taps: batch.iter().map(offline_tap).collect(),
            };
            let results = match client.upload_offline_taps(request).await {
                Ok(answer) => answer.into_inner().results,
                Err(status) => {
                    uploaded.interrupted = Some(status);
                    break;
                }
            };
            let answered = results.len();
            for (tap, result) in batch.iter().zip(results) {
                match pb::OfflineTapStatus::try_from(result.status) {
                    Ok(pb::OfflineTapStatus::Retry | pb::OfflineTapStatus::Unspecified)
                    | Err(_) => uploaded.to_retry += 1,
                    Ok(status) => {
                        let rejected = status == pb::OfflineTapStatus::Rejected;
                        uploaded.rejected += usize::from(rejected);
                        done.insert(tap.id);
                        uploaded.results.push((tap.id, result));
                    }
                }
            }
            // Taps the answer left out (it should not) stay queued, as retries do.
            uploaded.to_retry += batch.len().saturating_sub(answered);
            if uploaded.to_retry > 0 {
                break;
            }
        }
        uploaded.answered = done.len();
        self.queue.remove(&done)?;
        Ok(uploaded)
    }

    /// Asks the engine for the changes since the bundle the gate holds (or a whole one)
    /// and applies it. A bundle the gate refuses leaves the one it holds in force.
    pub async fn refresh(&mut self, client: &mut GateClient) -> Result<(), LinkError> {
        let held = self.gate.bundle();
        let request = pb::GetGateBundleRequest {
            have_version: held.version,
            have_positions: held.positions.clone(),
        };
        let answer = client.get_gate_bundle(request).await?.into_inner();
        let body = bundle::open(&answer.body, &answer.signature, &self.engine_key)?;
        self.gate.update(body)?;
        self.save_bundle()
    }
}

/// Where a gate with its queue at `queue_path` keeps its bundle.
fn bundle_path_of(queue_path: &Path) -> std::path::PathBuf {
    let mut name = queue_path.as_os_str().to_os_string();
    name.push(".bundle");
    name.into()
}

/// The bundle a gate saved under `engine_key`, if it saved one (one saved under another
/// key, a gate moved to another engine, is none).
fn read_saved(path: &Path, engine_key: &[u8; PUBLIC_KEY_LEN]) -> Result<Option<Bundle>, LinkError> {
    let refused = |problem: String| LinkError::SavedBundle {
        path: path.display().to_string(),
        problem,
    };
    let saved = match std::fs::read(path) {
        Ok(saved) => saved,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(refused(err.to_string())),
    };
    let Some((key, body)) = saved.split_at_checked(PUBLIC_KEY_LEN) else {
        return Err(refused("it is shorter than a key".into()));
    };
    if key != engine_key {
        return Ok(None);
    }
    match bundle::decode_saved(body).map_err(|err| refused(err.to_string()))? {
        bundle::Body::Whole(saved) => Ok(Some(saved)),
        bundle::Body::Delta(_) => Err(refused("it holds a delta, not a whole bundle".into())),
    }
}

/// A queued tap as the engine's API takes it.
fn offline_tap(tap: &QueuedTap) -> pb::OfflineTap {
    let (direction, station_id, route_id) = match tap.kind {
        TapKind::MetroEntry { station } => (pb::Direction::Entry, station, 0),
        TapKind::MetroExit { station } => (pb::Direction::Exit, station, 0),
        TapKind::Bus { route } => (pb::Direction::Bus, 0, route),
    };
    pb::OfflineTap {
        tap: Some(pb::TapRequest {
            transaction_id: tap.id.to_be_bytes().to_vec(),
            gate_id: tap.gate_id,
            direction: direction as i32,
            station_id,
            route_id,
            scan_time_ms: tap.scan_time.0,
            code: Some(pb::ScannedCode {
                text: tap.code_text.clone(),
            }),
        }),
        opened: tap.opened,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::bundle::tests::{NOW, bundle, code_of, engine_key};
    use crate::offline::OfflineRefusal;
    use crate::token::mint::public_key_of;

    /// A gate that restarts with its link down decides with the bundle it held (newer
    /// than the one it was first given), and still refuses a code it let through
    /// before the restart.
    #[test]
    fn a_restarted_gate_keeps_its_bundle_and_the_codes_it_used() {
        let folder = tempfile::tempdir().unwrap();
        let queue = folder.path().join("gate.9");
        let key = public_key_of(&engine_key());
        let bus = TapKind::Bus { route: 501 };
        assert!(GateLink::reopen(9, key, &queue).unwrap().is_none());
        let mut newer = bundle([2]);
        newer.version = 20;
        let mut link = GateLink::open(9, key, newer, &queue).unwrap();
        let code = code_of(1, 9);
        assert!(matches!(
            link.scan(1, bus, &code, NOW).unwrap(),
            OfflineDecision::Open(_)
        ));
        drop(link);

        let mut link = GateLink::reopen(9, key, &queue).unwrap().unwrap();
        assert_eq!(link.bundle().version, 20);
        assert!(link.bundle().denied.contains(&2));
        assert_eq!(link.pending().len(), 1);
        assert_eq!(
            link.scan(2, bus, &code, NOW).unwrap(),
            OfflineDecision::Refuse(OfflineRefusal::CodeReused)
        );
        drop(link);
        // Given an older bundle at start (the one it was installed with), it keeps the
        // newer one it saved.
        let link = GateLink::open(9, key, bundle([]), &queue).unwrap();
        assert_eq!(link.bundle().version, 20);
        drop(link);
        // Gate 10 beside it keeps its own (gate.9 and gate.10 share no file).
        let other = GateLink::open(10, key, bundle([]), &folder.path().join("gate.10")).unwrap();
        assert_eq!(other.bundle().version, 10);
        drop(other);
        // A damaged saved bundle: `reopen` says so; `open` with a bundle starts from it.
        let saved = folder.path().join("gate.9.bundle");
        std::fs::write(&saved, b"garbage").unwrap();
        assert!(GateLink::reopen(9, key, &queue).is_err());
        let link = GateLink::open(9, key, bundle([]), &queue).unwrap();
        assert_eq!(link.bundle().version, 10);
        drop(link);
        // Saved under another engine key: not this engine's bundle.
        let other_key = public_key_of(&crate::token::mint::ed25519_from_seed(&[6; 32]));
        assert!(GateLink::reopen(9, other_key, &queue).unwrap().is_none());
    }
}
