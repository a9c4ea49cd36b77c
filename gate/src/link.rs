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
}

/// What one upload did.
#[derive(Debug, Clone, Default, PartialEq)]
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
}

/// A gate: its decisions, its queue, and what it needs to talk to the engine.
#[derive(Debug)]
pub struct GateLink {
    gate_id: u32,
    engine_key: [u8; PUBLIC_KEY_LEN],
    gate: OfflineGate,
    queue: UploadQueue,
}

impl GateLink {
    /// Gate `gate_id`, holding `bundle` (opened with `engine_key`), with its queue at
    /// `queue_path` (taps queued before a restart are still there).
    pub fn open(
        gate_id: u32,
        engine_key: [u8; PUBLIC_KEY_LEN],
        bundle: Bundle,
        queue_path: &Path,
    ) -> Result<GateLink, LinkError> {
        Ok(GateLink {
            gate_id,
            engine_key,
            gate: OfflineGate::new(bundle)?,
            queue: UploadQueue::open(queue_path)?,
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
        self.queue.push(QueuedTap {
            id,
            gate_id: self.gate_id,
            scan_time: now,
            kind,
            code_text: code_text.to_string(),
            opened: matches!(decision, OfflineDecision::Open(_)),
        })?;
        Ok(decision)
    }

    /// What a gate does when its link comes back, and every refresh interval while it
    /// is up: uploads its queue, then refreshes its bundle.
    pub async fn sync(&mut self, client: &mut GateClient) -> Result<Uploaded, LinkError> {
        let uploaded = self.upload(client).await?;
        self.refresh(client).await?;
        Ok(uploaded)
    }

    /// Uploads the queue in batches, then removes every tap the engine answered for
    /// good, in one rewrite of the queue (a crash before it uploads them again: the
    /// engine answers duplicates). Stops at the first batch with taps to retry (the
    /// engine is busy: later), or at an error, removing what was answered before it.
    pub async fn upload(&mut self, client: &mut GateClient) -> Result<Uploaded, LinkError> {
        let pending = self.queue.pending().to_vec();
        let mut uploaded = Uploaded::default();
        let mut done = HashSet::new();
        let mut failed = None;
        for batch in pending.chunks(UPLOAD_BATCH_MAX) {
            let request = pb::UploadOfflineTapsRequest {
                taps: batch.iter().map(offline_tap).collect(),
            };
            let results = match client.upload_offline_taps(request).await {
                Ok(answer) => answer.into_inner().results,
                Err(status) => {
                    failed = Some(status);
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
        match failed {
            Some(status) => Err(LinkError::Engine(status)),
            None => Ok(uploaded),
        }
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
        Ok(())
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
