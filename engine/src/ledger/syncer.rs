//! The syncer: the thread that makes written group commits durable and answers them, so
//! that the writer decides the next group commit while the last one syncs.
//!
//! The writer writes each group commit without a sync and hands it here ([`Written`]).
//! The syncer takes every group waiting, syncs the log once (a sync covers every write
//! made before it starts), records how far the ledger is now durable ([`Durable`]), and
//! answers them in order. A group that wrote nothing (replays, refusals) is answered after
//! the groups before it: a replay's record may be in one of them.
//!
//! A failed sync leaves the outcome of every write since the last good one unknown. They
//! all get the error, and so does everything after: the writer refuses to decide more
//! (its reads would build on writes that may not survive a restart) until the ledger is
//! opened again, as after a failed write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

use super::LedgerError;
use super::durability::LogSync;
use super::model::Receipt;
use super::writer::{FailOnPanic, WriterStats, fail, record_write_time};

/// Most written group commits waiting for the syncer; past this the writer waits. A
/// stalled disk thus holds the writer, and then the writer's bounded queue, not memory.
pub const SYNC_QUEUE_GROUPS_MAX: usize = 256;

/// An answer for a caller.
pub type Answer = Result<Receipt, LedgerError>;

/// A group commit written (or refused whole) by the writer, with its callers' answers.
#[derive(Debug)]
pub struct Written {
    /// The group's number from [`Durable::begin`].
    pub group: u64,
    /// Whether it wrote anything that must be synced before its answers go out.
    pub wrote: bool,
    /// One answer per caller, in order.
    pub answers: Vec<Answer>,
    /// Where each answer goes.
    pub replies: Vec<oneshot::Sender<Answer>>,
    /// When the write returned.
    pub written_at: Instant,
}

impl Written {
    /// Sends each caller its answer; after a failed sync, every answer becomes that
    /// failure (a conflict too: the record it conflicts with may not survive).
    pub fn answer(self, failure: Option<&LedgerError>, stats: &WriterStats) {
        let waited_us = self.written_at.elapsed().as_micros() as u64;
        (stats.sync_waits).record_many(waited_us, self.replies.len() as u64);
        for (reply, answer) in self.replies.into_iter().zip(self.answers) {
            let answer = match failure {
                Some(failure) => Err(failure.clone()),
                None => answer,
            };
            // A caller that gave up waiting has dropped its receiver; its transaction is
            // still recorded, and a retry with the same id gets this same receipt.
            let _ = reply.send(answer);
        }
    }
}

/// How far the ledger's writes are durable. Readers that answer callers (a balance, a
/// statement, a gate bundle) wait on it after they read, so that nobody is shown a write
/// that a power cut could still undo.
#[derive(Debug, Default)]
pub struct Durable {
    /// Group commits whose write has begun, numbered from 1.
    begun: AtomicU64,
    state: Mutex<DurableState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct DurableState {
    /// Every group commit up to this number is durable (or wrote nothing).
    through: u64,
    /// The failure after which nothing more becomes durable.
    failure: Option<LedgerError>,
}

impl Durable {
    /// Numbers the next group commit. Called before its write starts, so that a reader
    /// that saw the write finds a number at least this high afterwards.
    pub fn begin(&self) -> u64 {
        self.begun.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Records that every group commit up to `group` is durable.
    pub fn reached(&self, group: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.through = state.through.max(group);
        self.changed.notify_all();
    }

    /// Records that nothing more becomes durable, for `cause`.
    pub fn fail(&self, cause: LedgerError) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.failure.get_or_insert(cause);
        self.changed.notify_all();
    }

    /// The failure, if one happened.
    pub fn failure(&self) -> Option<LedgerError> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.failure.clone()
    }

    /// Waits until every group commit begun before the call is durable: whatever a read
    /// made before the call saw can then no longer be undone by a crash. Blocks the calling
    /// thread (at most about one sync, longer when the disk stalls).
    pub fn wait(&self) -> Result<(), LedgerError> {
        let target = self.begun.load(Ordering::SeqCst);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
            if state.through >= target {
                return Ok(());
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Runs the syncer until the writer is gone and every written group is answered.
pub fn run(
    mut sync: Box<dyn LogSync>,
    queue: Receiver<Written>,
    durable: Arc<Durable>,
    stats: Arc<WriterStats>,
) {
    let _unwinding = FailOnPanic {
        durable: Arc::clone(&durable),
        stats: Arc::clone(&stats),
    };
    let mut waiting = Vec::with_capacity(SYNC_QUEUE_GROUPS_MAX);
    while let Ok(first) = queue.recv() {
        waiting.push(first);
        waiting.extend(queue.try_iter().take(SYNC_QUEUE_GROUPS_MAX));
        let synced = sync_groups(sync.as_mut(), &waiting, &durable, &stats);
        for written in waiting.drain(..) {
            written.answer(synced.as_ref().err(), &stats);
        }
    }
}

/// Makes `waiting` durable: one sync if any of them wrote (the groups before them were
/// synced by an earlier call).
fn sync_groups(
    sync: &mut dyn LogSync,
    waiting: &[Written],
    durable: &Durable,
    stats: &WriterStats,
) -> Result<(), LedgerError> {
    if let Some(failure) = durable.failure() {
        return Err(failure);
    }
    if waiting.iter().any(|written| written.wrote) {
        let started = Instant::now();
        let synced = sync.sync();
        record_write_time(stats, started);
        if let Err(err) = synced {
            let groups = waiting.len();
            tracing::error!(cause = %err, groups, "ledger log sync failed");
            fail(durable, stats, err.clone());
            return Err(err);
        }
    }
    if let Some(last) = waiting.last() {
        durable.reached(last.group);
    }
    Ok(())
}
