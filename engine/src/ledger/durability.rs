//! The group commit's durability step, a seam: no caller hears an answer before the
//! [`Durability`] has made its group commit durable.
//!
//! Embedded mode fills it with [`LocalWal`]: one RocksDB write, whose write-ahead log a
//! [`LogSync`] on a thread of its own syncs afterwards (`super::syncer`), so that the
//! writer decides the next group commit while the last one syncs. Cluster mode fills it
//! with an append of the group commit's requests to a replicated log, awaited for its
//! quorum acknowledgement, before the same local write (`super::replica`). Nothing else in
//! the writer or the state machine changes between the two.

use std::sync::Arc;

use rocksdb::{DB, WriteBatch, WriteOptions};

use super::LedgerError;
use super::model::Request;

/// Makes one group commit durable.
pub trait Durability: Send + 'static {
    /// Writes `write` to the local database, durable on return, or (when
    /// [`Durability::deferred_sync`] gives a [`LogSync`]) durable once the next sync that
    /// starts after this returns has succeeded. `requests` are the group commit's requests
    /// in the order they were applied (replays and conflicts too: they write nothing, so a
    /// replica that applies the same requests in the same order reaches the same state);
    /// `write` is the state they produced. On `Err` the outcome is unknown: the write may or
    /// may not survive a restart, so every caller of the group commit gets the error and
    /// retries with the same transaction id.
    fn commit(&mut self, requests: &[Request], write: WriteBatch) -> Result<(), LedgerError>;

    /// The step that makes committed writes durable, run on a thread of its own, when
    /// [`Durability::commit`] only writes. `None` (the default): a commit is durable when
    /// it returns.
    fn deferred_sync(&self) -> Option<Box<dyn LogSync>> {
        None
    }
}

/// Makes every write that returned before the call durable.
pub trait LogSync: Send + 'static {
    /// Syncs. On `Err` the writes since the last good sync have an unknown outcome.
    fn sync(&mut self) -> Result<(), LedgerError>;
}

/// Embedded durability: writes to the local write-ahead log, which `WalSync` syncs.
pub struct LocalWal {
    db: Arc<DB>,
    write_options: WriteOptions,
    synced: bool,
}

impl std::fmt::Debug for LocalWal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWal")
            .field("synced", &self.synced)
            .finish_non_exhaustive()
    }
}

impl LocalWal {
    /// The write-ahead log of `db`, synced after every commit unless `synced` is false
    /// (only benchmarks turn it off, to measure what durability costs: answers then go
    /// out as soon as the write is in the operating system's cache).
    pub fn new(db: Arc<DB>, synced: bool) -> LocalWal {
        let mut write_options = WriteOptions::default();
        // Never synced in the write itself: the sync is the syncer's (a write with
        // `sync` set would make the writer wait for the disk).
        write_options.set_sync(false);
        LocalWal {
            db,
            write_options,
            synced,
        }
    }
}

impl Durability for LocalWal {
    fn commit(&mut self, _requests: &[Request], write: WriteBatch) -> Result<(), LedgerError> {
        self.db.write_opt(write, &self.write_options)?;
        Ok(())
    }

    fn deferred_sync(&self) -> Option<Box<dyn LogSync>> {
        self.synced.then(|| {
            Box::new(WalSync {
                db: Arc::clone(&self.db),
            }) as Box<dyn LogSync>
        })
    }
}

/// Syncs a database's write-ahead log (RocksDB's `SyncWAL`: every log file up to the
/// current one, without holding up writes meanwhile).
struct WalSync {
    db: Arc<DB>,
}

impl LogSync for WalSync {
    fn sync(&mut self) -> Result<(), LedgerError> {
        // `FlushWAL(sync)` is `SyncWAL` when writes are not buffered by hand (ours are
        // not: each write reaches the file before it returns).
        self.db.flush_wal(true)?;
        Ok(())
    }
}
