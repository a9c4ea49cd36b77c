//! The gate bundle (`docs/offline.md`): everything a gate needs to decide alone, signed by
//! the engine. A bundle is a body (this module's binary encoding, format 1) and an Ed25519
//! signature over it; the gate opens it with the engine's bundle public key and refuses
//! any it cannot check, keeping the one it has.
//!
//! Body, format 1 (integers big-endian unless said otherwise):
//!
//! | field | bytes |
//! | --- | --- |
//! | magic `FWGB` | 4 |
//! | format version (1) | 1 |
//! | kind: 1 whole, 2 delta | 1 |
//! | version | 8 |
//! | shard count `n` | 4 |
//! | deny-list position, per shard | 8 × n |
//! | delta only: the position it applies to, per shard | 8 × n |
//! | code validity ms, clock skew ms | 8 + 8 |
//! | providers: count, then id (2), name length (1), name | 4 + … |
//! | issuer keys: count, then provider (2), public key (32), revoked at ms (8; 0: not) | 4 + 42 × count |
//! | whole: deny-listed accounts: count, then the sorted ids as LEB128 gaps | 4 + … |
//! | delta: changes: count, then account id (LEB128) and 1 (denied) or 0 (lifted) | 4 + … |
//!
//! The deny list of a whole bundle is sorted account ids, each written as its gap from
//! the one before in LEB128: a million accounts spread over ten million ids take about a
//! byte each.

use std::collections::BTreeSet;

use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};

use crate::clock::UnixMillis;
use crate::token::format::{PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::token::{IssuerKey, IssuerRegistry, KeyError, Provider, check_public_key, key_id_of};

/// The body's first bytes.
const MAGIC: &[u8; 4] = b"FWGB";
/// The body format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
const KIND_WHOLE: u8 = 1;
const KIND_DELTA: u8 = 2;
/// Most shards a bundle may name (a bound on what a body makes the gate allocate).
const SHARDS_MAX: u32 = 4_096;

/// The settings a gate decides by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A code older than this is refused.
    pub code_validity_ms: u64,
    /// How far in the future a code's time may be.
    pub clock_skew_ms: u64,
}

/// An issuer key as a bundle carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleKey {
    /// Its provider.
    pub provider_id: u16,
    /// The Ed25519 public key.
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// When it was revoked (`None`: it is not).
    pub revoked_at: Option<UnixMillis>,
}

/// A whole bundle, as a gate holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Only grows from one bundle to the next.
    pub version: u64,
    /// Per shard, the last deny-journal entry included.
    pub positions: Vec<u64>,
    /// The settings.
    pub settings: Settings,
    /// The payment providers.
    pub providers: Vec<Provider>,
    /// Every issuer key, revoked ones too.
    pub keys: Vec<BundleKey>,
    /// The accounts a gate must refuse (deny-listed or in debt).
    pub denied: BTreeSet<u64>,
}

/// The changes since a position: what a delta carries besides the new version's keys
/// and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The version after the changes.
    pub version: u64,
    /// The position the changes apply to (the gate's).
    pub base: Vec<u64>,
    /// The position after them.
    pub positions: Vec<u64>,
    /// The settings, whole.
    pub settings: Settings,
    /// The providers, whole.
    pub providers: Vec<Provider>,
    /// The issuer keys, whole.
    pub keys: Vec<BundleKey>,
    /// Account id, and whether it is now denied (`false`: lifted), in journal order.
    pub changes: Vec<(u64, bool)>,
}

/// What a signed body holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A whole bundle.
    Whole(Bundle),
    /// Changes to apply to the bundle the gate holds.
    Delta(Delta),
}

/// Why a bundle was refused (the gate keeps the one it has).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The gate's configured engine key is not a safe Ed25519 public key.
    #[error("the engine's bundle key is not a safe Ed25519 public key: {0}")]
    WeakEngineKey(String),
    /// The signature does not verify under the engine's bundle key.
    #[error("the bundle's signature does not verify under the engine's bundle key")]
    BadSignature,
    /// The body is not a bundle in a format this build reads.
    #[error("the bundle's body is not in a format this build reads: {0}")]
    Format(String),
    /// The bundle is older than the one the gate holds.
    #[error("the bundle's version {got} is older than the gate's {have}")]
    Older {
        /// The gate's version.
        have: u64,
        /// The bundle's.
        got: u64,
    },
    /// A whole bundle behind the gate's in some shard.
    #[error("the bundle is behind the gate's in a shard's deny list")]
    Behind,
    /// A delta made for another position than the gate's.
    #[error("the delta applies to another deny-list position than the gate's")]
    WrongBase,
    /// The keys it carries do not make a registry.
    #[error("the bundle's issuer keys are refused: {0}")]
    Keys(String),
}

/// Signs a body with the engine's bundle key.
pub fn sign(body: &[u8], key: &Ed25519KeyPair) -> [u8; SIGNATURE_LEN] {
    let mut signature = [0u8; SIGNATURE_LEN];
    signature.copy_from_slice(key.sign(body).as_ref());
    signature
}

