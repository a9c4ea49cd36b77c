//! Id retention: forgetting the idempotency entries of old transactions, so that the `ids`
//! index stops growing. The transactions themselves (log, postings, balances) are kept.
//!
//! A forgotten id is treated as new if it is ever used again, so the retention must be
//! longer than any gate can stay offline and keep retrying (the default is 30 days; gates
//! give up after 7). A refund needs its charge's id, so a charge older than the retention
//! is corrected with an adjustment instead.
//!
//! Runs on the writer thread (as a [`super::writer::Job`]), between batches, so it never
//! races with a request.

use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::clock::UnixMillis;

use super::LedgerError;
use super::apply::cf;
use super::codec;
use super::store::{CF_IDS, CF_LOG, CF_META, META_IDS_PRUNED_BELOW};

/// The first log sequence whose id has not been pruned.
pub fn pruned_below(db: &DB, read: &rocksdb::ReadOptions) -> Result<u64, LedgerError> {
    match db.get_pinned_cf_opt(cf(db, CF_META)?, META_IDS_PRUNED_BELOW, read)? {
        Some(bytes) => codec::decode_sequence(&bytes, "ids_pruned_below"),
        None => Ok(1),
    }
}

/// Deletes the id entries of log records, oldest first, while their request time is
/// earlier than `before`, looking at most at `records_max` records. Stops at the first
/// record that is new enough, so an id is kept at least until every older one is gone.
/// Returns how many ids were forgotten; 0 means there is nothing (more) to prune.
pub fn prune_ids(
    db: &DB,
    before: UnixMillis,
    records_max: usize,
    write_options: &WriteOptions,
) -> Result<u64, LedgerError> {
    let cursor = pruned_below(db, &rocksdb::ReadOptions::default())?;
    let ids = cf(db, CF_IDS)?;
    let mut batch = WriteBatch::default();
    let mut next_cursor = cursor;
    let mut pruned = 0u64;
    let start = cursor.to_be_bytes();
    for item in db
        .iterator_cf(
            cf(db, CF_LOG)?,
            IteratorMode::From(&start, Direction::Forward),
        )
        .take(records_max)
    {
        let (key, value) = item?;
        let sequence = codec::decode_sequence(&key, "log key")?;
        let record = codec::decode_record(&value)?;
        if record.request.time >= before {
            break;
        }
        // The id may have been used again after an earlier prune: only forget it if it
        // still points at this record.
        let points_here = match db.get_pinned_cf(ids, record.request.id.0.to_be_bytes())? {
            Some(bytes) => codec::decode_sequence(&bytes, "idempotency entry")? == sequence,
            None => false,
        };
        if points_here {
            batch.delete_cf(ids, record.request.id.0.to_be_bytes());
            pruned += 1;
        }
        next_cursor = sequence + 1;
    }
    if next_cursor != cursor {
        batch.put_cf(
            cf(db, CF_META)?,
            META_IDS_PRUNED_BELOW,
            next_cursor.to_be_bytes(),
        );
        db.write_opt(batch, write_options)?;
    }
    Ok(pruned)
}
