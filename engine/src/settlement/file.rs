//! The settlement file: a CSV made by streaming a provider's entries out of the ledger,
//! one detail line per entry. Column by column in `docs/settlement.md`.
//!
//! The file is a pure function of the batch and the ledger's log, which never changes
//! below the ledger's last sequence: the close writes it once to learn its hash and
//! totals, and every pull writes it again, byte for byte. Memory does not grow with the
//! batch: one record at a time goes from an iterator to the output.

use std::io::Write;

use rocksdb::{DB, ReadOptions, Snapshot};

use super::SettlementError;
use super::model::{Batch, Totals, rfc3339};
use crate::ledger::codec;
use crate::ledger::model::rider_of_postings;
use crate::ledger::store::{CF_LOG, CF_PROVIDER_ENTRIES};
use crate::ledger::{AccountRef, Command, Record, TapKind};
use crate::money::Amount;

/// The file format version, the header's second field.
pub const FILE_FORMAT_VERSION: u32 = 1;

/// The first field of each record: header, detail, trailer.
pub const HEADER: &str = "H";
/// See [`HEADER`].
pub const DETAIL: &str = "D";
/// See [`HEADER`].
pub const TRAILER: &str = "T";

/// One detail line, before it is numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetailLine {
    /// The entry's ledger sequence.
    pub sequence: u64,
    /// The transaction id, 32 hex digits.
    pub transaction_id: String,
    /// When the transaction happened (a tap's scan time).
    pub time: String,
    /// What it was: see `docs/settlement.md`.
    pub kind: &'static str,
    /// The rider's account.
    pub account: u64,
    /// The operator that earns (or gives back) the fare.
    pub operator: u16,
    /// `metro`, `bus`, or empty.
    pub mode: &'static str,
    /// The gate or bus reader, or empty.
    pub gate: String,
    /// Where and when the metro journey was entered, or empty.
    pub entry_station: String,
    /// See `entry_station`.
    pub entry_time: String,
    /// Where and when it was exited, or empty.
    pub exit_station: String,
    /// See `exit_station`.
    pub exit_time: String,
    /// The bus route, or empty.
    pub route: String,
    /// Positive: the rider was charged; negative: the rider got money back.
    pub amount: Amount,
    /// For a refund, the refunded transaction's id.
    pub refund_of: String,
}

/// Reads the log record at `sequence` through an iterator that walks forward: a batch's
/// entries are in sequence order, so the next one is usually the next key.
struct LogReader<'a> {
    log: rocksdb::DBRawIterator<'a>,
}

impl LogReader<'_> {
    fn read(&mut self, sequence: u64) -> Result<Record, SettlementError> {
        let key = codec::encode_sequence(sequence);
        if self.log.key() != Some(key.as_slice()) {
            self.log.seek(key);
        }
        let record = match (self.log.key(), self.log.value()) {
            (Some(found), Some(value)) if found == key.as_slice() => codec::decode_record(value)?,
            _ => {
                self.log.status()?;
                return Err(SettlementError::Corrupt(format!(
                    "settlement entry {sequence} has no log record"
                )));
            }
        };
        self.log.next();
        Ok(record)
    }
}

fn read_options(snapshot: Option<&Snapshot<'_>>) -> ReadOptions {
    let mut read = ReadOptions::default();
    if let Some(snapshot) = snapshot {
        read.set_snapshot(snapshot);
    }
    // A batch is read once, front to back: keep it from pushing the gates' working set
    // out of the block cache.
    read.fill_cache(false);
    read
}

/// Calls `each(sequence, record)` for the provider's entries with `after < sequence <=
/// through`, in ledger order, until it returns `false`.
pub fn for_each_entry(
    db: &DB,
    snapshot: Option<&Snapshot<'_>>,
    provider_id: u16,
    after: u64,
    through: u64,
    mut each: impl FnMut(u64, Record) -> Result<bool, SettlementError>,
) -> Result<(), SettlementError> {
    let entries_cf = crate::ledger::apply::cf(db, CF_PROVIDER_ENTRIES)?;
    let log_cf = crate::ledger::apply::cf(db, CF_LOG)?;
    let mut entry_options = read_options(snapshot);
    entry_options.set_iterate_upper_bound(codec::provider_entry_key(
        provider_id,
        through.saturating_add(1),
    ));
    let mut entries = db.raw_iterator_cf_opt(entries_cf, entry_options);
    let mut log = LogReader {
        log: db.raw_iterator_cf_opt(log_cf, read_options(snapshot)),
    };
    entries.seek(codec::provider_entry_key(
        provider_id,
        after.saturating_add(1),
    ));
    while let Some(key) = entries.key() {
        let sequence = entry_sequence(key, provider_id)?;
        if sequence > through {
            break;
        }
        if !each(sequence, log.read(sequence)?)? {
            return Ok(());
        }
        entries.next();
    }
    entries.status()?;
    Ok(())
}

