//! The ledger: double-entry accounts in an embedded RocksDB, with caller-chosen
//! transaction ids that make every request idempotent, and group commit that makes every
//! answer durable without costing throughput.
//!
//! **Money is conserved:** every transaction's postings sum to zero, so the sum over all
//! accounts is always zero; [`audit`] proves it for a data directory. Corrections are new
//! transactions (refunds, adjustments), never edits.
//!
//! This module never sees protobuf types and never reads the wall clock.

pub mod apply;
pub mod audit;
pub mod codec;
pub mod durability;
pub mod model;
pub mod prune;
pub mod replica;
pub mod store;
pub mod syncer;
pub mod travel;
pub mod view;
pub mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread::JoinHandle;

use rocksdb::{Direction, IteratorMode};
use tokio::sync::oneshot;

use crate::clock::UnixMillis;
use crate::cpus::CpuPlan;
use crate::fares::FareTable;
use crate::money::Amount;

pub use durability::{Durability, LocalWal, LogSync};
pub use model::{
    Account, AccountRef, AccountStatus, Command, Journey, OpenJourney, Outcome, Posting, Receipt,
    Record, Refusal, Request, Tap, TapKind, Travel, TxId,
};
pub use replica::{LogAppend, Replica, ShardId};
pub use store::StoreConfig;
pub use view::{LedgerView, SettlementColumn, SettlementWrite};
pub use writer::{LatencyCounts, LatencySnapshot, WriterStats, latency_bounds_us};

/// Errors of the ledger: faults, not refusals (a refused charge is a [`Receipt`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The writer's queue is full: the caller should back off and retry with the same id.
    #[error("the ledger is overloaded: its queue of {0} requests is full")]
    Overloaded(usize),
    /// The id was used before for a request with other content.
    #[error("transaction {id} was already used with a different {field}")]
    Conflict {
        /// The id.
        id: TxId,
        /// The first field that differs.
        field: &'static str,
    },
    /// The ledger is shutting down.
    #[error("the ledger is closed")]
    Closed,
    /// The data directory could not be opened.
    #[error("cannot open ledger data directory {path}: {source}")]
    Open {
        /// The directory.
        path: String,
        /// What RocksDB said.
        source: rocksdb::Error,
    },
    /// The directory holds no ledger and this open must not make one.
    #[error(
        "data directory {path} holds no ledger, and a restart does not make a new one: is the disk that holds it mounted?"
    )]
    NoLedger {
        /// The directory.
        path: String,
    },
    /// The directory holds something this build cannot read.
    #[error("data directory {path} is not in a format this build reads: {detail}")]
    UnknownFormat {
        /// The directory.
        path: String,
        /// What was found.
        detail: String,
    },
    /// A cluster replica's directory holds another shard than the one it is opened as.
    #[error(
        "data directory {path} holds the replica of {found}, but this node opens it as {expected}: is `data_dir` or `shards` wrong?"
    )]
    WrongShard {
        /// The directory.
        path: String,
        /// The shard recorded in it ("shard 1 of 4").
        found: String,
        /// The shard it was opened as.
        expected: String,
    },
    /// The directory was written in another on-disk format version.
    #[error(
        "data directory {path} has format version {found}; this build reads only version {supported}"
    )]
    FormatVersion {
        /// The directory.
        path: String,
        /// The version found.
        found: String,
        /// The version this build reads.
        supported: u32,
    },
    /// A column family the open step should have made is missing.
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    /// A read or write failed (disk full, read-only, I/O error).
    #[error("ledger storage failed: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A stored value does not parse.
    #[error("ledger data is corrupt: {what}: {problem}")]
    Corrupt {
        /// Which kind of value.
        what: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A money invariant would be broken: a bug, refused before anything is written.
    #[error("ledger invariant broken: {0}")]
    Invariant(String),
    /// A tap reached a ledger opened without a fares table.
    #[error("the ledger has no fares table, so it cannot price taps")]
    NoFares,
    /// Cluster mode: the command's shard cannot take it now (no leader, a leader that
    /// stepped down, a log append whose outcome is unknown). The caller retries with the
    /// same id.
    #[error("{0}")]
    Unavailable(String),
    /// Cluster mode: the shard's leader refused or failed the command; its code and
    /// message, as that node's [`LedgerError::code`] and text said.
    #[error("the shard's leader answered: {message}")]
    Remote {
        /// The leader's error code.
        code: String,
        /// The leader's message.
        message: String,
    },
}

