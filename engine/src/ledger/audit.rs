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

use std::collections::BTreeSet;

use rocksdb::{IteratorMode, ReadOptions, Snapshot};

use super::LedgerError;
use super::codec::{self, META_NEXT_SEQUENCE};
use super::model::{AccountRef, Command, Outcome, Record, rider_of_postings, settles};
use super::prune;
use super::store::{
    CF_ACCOUNTS, CF_DENY, CF_DENY_JOURNAL, CF_IDS, CF_LOG, CF_META, CF_POSTINGS,
    CF_PROVIDER_ENTRIES, CF_REFUNDS, CF_TRAVEL,
};
use super::view::LedgerView;

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

/// Audits the ledger behind `db`. `Err` means the audit could not read; a broken
/// invariant is a violation in the report.
pub fn audit(db: &LedgerView) -> Result<AuditReport, LedgerError> {
    let mut report = AuditReport::default();
    let snapshot = db.snapshot();
    let next_sequence = read_next_sequence(db, &snapshot)?;
    let refused = audit_accounts(db, &snapshot, &mut report)?;
    let counts = audit_log(db, &snapshot, next_sequence, &mut report)?;
    audit_index_sizes(db, &snapshot, &counts, &mut report)?;
    audit_deny_list(db, &snapshot, &refused, &mut report)?;
    Ok(report)
}

/// The deny list holds exactly the rider accounts refused at gates (`refused`, found by
/// the accounts' walk), and its journal holds no sequence the log has not reached.
fn audit_deny_list(
    db: &LedgerView,
    snapshot: &Snapshot<'_>,
    refused: &BTreeSet<u64>,
    report: &mut AuditReport,
) -> Result<(), LedgerError> {
    let mut listed = BTreeSet::new();
    for item in db.iterator_cf_opt(db.cf(CF_DENY)?, reader(snapshot), IteratorMode::Start) {
        let (key, _) = item?;
        listed.insert(codec::decode_sequence(&key, "deny list key")?);
    }
    for id in refused.symmetric_difference(&listed) {
        report.violation(format!(
            "rider {id}: {} but {} the deny list",
            if refused.contains(id) {
                "refused at gates"
            } else {
                "not refused at gates"
            },
            if listed.contains(id) { "on" } else { "not on" }
        ));
    }
    let next = read_next_sequence(db, snapshot)?;
    if let Some(last) = db
        .iterator_cf_opt(db.cf(CF_DENY_JOURNAL)?, reader(snapshot), IteratorMode::End)
        .next()
    {
        let (key, value) = last?;
        let (last, _, _) = codec::decode_deny_change(&key, &value)?;
        if last >= next {
            report.violation(format!(
                "deny journal entry of sequence {last} is at or past the next sequence {next}"
            ));
        }
    }
    Ok(())
}

fn read_next_sequence(db: &LedgerView, snapshot: &Snapshot<'_>) -> Result<u64, LedgerError> {
    match db.get_pinned_cf_opt(db.cf(CF_META)?, META_NEXT_SEQUENCE, &reader(snapshot))? {
        Some(bytes) => codec::decode_sequence(&bytes, "next_sequence"),
        None => Err(LedgerError::Corrupt {
            what: "meta",
            problem: "next_sequence is missing",
        }),
    }
}

