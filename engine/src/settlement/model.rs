//! Settlement's vocabulary: cut-offs, close requests, batches and their totals. Plain
//! data: no storage, no clock.

use serde::{Deserialize, Serialize};

use super::key::ALGORITHM;
use super::manifest::{
    JOINED_MANIFEST_FORMAT_VERSION, MANIFEST_FORMAT, MANIFEST_FORMAT_VERSION, Manifest, Signature,
};
use crate::clock::UnixMillis;
use crate::ledger::TxId;
pub use fareway_gate::settlement::{ShardRange, Totals, file_name, manifest_name, rfc3339};

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

    /// The manifest of a batch, with the signature the batch holds.
    pub fn manifest(&self) -> Manifest {
        let batch = self;
        Manifest {
            format: MANIFEST_FORMAT.into(),
            format_version: if batch.is_joined() {
                JOINED_MANIFEST_FORMAT_VERSION
            } else {
                MANIFEST_FORMAT_VERSION
            },
            batch_id: batch.id,
            provider_id: batch.provider_id,
            after_sequence: batch.after_sequence,
            through_sequence: batch.through_sequence,
            cutoff: batch.cutoff.describe(),
            currency: batch.currency.clone(),
            created_at: rfc3339(batch.created_at),
            file_name: file_name(batch.provider_id, batch.id),
            file_bytes: batch.file_bytes,
            file_sha256: batch.file_sha256.clone(),
            line_count: batch.totals.line_count,
            charge_count: batch.totals.charge_count,
            refund_count: batch.totals.refund_count,
            total_charged_minor: batch.totals.total_charged.minor(),
            total_refunded_minor: batch.totals.total_refunded.minor(),
            net_minor: batch.totals.net().minor(),
            shards: batch.shards.clone(),
            signature: Signature {
                algorithm: ALGORITHM.into(),
                key_id: batch.key_id.clone(),
                value: batch.signature.clone(),
            },
        }
    }

    /// The version its file is written in.
    pub fn file_format_version(&self) -> u32 {
        if self.is_joined() {
            fareway_gate::settlement::JOINED_FILE_FORMAT_VERSION
        } else {
            fareway_gate::settlement::FILE_FORMAT_VERSION
        }
    }
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
