//! Reconciliation: a provider's reply to a batch, line by line against the batch's file.
//!
//! The reply is CSV with a header row `transaction_id,amount_minor,status`, one row per
//! transaction the provider settled (`settled`) or refused (`rejected`). Lines that do not
//! parse are reported one by one with their line number, and the rest is still compared.
//! Rules in `docs/settlement.md`.

use std::collections::HashMap;
use std::io::{BufRead as _, Read};

use super::file::DETAIL;

/// The reply's header row.
pub const REPLY_COLUMNS: [&str; 3] = ["transaction_id", "amount_minor", "status"];

/// Why the batch file itself cannot be read (the reply's own problems are findings).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The batch file is not a settlement file.
    #[error("the batch file, record {record}: {problem}")]
    BatchFile {
        /// The record number, from 1.
        record: u64,
        /// What is wrong.
        problem: String,
    },
    /// The reply could not be read at all.
    #[error("cannot read the reply: {0}")]
    Reply(String),
}

/// A reply line that names a batch line with another amount, or that the provider
/// rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The reply's line number (the header row is line 1).
    pub reply_line: u64,
    /// The transaction.
    pub transaction_id: String,
    /// The batch's amount.
    pub batch_amount: i64,
    /// The reply's amount.
    pub reply_amount: i64,
    /// The reply's status.
    pub status: String,
}

/// What reconciliation found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Batch lines the reply settled at the same amount.
    pub matched: u64,
    /// Batch lines missing from the reply: (transaction id, amount).
    pub missing: Vec<(String, i64)>,
    /// Reply lines for transactions not in the batch: (reply line, transaction id, amount).
    pub extra: Vec<(u64, String, i64)>,
    /// Reply lines with another amount, or rejected.
    pub mismatched: Vec<Mismatch>,
    /// Reply lines that do not parse: (reply line, problem).
    pub bad_lines: Vec<(u64, String)>,
    /// The batch's net amount.
    pub batch_net: i64,
    /// The sum of the reply's settled amounts for the batch's transactions (extra and
    /// repeated lines are reported, not added).
    pub reply_settled: i64,
}

impl ReconcileReport {
    /// Whether the reply agrees with the batch in every line.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.mismatched.is_empty()
            && self.bad_lines.is_empty()
            && self.batch_net == self.reply_settled
    }
}

/// Compares a reply with a batch's CSV file. Memory grows with the batch's line count
/// (one map entry per line).
pub fn reconcile(
    batch_file: impl Read,
    reply: impl Read,
) -> Result<ReconcileReport, ReconcileError> {
    let (mut batch, batch_net) = read_batch(batch_file)?;
    let mut report = ReconcileReport {
        batch_net,
        ..ReconcileReport::default()
    };
    compare_reply(reply, &mut batch, &mut report)?;
    report.missing = batch.missing();
    Ok(report)
}

/// The batch file's detail lines, each marked once the reply names it.
struct BatchLines {
    /// Transaction id → (amount, seen in the reply at this line).
    by_id: HashMap<String, (i64, Option<u64>)>,
    /// The transaction ids in the file's order, so that missing lines are listed in it.
    order: Vec<String>,
}

impl BatchLines {
    /// Records what one parsed reply line says of the batch: a match, a mismatch (another
    /// amount, or rejected), a transaction not in the batch, or a repeat.
    fn compare(
        &mut self,
        line: u64,
        id: String,
        amount: i64,
        status: String,
        report: &mut ReconcileReport,
    ) {
        match self.by_id.get_mut(&id) {
            None => report.extra.push((line, id, amount)),
            Some((_, Some(first))) => {
                let first = *first;
                report.bad_lines.push((
                    line,
                    format!("transaction {id} is repeated (first on line {first})"),
                ));
            }
            Some((batch_amount, seen)) => {
                *seen = Some(line);
                if status == "settled" {
                    report.reply_settled = report.reply_settled.saturating_add(amount);
                }
                if amount == *batch_amount && status == "settled" {
                    report.matched += 1;
                } else {
                    report.mismatched.push(Mismatch {
                        reply_line: line,
                        transaction_id: id,
                        batch_amount: *batch_amount,
                        reply_amount: amount,
                        status,
                    });
                }
            }
        }
    }