fn entry_sequence(key: &[u8], provider_id: u16) -> Result<u64, SettlementError> {
    let corrupt = || SettlementError::Corrupt("a settlement entry key is malformed".into());
    let (provider, sequence) = key.split_at_checked(2).ok_or_else(corrupt)?;
    if provider != provider_id.to_be_bytes() {
        return Err(corrupt());
    }
    Ok(codec::decode_sequence(sequence, "settlement entry")?)
}

/// Writes the batch's CSV file to `out` and returns its totals. `snapshot` pins the
/// ledger's view while a batch is being closed; a pull of a closed batch needs none.
pub fn write_file(
    db: &DB,
    snapshot: Option<&Snapshot<'_>>,
    batch: &Batch,
    out: impl Write,
) -> Result<Totals, SettlementError> {
    let mut csv = csv::WriterBuilder::new()
        .flexible(true)
        .buffer_capacity(64 << 10)
        .from_writer(out);
    csv.write_record([
        HEADER,
        &FILE_FORMAT_VERSION.to_string(),
        &batch.provider_id.to_string(),
        &batch.id.to_string(),
        &batch.after_sequence.to_string(),
        &batch.through_sequence.to_string(),
        &batch.cutoff.describe(),
        &batch.currency,
        &rfc3339(batch.created_at),
    ])?;
    let mut totals = Totals::default();
    for_each_entry(
        db,
        snapshot,
        batch.provider_id,
        batch.after_sequence,
        batch.through_sequence,
        |sequence, record| {
            let line = detail_line(sequence, &record)?;
            totals.add(line.amount).ok_or_else(|| {
                SettlementError::Corrupt(format!("batch {} totals overflow", batch.id))
            })?;
            csv.write_record([
                DETAIL,
                &totals.line_count.to_string(),
                &line.sequence.to_string(),
                &line.transaction_id,
                &line.time,
                line.kind,
                &line.account.to_string(),
                &line.operator.to_string(),
                line.mode,
                &line.gate,
                &line.entry_station,
                &line.entry_time,
                &line.exit_station,
                &line.exit_time,
                &line.route,
                &line.amount.to_string(),
                &line.refund_of,
            ])?;
            Ok(true)
        },
    )?;
    csv.write_record([
        TRAILER,
        &totals.line_count.to_string(),
        &totals.total_charged.to_string(),
        &totals.total_refunded.to_string(),
        &totals.net().to_string(),
    ])?;
    csv.flush()?;
    Ok(totals)
}

/// The detail line of a settling ledger record.
pub fn detail_line(sequence: u64, record: &Record) -> Result<DetailLine, SettlementError> {
    let not_settling = || {
        SettlementError::Corrupt(format!(
            "settlement entry {sequence} points at a {} record that does not settle",
            record.request.command.kind()
        ))
    };
    let account = rider_of_postings(&record.postings).ok_or_else(not_settling)?;
    let operator = record
        .postings
        .iter()
        .find_map(|posting| match posting.account {
            AccountRef::OperatorRevenue(id) => Some(id),
            _ => None,
        })
        .ok_or_else(not_settling)?;
    let time = rfc3339(record.request.time);
    let mut line = DetailLine {
        sequence,
        transaction_id: record.request.id.to_string(),
        time: time.clone(),
        kind: "",
        account,
        operator,
        mode: "",
        gate: String::new(),
        entry_station: String::new(),
        entry_time: String::new(),
        exit_station: String::new(),
        exit_time: String::new(),
        route: String::new(),
        amount: record.rider_charge(),
        refund_of: String::new(),
    };
    let journey_entry = |line: &mut DetailLine| {
        if let Some(journey) = record.journey {
            line.entry_station = journey
                .entry_station
                .map(|s| s.to_string())
                .unwrap_or_default();
            line.entry_time = journey.entered_at.map(rfc3339).unwrap_or_default();
        }
    };
    match record.request.command {
        Command::Charge { .. } => line.kind = "charge",
        Command::Refund { original } => {
            line.kind = "refund";
            line.refund_of = original.to_string();
        }
        Command::Tap(tap) => {
            line.gate = tap.gate_id.to_string();
            match tap.kind {
                TapKind::Bus { route } => {
                    line.kind = "bus";
                    line.mode = "bus";
                    line.route = route.to_string();
                }
                TapKind::MetroExit { station } => {
                    line.mode = "metro";
                    line.exit_station = station.to_string();
                    line.exit_time = time;
                    let entered = record.journey.is_some_and(|j| j.entry_station.is_some());
                    line.kind = if entered { "metro" } else { "metro_no_entry" };
                    journey_entry(&mut line);
                }
                // An entry charges only for the rider's previous journey, entered and never
                // exited; the record describes the new journey, so the old one's stations
                // are not on the line (they are in the rider's statement).
                TapKind::MetroEntry { .. } => {
                    line.kind = "metro_not_exited_next_entry";
                    line.mode = "metro";
                }
            }
        }
        Command::CloseJourney { .. } => {
            line.kind = "metro_not_exited";
            line.mode = "metro";
            journey_entry(&mut line);
        }
        _ => return Err(not_settling()),
    }
    Ok(line)
}
