//! Taps a gate decided alone while its link was down, uploaded when it is back
//! (`docs/offline.md`, "Upload and charging"). Each is verified at its scan time, charged
//! as an offline tap (past the credit limit if need be: the gate let the rider through),
//! and answered charged, corrected, duplicate, rejected with its reason, or retry.

use futures_util::StreamExt as _;

use crate::ledger::{Command, LedgerError, Outcome, Request, Tap, TxId};
use crate::money::Amount;
use crate::token::Decision;

use super::{GateError, Gatekeeper, TapInput, TapReason};

/// Most taps in one upload: a gate with more sends several. An upload is a gate request,
/// which the server decodes only up to 16 KiB (`grpc::GATE_MESSAGE_BYTES_MAX`, so that a
/// hostile client cannot make it buffer much): 32 taps of the longest code (400
/// characters, about 480 bytes with their fields) fit.
pub const UPLOAD_TAPS_MAX: usize = 32;

/// Taps of one upload decided at once: all of them (the writer batches them into its
/// group commits); a gate's upload holds one request of its connection's share.
pub const UPLOAD_TAPS_IN_FLIGHT: usize = UPLOAD_TAPS_MAX;

/// Uploaded taps in the ledger's queue at once, across every upload. When a link comes
/// back, every gate behind it uploads at once; unbounded, their taps would queue in
/// front of the online gates' (measured: the demo's online p99 went from 3.9 ms to 31
/// ms during such a burst). Bounded, an online tap waits behind at most this many, a
/// few milliseconds, and the uploads still go at the writer's pace
/// (`docs/PERFORMANCE.md`).
pub const UPLOADED_TAPS_IN_FLIGHT_MAX: usize = 64;

/// How long an uploaded tap waits for a place among [`UPLOADED_TAPS_IN_FLIGHT_MAX`]
/// before it is answered `RETRY`.
pub const UPLOAD_PLACE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// One tap of an upload, as the gate queued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineTapInput {
    /// The tap as the gate would have sent it online.
    pub tap: TapInput,
    /// Whether the gate opened. Only an opened tap is charged.
    pub opened: bool,
}

/// What became of an uploaded tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStatus {
    /// Charged its fare (0 at an entry).
    Charged,
    /// Charged, and the rider's earlier fares corrected (the tap re-priced the day).
    Corrected,
    /// Recorded before: the first answer's fare and reason.
    Duplicate,
    /// Not charged: the reason says why. A forged or replayed code is the operator's
    /// revenue loss, recorded; a malformed tap or a conflicting id is recorded nowhere.
    Rejected,
    /// Not answered (the engine is overloaded or a shard unavailable): upload it again
    /// with the same id.
    Retry,
}

/// The answer to one uploaded tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadAnswer {
    /// The tap's transaction id.
    pub id: TxId,
    /// What became of it.
    pub status: UploadStatus,
    /// The stable reason code: why rejected or to retry (or why the first answer
    /// rejected, for a duplicate).
    pub reason: Option<&'static str>,
    /// A fault's message (a malformed field, a conflict, overload).
    pub message: Option<String>,
    /// What it charged.
    pub fare: Amount,
    /// How many of the rider's fares it corrected.
    pub corrections: u32,
    /// The rider's balance after it, when the ledger saw it.
    pub balance_after: Option<Amount>,
}

/// Why an uploaded tap was answered before the ledger saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadRefusal {
    /// The gate stayed shut: nothing to charge.
    RefusedAtGate,
    /// Scanned longer ago than the engine takes uploads for.
    ScanTimeTooOld,
    /// Scanned later than the engine's clock allows: the gate's clock runs fast (a gate
    /// offline for long drifts). Not final: the engine takes it once its clock is there.
    ScanTimeAhead,
}

impl UploadRefusal {
    /// The stable code string.
    pub fn code(self) -> &'static str {
        match self {
            UploadRefusal::RefusedAtGate => "refused_at_gate",
            UploadRefusal::ScanTimeTooOld => "scan_time_too_old",
            UploadRefusal::ScanTimeAhead => "scan_time_ahead",
        }
    }

    /// What the gate does with the tap: drop it, or upload it again later.
    fn status(self) -> UploadStatus {
        match self {
            UploadRefusal::RefusedAtGate | UploadRefusal::ScanTimeTooOld => UploadStatus::Rejected,
            UploadRefusal::ScanTimeAhead => UploadStatus::Retry,
        }
    }
}

impl UploadAnswer {
    fn new(id: TxId, status: UploadStatus, reason: Option<&'static str>) -> UploadAnswer {
        UploadAnswer {
            id,
            status,
            reason,
            message: None,
            fare: Amount::ZERO,
            corrections: 0,
            balance_after: None,
        }
    }

