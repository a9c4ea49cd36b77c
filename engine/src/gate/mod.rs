//! The gate service's logic, free of any transport: a tap from a gate is checked, its code
//! verified, and the tap submitted to the ledger, which decides code reuse, the account,
//! the journey and the fare in one atomic batch. Also the journey sweeper, which closes
//! journeys entered and never exited.
//!
//! This module never sees protobuf types: the `grpc` module converts at the boundary.

pub mod bundle;
pub mod upload;

use std::sync::Arc;

use crate::clock::{Clock, UnixMillis};
use crate::commands::Commands;
use crate::fares::FareTable;
use crate::ledger::{Command, Ledger, LedgerError, Outcome, Receipt, Refusal, Request, Tap};
use crate::ledger::{TapKind, TxId};
use crate::money::Amount;
use crate::token::{Decision, Reason, Verifier};

/// Most stale journeys the sweeper closes in one pass; the next pass takes the rest.
pub const SWEEP_JOURNEYS_PER_PASS_MAX: usize = 1_000;

/// One scan at a gate, as the gate sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapInput {
    /// Chosen by the gate per physical scan and reused on retries.
    pub id: TxId,
    /// The gate or bus reader.
    pub gate_id: u32,
    /// Entry, exit or bus, and where.
    pub kind: TapKind,
    /// When the gate scanned the code.
    pub scan_time: UnixMillis,
    /// The code's text as scanned.
    pub code_text: String,
}

/// Why a tap was rejected: the code failed verification, or the ledger refused the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TapReason {
    /// The verifier rejected the code.
    Code(Reason),
    /// The ledger refused the tap.
    Ledger(Refusal),
}

impl TapReason {
    /// The stable code string.
    pub fn code(self) -> &'static str {
        match self {
            TapReason::Code(reason) => reason.code(),
            TapReason::Ledger(refusal) => refusal.code(),
        }
    }
}

/// The gate service's answer to a tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapAnswer {
    /// The tap's transaction id, as the gate chose it (for a duplicate scan too, whose
    /// answer is the original tap's).
    pub id: TxId,
    /// Whether the gate opens.
    pub accepted: bool,
    /// Why not, when rejected.
    pub reason: Option<TapReason>,
    /// What this tap charged (zero at an entry; negative never).
    pub fare: Amount,
    /// The rider's balance after the tap, when the ledger saw it.
    pub balance_after: Option<Amount>,
    /// The journey the tap belongs to, when accepted.
    pub journey_id: Option<u64>,
    /// True when the answer repeats an earlier one.
    pub replay: bool,
    /// The tap's position in the ledger's log, when the ledger saw it.
    pub sequence: Option<u64>,
}

impl TapAnswer {
    fn rejected_code(id: TxId, reason: Reason) -> TapAnswer {
        TapAnswer {
            id,
            accepted: false,
            reason: Some(TapReason::Code(reason)),
            fare: Amount::ZERO,
            balance_after: None,
            journey_id: None,
            replay: false,
            sequence: None,
        }
    }

    /// The answer a ledger receipt gives to the tap with this id.
    pub fn from_receipt(id: TxId, receipt: &Receipt) -> TapAnswer {
        let record = &receipt.record;
        let (accepted, reason) = match record.outcome {
            Outcome::Accepted => (true, None),
            Outcome::Refused(refusal) => (false, Some(TapReason::Ledger(refusal))),
            // The ledger resolves duplicates to the original's record before answering.
            Outcome::Duplicate { .. } => (false, Some(TapReason::Ledger(Refusal::CodeReused))),
        };
        TapAnswer {
            id,
            accepted,
            reason,
            fare: record.rider_charge(),
            balance_after: record.rider_balance_after,
            journey_id: record
                .journey
                .filter(|_| accepted)
                .map(|journey| journey.id),
            replay: receipt.replay,
            sequence: Some(receipt.sequence),
        }
    }
}

/// A tap that cannot be answered: the request is malformed, or the ledger failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GateError {
    /// A field of the request is missing or out of range.
    #[error("{field}: {problem}")]
    Invalid {
        /// The field, as named in the API.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The ledger could not answer (overload, conflict, storage).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl GateError {
    /// The stable code string.
    pub fn code(&self) -> &'static str {
        match self {
            GateError::Invalid { .. } => "invalid_argument",
            GateError::Ledger(err) => err.code(),
        }
    }
}

