//! Group commit: one writer thread, fed by a bounded queue, applies every waiting request
//! in one [`GroupCommit`], writes it through the [`Durability`] seam, and hands the
//! answers on ([`Answers`]): in embedded mode to the syncer (`super::syncer`), which
//! answers them once a sync of the write-ahead log covers the write, while the writer
//! decides the next group commit; in cluster mode straight to the callers, the log append
//! being durable when it returns. Many concurrent callers thus share one sync, and the
//! ledger's state changes in one thread only, in one order (the log's).
//!
//! A caller is answered only after its group commit is durable. When that fails, every
//! request the group commit would have recorded gets the error, and its outcome is
//! unknown: RocksDB may or may not replay the write from its log after a restart, so the
//! caller retries with the same id and gets either a replay or a fresh answer, never a
//! second charge. After a failure the writer decides nothing more: the database may hold
//! writes that a restart undoes, and the ledger must be opened again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SendError, SyncSender, TryRecvError};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::clock::UnixMillis;

use super::apply::GroupCommit;
use super::durability::Durability;
use super::model::{Receipt, Request};
use super::prune;
use super::syncer::{Answer, Durable, Written};
use super::view::LedgerView;
use super::{LedgerError, Rules};

/// A request waiting in the queue, with where to send its answer.
#[derive(Debug)]
pub struct Submission {
    /// The request.
    pub request: Request,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Receipt, LedgerError>>,
    /// When it joined the queue.
    pub enqueued: Instant,
}

/// The group commit being gathered: its requests in queue order (as the state machine
/// and the durability step take them), and where each one's answer goes.
struct Pending {
    requests: Vec<Request>,
    replies: Vec<oneshot::Sender<Answer>>,
    enqueued: Vec<Instant>,
}

impl Pending {
    fn with_capacity(capacity: usize) -> Pending {
        Pending {
            requests: Vec::with_capacity(capacity),
            replies: Vec::with_capacity(capacity),
            enqueued: Vec::with_capacity(capacity),
        }
    }

    fn push(&mut self, submission: Submission) {
        self.requests.push(submission.request);
        self.replies.push(submission.reply);
        self.enqueued.push(submission.enqueued);
    }

    fn len(&self) -> usize {
        self.requests.len()
    }
}

/// Work for the writer thread, in queue order.
#[derive(Debug)]
pub enum Job {
    /// Apply a request (in one group commit with its neighbours).
    Apply(Submission),
    /// Forget the ids of transactions made before a time (see [`prune::prune_ids`]).
    PruneIds {
        /// Ids of transactions whose request time is earlier than this are forgotten.
        before: UnixMillis,
        /// Most records looked at in this job, so that one job never holds the writer long.
        records_max: usize,
        /// Where the count of forgotten ids goes.
        reply: oneshot::Sender<Result<u64, LedgerError>>,
    },
}

/// The upper bounds, in microseconds, of the latency histograms (the writer's synced
/// writes, the server's taps): 19 a decade from 10 us to 5 s, each at most 18% above the
/// one before, so that a quantile read from them is within that of the true value (the
/// bound of 5 ms that the 5 ms goal reads is one of them).
pub fn latency_bounds_us() -> Vec<u64> {
    const STEPS: [u64; 19] = [
        10, 11, 12, 13, 15, 17, 20, 23, 26, 30, 35, 40, 45, 50, 55, 60, 70, 80, 90,
    ];
    let mut bounds = Vec::new();
    for decade in [1u64, 10, 100, 1_000, 10_000, 100_000] {
        bounds.extend(STEPS.iter().map(|step| step * decade));
    }
    bounds.retain(|bound| *bound <= 5_000_000);
    bounds
}

/// A histogram as a Prometheus encoder takes it: the sum in seconds, the count, and
/// (upper bound in seconds, count) per bucket, not cumulative, the last bound infinite.
pub type LatencySnapshot = (f64, u64, Vec<(f64, u64)>);

/// A histogram of durations kept with atomics (the writer must not take a lock to count
/// a sync): counts per bound of [`latency_bounds_us`], one past the last, and the sum.
#[derive(Debug)]
pub struct LatencyCounts {
    bounds_us: Vec<u64>,
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

impl Default for LatencyCounts {
    fn default() -> Self {
        let bounds_us = latency_bounds_us();
        let counts = (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect();
        LatencyCounts {
            bounds_us,
            counts,
            sum_us: AtomicU64::new(0),
        }
    }
}

impl LatencyCounts {
    /// Counts one duration.
    pub fn record(&self, us: u64) {
        self.record_many(us, 1);
    }