impl LedgerError {
    /// The stable code string of this error.
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::Overloaded(_) => "overloaded",
            LedgerError::Conflict { .. } => "id_conflict",
            LedgerError::Closed => "closed",
            LedgerError::Open { .. } => "open_failed",
            LedgerError::NoLedger { .. } => "no_ledger",
            LedgerError::UnknownFormat { .. } => "unknown_format",
            LedgerError::WrongShard { .. } => "wrong_shard",
            LedgerError::FormatVersion { .. } => "format_version",
            LedgerError::MissingColumnFamily(_) => "missing_column_family",
            LedgerError::Storage(_) => "storage",
            LedgerError::Corrupt { .. } => "corrupt",
            LedgerError::Invariant(_) => "invariant",
            LedgerError::NoFares => "no_fares",
            LedgerError::Unavailable(_) => "unavailable",
            LedgerError::Remote { .. } => "remote",
        }
    }
}

/// How the ledger runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerConfig {
    /// RocksDB memory budget.
    pub store: StoreConfig,
    /// Sync the write-ahead log before answering. Only benchmarks turn this off, to
    /// measure what durability costs.
    pub sync_writes: bool,
    /// Requests that may wait for the writer; past this, callers get `Overloaded` at once.
    pub queue_depth_max: usize,
    /// Most requests in one group commit.
    pub group_commit_requests_max: usize,
    /// How long a transaction id is remembered (see [`prune`]). Longer than any gate
    /// stays offline and retries.
    pub id_retention_ms: u64,
    /// CPUs of the writer's and the syncer's own (see [`crate::cpus`]); `None`, anywhere.
    pub cpus: Option<CpuPlan>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            store: StoreConfig::default(),
            sync_writes: true,
            queue_depth_max: 16_384,
            group_commit_requests_max: 2_048,
            id_retention_ms: 30 * 86_400_000,
            cpus: None,
        }
    }
}

/// The rules a tap is decided by, besides the stored state. They are part of the state
/// machine: replaying a log gives the same results only under the same rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The network and fares; without them taps fail with [`LedgerError::NoFares`].
    pub fares: Option<Arc<FareTable>>,
    /// The same code at the same gate within this long (of scan time) is the gate
    /// scanning twice and gets the original answer; anywhere else it is a replay.
    pub code_retry_window_ms: u64,
}

/// The default retry window: a gate retries within seconds; a minute is generous and
/// still far shorter than a code's validity.
pub const CODE_RETRY_WINDOW_MS_DEFAULT: u64 = 60_000;

/// One line of an account's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLine {
    /// The transaction's log sequence.
    pub sequence: u64,
    /// The transaction.
    pub record: Record,
    /// This account's posting in it.
    pub amount: Amount,
    /// This account's balance after it.
    pub balance_after: Amount,
}

/// Most log records one pruning job looks at.
pub const PRUNE_RECORDS_PER_JOB_MAX: usize = 10_000;

/// Most lines one statement page returns.
pub const STATEMENT_PAGE_LINES_MAX: usize = 1_000;

