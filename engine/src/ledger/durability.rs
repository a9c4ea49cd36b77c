//! The group commit's durability step, a seam: no caller hears an answer before the
//! [`Durability`] has made its group commit durable.
//!
//! Embedded mode fills it with [`LocalWal`]: one RocksDB write whose write-ahead log is
//! synced. Cluster mode (issue 14) will fill it with an append of the group commit's
//! requests to a replicated log, awaited for its quorum acknowledgement, before the same
//! local write. Nothing else in the writer or the state machine changes between the two.

use std::sync::Arc;

use rocksdb::{DB, WriteBatch, WriteOptions};

use super::LedgerError;
use super::model::Request;

/// Makes one group commit durable.
pub trait Durability: Send + 'static {
    /// Makes `write` durable, then applies it to the local database. `requests` are the
    /// group commit's requests in the order they were applied (replays and conflicts too:
    /// they write nothing, so a replica that applies the same requests in the same order
    /// reaches the same state); `write` is the state they produced. On `Err` the outcome is unknown: the write may or
    /// may not survive a restart, so every caller of the group commit gets the error and
    /// retries with the same transaction id.
    fn commit(&mut self, requests: &[Request], write: WriteBatch) -> Result<(), LedgerError>;
}

/// Embedded durability: the local write-ahead log, synced before the write returns.
pub struct LocalWal {
    db: Arc<DB>,
    write_options: WriteOptions,
}

impl std::fmt::Debug for LocalWal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWal").finish_non_exhaustive()
    }
}

impl LocalWal {
    /// The write-ahead log of `db`, synced on every commit unless `sync` is false (only
    /// benchmarks turn it off, to measure what durability costs).
    pub fn new(db: Arc<DB>, sync: bool) -> LocalWal {
        let mut write_options = WriteOptions::default();
        write_options.set_sync(sync);
        LocalWal { db, write_options }
    }
}

impl Durability for LocalWal {
    fn commit(&mut self, _requests: &[Request], write: WriteBatch) -> Result<(), LedgerError> {
        self.db.write_opt(write, &self.write_options)?;
        Ok(())
    }
}
