//! Id retention: forgetting the idempotency entries of old transactions, so that the `ids`
//! index stops growing, and with them the riders' steps of those transactions (but each
//! rider's newest step, which a walk starts from)
//! (`rider_steps`, which a late tap walks again from the start of its service day: a
//! late tap is at most `taps.offline_age_max_ms` old, and the configuration keeps the
//! retention longer than that and a day, so its walk never needs a pruned step) and
//! their deny-list changes (`deny_journal`, from which gates get bundle deltas: a gate
//! whose bundle is older than the retention gets a whole one). The transactions
//! themselves (log, postings, balances) and the deny list are kept.
//!
//! A forgotten id is treated as new if it is ever used again, so the retention must be
//! longer than any gate can stay offline and keep retrying (the default is 30 days; gates
//! give up after 7). A refund needs its charge's id, so a charge older than the retention
//! is corrected with an adjustment instead.
//!
//! Runs on the writer thread (as a [`super::writer::Job`]), between batches, so it never
//! races with a request.

use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::clock::UnixMillis;

use super::LedgerError;
use super::codec::{self, META_DENY_JOURNAL_FROM, META_IDS_PRUNED_BELOW};
use super::durability::Durability;
use super::model::{Command, Outcome};
use super::store::{CF_DENY_JOURNAL, CF_IDS, CF_LOG, CF_META, CF_RIDER_STEPS};
use super::view::LedgerView;

/// The first log sequence whose id has not been pruned.
pub fn pruned_below(view: &LedgerView, read: &rocksdb::ReadOptions) -> Result<u64, LedgerError> {
    match view.get_pinned_cf_opt(view.cf(CF_META)?, META_IDS_PRUNED_BELOW, read)? {
        Some(bytes) => codec::decode_sequence(&bytes, "ids_pruned_below"),
        None => Ok(1),
    }
}

/// Deletes the id entries of log records, oldest first, while their request time is
/// earlier than `before`, looking at most at `records_max` records. Stops at the first
/// record that is new enough, so an id is kept at least until every older one is gone.
/// Returns how many ids were forgotten; 0 means there is nothing (more) to prune.
pub fn prune_ids(
    view: &LedgerView,
    durability: &mut dyn Durability,
    before: UnixMillis,
    records_max: usize,
) -> Result<u64, LedgerError> {
    let cursor = pruned_below(view, &rocksdb::ReadOptions::default())?;
    let ids = view.cf(CF_IDS)?;
    let steps = view.cf(CF_RIDER_STEPS)?;
    let mut write = WriteBatch::default();
    let mut next_cursor = cursor;
    let mut pruned = 0u64;
    let start = codec::log_key(cursor);
    for item in view
        .iterator_cf(
            view.cf(CF_LOG)?,
            IteratorMode::From(&start, Direction::Forward),
        )
        .take(records_max)
    {
        let (key, value) = item?;
        let sequence = codec::decode_log_key(&key)?;
        let record = codec::decode_record(&value)?;
        if record.request.time >= before {
            break;
        }
        // The id may have been used again after an earlier prune: only forget it if it
        // still points at this record.
        let id_key = codec::id_key(record.request.id);
        let points_here = match view.get_pinned_cf(ids, id_key)? {
            Some(bytes) => codec::decode_sequence(&bytes, "idempotency entry")? == sequence,
            None => false,
        };
        if points_here {
            write.delete_cf(ids, id_key);
            pruned += 1;
        }
        if let Some(rider) = step_rider(&record)
            && !is_newest_step(view, rider, record.request.time)?
        {
            write.delete_cf(
                steps,
                codec::rider_step_key(rider, record.request.time, sequence),
            );
        }
        next_cursor = sequence + 1;
    }
    if next_cursor != cursor {
        let meta = view.cf(CF_META)?;
        write.put_cf(
            meta,
            META_IDS_PRUNED_BELOW,
            codec::encode_sequence(next_cursor),
        );
        forget_deny_changes_below(view, &mut write, next_cursor)?;
        // No requests: forgetting ids is local housekeeping, decided by time on each node.
        durability.commit(&[], write)?;
    }
    Ok(pruned)
}

/// Forgets the deny journal's changes of sequences below `next_cursor` with their ids, and moves the journal's start past them (never back: an upgraded ledger's
/// journal may start later): a gate whose bundle is older than that gets a whole one.
/// Without it the journal would grow with every deny-listing for ever.
fn forget_deny_changes_below(
    view: &LedgerView,
    write: &mut WriteBatch,
    next_cursor: u64,
) -> Result<(), LedgerError> {
    // From the start, not from `cursor`: a ledger that pruned ids before the journal
    // was pruned with them still holds changes below `cursor` (a range delete over
    // nothing costs the same).
    write.delete_range_cf(
        view.cf(CF_DENY_JOURNAL)?,
        codec::deny_journal_key(0, 0),
        codec::deny_journal_key(next_cursor, 0),
    );
    if view.deny_journal_from()? < next_cursor {
        write.put_cf(
            view.cf(CF_META)?,
            META_DENY_JOURNAL_FROM,
            codec::encode_sequence(next_cursor),
        );
    }
    Ok(())
}

/// Whether a step at `time` is the rider's newest: that one is kept past the retention
/// (one per rider, however long ago), so that a late tap's walk always finds the travel
/// state before its day, with the week's and month's totals, even for a rider who had
/// not travelled for longer than the retention.
fn is_newest_step(view: &LedgerView, rider: u64, time: UnixMillis) -> Result<bool, LedgerError> {
    Ok(view
        .rider(rider)?
        .is_some_and(|(_, travel)| travel.latest_step_at == time))
}

/// The rider whose step a record is, when it is one: an accepted tap or journey close.
fn step_rider(record: &super::model::Record) -> Option<u64> {
    if record.outcome != Outcome::Accepted {
        return None;
    }
    match record.request.command {
        Command::Tap(tap) => Some(tap.account_id),
        Command::CloseJourney { account_id, .. } => Some(account_id),
        _ => None,
    }
}