/// How far a gate's scan time may be from the server's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanTimeLimits {
    /// A scan time later than now plus this is refused (a gate's clock running fast).
    pub future_max_ms: u64,
    /// A scan time earlier than now minus this is refused: retries come within seconds,
    /// and an older scan would let a stale code pass its freshness check.
    pub past_max_ms: u64,
    /// An uploaded offline tap scanned earlier than now minus this is rejected
    /// (`scan_time_too_old`): 14 days by default, the card schemes' limit for late
    /// transit taps.
    pub offline_past_max_ms: u64,
}

impl Default for ScanTimeLimits {
    fn default() -> Self {
        ScanTimeLimits {
            future_max_ms: 30_000,
            past_max_ms: 600_000,
            offline_past_max_ms: OFFLINE_AGE_MAX_MS_DEFAULT,
        }
    }
}

/// How old an uploaded offline tap may be, by default: 14 days.
pub const OFFLINE_AGE_MAX_MS_DEFAULT: u64 = 14 * 86_400_000;

/// Decides whether a gate opens: verifies the code and submits the tap to the ledger.
/// Shared by every connection; the gRPC service (`grpc::gate::GateApi`) and the
/// in-process benchmark call it.
#[derive(Debug)]
pub struct Gatekeeper {
    verifier: Arc<Verifier>,
    commands: Commands,
    fares: Arc<FareTable>,
    clock: Arc<dyn Clock>,
    scan_time: ScanTimeLimits,
    /// Uploaded offline taps in the ledger's queue at once, across every upload
    /// (`upload::UPLOADED_TAPS_IN_FLIGHT_MAX`).
    uploads: Arc<tokio::sync::Semaphore>,
}

impl Gatekeeper {
    /// A gate service over a verifier and a ledger opened with `fares`.
    pub fn new(
        verifier: Arc<Verifier>,
        ledger: Arc<Ledger>,
        fares: Arc<FareTable>,
        clock: Arc<dyn Clock>,
        scan_time: ScanTimeLimits,
    ) -> Gatekeeper {
        Gatekeeper::with_commands(verifier, Commands::Local(ledger), fares, clock, scan_time)
    }

    /// A gate service that sends its taps to `commands` (the local ledger, or the shards'
    /// leaders in cluster mode), whose ledgers decide by `fares`.
    pub fn with_commands(
        verifier: Arc<Verifier>,
        commands: Commands,
        fares: Arc<FareTable>,
        clock: Arc<dyn Clock>,
        scan_time: ScanTimeLimits,
    ) -> Gatekeeper {
        Gatekeeper {
            verifier,
            commands,
            fares,
            clock,
            scan_time,
            uploads: Arc::new(tokio::sync::Semaphore::new(
                upload::UPLOADED_TAPS_IN_FLIGHT_MAX,
            )),
        }
    }