/// Checks a body's signature under the engine's bundle key, then decodes it.
pub fn open(
    body: &[u8],
    signature: &[u8],
    engine_key: &[u8; PUBLIC_KEY_LEN],
) -> Result<Body, BundleError> {
    check_public_key(engine_key).map_err(|weak| BundleError::WeakEngineKey(weak.to_string()))?;
    UnparsedPublicKey::new(&ED25519, engine_key)
        .verify(body, signature)
        .map_err(|_| BundleError::BadSignature)?;
    decode(body)
}

impl Bundle {
    /// The body of this bundle, whole.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = header(KIND_WHOLE, self.version, &self.positions);
        common(&mut out, &self.settings, &self.providers, &self.keys);
        put_u32(&mut out, self.denied.len());
        let mut previous = 0;
        for &account in &self.denied {
            put_leb128(&mut out, account - previous);
            previous = account;
        }
        out
    }

    /// The bundle after `update`, or why it is refused (this bundle stays as it is).
    pub fn apply(&self, update: Body) -> Result<Bundle, BundleError> {
        let version = match &update {
            Body::Whole(bundle) => bundle.version,
            Body::Delta(delta) => delta.version,
        };
        if version < self.version {
            return Err(BundleError::Older {
                have: self.version,
                got: version,
            });
        }
        match update {
            Body::Whole(bundle) => {
                // A whole bundle from a node whose replica of a shard is behind would put
                // back what a later change took off the list (or the reverse).
                let behind = bundle.positions.len() == self.positions.len()
                    && bundle
                        .positions
                        .iter()
                        .zip(&self.positions)
                        .any(|(new, held)| new < held);
                if behind {
                    return Err(BundleError::Behind);
                }
                Ok(bundle)
            }
            Body::Delta(delta) => {
                if delta.base != self.positions {
                    return Err(BundleError::WrongBase);
                }
                let mut denied = self.denied.clone();
                for (account, now_denied) in delta.changes {
                    if now_denied {
                        denied.insert(account);
                    } else {
                        denied.remove(&account);
                    }
                }
                Ok(Bundle {
                    version: delta.version,
                    positions: delta.positions,
                    settings: delta.settings,
                    providers: delta.providers,
                    keys: delta.keys,
                    denied,
                })
            }
        }
    }

    /// The issuer registry a gate verifies by: every key, with its revocation time, so
    /// that each decision judges revocation at its own scan time.
    pub fn registry(&self) -> Result<IssuerRegistry, BundleError> {
        let refused = |err: KeyError| BundleError::Keys(err.to_string());
        let mut registry = IssuerRegistry::default();
        for provider in &self.providers {
            registry.add_provider(provider.clone()).map_err(refused)?;
        }
        for key in &self.keys {
            registry
                .add_key(IssuerKey {
                    provider_id: key.provider_id,
                    key_id: key_id_of(&key.public_key),
                    public_key: key.public_key,
                    revoked_at: key.revoked_at,
                })
                .map_err(refused)?;
        }
        Ok(registry)
    }
}

impl Delta {
    /// The body of this delta.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = header(KIND_DELTA, self.version, &self.positions);
        for &position in &self.base {
            out.extend_from_slice(&position.to_be_bytes());
        }
        common(&mut out, &self.settings, &self.providers, &self.keys);
        put_u32(&mut out, self.changes.len());
        for &(account, denied) in &self.changes {
            put_leb128(&mut out, account);
            out.push(u8::from(denied));
        }
        out
    }
}

fn header(kind: u8, version: u64, positions: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(kind);
    out.extend_from_slice(&version.to_be_bytes());
    put_u32(&mut out, positions.len());
    for &position in positions {
        out.extend_from_slice(&position.to_be_bytes());
    }
    out
}

