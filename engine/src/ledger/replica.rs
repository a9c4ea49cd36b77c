//! A replica of one shard's ledger in cluster mode (`docs/cluster.md`).
//!
//! The shard's state is a function of its log: a stream of messages, each one group
//! commit's requests. A follower applies each message with the same [`GroupCommit`] the
//! leader ran, and records the message's stream sequence in the same write batch as the
//! state it produced, so that a restart goes on from the next message and a crash never
//! leaves a half-applied message. The leader runs the ordinary writer, whose durability
//! step appends the group commit to the log ([`LogAppend`]) and writes locally only once
//! the append is acknowledged.
//!
//! The log is the durable copy, so local writes are not synced: a replica that loses its
//! last writes in a crash replays them from the log.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{DB, WriteBatch};

use super::apply::GroupCommit;
use super::codec;
use super::durability::Durability;
use super::model::Request;
use super::store::{self, CF_META};
use super::view::LedgerView;
use super::{Ledger, LedgerConfig, LedgerError, Rules};

/// The shard log's append step, as the leader's durability uses it.
pub trait LogAppend: Send + 'static {
    /// Appends one group commit's requests as the message that follows stream sequence
    /// `after`, and returns the new message's sequence once the log holds it durably. Fails
    /// when another message follows `after` already (another leader appended: this one
    /// is deposed), or when the outcome is unknown.
    fn append(&mut self, after: u64, requests: &[Request]) -> Result<u64, LedgerError>;
}

/// Which shard of how many a replica holds (`cluster::shard_of`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardId {
    /// The shard, from 0.
    pub shard: u32,
    /// How many shards the cluster has.
    pub shards: u32,
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} of {}", self.shard, self.shards)
    }
}

/// One replica of a shard's ledger: its RocksDB, and what it applied of the log.
#[derive(Debug)]
pub struct Replica {
    db: Arc<DB>,
    view: LedgerView,
    rules: Rules,
    config: LedgerConfig,
}

impl Replica {
    /// Opens (or, when `config.store.create` says so, makes) the data directory of a
    /// replica of `shard`. A directory that holds another shard is refused; a new one
    /// records which shard it holds.
    pub fn open(
        dir: &Path,
        shard: ShardId,
        config: LedgerConfig,
        rules: Rules,
    ) -> Result<Replica, LedgerError> {
        let db = Arc::new(store::open(dir, &config.store)?);
        let view = LedgerView::new(Arc::clone(&db));
        match shard_id(&view)? {
            Some(found) if found != shard => {
                return Err(LedgerError::WrongShard {
                    path: dir.display().to_string(),
                    found: found.to_string(),
                    expected: shard.to_string(),
                });
            }
            Some(_) => {}
            None => db.put_cf(
                view.cf(CF_META)?,
                codec::META_SHARD,
                codec::encode_shard(shard.shard, shard.shards),
            )?,
        }
        Ok(Replica {
            view,
            db,
            rules,
            config,
        })
    }

    /// The read-only view of the replica's state.
    pub fn view(&self) -> &LedgerView {
        &self.view
    }

    /// The sequence of the last log message applied here (0 before the first).
    pub fn applied_stream_sequence(&self) -> Result<u64, LedgerError> {
        applied_stream_sequence(&self.view)
    }

    /// Applies the log message at `stream_sequence`, made of `requests`. A message at or
    /// below the applied sequence was applied already and is skipped (a redelivery).
    pub fn apply_logged(
        &self,
        stream_sequence: u64,
        requests: &[Request],
    ) -> Result<(), LedgerError> {
        if stream_sequence <= self.applied_stream_sequence()? {
            return Ok(());
        }
        let mut group = GroupCommit::new(&self.view, &self.rules)?;
        for request in requests {
            // The answers went to the leader's callers; a replica only needs the state.
            let _ = group.apply(request);
        }
        let write = with_applied_sequence(&self.view, group.into_write(), stream_sequence)?;
        // RocksDB's default write does not sync: the log is the durable copy.
        self.db.write(write)?;
        Ok(())
    }

    /// Starts leading: a ledger whose writer appends every group commit to the log through
    /// `log` before it writes here. The replica must have applied the whole log first.
    /// After the ledger's first failed write (`stats().write_failures`), it refuses every
    /// request: its state may be behind the log, so the caller shuts it down and follows.
    pub fn lead(&self, log: Box<dyn LogAppend>) -> Result<Ledger, LedgerError> {
        let durability = Replicated {
            db: Arc::clone(&self.db),
            view: self.view.clone(),
            log,
            applied: self.applied_stream_sequence()?,
            failed: false,
        };
        Ledger::start(
            self.view.clone(),
            Box::new(durability),
            self.config,
            self.rules.clone(),
        )
    }
}

/// The applied stream sequence recorded in `view`.
pub fn applied_stream_sequence(view: &LedgerView) -> Result<u64, LedgerError> {
    let meta = view.cf(CF_META)?;
    match view.get_cf(meta, codec::META_APPLIED_STREAM_SEQUENCE)? {
        Some(bytes) => codec::decode_sequence(&bytes, "applied stream sequence"),
        None => Ok(0),
    }
}

/// The shard a replica's directory holds, as recorded when it was made (`None`: not a
/// cluster replica).
pub fn shard_id(view: &LedgerView) -> Result<Option<ShardId>, LedgerError> {
    let meta = view.cf(CF_META)?;
    let Some(bytes) = view.get_cf(meta, codec::META_SHARD)? else {
        return Ok(None);
    };
    let (shard, shards) = codec::decode_shard(&bytes)?;
    Ok(Some(ShardId { shard, shards }))
}

/// `write`, ending with the stream sequence it applies.
fn with_applied_sequence(
    view: &LedgerView,
    mut write: WriteBatch,
    stream_sequence: u64,
) -> Result<WriteBatch, LedgerError> {
    write.put_cf(
        view.cf(CF_META)?,
        codec::META_APPLIED_STREAM_SEQUENCE,
        codec::encode_sequence(stream_sequence),
    );
    Ok(write)
}

/// The leader's durability: the log append, then the local write.
struct Replicated {
    db: Arc<DB>,
    view: LedgerView,
    log: Box<dyn LogAppend>,
    /// The stream sequence of the last message this replica applied.
    applied: u64,
    /// An append failed: this replica's state may be behind the log.
    failed: bool,
}

impl Durability for Replicated {
    fn commit(&mut self, requests: &[Request], write: WriteBatch) -> Result<(), LedgerError> {
        if self.failed {
            return Err(LedgerError::Unavailable(
                "this node stepped down as the shard's leader after a failed log append; retry"
                    .into(),
            ));
        }
        if requests.is_empty() {
            // A write that no request produced (pruning ids) would not be in the log, and
            // replicas would differ.
            return Err(LedgerError::Invariant(
                "a write without requests cannot be replicated".into(),
            ));
        }
        let sequence = match self.log.append(self.applied, requests) {
            Ok(sequence) => sequence,
            Err(err) => {
                self.failed = true;
                return Err(err);
            }
        };
        // From here the log holds the group commit: a local write that fails leaves this
        // replica behind its log, and only a replay (after stepping down) repairs it.
        let written = with_applied_sequence(&self.view, write, sequence)
            .and_then(|write| Ok(self.db.write(write)?));
        if written.is_err() {
            self.failed = true;
        }
        written?;
        self.applied = sequence;
        Ok(())
    }
}
