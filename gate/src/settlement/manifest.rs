//! The manifest beside each settlement file: what the batch holds, the file's SHA-256,
//! and the engine's Ed25519 signature, so that a provider can check who made the file and
//! that it is whole.
//!
//! The signature covers a plain text form of every field but the signature value itself
//! ([`Manifest::signed_message`], documented in `docs/settlement.md`), so that any
//! language can rebuild it from the JSON without a canonical JSON encoder.

use serde::{Deserialize, Serialize};

use super::{ALGORITHM, ShardRange, key_id_text, verify_signature};
use crate::token::format::PUBLIC_KEY_LEN;

/// The manifest format's name and version, the first line of the signed message.
pub const MANIFEST_FORMAT: &str = "fareway-settlement-manifest";
/// The manifest format version of an embedded engine's batch.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// The manifest format version of a cluster's batch: it adds `shards`.
pub const JOINED_MANIFEST_FORMAT_VERSION: u32 = 2;

/// A batch's manifest, as written to `*.manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Always [`MANIFEST_FORMAT_VERSION`].
    pub format_version: u32,
    /// The batch.
    pub batch_id: u64,
    /// The payment provider.
    pub provider_id: u16,
    /// The batch covers entries with `after_sequence < sequence <= through_sequence`.
    pub after_sequence: u64,
    /// See `after_sequence`.
    pub through_sequence: u64,
    /// `now`, `sequence:N` or `time:RFC3339`.
    pub cutoff: String,
    /// ISO 4217.
    pub currency: String,
    /// When the batch was closed, RFC 3339 UTC.
    pub created_at: String,
    /// The CSV file's name.
    pub file_name: String,
    /// The CSV file's length in bytes.
    pub file_bytes: u64,
    /// The CSV file's SHA-256, lowercase hex.
    pub file_sha256: String,
    /// Detail lines.
    pub line_count: u64,
    /// Lines with an amount of zero or more.
    pub charge_count: u64,
    /// Lines with a negative amount.
    pub refund_count: u64,
    /// The sum of the charges, minor units.
    pub total_charged_minor: i64,
    /// The sum of the refunds as a positive number, minor units.
    pub total_refunded_minor: i64,
    /// Charged less refunded: what the provider owes.
    pub net_minor: i64,
    /// A cluster batch's range on each shard, in shard order (format version 2 only;
    /// `after_sequence` and `through_sequence` are then 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardRange>,
    /// Who signed it.
    pub signature: Signature,
}

/// The manifest's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The settlement key's id (eight hex digits).
    pub key_id: String,
    /// The signature over [`Manifest::signed_message`], lowercase hex (128 digits).
    pub value: String,
}

/// Why a manifest's signature does not check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Another algorithm than Ed25519.
    #[error("the manifest is signed with {0:?}; only ed25519 is known")]
    Algorithm(String),
    /// The manifest names another key than the one given.
    #[error("the manifest is signed by key {found}, not by the expected key {expected}")]
    KeyId {
        /// The key id in the manifest.
        found: String,
        /// The given key's id.
        expected: String,
    },
    /// The signature does not match the manifest's fields.
    #[error("the manifest's signature does not verify: it was altered or not signed by key {0}")]
    Invalid(String),
}

impl Manifest {
    /// The bytes the signature covers: `FORMAT-vVERSION`, then one `name=value` line per
    /// field in the order of the JSON (each shard of a cluster batch as
    /// `shard.N=AFTER..THROUGH`), ending with the signature's algorithm and key id (every
    /// line ends with a newline).
    pub fn signed_message(&self) -> Vec<u8> {
        let fields: [(&str, String); 16] = [
            ("batch_id", self.batch_id.to_string()),
            ("provider_id", self.provider_id.to_string()),
            ("after_sequence", self.after_sequence.to_string()),
            ("through_sequence", self.through_sequence.to_string()),
            ("cutoff", self.cutoff.clone()),
            ("currency", self.currency.clone()),
            ("created_at", self.created_at.clone()),
            ("file_name", self.file_name.clone()),
            ("file_bytes", self.file_bytes.to_string()),
            ("file_sha256", self.file_sha256.clone()),
            ("line_count", self.line_count.to_string()),
            ("charge_count", self.charge_count.to_string()),
            ("refund_count", self.refund_count.to_string()),
            ("total_charged_minor", self.total_charged_minor.to_string()),
            (
                "total_refunded_minor",
                self.total_refunded_minor.to_string(),
            ),
            ("net_minor", self.net_minor.to_string()),
        ];
        let mut message = format!("{}-v{}\n", self.format, self.format_version);
        let mut line = |name: &str, value: &str| {
            message.push_str(name);
            message.push('=');
            message.push_str(value);
            message.push('\n');
        };
        for (name, value) in &fields {
            line(name, value);
        }
        for range in &self.shards {
            line(
                &format!("shard.{}", range.shard),
                &format!("{}..{}", range.after_sequence, range.through_sequence),
            );
        }
        line("signature.algorithm", &self.signature.algorithm);
        line("signature.key_id", &self.signature.key_id);
        message.into_bytes()
    }

    /// Signs the manifest with the key `key_id` names, by `sign` (the engine's settlement
    /// key), filling in the key id and the signature.
    pub fn sign_with(&mut self, key_id: String, sign: impl FnOnce(&[u8]) -> [u8; 64]) {
        self.signature = Signature {
            algorithm: ALGORITHM.into(),
            key_id,
            value: String::new(),
        };
        self.signature.value = crate::hex::encode(&sign(&self.signed_message()));
    }

    /// Checks the signature against the engine's public key.
    pub fn verify(&self, public_key: &[u8; PUBLIC_KEY_LEN]) -> Result<(), SignatureError> {
        if self.signature.algorithm != ALGORITHM {
            return Err(SignatureError::Algorithm(self.signature.algorithm.clone()));
        }
        let expected = key_id_text(public_key);
        if self.signature.key_id != expected {
            return Err(SignatureError::KeyId {
                found: self.signature.key_id.clone(),
                expected,
            });
        }
        let signature = crate::hex::decode_array::<64>(&self.signature.value);
        if !signature
            .is_ok_and(|bytes| verify_signature(public_key, &self.signed_message(), &bytes))
        {
            return Err(SignatureError::Invalid(expected));
        }
        Ok(())
    }

    /// The manifest file's bytes: pretty JSON and a newline. The same manifest always
    /// gives the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings and integers cannot fail.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Parses a manifest file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
