//! The audit: proves, for a whole data directory, that money is conserved and every index
//! agrees with the log. It reads in key order with one pass per column family (plus point
//! lookups from the log), so memory does not grow with the ledger.
//!
//! Checks: the sum over all accounts is zero; every transaction's postings sum to zero;
//! every account's balance equals the sum of its postings, and each posting's running
//! balance is right; the postings index holds exactly the log's postings; the idempotency
//! index maps exactly the log's ids to their records; every accepted charge or refund has
//! exactly one settlement entry; every refund is indexed; no record lies beyond
//! `next_sequence`.

use rocksdb::{DB, IteratorMode};

use super::LedgerError;
use super::apply::cf;
use super::codec;
use super::model::{AccountRef, Command, Outcome, rider_of_postings, settles};
use super::prune;
use super::store::{
    CF_ACCOUNTS, CF_IDS, CF_LOG, CF_META, CF_POSTINGS, CF_PROVIDER_ENTRIES, CF_REFUNDS,
    META_NEXT_SEQUENCE,
};

/// Most violations listed one by one; the rest are counted.
pub const VIOLATIONS_LISTED_MAX: usize = 100;

/// What the audit found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Accounts read.
    pub accounts: u64,
    /// Log records read.
    pub transactions: u64,
    /// Of which accepted.
    pub accepted: u64,
    /// Postings read.
    pub postings: u64,
    /// The sum over all accounts (must be zero), wide enough never to overflow.
    pub balance_sum: i128,
    /// The sum over rider accounts.
    pub rider_balance_sum: i128,
    /// The first violations found.
    pub violations: Vec<String>,
    /// All violations found, listed or not.
    pub violation_count: u64,
}

impl AuditReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.violation_count == 0
    }

    fn violation(&mut self, message: String) {
        self.violation_count += 1;
        if self.violations.len() < VIOLATIONS_LISTED_MAX {
            self.violations.push(message);
        }
    }
}

