//! The ledger's RocksDB: column family names, every option in one place, and the on-disk
//! format version check. `docs/storage.md` documents each column family's layout.

use std::path::Path;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType,
    Options,
};

use super::LedgerError;
use super::codec::{self, META_FORMAT_VERSION, META_NEXT_SEQUENCE};

/// Accounts: account key (9 bytes) → account value.
pub const CF_ACCOUNTS: &str = "accounts";
/// The transaction log: sequence (8 bytes) → transaction record. Every recorded
/// transaction, accepted or refused, in the order the ledger applied it.
pub const CF_LOG: &str = "log";
/// Idempotency: transaction id (16 bytes) → sequence of its record in the log.
pub const CF_IDS: &str = "ids";
/// Postings: account key (9) + sequence (8) → amount (8) + balance after (8).
pub const CF_POSTINGS: &str = "postings";
/// Refunds: the refunded charge's id (16) → the refund's sequence (8). A charge is
/// refunded at most once.
pub const CF_REFUNDS: &str = "refunds";
/// Settlement entries: provider id (2) + sequence (8) → empty. Every accepted charge,
/// refund, fare-charging tap and journey close, by the provider that owes (or is owed)
/// it, in ledger order.
pub const CF_PROVIDER_ENTRIES: &str = "provider_entries";
/// Metadata: named keys (the `META_*` constants in [`super::codec`]).
pub const CF_META: &str = "meta";
/// Travel states before storage format 7: rider account id (8) → the rider's open journey
/// and totals. Since format 7 a rider's travel state is stored in the rider's account
/// value (one key read and written a tap, not two): the upgrade moves every entry there
/// and leaves this family empty. It is kept so that a directory of any format opens.
pub const CF_TRAVEL: &str = "travel";
/// Open journeys by age, for the sweeper: entry time (8) + rider (8) → journey id (8).
pub const CF_OPEN_JOURNEYS: &str = "open_journeys";
/// Codes used: code fingerprint (16) → gate (4) + scan time (8) + sequence (8) of the
/// first tap that used it.
pub const CF_CODES: &str = "codes";

/// Settlement batches, providers' positions, closes and acknowledgements (written by
/// `crate::settlement`, never by the ledger's writer): a one-byte kind + key → value.
pub const CF_SETTLEMENT: &str = "settlement";
/// Rider account id → nothing: the accounts a gate must refuse (deny-listed, closed, or in
/// debt). The whole deny list of a gate bundle (`docs/offline.md`).
pub const CF_DENY: &str = "deny";
/// Transaction sequence + account id → denied (1) or lifted (0): every change of `deny`,
/// keyed by the last sequence of the group commit that made it, for the bundle deltas
/// gates fetch.
pub const CF_DENY_JOURNAL: &str = "deny_journal";
/// Rider + scan time + sequence → the step (an accepted tap or journey close), what it
/// charged net of corrections, and the journey open after it: a rider's history in scan
/// order, which a late tap walks again to re-price its day (`ledger::travel`).
pub const CF_RIDER_STEPS: &str = "rider_steps";

/// Every column family this build knows.
pub const COLUMN_FAMILIES: [&str; 14] = [
    CF_ACCOUNTS,
    CF_LOG,
    CF_IDS,
    CF_POSTINGS,
    CF_REFUNDS,
    CF_PROVIDER_ENTRIES,
    CF_META,
    CF_TRAVEL,
    CF_OPEN_JOURNEYS,
    CF_CODES,
    CF_SETTLEMENT,
    CF_DENY,
    CF_DENY_JOURNAL,
    CF_RIDER_STEPS,
];

/// The on-disk format this build reads and writes. Bump it on any incompatible change.
/// Version 2 added taps: the `travel`, `open_journeys` and `codes` column families and
/// journeys in records. Version 3 added the `settlement` column family. Version 4 added
/// the `deny` and `deny_journal` column families. Version 5 added `rider_steps`, offline
/// taps and fare corrections in records, and the latest step's time in travel states.
/// Version 6 added the rider's week and month totals to travel states and rider steps
/// (value version 3; older values are still read). Version 7 stores a rider's travel state
/// in the rider's account value (account value version 2), `travel` left empty.
pub const FORMAT_VERSION: u32 = 7;