fn common(out: &mut Vec<u8>, settings: &Settings, providers: &[Provider], keys: &[BundleKey]) {
    out.extend_from_slice(&settings.code_validity_ms.to_be_bytes());
    out.extend_from_slice(&settings.clock_skew_ms.to_be_bytes());
    put_u32(out, providers.len());
    for provider in providers {
        out.extend_from_slice(&provider.id.to_be_bytes());
        // Provider names are at most 32 characters (`is_valid_provider_name`).
        let name = &provider.name.as_bytes()[..provider.name.len().min(255)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
    }
    put_u32(out, keys.len());
    for key in keys {
        out.extend_from_slice(&key.provider_id.to_be_bytes());
        out.extend_from_slice(&key.public_key);
        out.extend_from_slice(&key.revoked_at.map_or(0, |at| at.0).to_be_bytes());
    }
}

fn put_u32(out: &mut Vec<u8>, count: usize) {
    out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Decodes a body a gate saved itself (its signature was checked when it arrived, and a
/// delta's result has none): a gate's own copy on its own disk, across a restart.
pub fn decode_saved(body: &[u8]) -> Result<Body, BundleError> {
    decode(body)
}

/// Decodes a body (whose signature was checked).
fn decode(body: &[u8]) -> Result<Body, BundleError> {
    let mut reader = Reader { bytes: body };
    if reader.take(4)? != MAGIC {
        return Err(BundleError::Format("it does not start with FWGB".into()));
    }
    let format = reader.u8()?;
    if format != FORMAT_VERSION {
        return Err(BundleError::Format(format!(
            "format version {format}, this build reads {FORMAT_VERSION}"
        )));
    }
    let kind = reader.u8()?;
    let version = reader.u64()?;
    let positions = reader.positions()?;
    let base = match kind {
        KIND_WHOLE => None,
        KIND_DELTA => Some(
            (0..positions.len())
                .map(|_| reader.u64())
                .collect::<Result<Vec<_>, _>>()?,
        ),
        other => return Err(BundleError::Format(format!("unknown kind {other}"))),
    };
    let settings = Settings {
        code_validity_ms: reader.u64()?,
        clock_skew_ms: reader.u64()?,
    };
    let providers = reader.providers()?;
    let keys = reader.keys()?;
    let body = match base {
        None => Body::Whole(Bundle {
            version,
            positions,
            settings,
            providers,
            keys,
            denied: reader.denied()?,
        }),
        Some(base) => Body::Delta(Delta {
            version,
            base,
            positions,
            settings,
            providers,
            keys,
            changes: reader.changes()?,
        }),
    };
    if !reader.bytes.is_empty() {
        return Err(BundleError::Format(format!(
            "{} bytes after its end",
            reader.bytes.len()
        )));
    }
    Ok(body)
}

/// Reads a body; every count is checked against the bytes left before anything is
/// allocated for it.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], BundleError> {
        if self.bytes.len() < len {
            return Err(BundleError::Format("it ends early".into()));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, BundleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, BundleError> {
        let mut bytes = [0u8; 2];
        bytes.copy_from_slice(self.take(2)?);
        Ok(u16::from_be_bytes(bytes))
    }

    fn u32(&mut self) -> Result<u32, BundleError> {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(bytes))
    }

    fn u64(&mut self) -> Result<u64, BundleError> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(bytes))
    }

    /// A count of items of at least `item_len` bytes each.
    fn count(&mut self, item_len: usize) -> Result<usize, BundleError> {
        let count = self.u32()? as usize;
        if count.saturating_mul(item_len) > self.bytes.len() {
            return Err(BundleError::Format(format!(
                "it counts {count} items in {} bytes",
                self.bytes.len()
            )));
        }
        Ok(count)
    }

    fn leb128(&mut self) -> Result<u64, BundleError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            // The tenth byte holds the top bit only.
            if shift == 63 && byte > 1 {
                break;
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(BundleError::Format("a number runs past 64 bits".into()))
    }

    fn positions(&mut self) -> Result<Vec<u64>, BundleError> {
        let shards = self.count(8)?;
        if shards == 0 || shards as u32 > SHARDS_MAX {
            return Err(BundleError::Format(format!("{shards} shards")));
        }
        (0..shards).map(|_| self.u64()).collect()
    }

    fn providers(&mut self) -> Result<Vec<Provider>, BundleError> {
        let count = self.count(3)?;
        (0..count)
            .map(|_| {
                let id = self.u16()?;
                let len = self.u8()? as usize;
                let name = std::str::from_utf8(self.take(len)?)
                    .map_err(|_| BundleError::Format("a provider's name is not UTF-8".into()))?;
                Ok(Provider {
                    id,
                    name: name.to_string(),
                })
            })
            .collect()
    }

    fn keys(&mut self) -> Result<Vec<BundleKey>, BundleError> {
        let count = self.count(2 + PUBLIC_KEY_LEN + 8)?;
        (0..count)
            .map(|_| {
                let provider_id = self.u16()?;
                let mut public_key = [0u8; PUBLIC_KEY_LEN];
                public_key.copy_from_slice(self.take(PUBLIC_KEY_LEN)?);
                let revoked_at = match self.u64()? {
                    0 => None,
                    at => Some(UnixMillis(at)),
                };
                Ok(BundleKey {
                    provider_id,
                    public_key,
                    revoked_at,
                })
            })
            .collect()
    }

    fn denied(&mut self) -> Result<BTreeSet<u64>, BundleError> {
        let count = self.count(1)?;
        let mut denied = BTreeSet::new();
        let mut account: u64 = 0;
        for index in 0..count {
            let gap = self.leb128()?;
            if index > 0 && gap == 0 {
                return Err(BundleError::Format(
                    "the deny list repeats an account".into(),
                ));
            }
            account = account
                .checked_add(gap)
                .ok_or_else(|| BundleError::Format("an account id runs past 64 bits".into()))?;
            denied.insert(account);
        }
        Ok(denied)
    }

    fn changes(&mut self) -> Result<Vec<(u64, bool)>, BundleError> {
        let count = self.count(2)?;
        (0..count)
            .map(|_| {
                let account = self.leb128()?;
                match self.u8()? {
                    0 => Ok((account, false)),
                    1 => Ok((account, true)),
                    other => Err(BundleError::Format(format!("change kind {other}"))),
                }
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests;
