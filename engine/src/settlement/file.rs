//! The settlement file: a CSV made by streaming a provider's entries out of the ledger,
//! one detail line per entry. Column by column in `docs/settlement.md`.
//!
//! The file is a pure function of the batch and the ledger's log, which never changes
//! below the ledger's last sequence: the close writes it once to learn its hash and
//! totals, and every pull writes it again, byte for byte. Memory does not grow with the
//! batch: one record at a time goes from an iterator to the output.

use std::fmt::Write as _;
use std::io::Write;

use rocksdb::{ReadOptions, Snapshot};

use super::SettlementError;
use super::model::{Batch, ShardRange, Totals, rfc3339};
use crate::clock::UnixMillis;
use crate::fares::{RouteId, StationId};
use crate::ledger::codec;
use crate::ledger::model::rider_of_postings;
use crate::ledger::store::{CF_LOG, CF_PROVIDER_ENTRIES};
use crate::ledger::{AccountRef, Command, LedgerView, Record, Tap, TapKind, TxId};
use crate::money::Amount;

pub use fareway_gate::settlement::{
    DETAIL, FILE_FORMAT_VERSION, HEADER, JOINED_FILE_FORMAT_VERSION, SHARD, TRAILER,
};

/// One detail line, before it is numbered. Columns in `docs/settlement.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetailLine {
    /// The entry's ledger sequence.
    pub sequence: u64,
    /// The transaction id.
    pub transaction_id: TxId,
    /// When the transaction happened (a tap's scan time).
    pub time: UnixMillis,
    /// What it was: see `docs/settlement.md`.
    pub kind: &'static str,
    /// The rider's account.
    pub account: u64,
    /// The operator that earns (or gives back) the fare.
    pub operator: u16,
    /// `metro`, `bus`, or empty.
    pub mode: &'static str,
    /// The gate or bus reader.
    pub gate: Option<u32>,
    /// Where the metro journey was entered.
    pub entry_station: Option<StationId>,
    /// When it was entered.
    pub entry_time: Option<UnixMillis>,
    /// Where it was exited.
    pub exit_station: Option<StationId>,
    /// When it was exited.
    pub exit_time: Option<UnixMillis>,
    /// The bus route.
    pub route: Option<RouteId>,
    /// Positive: the rider was charged; negative: the rider got money back.
    pub amount: Amount,
    /// For a refund, the refunded transaction; for a fare correction, the corrected one.
    pub refund_of: Option<TxId>,
}

/// Reads the log record at `sequence` through an iterator that walks forward: a batch's
/// entries are in sequence order, so the next one is usually the next key.
struct LogReader<'a> {
    log: rocksdb::DBRawIterator<'a>,
}

impl LogReader<'_> {
    fn read(&mut self, sequence: u64) -> Result<Record, SettlementError> {
        let key = codec::log_key(sequence);
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
    db: &LedgerView,
    snapshot: Option<&Snapshot<'_>>,
    provider_id: u16,
    after: u64,
    through: u64,
    mut each: impl FnMut(u64, Record) -> Result<bool, SettlementError>,
) -> Result<(), SettlementError> {
    let entries_cf = db.cf(CF_PROVIDER_ENTRIES)?;
    let log_cf = db.cf(CF_LOG)?;
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
    match codec::decode_provider_entry_key(key)? {
        (provider, sequence) if provider == provider_id => Ok(sequence),
        _ => Err(SettlementError::Corrupt(
            "a settlement entry key is malformed".into(),
        )),
    }
}

/// Where a batch's entries are read: a ledger, pinned by `snapshot` while a batch is being
/// closed (a pull of a closed batch needs none: the log never changes below a batch's
/// range).
#[derive(Clone, Copy)]
#[allow(missing_debug_implementations)] // a RocksDB snapshot has no Debug
pub struct Source<'a> {
    /// The ledger (an embedded engine's, or one shard replica's).
    pub view: &'a LedgerView,
    /// The snapshot the close reads, if any.
    pub snapshot: Option<&'a Snapshot<'a>>,
}