    /// Counts `times` durations of `us` each (the requests of one group commit).
    pub fn record_many(&self, us: u64, times: u64) {
        let bucket = self.bounds_us.partition_point(|bound| *bound < us);
        self.counts[bucket].fetch_add(times, Ordering::Relaxed);
        self.sum_us.fetch_add(us * times, Ordering::Relaxed);
    }

    /// Adds `other`'s counts to these (a node's sum over the shards it leads).
    pub fn add(&self, other: &LatencyCounts) {
        for (sum, part) in self.counts.iter().zip(&other.counts) {
            sum.fetch_add(part.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(other.sum_us.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// The total of every duration counted, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }

    /// The counts now.
    pub fn snapshot(&self) -> LatencySnapshot {
        let bounds = self
            .bounds_us
            .iter()
            .map(|us| *us as f64 / 1e6)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.counts)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        (self.sum_us() as f64 / 1e6, count, buckets)
    }
}

/// Counters the writer keeps for metrics and reports.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Requests waiting in the queue now.
    pub queue_depth: AtomicUsize,
    /// Group commits written.
    pub group_commits: AtomicU64,
    /// Requests the writer took into group commits (replays too).
    pub requests: AtomicU64,
    /// The longest durable step, in microseconds.
    pub write_time_us_max: AtomicU64,
    /// Every durable step's time (their total too): the syncs of the log in embedded mode,
    /// the appends and writes in cluster mode. Its quantiles, beside the taps' in the same
    /// run, say which part of a tap's latency is the disk's.
    pub write_times: LatencyCounts,
    /// Each request's wait in the queue, until the writer took it into a group commit.
    pub queue_waits: LatencyCounts,
    /// Each request's group commit being decided and written (not synced).
    pub decide_writes: LatencyCounts,
    /// Each request's wait from its group's write to its answer: the sync, and the end of
    /// the sync before it when it started during one. With the three before, where a
    /// request's time in the ledger goes.
    pub sync_waits: LatencyCounts,
    /// Group commits whose write failed, and syncs that failed. After one, the ledger
    /// refuses every later request until the database is opened again
    /// (`server::run_until_stopped` does that).
    pub write_failures: AtomicU64,
}

/// Where the writer sends a group commit's answers.
#[derive(Debug)]
pub enum Answers {
    /// Straight to the callers: the durability step was durable when it returned.
    Now,
    /// To the syncer, which answers after the next sync.
    AfterSync(SyncSender<Written>),
}

impl Answers {
    /// Hands a written group commit on.
    fn deliver(&self, written: Written, durable: &Durable, stats: &WriterStats) {
        match self {
            Answers::Now => {
                durable.reached(written.group);
                written.answer(None, stats);
            }
            Answers::AfterSync(syncer) => {
                // Waits while the syncer's queue is full. A syncer that is gone (it
                // panicked) cannot make the group durable: its callers hear so.
                if let Err(SendError(written)) = syncer.send(written) {
                    fail(durable, stats, LedgerError::Closed);
                    written.answer(Some(&LedgerError::Closed), stats);
                }
            }
        }
    }
}

/// What the writer thread works with.
pub struct Writer {
    /// The database, read by the state machine.
    pub view: LedgerView,
    /// How a group commit is made durable.
    pub durability: Box<dyn Durability>,
    /// The rules taps are decided by.
    pub rules: Rules,
    /// Where answers go.
    pub answers: Answers,
    /// How far writes are durable.
    pub durable: Arc<Durable>,
    /// Most requests in one group commit.
    pub group_commit_requests_max: usize,
    /// Counters.
    pub stats: Arc<WriterStats>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

/// Runs the writer loop until every sender is gone and the queue is drained.
pub fn run(mut writer: Writer, queue: Receiver<Job>) {
    let _unwinding = FailOnPanic {
        durable: Arc::clone(&writer.durable),
        stats: Arc::clone(&writer.stats),
    };
    let mut pending = Pending::with_capacity(writer.group_commit_requests_max);
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            writer.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            match job {
                Job::PruneIds {
                    before,
                    records_max,
                    reply,
                } => {
                    let _ = reply.send(writer.prune(before, records_max));
                }
                Job::Apply(submission) => {
                    pending.push(submission);
                    next = gather(
                        &queue,
                        &mut pending,
                        writer.group_commit_requests_max,
                        &writer.stats,
                    );
                    writer.commit_and_answer(&mut pending);
                }
            }
        }
    }
}

/// Takes more waiting requests into `pending`, up to the group commit's limit, without
/// waiting. Returns a job of another kind that came next: it runs after this group
/// commit, in queue order.
fn gather(
    queue: &Receiver<Job>,
    pending: &mut Pending,
    group_commit_requests_max: usize,
    stats: &WriterStats,
) -> Option<Job> {
    while pending.len() < group_commit_requests_max {
        match queue.try_recv() {
            Ok(Job::Apply(submission)) => {
                stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                pending.push(submission);
            }
            Ok(other) => return Some(other),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return None,
        }
    }
    None
}

/// Records a failure after which the ledger decides nothing more, and counts it, so that
/// the server opens the ledger again.
pub fn fail(durable: &Durable, stats: &WriterStats, cause: LedgerError) {
    stats.write_failures.fetch_add(1, Ordering::Relaxed);
    durable.fail(cause);
}

/// Fails the ledger if its thread panics: readers waiting for a group the thread held
/// would otherwise wait for ever, and the server would never open the ledger again.
#[derive(Debug)]
pub struct FailOnPanic {
    /// What readers wait on.
    pub durable: Arc<Durable>,
    /// Where the failure is counted.
    pub stats: Arc<WriterStats>,
}

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            fail(&self.durable, &self.stats, LedgerError::Closed);
        }
    }
}