    /// The answer to a tap the engine could not decide.
    fn fault(id: TxId, err: &GateError) -> UploadAnswer {
        let retry = match err {
            GateError::Invalid { .. } => false,
            GateError::Ledger(err) => !matches!(err, LedgerError::Conflict { .. }),
        };
        let status = if retry {
            UploadStatus::Retry
        } else {
            UploadStatus::Rejected
        };
        UploadAnswer {
            message: Some(err.to_string()),
            ..UploadAnswer::new(id, status, Some(err.code()))
        }
    }
}

impl Gatekeeper {
    /// Answers an upload of at most [`UPLOAD_TAPS_MAX`] taps, in their order, deciding up
    /// to [`UPLOAD_TAPS_IN_FLIGHT`] at once. Taps of one rider may reach the ledger in
    /// any order: a late one re-prices the rider's day.
    pub async fn upload(&self, taps: Vec<OfflineTapInput>) -> Result<Vec<UploadAnswer>, GateError> {
        if taps.len() > UPLOAD_TAPS_MAX {
            return Err(GateError::Invalid {
                field: "taps",
                problem: format!(
                    "{} taps in one upload; at most {UPLOAD_TAPS_MAX}: send the rest in another",
                    taps.len()
                ),
            });
        }
        Ok(futures_util::stream::iter(taps)
            .map(|tap| self.upload_one(tap))
            .buffered(UPLOAD_TAPS_IN_FLIGHT)
            .collect()
            .await)
    }

    /// Answers one uploaded tap, once it holds one of the uploads' places in the
    /// ledger's queue.
    async fn upload_one(&self, input: OfflineTapInput) -> UploadAnswer {
        let id = input.tap.id;
        let Ok(_place) = self.uploads.acquire().await else {
            let closed = GateError::Ledger(LedgerError::Closed);
            return UploadAnswer::fault(id, &closed);
        };
        match self.decide_upload(input).await {
            Ok(answer) => answer,
            Err(err) => UploadAnswer::fault(id, &err),
        }
    }

    async fn decide_upload(&self, input: OfflineTapInput) -> Result<UploadAnswer, GateError> {
        let tap = input.tap;
        if let Some(refusal) = self.check_upload(&tap, input.opened)? {
            return Ok(UploadAnswer::new(
                tap.id,
                refusal.status(),
                Some(refusal.code()),
            ));
        }
        let command = match self
            .verifier
            .verify_uploaded_text(&tap.code_text, tap.scan_time)
        {
            Decision::Accepted(code) => Command::Tap(Tap {
                account_id: code.account_id,
                gate_id: tap.gate_id,
                code: code.code_fingerprint,
                kind: tap.kind,
                offline: true,
                concessions: code.flags & crate::fares::CONCESSION_BITS,
            }),
            // Forged, expired, or made after its scan: the gate should not have opened.
            Decision::Rejected(reason) => Command::LostFare {
                gate_id: tap.gate_id,
                kind: tap.kind,
                reason,
            },
        };
        let request = Request {
            id: tap.id,
            time: tap.scan_time,
            command,
        };
        let receipt = self.commands.submit(request).await?;
        let record = &receipt.record;
        // A replay (the same id again, or the same code at the same gate within the retry
        // window) carries the first answer's record.
        let reason = rejection_of(record);
        let status = if receipt.replay {
            UploadStatus::Duplicate
        } else if reason.is_some() {
            UploadStatus::Rejected
        } else if receipt.corrections > 0 {
            UploadStatus::Corrected
        } else {
            UploadStatus::Charged
        };
        Ok(UploadAnswer {
            fare: record.rider_charge(),
            corrections: receipt.corrections,
            balance_after: record.rider_balance_after,
            ..UploadAnswer::new(tap.id, status, reason)
        })
    }

    /// Checks an uploaded tap before its code: a malformed field is an error; a tap the
    /// gate refused, or one scanned longer ago than uploads are taken for, is rejected;
    /// one scanned ahead of the engine's clock waits.
    fn check_upload(
        &self,
        tap: &TapInput,
        opened: bool,
    ) -> Result<Option<UploadRefusal>, GateError> {
        if tap.gate_id == 0 {
            return Err(GateError::Invalid {
                field: "gate_id",
                problem: "must not be zero".into(),
            });
        }
        if !opened {
            return Ok(Some(UploadRefusal::RefusedAtGate));
        }
        let now = self.clock.now();
        if tap.scan_time > now.saturating_add(self.scan_time.future_max_ms) {
            return Ok(Some(UploadRefusal::ScanTimeAhead));
        }
        let oldest = now.saturating_sub(self.scan_time.offline_past_max_ms);
        Ok((tap.scan_time < oldest).then_some(UploadRefusal::ScanTimeTooOld))
    }
}

/// Why a recorded upload was not charged, if it was not: the ledger refused it (a
/// replayed code, a closed account), or its code failed (a lost fare).
fn rejection_of(record: &crate::ledger::Record) -> Option<&'static str> {
    match (record.outcome, record.request.command) {
        (Outcome::Refused(refusal), _) => Some(TapReason::Ledger(refusal).code()),
        (_, Command::LostFare { reason, .. }) => Some(reason.code()),
        _ => None,
    }
}
