//! Settlement files as a payment provider (or the finance team) receives them: their
//! names, the CSV format's record kinds and versions, the signed manifest beside each
//! file, the offline check of both, and the pull that fetches them from an engine. The
//! engine writes them (`fareway::settlement`); everything here reads them, without the
//! ledger, so that a client needs neither RocksDB nor the engine to check a batch. The
//! format is documented in `docs/settlement.md`.

pub mod manifest;
pub mod pull;
pub mod verify;

use std::io::Write;

use ring::digest::{Context, SHA256};
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::money::Amount;
use crate::token::format::PUBLIC_KEY_LEN;
use crate::token::key_id_of;

/// The signature algorithm of every manifest.
pub const ALGORITHM: &str = "ed25519";

/// The file format version of an embedded engine's batch, the header's second field.
pub const FILE_FORMAT_VERSION: u32 = 1;
/// The file format version of a cluster's batch: shard records before each shard's lines.
pub const JOINED_FILE_FORMAT_VERSION: u32 = 2;

/// The first field of each record: header, shard (cluster files), detail, trailer.
pub const HEADER: &str = "H";
/// See [`HEADER`].
pub const SHARD: &str = "S";
/// See [`HEADER`].
pub const DETAIL: &str = "D";
/// See [`HEADER`].
pub const TRAILER: &str = "T";

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

/// A cluster batch's range on one shard's ledger: entries with `after_sequence < sequence
/// <= through_sequence` of that shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRange {
    /// The shard.
    pub shard: u32,
    /// The range holds entries with `after_sequence < sequence <= through_sequence`.
    pub after_sequence: u64,
    /// See `after_sequence`.
    pub through_sequence: u64,
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

/// The key id of a settlement key's public part, as eight hex digits.
pub fn key_id_text(public_key: &[u8; PUBLIC_KEY_LEN]) -> String {
    format!("{:08x}", key_id_of(public_key))
}

/// Whether `signature` is `public_key`'s signature of `message`.
pub fn verify_signature(
    public_key: &[u8; PUBLIC_KEY_LEN],
    message: &[u8],
    signature: &[u8],
) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

/// Passes bytes through while counting them and computing their SHA-256.
pub struct HashingWriter<W> {
    inner: W,
    digest: Context,
    bytes: u64,
}

impl<W> std::fmt::Debug for HashingWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashingWriter")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            digest: Context::new(&SHA256),
            bytes: 0,
        }
    }

    /// The byte count and the SHA-256 (lowercase hex) of everything written.
    pub fn finish(self) -> (u64, String) {
        (
            self.bytes,
            crate::hex::encode(self.digest.finish().as_ref()),
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.digest.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
