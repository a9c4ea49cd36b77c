//! Read-only access to the ledger's database, for every module but the writer.
//!
//! [`LedgerView`] has no method that writes: settlement, the audit, the admin API and the
//! journey sweeper read the ledger through it, so the type system keeps "only the writer
//! changes the ledger" true. The one exception is settlement's own column family, which
//! settlement writes through [`SettlementColumn`] and which the writer never touches.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, DB, DBIteratorWithThreadMode, DBPinnableSlice, DBRawIteratorWithThreadMode,
    IteratorMode, ReadOptions, Snapshot, WriteBatch, WriteOptions,
};

use super::LedgerError;
use super::codec;
use super::model::{Account, AccountRef, Record, Travel, TxId};
use super::store::{
    self, CF_ACCOUNTS, CF_DENY, CF_DENY_JOURNAL, CF_IDS, CF_LOG, CF_META, CF_SETTLEMENT,
    StoreConfig,
};

/// A read-only view of the ledger's database. Cheap to clone.
#[derive(Clone)]
pub struct LedgerView {
    db: Arc<DB>,
}

impl std::fmt::Debug for LedgerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerView")
            .field("path", &self.db.path())
            .finish()
    }
}

impl LedgerView {
    /// A view of a database the ledger opened.
    pub(super) fn new(db: Arc<DB>) -> LedgerView {
        LedgerView { db }
    }

    /// Opens a data directory only to read it (the offline audit). The engine must not be
    /// running on it.
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<LedgerView, LedgerError> {
        Ok(LedgerView::new(Arc::new(store::open(dir, config)?)))
    }

    /// Opens a data directory to read it while the engine may be running on it (a RocksDB
    /// secondary instance, its own log in `scratch`): the data as of the open.
    pub fn open_secondary(
        dir: &Path,
        scratch: &Path,
        config: &StoreConfig,
    ) -> Result<LedgerView, LedgerError> {
        Ok(LedgerView::new(Arc::new(store::open_secondary(
            dir, scratch, config,
        )?)))
    }

    /// A column family handle that the open step guarantees exists.
    pub fn cf(&self, name: &'static str) -> Result<&ColumnFamily, LedgerError> {
        self.db
            .cf_handle(name)
            .ok_or(LedgerError::MissingColumnFamily(name))
    }