/// Accounts and their postings, both in account-key order, walked side by side: each
/// balance equals its postings' sum, each running balance is right, and the sum over all
/// accounts is zero. Returns the riders refused at gates, for the deny list's audit.
fn audit_accounts(
    db: &LedgerView,
    snapshot: &Snapshot<'_>,
    report: &mut AuditReport,
) -> Result<BTreeSet<u64>, LedgerError> {
    let mut refused = BTreeSet::new();
    let mut postings = db
        .iterator_cf_opt(db.cf(CF_POSTINGS)?, reader(snapshot), IteratorMode::Start)
        .peekable();
    for item in db.iterator_cf_opt(db.cf(CF_ACCOUNTS)?, reader(snapshot), IteratorMode::Start) {
        let (key, value) = item?;
        let account_ref = codec::decode_account_key(&key)?;
        let account = codec::decode_account(&value)?;
        report.accounts += 1;
        report.balance_sum += i128::from(account.balance.0);
        if let AccountRef::Rider(id) = account_ref {
            report.rider_balance_sum += i128::from(account.balance.0);
            if account.refused_at_gates() {
                refused.insert(id);
            }
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
    Ok(refused)
}

/// What the log says the indexes must hold.
#[derive(Debug, Default)]
struct LogCounts {
    /// The first sequence whose id is still indexed.
    pruned_below: u64,
    /// Records from `pruned_below` on: the id index holds exactly these.
    indexed_records: u64,
    postings: u64,
    settled: u64,
    refunds: u64,
}

/// The log, record by record, against the indexes.
fn audit_log(
    db: &LedgerView,
    snapshot: &Snapshot<'_>,
    next_sequence: u64,
    report: &mut AuditReport,
) -> Result<LogCounts, LedgerError> {
    let read = reader(snapshot);
    let mut log = LogAudit {
        db,
        counts: LogCounts {
            pruned_below: prune::pruned_below(db, &read)?,
            ..LogCounts::default()
        },
        read,
        report,
    };
    for item in db.iterator_cf_opt(db.cf(CF_LOG)?, reader(snapshot), IteratorMode::Start) {
        let (key, value) = item?;
        let sequence = codec::decode_log_key(&key)?;
        log.report.transactions += 1;
        if sequence >= next_sequence {
            log.report.violation(format!(
                "record {sequence} lies beyond next_sequence {next_sequence}"
            ));
        }
        // A record that does not decode (among them one whose postings do not sum to
        // zero) is a violation; the audit goes on to list the others.
        let record = match codec::decode_record(&value) {
            Ok(record) => record,
            Err(err) => {
                log.report
                    .violation(format!("record {sequence} does not decode: {err}"));
                continue;
            }
        };
        log.id_entry(sequence, &record)?;
        log.postings(sequence, &record)?;
        if record.outcome == Outcome::Accepted {
            log.report.accepted += 1;
            log.settlement_entry(sequence, &record)?;
            log.refund_entry(sequence, &record)?;
        }
    }
    Ok(log.counts)
}

/// One pass over the log: the indexes each record must be in, as of one snapshot.
struct LogAudit<'a, 'r> {
    db: &'a LedgerView,
    read: ReadOptions,
    counts: LogCounts,
    report: &'r mut AuditReport,
}

impl LogAudit<'_, '_> {
    /// Below the pruning cursor an id is forgotten (or, used again, points at a newer
    /// record); from the cursor on, it points at its record.
    fn id_entry(&mut self, sequence: u64, record: &Record) -> Result<(), LedgerError> {
        let db = self.db;
        let id_entry =
            db.get_pinned_cf_opt(db.cf(CF_IDS)?, codec::id_key(record.request.id), &self.read)?;
        let indexed = id_entry
            .map(|bytes| codec::decode_sequence(&bytes, "idempotency entry"))
            .transpose()?;
        let pruned_below = self.counts.pruned_below;
        let indexed_ok = if sequence < pruned_below {
            indexed.is_none_or(|indexed| indexed > sequence)
        } else {
            indexed == Some(sequence)
        };
        if sequence >= pruned_below {
            self.counts.indexed_records += 1;
        }
        if !indexed_ok {
            self.report.violation(format!(
                "transaction {} at sequence {sequence} is indexed at {indexed:?} (ids pruned below {pruned_below})",
                record.request.id
            ));
        }
        Ok(())
    }

    /// Each of the record's postings is in the postings index with its amount.
    fn postings(&mut self, sequence: u64, record: &Record) -> Result<(), LedgerError> {
        let db = self.db;
        for posting in &record.postings {
            self.counts.postings += 1;
            let key = codec::posting_key(posting.account, sequence);
            let indexed = db
                .get_pinned_cf_opt(db.cf(CF_POSTINGS)?, key, &self.read)?
                .map(|bytes| codec::decode_posting(&key, &bytes))
                .transpose();
            match indexed {
                Ok(Some((_, _, amount, _))) if amount == posting.amount => {}
                _ => self.report.violation(format!(
                    "posting of {:?} in transaction {} (sequence {sequence}) is missing or differs",
                    posting.account, record.request.id
                )),
            }
        }
        Ok(())
    }

    /// An accepted charge, refund, charged tap or journey close has a settlement entry
    /// under its rider's provider.
    fn settlement_entry(&mut self, sequence: u64, record: &Record) -> Result<(), LedgerError> {
        if !settles(&record.request.command, record.outcome, &record.postings) {
            return Ok(());
        }
        self.counts.settled += 1;
        let db = self.db;
        let provider = match rider_of_postings(&record.postings) {
            Some(id) => db
                .get_pinned_cf_opt(
                    db.cf(CF_ACCOUNTS)?,
                    codec::account_key(AccountRef::Rider(id)),
                    &self.read,
                )?
                .map(|bytes| codec::decode_account(&bytes))
                .transpose()?
                .map(|account| account.provider_id),
            None => None,
        };
        let entry = match provider {
            Some(provider) => db
                .get_pinned_cf_opt(
                    db.cf(CF_PROVIDER_ENTRIES)?,
                    codec::provider_entry_key(provider, sequence),
                    &self.read,
                )?
                .is_some(),
            None => false,
        };
        if !entry {
            self.report.violation(format!(
                "{} at sequence {sequence} has no settlement entry under its rider's provider",
                record.request.command.kind()
            ));
        }
        Ok(())
    }

    /// An accepted refund is indexed under its original.
    fn refund_entry(&mut self, sequence: u64, record: &Record) -> Result<(), LedgerError> {
        let Command::Refund { original } = record.request.command else {
            return Ok(());
        };
        self.counts.refunds += 1;
        let db = self.db;
        let entry =
            db.get_pinned_cf_opt(db.cf(CF_REFUNDS)?, codec::refund_key(original), &self.read)?;
        match entry
            .map(|bytes| codec::decode_sequence(&bytes, "refund entry"))
            .transpose()?
        {
            Some(indexed) if indexed == sequence => {}
            other => self.report.violation(format!(
                "refund at sequence {sequence} is indexed at {other:?}"
            )),
        }
        Ok(())
    }
}

/// Each index holds exactly as many entries as the log says.
fn audit_index_sizes(
    db: &LedgerView,
    snapshot: &Snapshot<'_>,
    counts: &LogCounts,
    report: &mut AuditReport,
) -> Result<(), LedgerError> {
    if counts.postings != report.postings {
        report.violation(format!(
            "the log has {} postings but the postings index has {}",
            counts.postings, report.postings
        ));
    }
    let ids = count(db, snapshot, CF_IDS)?;
    if ids != counts.indexed_records {
        report.violation(format!(
            "the log has {} transactions from sequence {} on but the id index has {ids}",
            counts.indexed_records, counts.pruned_below
        ));
    }
    let entries = count(db, snapshot, CF_PROVIDER_ENTRIES)?;
    if entries != counts.settled {
        report.violation(format!(
            "{} settling transactions (charges, refunds, charged taps, journey closes) but {entries} settlement entries",
            counts.settled
        ));
    }
    let refund_entries = count(db, snapshot, CF_REFUNDS)?;
    if refund_entries != counts.refunds {
        report.violation(format!(
            "{} refunds but {refund_entries} refund entries",
            counts.refunds
        ));
    }
    // Since storage format 7 travel states live in their riders' accounts: one left here
    // would be read by nothing, and its rider's state would be the account's.
    let travel_entries = count(db, snapshot, CF_TRAVEL)?;
    if travel_entries != 0 {
        report.violation(format!(
            "{travel_entries} travel states outside their riders' accounts (the `travel` column family is empty since storage format 7)"
        ));
    }
    Ok(())
}

fn reader(snapshot: &Snapshot<'_>) -> ReadOptions {
    let mut read = ReadOptions::default();
    read.set_snapshot(snapshot);
    read
}

fn count(db: &LedgerView, snapshot: &Snapshot<'_>, name: &'static str) -> Result<u64, LedgerError> {
    let mut count = 0;
    for item in db.iterator_cf_opt(db.cf(name)?, reader(snapshot), IteratorMode::Start) {
        item?;
        count += 1;
    }
    Ok(count)
}

/// The digest of a replica's state: SHA-256 over every column family but settlement's and
/// the deny journal (with its start in `meta`) (in
/// the order of [`super::store::COLUMN_FAMILIES`]), each key and value behind its length,
/// read from one snapshot. Two replicas of a shard at the same applied stream sequence
/// have the same digest; settlement's family is left out because batches are cut by the
/// node that serves the close, not by the log.
pub fn state_digest(db: &LedgerView) -> Result<[u8; 32], LedgerError> {
    let snapshot = db.snapshot();
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for name in super::store::COLUMN_FAMILIES {
        // Settlement is written outside the log; the deny journal is history for gates,
        // of which a replica upgraded to it holds less than one made with it.
        if name == super::store::CF_SETTLEMENT || name == CF_DENY_JOURNAL {
            continue;
        }
        digest.update(name.as_bytes());
        for item in db.iterator_cf_opt(db.cf(name)?, reader(&snapshot), IteratorMode::Start) {
            let (key, value) = item?;
            if name == CF_META && key.as_ref() == codec::META_DENY_JOURNAL_FROM {
                continue;
            }
            digest.update(&(key.len() as u64).to_be_bytes());
            digest.update(&key);
            digest.update(&(value.len() as u64).to_be_bytes());
            digest.update(&value);
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.finish().as_ref());
    Ok(out)
}