/// An open ledger: the database, its writer thread and (embedded) its syncer thread.
#[derive(Debug)]
pub struct Ledger {
    view: LedgerView,
    queue: Option<SyncSender<writer::Job>>,
    writer: Option<JoinHandle<()>>,
    syncer: Option<JoinHandle<()>>,
    durable: Arc<syncer::Durable>,
    stats: Arc<WriterStats>,
    queue_depth_max: usize,
    id_retention_ms: u64,
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir` and starts its writer, without fares: taps
    /// fail with [`LedgerError::NoFares`]. The gate service uses [`Ledger::open_with_rules`].
    pub fn open(dir: &Path, config: LedgerConfig) -> Result<Ledger, LedgerError> {
        Ledger::open_with_rules(dir, config, Rules::default())
    }

    /// Opens (or creates) the ledger in `dir` and starts its writer, deciding taps by
    /// `rules`, durable through the local write-ahead log.
    pub fn open_with_rules(
        dir: &Path,
        config: LedgerConfig,
        rules: Rules,
    ) -> Result<Ledger, LedgerError> {
        assert!(
            config.queue_depth_max > 0 && config.group_commit_requests_max > 0,
            "ledger limits must be positive"
        );
        let db = Arc::new(store::open(dir, &config.store)?);
        let durability = LocalWal::new(Arc::clone(&db), config.sync_writes);
        Ledger::start(LedgerView::new(db), Box::new(durability), config, rules)
    }

    /// Starts the writer over an opened database with the given durability step, and the
    /// syncer when the step syncs on a thread of its own.
    fn start(
        view: LedgerView,
        durability: Box<dyn Durability>,
        config: LedgerConfig,
        rules: Rules,
    ) -> Result<Ledger, LedgerError> {
        let (queue, receiver) = std::sync::mpsc::sync_channel(config.queue_depth_max);
        let stats = Arc::new(WriterStats::default());
        let durable = Arc::new(syncer::Durable::default());
        let (answers, syncer) = match durability.deferred_sync() {
            None => (writer::Answers::Now, None),
            Some(sync) => {
                let (written, to_sync) =
                    std::sync::mpsc::sync_channel(syncer::SYNC_QUEUE_GROUPS_MAX);
                let (durable, stats) = (Arc::clone(&durable), Arc::clone(&stats));
                let thread = spawn("ledger-syncer", config.cpus, move || {
                    syncer::run(sync, to_sync, durable, stats)
                })?;
                (writer::Answers::AfterSync(written), Some(thread))
            }
        };
        let writer = writer::Writer {
            view: view.clone(),
            durability,
            rules,
            answers,
            durable: Arc::clone(&durable),
            group_commit_requests_max: config.group_commit_requests_max,
            stats: Arc::clone(&stats),
        };
        let writer = spawn("ledger-writer", config.cpus, move || {
            writer::run(writer, receiver)
        })?;
        Ok(Ledger {
            view,
            queue: Some(queue),
            writer: Some(writer),
            syncer,
            durable,
            stats,
            queue_depth_max: config.queue_depth_max,
            id_retention_ms: config.id_retention_ms,
        })
    }

    /// Submits a request and waits for its durable answer. Blocks the calling thread:
    /// async code uses [`Ledger::submit_async`] (this one panics inside a tokio runtime,
    /// which must never block a worker).
    pub fn submit(&self, request: Request) -> Result<Receipt, LedgerError> {
        self.enqueue(request)?
            .blocking_recv()
            .map_err(|_| LedgerError::Closed)?
    }

    /// Submits a request and awaits its durable answer.
    pub async fn submit_async(&self, request: Request) -> Result<Receipt, LedgerError> {
        self.enqueue(request)?
            .await
            .map_err(|_| LedgerError::Closed)?
    }

    /// Joins the writer's queue, or is refused when the queue is full. The writer alone
    /// looks the id up (a replay is answered from its record without a write), so a tap
    /// costs one look-up of its id, on the writer's thread, not on the caller's.
    fn enqueue(
        &self,
        request: Request,
    ) -> Result<oneshot::Receiver<Result<Receipt, LedgerError>>, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let enqueued = std::time::Instant::now();
        self.send(writer::Job::Apply(writer::Submission {
            request,
            reply,
            enqueued,
        }))?;
        Ok(answer)
    }

    /// Puts a job on the writer's queue at once, or refuses it.
    fn send(&self, job: writer::Job) -> Result<(), LedgerError> {
        let queue = self.queue.as_ref().ok_or(LedgerError::Closed)?;
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        queue.try_send(job).map_err(|err| {
            self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            match err {
                TrySendError::Full(_) => LedgerError::Overloaded(self.queue_depth_max),
                TrySendError::Disconnected(_) => LedgerError::Closed,
            }
        })
    }

    /// Forgets the ids of transactions older than the retention at time `now`, a slice at a
    /// time so that the writer is never held long: call it until it returns 0. Returns the
    /// number of ids forgotten. Blocks the calling thread (from async code, call it in
    /// `spawn_blocking`).
    pub fn prune_expired_ids(&self, now: UnixMillis) -> Result<u64, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.send(writer::Job::PruneIds {
            before: now.saturating_sub(self.id_retention_ms),
            records_max: PRUNE_RECORDS_PER_JOB_MAX,
            reply,
        })?;
        answer.blocking_recv().map_err(|_| LedgerError::Closed)?
    }

    /// The recorded transaction with this id, once durable. Blocks on the read and on
    /// [`Ledger::wait_durable`].
    pub fn transaction(&self, id: TxId) -> Result<Option<(u64, Record)>, LedgerError> {
        let found = self.view.transaction(id)?;
        self.wait_durable()?;
        Ok(found)
    }

    /// An account's state, once durable. Blocks on the read and on
    /// [`Ledger::wait_durable`].
    pub fn account(&self, account: AccountRef) -> Result<Option<Account>, LedgerError> {
        let found = self.view.account(account)?;
        self.wait_durable()?;
        Ok(found)
    }

    /// Waits until every write begun before the call is durable. A reader that answers a
    /// caller from what it read through [`Ledger::view`] calls this after reading and
    /// before answering: the writer's newest writes are readable before their sync ends,
    /// and a caller must never be shown one that a power cut could undo. Blocks the
    /// calling thread (about one sync); fails once a write or sync has failed.
    pub fn wait_durable(&self) -> Result<(), LedgerError> {
        self.durable.wait()
    }

    /// A page of an account's statement: up to `limit` lines (at most
    /// [`STATEMENT_PAGE_LINES_MAX`]) with sequence greater than `after_sequence`, oldest first.
    pub fn statement(
        &self,
        account: AccountRef,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<StatementLine>, LedgerError> {
        let lines = statement(&self.view, account, after_sequence, limit)?;
        self.wait_durable()?;
        Ok(lines)
    }

    /// Up to `limit` open journeys entered before `entered_before`, oldest first: (rider,
    /// journey id, entry time). The journey sweeper closes them.
    pub fn open_journeys_before(
        &self,
        entered_before: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(u64, u64, UnixMillis)>, LedgerError> {
        let index = self.view.cf(store::CF_OPEN_JOURNEYS)?;
        let mut found = Vec::new();
        for item in self.view.iterator_cf(index, IteratorMode::Start) {
            let (key, value) = item?;
            let (entered_at, account_id, journey_id) = codec::decode_open_journey(&key, &value)?;
            if entered_at >= entered_before || found.len() >= limit {
                break;
            }
            found.push((account_id, journey_id, entered_at));
        }
        Ok(found)
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Makes a RocksDB checkpoint of the whole database (every column family: accounts,
    /// log, ids, journeys, settlement) in `path`, which must not exist: a consistent copy
    /// as of now, made of hard links where `path` is on the same file system. Taps go on
    /// meanwhile. The checkpoint is a data directory: `fareway audit` checks it and
    /// `fareway serve` runs on it.
    pub fn checkpoint(&self, path: &Path) -> Result<(), LedgerError> {
        self.view.checkpoint(path)
    }

    /// The read-only view of the database, for modules that read it directly
    /// (settlement, the audit).
    pub fn view(&self) -> &LedgerView {
        &self.view
    }

    /// Settlement's own column family, the one part of the database written outside the
    /// writer.
    pub fn settlement_column(&self) -> SettlementColumn {
        self.view.settlement_column()
    }

    /// Stops taking requests, lets the writer finish what is queued and the syncer answer
    /// it, and waits for both.
    pub fn shutdown(&mut self) {
        self.queue = None;
        for (thread, name) in [
            (self.writer.take(), "writer"),
            (self.syncer.take(), "syncer"),
        ] {
            if let Some(thread) = thread
                && thread.join().is_err()
            {
                tracing::error!("the ledger {name} thread panicked");
            }
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a thread of the ledger, on the ledger's own CPUs when it has some.
fn spawn(
    name: &str,
    cpus: Option<CpuPlan>,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, LedgerError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(plan) = cpus {
                plan.move_this_thread_to_ledger();
            }
            body()
        })
        .map_err(|err| LedgerError::Invariant(format!("cannot start the {name} thread: {err}")))
}

/// A page of an account's statement read from `view`; see [`Ledger::statement`].
pub fn statement(
    view: &LedgerView,
    account: AccountRef,
    after_sequence: u64,
    limit: usize,
) -> Result<Vec<StatementLine>, LedgerError> {
    let limit = limit.min(STATEMENT_PAGE_LINES_MAX);
    let start = codec::posting_key(account, after_sequence.saturating_add(1));
    let prefix = codec::account_key(account);
    let postings = view.cf(store::CF_POSTINGS)?;
    let mut lines = Vec::new();
    for item in view.iterator_cf(postings, IteratorMode::From(&start, Direction::Forward)) {
        let (key, value) = item?;
        if !key.starts_with(&prefix) || lines.len() >= limit {
            break;
        }
        let (_, sequence, amount, balance_after) = codec::decode_posting(&key, &value)?;
        let record = view.record(sequence)?.ok_or(LedgerError::Corrupt {
            what: "posting",
            problem: "points at a missing record",
        })?;
        lines.push(StatementLine {
            sequence,
            record,
            amount,
            balance_after,
        });
    }
    Ok(lines)
}

#[cfg(test)]
mod late_tap_tests;
#[cfg(test)]
mod network_tests;
#[cfg(test)]
mod syncer_tests;
#[cfg(test)]
mod tap_tests;
#[cfg(test)]
mod tests;