    /// A consistent point-in-time view for several reads.
    pub fn snapshot(&self) -> Snapshot<'_> {
        self.db.snapshot()
    }

    /// A value, without copying it.
    pub fn get_pinned_cf(
        &self,
        cf: &ColumnFamily,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<DBPinnableSlice<'_>>, rocksdb::Error> {
        self.db.get_pinned_cf(cf, key)
    }

    /// A value as of the read options' snapshot, without copying it.
    pub fn get_pinned_cf_opt(
        &self,
        cf: &ColumnFamily,
        key: impl AsRef<[u8]>,
        read: &ReadOptions,
    ) -> Result<Option<DBPinnableSlice<'_>>, rocksdb::Error> {
        self.db.get_pinned_cf_opt(cf, key, read)
    }

    /// A value, copied.
    pub fn get_cf(
        &self,
        cf: &ColumnFamily,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<Vec<u8>>, rocksdb::Error> {
        self.db.get_cf(cf, key)
    }

    /// Key-value pairs in order from `mode`.
    pub fn iterator_cf<'a>(
        &'a self,
        cf: &ColumnFamily,
        mode: IteratorMode<'_>,
    ) -> DBIteratorWithThreadMode<'a, DB> {
        self.db.iterator_cf(cf, mode)
    }

    /// Key-value pairs in order from `mode`, as of the read options' snapshot.
    pub fn iterator_cf_opt<'a>(
        &'a self,
        cf: &ColumnFamily,
        read: ReadOptions,
        mode: IteratorMode<'_>,
    ) -> DBIteratorWithThreadMode<'a, DB> {
        self.db.iterator_cf_opt(cf, read, mode)
    }

    /// Key-value pairs whose key starts with `prefix`, in order (and possibly beyond it:
    /// the caller stops at the first key without the prefix).
    pub fn prefix_iterator_cf<'a>(
        &'a self,
        cf: &ColumnFamily,
        prefix: impl AsRef<[u8]>,
    ) -> DBIteratorWithThreadMode<'a, DB> {
        self.db.prefix_iterator_cf(cf, prefix)
    }

    /// A cursor that seeks, for scans that skip.
    pub fn raw_iterator_cf_opt<'a>(
        &'a self,
        cf: &ColumnFamily,
        read: ReadOptions,
    ) -> DBRawIteratorWithThreadMode<'a, DB> {
        self.db.raw_iterator_cf_opt(cf, read)
    }

    /// The recorded transaction with this id, if any.
    pub fn transaction(&self, id: TxId) -> Result<Option<(u64, Record)>, LedgerError> {
        let Some(bytes) = self.get_pinned_cf(self.cf(CF_IDS)?, codec::id_key(id))? else {
            return Ok(None);
        };
        let sequence = codec::decode_sequence(&bytes, "idempotency entry")?;
        let record = self.record(sequence)?.ok_or(LedgerError::Corrupt {
            what: "idempotency entry",
            problem: "points at a missing record",
        })?;
        Ok(Some((sequence, record)))
    }

    /// The record at a log sequence.
    pub fn record(&self, sequence: u64) -> Result<Option<Record>, LedgerError> {
        match self.get_pinned_cf(self.cf(CF_LOG)?, codec::log_key(sequence))? {
            Some(bytes) => Ok(Some(codec::decode_record(&bytes)?)),
            None => Ok(None),
        }
    }

    /// An account's stored state.
    pub fn account(&self, account: AccountRef) -> Result<Option<Account>, LedgerError> {
        match self.get_pinned_cf(self.cf(CF_ACCOUNTS)?, codec::account_key(account))? {
            Some(bytes) => Ok(Some(codec::decode_account(&bytes)?)),
            None => Ok(None),
        }
    }

    /// A rider's account and travel state (stored together), if the account exists.
    pub fn rider(&self, account_id: u64) -> Result<Option<(Account, Travel)>, LedgerError> {
        let key = codec::account_key(AccountRef::Rider(account_id));
        match self.get_pinned_cf(self.cf(CF_ACCOUNTS)?, key)? {
            Some(bytes) => Ok(Some(codec::decode_rider(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The next log sequence to assign.
    pub fn next_sequence(&self) -> Result<u64, LedgerError> {
        let bytes = self
            .get_pinned_cf(self.cf(CF_META)?, codec::META_NEXT_SEQUENCE)?
            .ok_or(LedgerError::Corrupt {
                what: "meta",
                problem: "next_sequence is missing",
            })?;
        codec::decode_sequence(&bytes, "next_sequence")
    }

    /// The first transaction sequence whose deny-list changes the journal holds.
    pub fn deny_journal_from(&self) -> Result<u64, LedgerError> {
        let meta = self.cf(CF_META)?;
        match self.get_cf(meta, codec::META_DENY_JOURNAL_FROM)? {
            Some(bytes) => codec::decode_sequence(&bytes, "deny journal start"),
            None => Ok(1),
        }
    }

    /// Every rider account a gate must refuse, in id order.
    pub fn deny_list(&self) -> Result<Vec<u64>, LedgerError> {
        let deny = self.cf(CF_DENY)?;
        self.iterator_cf(deny, rocksdb::IteratorMode::Start)
            .map(|entry| {
                let (key, _) = entry?;
                codec::decode_sequence(&key, "deny list key")
            })
            .collect()
    }

    /// The `deny_journal` entries of transaction sequences `after + 1` to `through`, at most
    /// `max` of them: (sequence, account, refused or lifted).
    pub fn deny_journal_between(
        &self,
        after: u64,
        through: u64,
        max: usize,
    ) -> Result<Vec<(u64, u64, bool)>, LedgerError> {
        let journal = self.cf(CF_DENY_JOURNAL)?;
        let from = codec::deny_journal_key(after.saturating_add(1), 0);
        let mut entries = Vec::new();
        for entry in self.iterator_cf(
            journal,
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        ) {
            let (key, value) = entry?;
            let change = codec::decode_deny_change(&key, &value)?;
            if change.0 > through || entries.len() == max {
                break;
            }
            entries.push(change);
        }
        Ok(entries)
    }

    /// Makes a RocksDB checkpoint of the whole database in `path`, which must not exist:
    /// a consistent copy as of now, made of hard links where `path` is on the same file
    /// system. Reading only: the live database is not changed.
    pub fn checkpoint(&self, path: &Path) -> Result<(), LedgerError> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(path)?;
        Ok(())
    }

    /// Settlement's own column family, the one part of the database written outside the
    /// writer. Only the ledger hands it out (see [`super::Ledger::settlement_column`]).
    pub(super) fn settlement_column(&self) -> SettlementColumn {
        SettlementColumn {
            db: Arc::clone(&self.db),
        }
    }
}

/// Settlement's column family: batches, providers' positions, closes and
/// acknowledgements. Every write goes into that column family only, and is synced.
#[derive(Clone)]
pub struct SettlementColumn {
    db: Arc<DB>,
}

impl std::fmt::Debug for SettlementColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettlementColumn").finish_non_exhaustive()
    }
}

impl SettlementColumn {
    /// An empty atomic write.
    pub fn new_write(&self) -> Result<SettlementWrite<'_>, LedgerError> {
        Ok(SettlementWrite {
            cf: self
                .db
                .cf_handle(CF_SETTLEMENT)
                .ok_or(LedgerError::MissingColumnFamily(CF_SETTLEMENT))?,
            batch: WriteBatch::default(),
        })
    }

    /// Writes atomically and durably (the write-ahead log synced).
    pub fn commit(&self, write: SettlementWrite<'_>) -> Result<(), LedgerError> {
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        self.db.write_opt(write.batch, &synced)?;
        Ok(())
    }
}

/// Puts into settlement's column family, written together by [`SettlementColumn::commit`].
pub struct SettlementWrite<'a> {
    cf: &'a ColumnFamily,
    batch: WriteBatch,
}

impl std::fmt::Debug for SettlementWrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettlementWrite")
            .field("puts", &self.batch.len())
            .finish()
    }
}

impl SettlementWrite<'_> {
    /// Sets a key.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.batch.put_cf(self.cf, key, value);
    }
}