/// Older formats this build upgrades in place on open: they differ only by missing column
/// families, which the open creates; `deny` is then filled from the accounts (before
/// version 4). Riders' steps before the upgrade are not in `rider_steps`: a late tap
/// re-prices its day from the steps recorded since. A version 5 directory only needs its
/// version rewritten: its travel states and steps are read as they are, their week and
/// month totals starting at zero. Before version 7, travel states are moved into their
/// riders' accounts.
pub const FORMAT_VERSIONS_UPGRADED: [u32; 5] = [2, 3, 4, 5, 6];

/// Memory the ledger's RocksDB may use for caching, and how it is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// The block cache (data, index and filter blocks), in bytes.
    pub block_cache_bytes: usize,
    /// All memtables together, in bytes.
    pub write_buffers_bytes: usize,
    /// Table files RocksDB keeps open: each is a descriptor, which the server shares with
    /// its connections (`server::transport::DescriptorBudget`).
    pub open_files_max: usize,
    /// Make a new ledger when the directory holds none: true for a first start. A
    /// restart after a storage failure sets it false, so that a data directory gone
    /// missing (its disk not mounted) is an error rather than a new, empty ledger that
    /// knows no rider.
    pub create: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            block_cache_bytes: 64 << 20,
            write_buffers_bytes: 64 << 20,
            open_files_max: 1_024,
            create: true,
        }
    }
}

/// Every RocksDB option the ledger sets, in one place.
fn options(config: &StoreConfig) -> (Options, BlockBasedOptions) {
    let mut options = Options::default();
    options.create_if_missing(config.create);
    options.create_missing_column_families(true);
    // Two cores: one flush and one compaction at a time.
    options.set_max_background_jobs(2);
    options.set_db_write_buffer_size(config.write_buffers_bytes);
    options.set_write_buffer_size(config.write_buffers_bytes / 4);
    options.set_compression_type(DBCompressionType::Lz4);
    options.set_level_compaction_dynamic_level_bytes(true);
    options.set_paranoid_checks(true);
    // Recovery after a crash stops at the first torn record: the torn tail was never
    // acknowledged (we sync before answering), so nothing acknowledged is lost.
    options.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    options.set_max_total_wal_size(256 << 20);
    options.set_max_open_files(i32::try_from(config.open_files_max).unwrap_or(i32::MAX));
    // Flushes and compactions write their files out as they go (1 MiB at a time) rather
    // than leaving hundreds of dirty megabytes in the page cache: on ext4 an fsync of the
    // write-ahead log can otherwise wait for all of them, and a gate's answer with it.
    options.set_bytes_per_sync(1 << 20);
    options.set_wal_bytes_per_sync(1 << 20);
    // Most reads in the writer look for ids that are not there yet: a whole-key Bloom
    // filter on the memtables answers those without walking the skip lists.
    options.set_memtable_whole_key_filtering(true);
    options.set_memtable_prefix_bloom_ratio(0.05);

    let cache = Cache::new_lru_cache(config.block_cache_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    // Index and filter blocks live in the block cache, so the cache budget bounds them too.
    // They are partitioned into small blocks: a whole filter of a large table file (1.25 MB
    // for a million ids) is bigger than one shard of the cache, could never stay in it,
    // and was read and checksummed again on every look-up (throughput fell 25-fold at a
    // million transactions).
    table.set_cache_index_and_filter_blocks(true);
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4 << 10);
    table.set_pin_top_level_index_and_filter(true);
    table.set_bloom_filter(10.0, false);
    table.set_block_size(16 << 10);
    table.set_format_version(6);
    options.set_block_based_table_factory(&table);
    (options, table)
}

/// Opens (or, when `config.create`, creates) the ledger's database in `dir`, refusing a
/// directory written in another format.
pub fn open(dir: &Path, config: &StoreConfig) -> Result<DB, LedgerError> {
    let (options, _table) = options(config);
    let shown = dir.display().to_string();
    let has_ledger = dir.join("CURRENT").exists();
    if !config.create && !has_ledger {
        return Err(LedgerError::NoLedger { path: shown });
    }
    if has_ledger {
        refuse_foreign_database(dir, &options, &shown)?;
    } else {
        // Owner-only before RocksDB makes it with the umask. A folder that cannot be made
        // is reported by the open just below, as `open_failed` with RocksDB's reason (not
        // as a broken invariant, which would call a full or read-only disk a bug).
        let _ = crate::files::create_private_dir(dir);
    }
    let descriptors = COLUMN_FAMILIES
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, options.clone()));
    let db = DB::open_cf_descriptors(&options, dir, descriptors).map_err(|source| {
        LedgerError::Open {
            path: shown.clone(),
            source,
        }
    })?;
    check_format_version(&db, &shown)?;
    Ok(db)
}