    /// The batch lines that the reply never named, in the file's order: (transaction id,
    /// amount).
    fn missing(self) -> Vec<(String, i64)> {
        let BatchLines { by_id, order } = self;
        order
            .into_iter()
            .filter_map(|id| match by_id.get(&id) {
                Some((amount, None)) => Some((id, *amount)),
                _ => None,
            })
            .collect()
    }
}

/// Reads the batch file's detail lines (other records are skipped) and sums its net
/// amount. A batch file that does not read is an error, not a finding.
fn read_batch(batch_file: impl Read) -> Result<(BatchLines, i64), ReconcileError> {
    let mut batch = BatchLines {
        by_id: HashMap::new(),
        order: Vec::new(),
    };
    let mut net: i64 = 0;
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(batch_file);
    for (index, record) in csv.records().enumerate() {
        let number = index as u64 + 1;
        let bad = |problem: String| ReconcileError::BatchFile {
            record: number,
            problem,
        };
        let record = record.map_err(|err| bad(err.to_string()))?;
        if record.get(0) != Some(DETAIL) {
            continue;
        }
        let (Some(id), Some(amount)) = (record.get(3), record.get(15)) else {
            return Err(bad("a detail line is short".into()));
        };
        let amount: i64 = amount
            .parse()
            .map_err(|_| bad(format!("amount {amount:?} is not a whole number")))?;
        net = net
            .checked_add(amount)
            .ok_or_else(|| bad("the batch total overflows".into()))?;
        batch.order.push(id.to_string());
        batch.by_id.insert(id.to_string(), (amount, None));
    }
    Ok((batch, net))
}

/// Reads the reply line by line and records every finding in `report`: lines that do not
/// parse are bad lines, and the rest is still compared with the batch.
fn compare_reply(
    reply: impl Read,
    batch: &mut BatchLines,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileError> {
    // Line by line, so that line numbers are exact: a field of this format never holds a
    // line end, and a line that is not one CSV record is a bad line.
    let mut first = true;
    for (index, text) in std::io::BufReader::new(reply).split(b'\n').enumerate() {
        let line = index as u64 + 1;
        let text = text.map_err(|err| ReconcileError::Reply(err.to_string()))?;
        let text = text.strip_suffix(b"\r").unwrap_or(&text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record = match one_record(text) {
            Ok(record) => record,
            Err(problem) => {
                report.bad_lines.push((line, problem));
                first = false;
                continue;
            }
        };
        if std::mem::take(&mut first) {
            if record.iter().eq(REPLY_COLUMNS) {
                continue;
            }
            // Reported, and the row is still compared as a transaction.
            report.bad_lines.push((
                line,
                format!(
                    "the first row must be the header {}",
                    REPLY_COLUMNS.join(",")
                ),
            ));
        }
        match parse_reply_line(&record) {
            Ok((id, amount, status)) => batch.compare(line, id, amount, status, report),
            Err(problem) => report.bad_lines.push((line, problem)),
        }
    }
    Ok(())
}

/// One line as one CSV record (fields trimmed), or why it is not one.
fn one_record(text: &[u8]) -> Result<csv::StringRecord, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text);
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => Ok(record),
        Ok(false) => Err("an empty line".into()),
        Err(err) => Err(format!("not a CSV line of UTF-8 text: {err}")),
    }
}

fn parse_reply_line(record: &csv::StringRecord) -> Result<(String, i64, String), String> {
    if record.len() != REPLY_COLUMNS.len() {
        return Err(format!(
            "{} fields; a line has {} ({})",
            record.len(),
            REPLY_COLUMNS.len(),
            REPLY_COLUMNS.join(",")
        ));
    }
    let id = record[0].to_ascii_lowercase();
    if id.len() != 32 || !id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(format!(
            "transaction_id {:?} is not 32 hex digits",
            &record[0]
        ));
    }
    let amount = record[1]
        .parse::<i64>()
        .map_err(|_| format!("amount_minor {:?} is not a whole number", &record[1]))?;
    let status = record[2].to_ascii_lowercase();
    if status != "settled" && status != "rejected" {
        return Err(format!(
            "status {:?} is neither settled nor rejected",
            &record[2]
        ));
    }
    Ok((id, amount, status))
}