/// Writes the batch's CSV file to `out` and returns its totals. An embedded batch reads
/// one source; a cluster batch reads one per shard, in the order of `batch.shards`, and
/// writes each shard's range (an `S` record) before its lines (file format 2).
///
/// Records are written by hand, not through a CSV writer: no field can need quoting
/// (numbers, hex ids, fixed words, RFC 3339 times, a checked currency code and cut-off),
/// and one reused line buffer keeps the export at a few allocations per line.
pub fn write_file(
    sources: &[Source<'_>],
    batch: &Batch,
    out: impl Write,
) -> Result<Totals, SettlementError> {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    let mut line = String::with_capacity(256);
    let mut times = TimeText::default();
    header_record(&mut line, batch);
    out.write_all(line.as_bytes())?;
    let mut totals = Totals::default();
    for (source, range) in sources_and_ranges(sources, batch)? {
        if batch.is_joined() {
            shard_record(&mut line, &range);
            out.write_all(line.as_bytes())?;
        }
        for_each_entry(
            source.view,
            source.snapshot,
            batch.provider_id,
            range.after_sequence,
            range.through_sequence,
            |sequence, record| {
                let detail = detail_line(sequence, &record)?;
                totals.add(detail.amount).ok_or_else(|| {
                    SettlementError::Corrupt(format!("batch {} totals overflow", batch.id))
                })?;
                detail_record(&mut line, totals.line_count, &detail, &mut times);
                out.write_all(line.as_bytes())?;
                Ok(true)
            },
        )?;
    }
    trailer_record(&mut line, &totals);
    out.write_all(line.as_bytes())?;
    out.flush()?;
    Ok(totals)
}

/// Pairs each source with the range it is read over: the batch's own range for an
/// embedded batch, each shard's for a cluster batch.
fn sources_and_ranges<'s, 'a>(
    sources: &'s [Source<'a>],
    batch: &Batch,
) -> Result<Vec<(&'s Source<'a>, ShardRange)>, SettlementError> {
    let ranges = if batch.is_joined() {
        batch.shards.clone()
    } else {
        vec![ShardRange {
            shard: 0,
            after_sequence: batch.after_sequence,
            through_sequence: batch.through_sequence,
        }]
    };
    if ranges.len() != sources.len() {
        return Err(SettlementError::Corrupt(format!(
            "batch {} spans {} ledgers, but {} were given to read it",
            batch.id,
            ranges.len(),
            sources.len()
        )));
    }
    Ok(sources.iter().zip(ranges).collect())
}

/// The header record: what the batch is, so that a file can be checked on its own. A
/// cluster batch has no single sequence range: its fields 5 and 6 are empty and each
/// shard's range is in its `S` record.
fn header_record(line: &mut String, batch: &Batch) {
    let (after, through) = if batch.is_joined() {
        (String::new(), String::new())
    } else {
        (
            batch.after_sequence.to_string(),
            batch.through_sequence.to_string(),
        )
    };
    write_record(
        line,
        &[
            HEADER,
            &batch.file_format_version().to_string(),
            &batch.provider_id.to_string(),
            &batch.id.to_string(),
            &after,
            &through,
            &batch.cutoff.describe(),
            &batch.currency,
            &rfc3339(batch.created_at),
        ],
    );
}

/// A shard's range in a cluster batch's file, before that shard's detail lines.
fn shard_record(line: &mut String, range: &ShardRange) {
    write_record(
        line,
        &[
            SHARD,
            &range.shard.to_string(),
            &range.after_sequence.to_string(),
            &range.through_sequence.to_string(),
        ],
    );
}

/// Detail record number `number` (from 1), written into the reused `line` field by field,
/// without a CSV writer and with few allocations: a batch can hold millions of lines.
fn detail_record(line: &mut String, number: u64, detail: &DetailLine, times: &mut TimeText) {
    line.clear();
    // Writing to a String cannot fail.
    let _ = write!(
        line,
        "{DETAIL},{},{},{},{},{},{},{},{},{},{},",
        number,
        detail.sequence,
        detail.transaction_id,
        times.format(detail.time),
        detail.kind,
        detail.account,
        detail.operator,
        detail.mode,
        OrEmpty(detail.gate),
        OrEmpty(detail.entry_station),
    );
    if let Some(entered_at) = detail.entry_time {
        line.push_str(times.format(entered_at));
    }
    let _ = write!(line, ",{},", OrEmpty(detail.exit_station));
    if let Some(exited_at) = detail.exit_time {
        line.push_str(times.format(exited_at));
    }
    let _ = write!(line, ",{},{},", OrEmpty(detail.route), detail.amount);
    if let Some(original) = detail.refund_of {
        let _ = write!(line, "{original}");
    }
    line.push('\n');
}