/// Audits the ledger in `db`. `Err` means the audit could not read; a broken invariant
/// is a violation in the report.
pub fn audit(db: &DB) -> Result<AuditReport, LedgerError> {
    let mut report = AuditReport::default();
    let snapshot = db.snapshot();
    let mut read = rocksdb::ReadOptions::default();
    read.set_snapshot(&snapshot);
    let next_sequence = match db.get_pinned_cf_opt(cf(db, CF_META)?, META_NEXT_SEQUENCE, &read)? {
        Some(bytes) => codec::decode_sequence(&bytes, "next_sequence")?,
        None => {
            return Err(LedgerError::Corrupt {
                what: "meta",
                problem: "next_sequence is missing",
            });
        }
    };

    // Accounts and their postings, both in account-key order, walked side by side.
    let mut postings = db
        .iterator_cf_opt(cf(db, CF_POSTINGS)?, reader(&snapshot), IteratorMode::Start)
        .peekable();
    for item in db.iterator_cf_opt(cf(db, CF_ACCOUNTS)?, reader(&snapshot), IteratorMode::Start) {
        let (key, value) = item?;
        let account_ref = codec::decode_account_key(&key)?;
        let account = codec::decode_account(&value)?;
        report.accounts += 1;
        report.balance_sum += i128::from(account.balance.0);
        if matches!(account_ref, AccountRef::Rider(_)) {
            report.rider_balance_sum += i128::from(account.balance.0);
        }
        // Wide enough that no sequence of i64 postings overflows it.
        let mut running: i128 = 0;
        while let Some(Ok((posting_key, _))) = postings.peek() {
            if !posting_key.starts_with(&key) {
                if posting_key[..] < key[..] {
                    report.violation(format!("posting {posting_key:02x?} belongs to no account"));
                    postings.next();
                    report.postings += 1;
                    continue;
                }
                break;
            }
            let Some(Ok((posting_key, posting_value))) = postings.next() else {
                break;
            };
            report.postings += 1;
            let (_, sequence, amount, balance_after) =
                codec::decode_posting(&posting_key, &posting_value)?;
            running += i128::from(amount.0);
            if running != i128::from(balance_after.0) {
                report.violation(format!(
                    "{account_ref:?}: running balance {running} but posting {sequence} says {balance_after}"
                ));
            }
        }
        if running != i128::from(account.balance.0) {
            report.violation(format!(
                "{account_ref:?}: balance {} but its postings sum to {running}",
                account.balance
            ));
        }
    }
    for item in postings {
        let (posting_key, _) = item?;
        report.postings += 1;
        report.violation(format!("posting {posting_key:02x?} belongs to no account"));
    }
    if report.balance_sum != 0 {
        report.violation(format!(
            "the sum over all accounts is {}, not zero",
            report.balance_sum
        ));
    }

    // The log, against the indexes.
    let pruned_below = prune::pruned_below(db, &read)?;
    let mut indexed_records = 0u64;
    let mut log_postings = 0u64;
    let mut settled = 0u64;
    let mut refunds = 0u64;
    for item in db.iterator_cf_opt(cf(db, CF_LOG)?, reader(&snapshot), IteratorMode::Start) {
        let (key, value) = item?;
        let sequence = codec::decode_sequence(&key, "log key")?;
        let record = codec::decode_record(&value)?;
        report.transactions += 1;
        if sequence >= next_sequence {
            report.violation(format!(
                "record {sequence} lies beyond next_sequence {next_sequence}"
            ));
        }
        let sum: i128 = record
            .postings
            .iter()
            .map(|posting| i128::from(posting.amount.0))
            .sum();
        if sum != 0 {
            report.violation(format!(
                "transaction {} (sequence {sequence}) has postings summing to {sum}",
                record.request.id
            ));
        }
        let id_entry =
            db.get_pinned_cf_opt(cf(db, CF_IDS)?, record.request.id.0.to_be_bytes(), &read)?;
        let indexed = id_entry
            .map(|bytes| codec::decode_sequence(&bytes, "idempotency entry"))
            .transpose()?;
        // Below the pruning cursor an id is forgotten (or, used again, points at a newer
        // record); from the cursor on, it points at its record.
        let indexed_ok = if sequence < pruned_below {
            indexed.is_none_or(|indexed| indexed > sequence)
        } else {
            indexed == Some(sequence)
        };
        if sequence >= pruned_below {
            indexed_records += 1;
        }
        if !indexed_ok {
            report.violation(format!(
                "transaction {} at sequence {sequence} is indexed at {indexed:?} (ids pruned below {pruned_below})",
                record.request.id
            ));
        }
        for posting in &record.postings {
            log_postings += 1;
            let key = codec::posting_key(posting.account, sequence);
            match db.get_pinned_cf_opt(cf(db, CF_POSTINGS)?, key, &read)? {
                Some(bytes)
                    if bytes.len() == 16 && bytes[..8] == posting.amount.0.to_be_bytes() => {}
                _ => report.violation(format!(
                    "posting of {:?} in transaction {} (sequence {sequence}) is missing or differs",
                    posting.account, record.request.id
                )),
            }
        }
        if record.outcome == Outcome::Accepted {
            report.accepted += 1;
            if settles(&record.request.command, record.outcome, &record.postings) {
                settled += 1;
                let provider = match rider_of_postings(&record.postings) {
                    Some(id) => db
                        .get_pinned_cf_opt(
                            cf(db, CF_ACCOUNTS)?,
                            codec::account_key(AccountRef::Rider(id)),
                            &read,
                        )?
                        .map(|bytes| codec::decode_account(&bytes))
                        .transpose()?
                        .map(|account| account.provider_id),
                    None => None,
                };
                let entry = match provider {
                    Some(provider) => db
                        .get_pinned_cf_opt(
                            cf(db, CF_PROVIDER_ENTRIES)?,
                            codec::provider_entry_key(provider, sequence),
                            &read,
                        )?
                        .is_some(),
                    None => false,
                };
                if !entry {
                    report.violation(format!(
                        "{} at sequence {sequence} has no settlement entry under its rider's provider",
                        record.request.command.kind()
                    ));
                }
            }
            if let Command::Refund { original } = record.request.command {
                refunds += 1;
                let entry =
                    db.get_pinned_cf_opt(cf(db, CF_REFUNDS)?, original.0.to_be_bytes(), &read)?;
                match entry
                    .map(|bytes| codec::decode_sequence(&bytes, "refund entry"))
                    .transpose()?
                {
                    Some(indexed) if indexed == sequence => {}
                    other => report.violation(format!(
                        "refund at sequence {sequence} is indexed at {other:?}"
                    )),
                }
            }
        }
    }
    if log_postings != report.postings {
        report.violation(format!(
            "the log has {log_postings} postings but the postings index has {}",
            report.postings
        ));
    }
    let ids = count(db, &snapshot, CF_IDS)?;
    if ids != indexed_records {
        report.violation(format!(
            "the log has {indexed_records} transactions from sequence {pruned_below} on but the id index has {ids}"
        ));
    }
    let entries = count(db, &snapshot, CF_PROVIDER_ENTRIES)?;
    if entries != settled {
        report.violation(format!(
            "{settled} settling transactions (charges, refunds, charged taps, journey closes) but {entries} settlement entries"
        ));
    }
    let refund_entries = count(db, &snapshot, CF_REFUNDS)?;
    if refund_entries != refunds {
        report.violation(format!(
            "{refunds} refunds but {refund_entries} refund entries"
        ));
    }
    Ok(report)
}

fn reader(snapshot: &rocksdb::Snapshot<'_>) -> rocksdb::ReadOptions {
    let mut read = rocksdb::ReadOptions::default();
    read.set_snapshot(snapshot);
    read
}

fn count(
    db: &DB,
    snapshot: &rocksdb::Snapshot<'_>,
    name: &'static str,
) -> Result<u64, LedgerError> {
    let mut count = 0;
    for item in db.iterator_cf_opt(cf(db, name)?, reader(snapshot), IteratorMode::Start) {
        item?;
        count += 1;
    }
    Ok(count)
}