/// Opens a data directory as a RocksDB secondary instance, to read it while the engine
/// may be running on it (`fareway fares replay`): it takes no lock, writes nothing to the
/// directory (its own log goes to `scratch`), and sees the engine's data as of the open,
/// whole write batches only. Refuses a directory of another format rather than upgrade it.
pub fn open_secondary(dir: &Path, scratch: &Path, config: &StoreConfig) -> Result<DB, LedgerError> {
    let (mut options, _table) = options(&StoreConfig {
        create: false,
        ..*config
    });
    // A secondary instance keeps every table file open (RocksDB requires it).
    options.set_max_open_files(-1);
    let shown = dir.display().to_string();
    if !dir.join("CURRENT").exists() {
        return Err(LedgerError::NoLedger { path: shown });
    }
    refuse_foreign_database(dir, &options, &shown)?;
    let open_failed = |source| LedgerError::Open {
        path: shown.clone(),
        source,
    };
    let db =
        DB::open_cf_as_secondary(&options, dir, scratch, COLUMN_FAMILIES).map_err(open_failed)?;
    db.try_catch_up_with_primary().map_err(open_failed)?;
    let meta = db
        .cf_handle(CF_META)
        .ok_or(LedgerError::MissingColumnFamily(CF_META))?;
    let stored = db.get_cf(meta, META_FORMAT_VERSION)?;
    if stored.as_deref().and_then(format_version) != Some(FORMAT_VERSION) {
        return Err(unsupported_format(&shown, stored.as_deref()));
    }
    Ok(db)
}

/// The format version stored in `meta` (a big-endian u32), if the bytes are one.
fn format_version(bytes: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(bytes).ok().map(u32::from_be_bytes)
}

/// The refusal of a directory whose stored format this build does not read.
fn unsupported_format(shown: &str, stored: Option<&[u8]>) -> LedgerError {
    let found = match stored {
        None => "none".to_string(),
        Some(bytes) => {
            format_version(bytes).map_or_else(|| format!("{bytes:?}"), |v| v.to_string())
        }
    };
    LedgerError::FormatVersion {
        path: shown.to_string(),
        found,
        supported: FORMAT_VERSION,
    }
}

/// Refuses a RocksDB database that is not a Fareway ledger, or has column families this
/// build does not know (a newer format), before opening it would add ours to it.
fn refuse_foreign_database(dir: &Path, options: &Options, shown: &str) -> Result<(), LedgerError> {
    let existing = DB::list_cf(options, dir).map_err(|source| LedgerError::Open {
        path: shown.to_string(),
        source,
    })?;
    if let Some(unknown) = existing
        .iter()
        .find(|name| name.as_str() != "default" && !COLUMN_FAMILIES.contains(&name.as_str()))
    {
        return Err(LedgerError::UnknownFormat {
            path: shown.to_string(),
            detail: format!("it has column family {unknown:?}, unknown to this build"),
        });
    }
    if !existing.iter().any(|name| name == CF_META) {
        return Err(LedgerError::UnknownFormat {
            path: shown.to_string(),
            detail: "it is a RocksDB database but not a Fareway ledger".into(),
        });
    }
    Ok(())
}

/// Initialises a new ledger's format version and sequence, upgrades a version this build
/// upgrades in place, and refuses any other version.
fn check_format_version(db: &DB, shown: &str) -> Result<(), LedgerError> {
    let meta = db
        .cf_handle(CF_META)
        .ok_or(LedgerError::MissingColumnFamily(CF_META))?;
    let mut synced = rocksdb::WriteOptions::default();
    synced.set_sync(true);
    let Some(bytes) = db.get_cf(meta, META_FORMAT_VERSION)? else {
        return initialise(db, shown, &synced);
    };
    let found = format_version(&bytes);
    if let Some(from) = found.filter(|found| FORMAT_VERSIONS_UPGRADED.contains(found)) {
        let mut write = rocksdb::WriteBatch::default();
        if from < 4 {
            fill_deny(db, &mut write)?;
            // The journal holds the changes from here on; a gate behind gets a whole bundle.
            let next = match db.get_cf(meta, META_NEXT_SEQUENCE)? {
                Some(bytes) => codec::decode_sequence(&bytes, "next_sequence")?,
                None => 1,
            };
            write.put_cf(
                meta,
                codec::META_DENY_JOURNAL_FROM,
                codec::encode_sequence(next),
            );
        }
        let travel_states_moved = if from < 7 {
            move_travel_into_accounts(db, &mut write)?
        } else {
            0
        };
        write.put_cf(meta, META_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes());
        db.write_opt(write, &synced)?;
        tracing::info!(path = %shown, from, to = FORMAT_VERSION, travel_states_moved, "ledger data directory upgraded");
    } else if found != Some(FORMAT_VERSION) {
        return Err(unsupported_format(shown, Some(&bytes)));
    }
    Ok(())
}

