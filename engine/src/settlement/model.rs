//! Settlement's vocabulary: cut-offs, close requests, batches and their totals. Plain
//! data: no storage, no clock.

use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::ledger::TxId;
use crate::money::Amount;

/// Where a batch stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cutoff {
    /// Everything the ledger had recorded when the batch was closed.
    Now,
    /// Entries up to and including this ledger sequence.
    Sequence(u64),
    /// Entries recorded at or before this time, in ledger order: the batch stops at the
    /// provider's first later entry, so that batches stay whole prefixes of the ledger.
    Time(UnixMillis),
}

impl Cutoff {
    /// The cut-off as written in the file's header and the manifest: `now`, `sequence:N`
    /// or `time:RFC3339`.
    pub fn describe(&self) -> String {
        match self {
            Cutoff::Now => "now".into(),
            Cutoff::Sequence(sequence) => format!("sequence:{sequence}"),
            Cutoff::Time(time) => format!("time:{}", rfc3339(*time)),
        }
    }
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z). Cut-off times past
/// it are refused.
pub const LATEST_TIME: UnixMillis = UnixMillis(253_402_300_799_999);

/// A time as RFC 3339 in UTC with milliseconds, the form every time in a settlement file
/// takes (`2027-01-15T08:00:00.000Z`). A time past [`LATEST_TIME`] (which no checked input
/// reaches) is written as its number of milliseconds rather than failing.
pub fn rfc3339(time: UnixMillis) -> String {
    use std::fmt::Write as _;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(time.0);
    let mut text = String::new();
    if write!(text, "{}", humantime::format_rfc3339_millis(at)).is_err() {
        text = time.0.to_string();
    }
    text
}

/// A request to close one batch per provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// Chosen by the caller once per close and reused on every retry.
    pub id: TxId,
    /// The providers (in any order; repeats count once), each with settlement entries or
    /// earlier batches; empty means every such provider.
    pub providers: Vec<u16>,
    /// Where the batches stop.
    pub cutoff: Cutoff,
}

/// The counts and sums of a batch's detail lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Detail lines.
    pub line_count: u64,
    /// Lines that charge the rider (amount zero or more).
    pub charge_count: u64,
    /// Lines that give money back (refunds, negative amounts).
    pub refund_count: u64,
    /// The sum of the charges.
    pub total_charged: Amount,
    /// The sum of the refunds, as a positive amount.
    pub total_refunded: Amount,
}

impl Totals {
    /// Counts one line of `amount` (negative for a refund). `None` on overflow.
    pub fn add(&mut self, amount: Amount) -> Option<()> {
        self.line_count += 1;
        if amount >= Amount::ZERO {
            self.charge_count += 1;
            self.total_charged = self.total_charged.checked_add(amount)?;
        } else {
            self.refund_count += 1;
            self.total_refunded = self.total_refunded.checked_sub(amount)?;
        }
        Some(())
    }

    /// What the provider owes: charged less refunded. Cannot overflow: both sums are in
    /// `0..=i64::MAX`.
    pub fn net(&self) -> Amount {
        Amount(self.total_charged.0 - self.total_refunded.0)
    }
}

/// A closed batch. Nothing in it ever changes after the close; only its acknowledgement
/// is recorded beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Unique across providers, from 1, in close order.
    pub id: u64,
    /// The payment provider.
    pub provider_id: u16,
    /// The batch covers the provider's entries with `after_sequence < sequence <=
    /// through_sequence`; the provider's next batch starts after `through_sequence`.
    pub after_sequence: u64,
    /// See `after_sequence`.
    pub through_sequence: u64,
    /// The cut-off it was closed at.
    pub cutoff: Cutoff,
    /// When it was closed (the server's clock).
    pub created_at: UnixMillis,
    /// The deployment's currency (ISO 4217) at the close.
    pub currency: String,
    /// Counts and sums of its lines.
    pub totals: Totals,
    /// The CSV file's length in bytes.
    pub file_bytes: u64,
    /// The CSV file's SHA-256, lowercase hex.
    pub file_sha256: String,
    /// The settlement key that signed the manifest (eight hex digits).
    pub key_id: String,
    /// The Ed25519 signature over the manifest, lowercase hex.
    pub signature: String,
    /// The close request that made it, lowercase hex.
    pub close_id: String,
    /// In a cluster, the batch's range on each shard's ledger, in shard order (the file
    /// joins them; `after_sequence` and `through_sequence` are then 0). Empty for an
    /// embedded engine's batch, so its stored form and manifest stay as they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardRange>,
}

impl Batch {
    /// True for a cluster batch, whose file joins its shards' ranges.
    pub fn is_joined(&self) -> bool {
        !self.shards.is_empty()
    }

    /// The version its file is written in.
    pub fn file_format_version(&self) -> u32 {
        if self.is_joined() {
            super::file::JOINED_FILE_FORMAT_VERSION
        } else {
            super::file::FILE_FORMAT_VERSION
        }
    }
}

/// A cluster batch's range on one shard's ledger: entries with `after_sequence < sequence
/// <= through_sequence` of that shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRange {
    /// The shard.
    pub shard: u32,
    /// See [`Batch::after_sequence`].
    pub after_sequence: u64,
    /// See [`Batch::through_sequence`].
    pub through_sequence: u64,
}

/// A batch and whether the provider acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchView {
    /// The batch.
    pub batch: Batch,
    /// When the provider's receipt was acknowledged, if it was.
    pub acknowledged_at: Option<UnixMillis>,
}

/// The answer to a close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// One batch per provider, by provider id.
    pub batches: Vec<BatchView>,
    /// True when this repeats an earlier close with the same id.
    pub replay: bool,
}

/// The name of a batch's CSV file; the manifest's name replaces `.csv` with
/// `.manifest.json`.
pub fn file_name(provider_id: u16, batch_id: u64) -> String {
    format!("fareway-settlement-p{provider_id:05}-b{batch_id:08}.csv")
}

/// The manifest's file name beside a CSV file named `csv_name`.
pub fn manifest_name(csv_name: &str) -> String {
    format!(
        "{}.manifest.json",
        csv_name.strip_suffix(".csv").unwrap_or(csv_name)
    )
}