    /// The verifier, for key and deny-list changes.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Where taps go.
    pub fn commands(&self) -> &Commands {
        &self.commands
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Answers a tap. The code's freshness is judged at the gate's scan time, so a retry
    /// of the same tap is judged exactly as the first try was.
    pub async fn tap(&self, input: TapInput) -> Result<TapAnswer, GateError> {
        self.check(&input)?;
        let code = match self.verifier.verify_text(&input.code_text, input.scan_time) {
            Decision::Accepted(code) => code,
            Decision::Rejected(reason) => return Ok(TapAnswer::rejected_code(input.id, reason)),
        };
        let request = Request {
            id: input.id,
            time: input.scan_time,
            command: Command::Tap(Tap {
                account_id: code.account_id,
                gate_id: input.gate_id,
                code: code.code_fingerprint,
                kind: input.kind,
                offline: false,
                concessions: code.flags & crate::fares::CONCESSION_BITS,
            }),
        };
        let receipt = self.commands.submit(request).await?;
        Ok(TapAnswer::from_receipt(input.id, &receipt))
    }

    fn check(&self, input: &TapInput) -> Result<(), GateError> {
        let invalid = |field, problem: &str| GateError::Invalid {
            field,
            problem: problem.to_string(),
        };
        if input.gate_id == 0 {
            return Err(invalid("gate_id", "must not be zero"));
        }
        let now = self.clock.now();
        if input.scan_time > now.saturating_add(self.scan_time.future_max_ms) {
            return Err(GateError::Invalid {
                field: "scan_time_ms",
                problem: format!(
                    "{} is more than {} ms ahead of the server's clock ({})",
                    input.scan_time.0, self.scan_time.future_max_ms, now.0
                ),
            });
        }
        if input.scan_time < now.saturating_sub(self.scan_time.past_max_ms) {
            return Err(GateError::Invalid {
                field: "scan_time_ms",
                problem: format!(
                    "{} is more than {} ms behind the server's clock ({})",
                    input.scan_time.0, self.scan_time.past_max_ms, now.0
                ),
            });
        }
        Ok(())
    }

    /// Forgets the ids of transactions older than the ledger's retention
    /// (`Ledger::prune_expired_ids`), a writer job of at most
    /// `ledger::PRUNE_RECORDS_PER_JOB_MAX` records at a time, so that taps go on between
    /// them, until none is left. Embedded mode only: a cluster's replicas would have to
    /// forget through the shard's log, which is not built. Returns how many it forgot.
    pub async fn forget_expired_ids(&self) -> Result<u64, GateError> {
        let Some(ledger) = self.commands.local().cloned() else {
            return Ok(0);
        };
        let now = self.clock.now();
        let mut forgotten = 0;
        loop {
            let ledger = Arc::clone(&ledger);
            let pruned =
                on_blocking_thread("pruning", move || ledger.prune_expired_ids(now)).await?;
            if pruned == 0 {
                return Ok(forgotten);
            }
            forgotten += pruned;
        }
    }

    /// Closes journeys entered longer ago than the fares file's limit, charging each the
    /// maximum fare, up to [`SWEEP_JOURNEYS_PER_PASS_MAX`] per pass. Idempotent: each
    /// close has a transaction id and a time derived from the journey, so two sweepers, or
    /// a sweep repeated after a crash, close a journey once. Returns how many it closed.
    pub async fn sweep_journeys(&self) -> Result<usize, GateError> {
        let mut closed = 0;
        for ledger in self.commands.led() {
            closed += self.sweep_ledger(ledger).await?;
        }
        Ok(closed)
    }

    /// One pass of the sweeper over one ledger this process writes.
    async fn sweep_ledger(&self, ledger: Arc<Ledger>) -> Result<usize, GateError> {
        let limit_ms = self.fares.incomplete_journey_after_ms;
        let stale_before = self.clock.now().saturating_sub(limit_ms);
        let reader = Arc::clone(&ledger);
        let stale = on_blocking_thread("sweeper", move || {
            reader.open_journeys_before(stale_before, SWEEP_JOURNEYS_PER_PASS_MAX)
        })
        .await?;
        let mut closed = 0;
        for (account_id, journey_id, entered_at) in stale {
            let request = Request {
                id: close_journey_id(account_id, journey_id),
                time: entered_at.saturating_add(limit_ms),
                command: Command::CloseJourney {
                    account_id,
                    journey_id,
                },
            };
            let receipt = ledger.submit_async(request).await?;
            if receipt.record.outcome == Outcome::Accepted && !receipt.replay {
                closed += 1;
            }
        }
        Ok(closed)
    }
}

/// The transaction id of the sweeper's close of a journey: derived from the journey, so
/// that every sweep of it uses the same id.
pub fn close_journey_id(account_id: u64, journey_id: u64) -> TxId {
    let mut input = Vec::with_capacity(40);
    input.extend_from_slice(b"fareway/close-journey/v1");
    input.extend_from_slice(&account_id.to_be_bytes());
    input.extend_from_slice(&journey_id.to_be_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.as_ref()[..16]);
    TxId(u128::from_be_bytes(id))
}

/// Runs a blocking ledger call off the async worker threads; a task that could not finish
/// (it panicked) is an invariant broken, named by `what`.
async fn on_blocking_thread<T: Send + 'static>(
    what: &'static str,
    call: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, LedgerError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|err| LedgerError::Invariant(format!("{what} task failed: {err}")))?
}