/// Fills `deny` from the accounts, for a ledger written before it existed.
fn fill_deny(db: &DB, write: &mut rocksdb::WriteBatch) -> Result<(), LedgerError> {
    let accounts = db
        .cf_handle(CF_ACCOUNTS)
        .ok_or(LedgerError::MissingColumnFamily(CF_ACCOUNTS))?;
    let deny = db
        .cf_handle(CF_DENY)
        .ok_or(LedgerError::MissingColumnFamily(CF_DENY))?;
    for entry in db.iterator_cf(accounts, rocksdb::IteratorMode::Start) {
        let (key, value) = entry?;
        let account = codec::decode_account(&value)?;
        if let (super::model::AccountRef::Rider(id), true) =
            (codec::decode_account_key(&key)?, account.refused_at_gates())
        {
            write.put_cf(deny, codec::rider_key(id), []);
        }
    }
    Ok(())
}

/// Moves every rider's travel state from `travel` into the rider's account value (storage
/// format 7), in the upgrade's one write: a crash before it leaves the old format whole.
/// Returns how many it moved.
fn move_travel_into_accounts(db: &DB, write: &mut rocksdb::WriteBatch) -> Result<u64, LedgerError> {
    let handle = |name| {
        db.cf_handle(name)
            .ok_or(LedgerError::MissingColumnFamily(name))
    };
    let (accounts, travel) = (handle(CF_ACCOUNTS)?, handle(CF_TRAVEL)?);
    let mut moved = 0;
    for entry in db.iterator_cf(travel, rocksdb::IteratorMode::Start) {
        let (key, value) = entry?;
        let rider = codec::decode_rider_key(&key)?;
        let account_key = codec::account_key(super::model::AccountRef::Rider(rider));
        let account = db
            .get_pinned_cf(accounts, account_key)?
            .ok_or(LedgerError::Corrupt {
                what: "travel state",
                problem: "its rider has no account",
            })?;
        let rider_value = codec::encode_rider(
            &codec::decode_account(&account)?,
            &codec::decode_travel(&value)?,
        );
        write.put_cf(accounts, account_key, rider_value);
        write.delete_cf(travel, key);
        moved += 1;
    }
    Ok(moved)
}

/// Writes a brand-new ledger's format version and first sequence. Only a new ledger lacks
/// a format version: anything with records but no version is refused, because
/// initialising it would restart the sequence and overwrite the log.
fn initialise(db: &DB, shown: &str, synced: &rocksdb::WriteOptions) -> Result<(), LedgerError> {
    let meta = db
        .cf_handle(CF_META)
        .ok_or(LedgerError::MissingColumnFamily(CF_META))?;
    let log = db
        .cf_handle(CF_LOG)
        .ok_or(LedgerError::MissingColumnFamily(CF_LOG))?;
    if db
        .iterator_cf(log, rocksdb::IteratorMode::Start)
        .next()
        .is_some()
    {
        return Err(LedgerError::UnknownFormat {
            path: shown.to_string(),
            detail: "it holds transactions but no format version".into(),
        });
    }
    let mut write = rocksdb::WriteBatch::default();
    write.put_cf(meta, META_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes());
    write.put_cf(meta, META_NEXT_SEQUENCE, codec::encode_sequence(1));
    db.write_opt(write, synced)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_new_data_directory_is_readable_by_its_owner_only() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("a/b/ledger");
        drop(open(&dir, &StoreConfig::default()).unwrap());
        for folder in [parent.path().join("a"), dir] {
            let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", folder.display());
        }
    }
}