/// The trailer record: the totals of the lines above it.
fn trailer_record(line: &mut String, totals: &Totals) {
    write_record(
        line,
        &[
            TRAILER,
            &totals.line_count.to_string(),
            &totals.total_charged.to_string(),
            &totals.total_refunded.to_string(),
            &totals.net().to_string(),
        ],
    );
}

/// One record of plain fields: comma-separated, newline-terminated.
fn write_record(line: &mut String, fields: &[&str]) {
    line.clear();
    line.push_str(&fields.join(","));
    line.push('\n');
}

/// A number, or nothing.
struct OrEmpty<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrEmpty<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => Ok(()),
        }
    }
}

/// RFC 3339 times, formatting the date and time of day once per second: a busy network's
/// taps share their second by the thousand.
#[derive(Default)]
struct TimeText {
    second: Option<u64>,
    text: String,
}

impl TimeText {
    fn format(&mut self, time: UnixMillis) -> &str {
        let second = time.0 / 1_000;
        if self.second != Some(second) {
            self.text = rfc3339(UnixMillis(second * 1_000));
            self.second = Some(second);
        }
        // "YYYY-MM-DDTHH:MM:SS." is the part before the milliseconds.
        let before_millis = self.text.len() - 4;
        self.text.truncate(before_millis);
        let _ = write!(self.text, "{:03}Z", time.0 % 1_000);
        &self.text
    }
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
    let mut line = DetailLine {
        sequence,
        transaction_id: record.request.id,
        time: record.request.time,
        kind: "",
        account,
        operator,
        mode: "",
        gate: None,
        entry_station: None,
        entry_time: None,
        exit_station: None,
        exit_time: None,
        route: None,
        amount: record.rider_charge(),
        refund_of: None,
    };
    if !describe_command(&mut line, record) {
        return Err(not_settling());
    }
    Ok(line)
}

/// Fills in what the record's command did: its kind, and the mode, gate, stations, route
/// or refunded transaction that go with it. Returns false for a command that does not
/// settle.
fn describe_command(line: &mut DetailLine, record: &Record) -> bool {
    match record.request.command {
        Command::Charge { .. } => line.kind = "charge",
        Command::Refund { original } => {
            line.kind = "refund";
            line.refund_of = Some(original);
        }
        Command::Tap(tap) => describe_tap(line, record, tap),
        Command::CloseJourney { .. } => {
            line.kind = "metro_not_exited";
            line.mode = "metro";
            journey_entry(line, record);
        }
        // A late tap re-priced the rider's day: the difference to the corrected
        // transaction, which the line names like a refund names its charge.
        Command::Correct { corrects, .. } => {
            line.kind = "fare_correction";
            line.refund_of = Some(corrects);
        }
        _ => return false,
    }
    true
}

/// Fills in a tap: its gate, and by its kind the mode and the stations or the route.
fn describe_tap(line: &mut DetailLine, record: &Record, tap: Tap) {
    line.gate = Some(tap.gate_id);
    match tap.kind {
        TapKind::Bus { route } => {
            line.kind = "bus";
            line.mode = "bus";
            line.route = Some(route);
        }
        TapKind::MetroExit { station } => {
            line.mode = "metro";
            line.exit_station = Some(station);
            line.exit_time = Some(record.request.time);
            let entered = record.journey.is_some_and(|j| j.entry_station.is_some());
            line.kind = if entered { "metro" } else { "metro_no_entry" };
            journey_entry(line, record);
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

/// Where and when the record's metro journey was entered, when the record knows it.
fn journey_entry(line: &mut DetailLine, record: &Record) {
    if let Some(journey) = record.journey {
        line.entry_station = journey.entry_station;
        line.entry_time = journey.entered_at;
    }
}