impl Writer {
    /// Forgets ids (see [`prune::prune_ids`]); nothing after a failure, and a failed
    /// write of its own fails the ledger like a group commit's.
    fn prune(&mut self, before: UnixMillis, records_max: usize) -> Result<u64, LedgerError> {
        if let Some(failure) = self.durable.failure() {
            return Err(failure);
        }
        let pruned = prune::prune_ids(&self.view, self.durability.as_mut(), before, records_max);
        if let Err(err @ LedgerError::Storage(_)) = &pruned {
            tracing::error!(cause = %err, "forgetting old ids failed");
            fail(&self.durable, &self.stats, err.clone());
        }
        pruned
    }

    /// Commits the pending requests and hands their answers on, emptying `pending`.
    fn commit_and_answer(&mut self, pending: &mut Pending) {
        let begun = Instant::now();
        for enqueued in pending.enqueued.drain(..) {
            let waited = begun.saturating_duration_since(enqueued);
            self.stats.queue_waits.record(waited.as_micros() as u64);
        }
        let group = self.durable.begin();
        let (answers, wrote) = match self.durable.failure() {
            // After a failed write or sync the database may hold writes that do not
            // survive a restart: nothing is decided on top of them.
            Some(failure) => (every_answer(&pending.requests, &failure), false),
            None => self.commit(&pending.requests),
        };
        self.stats
            .requests
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        pending.requests.clear();
        let written = Written {
            group,
            wrote,
            answers,
            replies: pending.replies.drain(..).collect(),
            written_at: Instant::now(),
        };
        let decided_us = written.written_at.duration_since(begun).as_micros() as u64;
        (self.stats.decide_writes).record_many(decided_us, written.replies.len() as u64);
        self.answers.deliver(written, &self.durable, &self.stats);
    }

    /// Applies one group commit and writes it through the durability step; returns one
    /// answer per request, in order, and whether it wrote.
    fn commit(&mut self, requests: &[Request]) -> (Vec<Answer>, bool) {
        let mut group = match GroupCommit::new(&self.view, &self.rules) {
            Ok(group) => group,
            Err(err) => return (every_answer(requests, &err), false),
        };
        let answers: Vec<_> = requests
            .iter()
            .map(|request| group.apply(request))
            .collect();
        if group.is_empty() {
            return (answers, false);
        }
        let first_new_sequence = group.first_sequence();
        let started = Instant::now();
        let written = self.durability.commit(requests, group.into_write());
        self.stats.group_commits.fetch_add(1, Ordering::Relaxed);
        if matches!(self.answers, Answers::Now) {
            record_write_time(&self.stats, started);
        }
        let Err(err) = written else {
            return (answers, true);
        };
        tracing::error!(cause = %err, requests = requests.len(), "ledger group commit failed");
        fail(&self.durable, &self.stats, err.clone());
        let answers = answers
            .into_iter()
            .map(|answer| match answer {
                // A replay of an id recorded in an earlier group commit is still true
                // (once that group is durable: the syncer answers in order). A conflict
                // may be with a request of this group, whose record may not survive:
                // every other answer is the failure, and a retry gets the truth.
                Ok(receipt) if receipt.sequence < first_new_sequence => Ok(receipt),
                _ => Err(err.clone()),
            })
            .collect();
        (answers, true)
    }
}

/// The same error as every request's answer.
fn every_answer(requests: &[Request], err: &LedgerError) -> Vec<Answer> {
    requests.iter().map(|_| Err(err.clone())).collect()
}

/// Counts one durable step's time (a synced write or a sync).
pub fn record_write_time(stats: &WriterStats, started: Instant) {
    let elapsed_us = started.elapsed().as_micros() as u64;
    stats
        .write_time_us_max
        .fetch_max(elapsed_us, Ordering::Relaxed);
    stats.write_times.record(elapsed_us);
}
