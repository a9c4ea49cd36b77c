//! The issuer key registry: which payment providers exist and which of their public keys
//! may sign credentials. A provider may have several active keys at once (rotation); a
//! revoked key stays listed so that its credentials are refused with a clear reason.
//!
//! The registry is loaded from a TOML file the operator controls (`docs/configuration.md`)
//! and holds public keys only. Every key that enters it has passed [`check_public_key`], so
//! a weak key (one that lets anybody forge signatures) can never be registered.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use curve25519_dalek::edwards::CompressedEdwardsY;
use serde::{Deserialize, Serialize};

use super::format::PUBLIC_KEY_LEN;
use super::key_id_of;
use crate::clock::UnixMillis;

/// The largest registry file read, so a wrong path (a disk image, a log) fails fast.
pub const REGISTRY_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Longest provider name: it appears in settlement file names and lines.
pub const PROVIDER_NAME_LEN_MAX: usize = 32;

/// Errors loading or changing the issuer key registry.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read issuer key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The file is larger than [`REGISTRY_FILE_BYTES_MAX`].
    #[error("issuer key file {path} is larger than {REGISTRY_FILE_BYTES_MAX} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// The file is not valid TOML of the documented shape.
    #[error("issuer key file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with its line.
        message: String,
    },
    /// A public key is not 32 bytes of base64url.
    #[error("public key of provider {provider_id} is not 32 bytes of base64url")]
    BadPublicKey {
        /// The provider the key was listed under.
        provider_id: u16,
    },
    /// A listed key id is not the one derived from its public key.
    #[error("key id {listed} does not match its public key (whose id is {derived})")]
    KeyIdMismatch {
        /// The id written in the file.
        listed: u32,
        /// The id derived from the public key.
        derived: u32,
    },
    /// A key names a provider that is not listed.
    #[error("issuer key {key_id} names provider {provider_id}, which is not listed")]
    UnknownProvider {
        /// The provider id.
        provider_id: u16,
        /// The key's id.
        key_id: u32,
    },
    /// A provider id or name, or a key id, is listed twice.
    #[error("{what} is listed twice")]
    Duplicate {
        /// What is listed twice.
        what: String,
    },
    /// A provider name is empty, too long, or has characters other than `a-z0-9_-`.
    #[error(
        "provider name {name:?} must be 1 to {PROVIDER_NAME_LEN_MAX} characters of a-z, 0-9, _ or -"
    )]
    BadProviderName {
        /// The name.
        name: String,
    },
    /// No key with this id is registered.
    #[error("no issuer key {key_id} is registered for provider {provider_id}")]
    UnknownKey {
        /// The provider id.
        provider_id: u16,
        /// The key's id.
        key_id: u32,
    },
    /// A public key is 32 bytes but not a safe Ed25519 key (see [`check_public_key`]).
    #[error("issuer key {key_id} of provider {provider_id} is refused: {weakness}")]
    WeakPublicKey {
        /// The provider the key was listed under.
        provider_id: u16,
        /// The key's id, derived from its bytes.
        key_id: u32,
        /// What is wrong with it.
        weakness: WeakKey,
    },
}

impl KeyError {
    /// The stable code string of this error.
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Read { .. } => "key_file_unreadable",
            KeyError::TooLarge { .. } => "key_file_too_large",
            KeyError::Parse { .. } => "key_file_invalid",
            KeyError::BadPublicKey { .. } => "bad_public_key",
            KeyError::KeyIdMismatch { .. } => "key_id_mismatch",
            KeyError::UnknownProvider { .. } => "unknown_provider",
            KeyError::Duplicate { .. } => "duplicate_entry",
            KeyError::BadProviderName { .. } => "bad_provider_name",
            KeyError::UnknownKey { .. } => "unknown_issuer_key",
            KeyError::WeakPublicKey { .. } => "weak_public_key",
        }
    }
}

/// A payment provider: it issues rider credentials and pays for its riders' fares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    /// The id carried in credentials.
    pub id: u16,
    /// A short name for files and reports (`a-z0-9_-`).
    pub name: String,
}

/// One issuer public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerKey {
    /// The provider whose key it is.
    pub provider_id: u16,
    /// Derived from the public key by [`key_id_of`].
    pub key_id: u32,
    /// The Ed25519 public key.
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// When the key was revoked (`None`: it is not). A code scanned at or after this time
    /// is refused; one scanned before it still verifies, so that a tap a gate took
    /// offline before the revocation is judged as it was then.
    pub revoked_at: Option<UnixMillis>,
}

impl IssuerKey {
    /// Whether the key is revoked at time `at`.
    pub fn is_revoked_at(&self, at: UnixMillis) -> bool {
        self.revoked_at.is_some_and(|revoked_at| revoked_at <= at)
    }
}

impl IssuerKey {
    /// An active key for `provider_id`.
    pub fn new(provider_id: u16, public_key: [u8; PUBLIC_KEY_LEN]) -> IssuerKey {
        IssuerKey {
            provider_id,
            key_id: key_id_of(&public_key),
            public_key,
            revoked_at: None,
        }
    }
}

/// The providers and their issuer keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerRegistry {
    providers: BTreeMap<u16, Provider>,
    keys: BTreeMap<(u16, u32), IssuerKey>,
}

/// The registry file's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// The providers.
    #[serde(default)]
    pub provider: Vec<Provider>,
    /// Their issuer keys.
    #[serde(default)]
    pub issuer_key: Vec<IssuerKeyEntry>,
}

/// One issuer key as written in the registry file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerKeyEntry {
    /// The provider's id.
    pub provider_id: u16,
    /// The key id; checked against the public key.
    pub key_id: u32,
    /// The public key, base64url without padding.
    pub public_key: String,
    /// Whether the key is revoked.
    #[serde(default)]
    pub revoked: bool,
    /// When it was revoked, ms since the epoch. A key listed as revoked without a time
    /// (a file written before revocation times were kept) is revoked since the start of
    /// time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
}

impl IssuerRegistry {
    /// Reads a registry file.
    pub fn load(path: &Path) -> Result<IssuerRegistry, KeyError> {
        let shown = path.display().to_string();
        let text = match crate::files::read_bounded(path, REGISTRY_FILE_BYTES_MAX) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::FileTooLarge => {
                return Err(KeyError::TooLarge { path: shown });
            }
            Err(source) => {
                return Err(KeyError::Read {
                    path: shown,
                    source,
                });
            }
        };
        IssuerRegistry::from_toml(&text).map_err(|err| match err {
            KeyError::Parse { message, .. } => KeyError::Parse {
                path: shown,
                message,
            },
            other => other,
        })
    }

    /// Parses a registry from TOML text.
    pub fn from_toml(text: &str) -> Result<IssuerRegistry, KeyError> {
        let file: RegistryFile = toml::from_str(text).map_err(|err| KeyError::Parse {
            path: String::new(),
            message: err.to_string(),
        })?;
        IssuerRegistry::from_file(file)
    }

    /// Builds a registry from a parsed file, checking every entry.
    pub fn from_file(file: RegistryFile) -> Result<IssuerRegistry, KeyError> {
        let mut registry = IssuerRegistry::default();
        for provider in file.provider {
            registry.add_provider(provider)?;
        }
        for entry in file.issuer_key {
            let public_key =
                decode_public_key(&entry.public_key).ok_or(KeyError::BadPublicKey {
                    provider_id: entry.provider_id,
                })?;
            let mut key = IssuerKey::new(entry.provider_id, public_key);
            if key.key_id != entry.key_id {
                return Err(KeyError::KeyIdMismatch {
                    listed: entry.key_id,
                    derived: key.key_id,
                });
            }
            key.revoked_at = match (entry.revoked, entry.revoked_at_ms) {
                (false, None) => None,
                (true, at) => Some(UnixMillis(at.unwrap_or(0))),
                (false, Some(_)) => {
                    return Err(KeyError::Parse {
                        path: String::new(),
                        message: format!(
                            "issuer key {} of provider {} has revoked_at_ms but not revoked = true",
                            entry.key_id, entry.provider_id
                        ),
                    });
                }
            };
            registry.add_key(key)?;
        }
        Ok(registry)
    }

    /// The registry as a file, for writing back.
    pub fn to_file(&self) -> RegistryFile {
        RegistryFile {
            provider: self.providers.values().cloned().collect(),
            issuer_key: self
                .keys
                .values()
                .map(|key| IssuerKeyEntry {
                    provider_id: key.provider_id,
                    key_id: key.key_id,
                    public_key: URL_SAFE_NO_PAD.encode(key.public_key),
                    revoked: key.revoked_at.is_some(),
                    // Revoked since the start of time is written as before times were kept.
                    revoked_at_ms: key.revoked_at.map(|at| at.0).filter(|at| *at > 0),
                })
                .collect(),
        }
    }

    /// Adds a provider.
    pub fn add_provider(&mut self, provider: Provider) -> Result<(), KeyError> {
        if !is_valid_provider_name(&provider.name) {
            return Err(KeyError::BadProviderName {
                name: provider.name,
            });
        }
        if self.providers.contains_key(&provider.id) {
            return Err(KeyError::Duplicate {
                what: format!("provider id {}", provider.id),
            });
        }
        if self.provider_by_name(&provider.name).is_some() {
            return Err(KeyError::Duplicate {
                what: format!("provider name {}", provider.name),
            });
        }
        self.providers.insert(provider.id, provider);
        Ok(())
    }

    /// Adds an issuer key of a listed provider. Every way into the registry (the file, the
    /// admin API) comes through here, so this is where a weak key is refused.
    pub fn add_key(&mut self, key: IssuerKey) -> Result<(), KeyError> {
        check_public_key(&key.public_key).map_err(|weakness| KeyError::WeakPublicKey {
            provider_id: key.provider_id,
            key_id: key.key_id,
            weakness,
        })?;
        if !self.providers.contains_key(&key.provider_id) {
            return Err(KeyError::UnknownProvider {
                provider_id: key.provider_id,
                key_id: key.key_id,
            });
        }
        let id = (key.provider_id, key.key_id);
        if self.keys.contains_key(&id) {
            return Err(KeyError::Duplicate {
                what: format!("issuer key {} of provider {}", key.key_id, key.provider_id),
            });
        }
        self.keys.insert(id, key);
        Ok(())
    }

    /// Marks a key revoked from time `at` on. Revoking a revoked key changes nothing (its
    /// first revocation time stays).
    pub fn revoke(
        &mut self,
        provider_id: u16,
        key_id: u32,
        at: UnixMillis,
    ) -> Result<(), KeyError> {
        let key = self
            .keys
            .get_mut(&(provider_id, key_id))
            .ok_or(KeyError::UnknownKey {
                provider_id,
                key_id,
            })?;
        key.revoked_at.get_or_insert(at);
        Ok(())
    }

    /// The key with this provider and key id.
    pub fn key(&self, provider_id: u16, key_id: u32) -> Option<&IssuerKey> {
        self.keys.get(&(provider_id, key_id))
    }

    /// Every key, ordered by provider and key id.
    pub fn keys(&self) -> impl Iterator<Item = &IssuerKey> {
        self.keys.values()
    }

    /// The provider with this id.
    pub fn provider(&self, id: u16) -> Option<&Provider> {
        self.providers.get(&id)
    }

    /// The provider with this name.
    pub fn provider_by_name(&self, name: &str) -> Option<&Provider> {
        self.providers
            .values()
            .find(|provider| provider.name == name)
    }

    /// Every provider, ordered by id.
    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.providers.values()
    }
}

/// Whether `name` can name a provider: 1 to [`PROVIDER_NAME_LEN_MAX`] characters of
/// `a-z0-9_-`, so that it is safe in file names and CSV fields without quoting.
pub fn is_valid_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= PROVIDER_NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Why a 32-byte string is refused as an Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WeakKey {
    /// The bytes are not the encoding of any point on the curve.
    #[error("not a point on the Ed25519 curve")]
    NotOnCurve,
    /// The bytes name a curve point, but not in its one canonical encoding (a y
    /// coordinate of p or more, or a sign bit set on x = 0).
    #[error("not the canonical encoding of its point")]
    NonCanonical,
    /// The point's order divides 8 (the identity among them). Under such a key anybody can
    /// sign anything: S = 0 with R one of the eight small-order points verifies for any
    /// message (for the identity, R = identity), unless the verifier refuses the key, and
    /// `ring` does not.
    #[error("a point of small order")]
    SmallOrder,
}

/// Checks that `public_key` is a safe Ed25519 public key: the canonical encoding of a
/// curve point whose order does not divide 8. `ring` verifies signatures under any key
/// that decodes, so every key the engine trusts (issuer keys, and the device key each
/// credential carries) passes here first; libsodium refuses the same keys.
pub fn check_public_key(public_key: &[u8; PUBLIC_KEY_LEN]) -> Result<(), WeakKey> {
    let point = CompressedEdwardsY(*public_key)
        .decompress()
        .ok_or(WeakKey::NotOnCurve)?;
    // Decompressing reduces y modulo p and ignores a sign bit on x = 0, so a second
    // encoding of a point decompresses too; compressing again gives the one canonical form.
    if point.compress().as_bytes() != public_key {
        return Err(WeakKey::NonCanonical);
    }
    if point.is_small_order() {
        return Err(WeakKey::SmallOrder);
    }
    Ok(())
}

/// Decodes a base64url (no padding) Ed25519 public key.
pub fn decode_public_key(text: &str) -> Option<[u8; PUBLIC_KEY_LEN]> {
    if text.len() > 64 {
        return None;
    }
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

/// Encodes a public key as base64url without padding.
pub fn encode_public_key(public_key: &[u8; PUBLIC_KEY_LEN]) -> String {
    URL_SAFE_NO_PAD.encode(public_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::mint::{Device, Issuer};

    /// A real public key (from a fixed seed): the registry refuses bytes that are not one.
    fn sample_key() -> [u8; PUBLIC_KEY_LEN] {
        Issuer::from_seed(1, [7; 32]).public_key()
    }

    fn sample() -> String {
        registry_text(&sample_key())
    }

    /// A registry file of one provider and one key.
    fn registry_text(key: &[u8; PUBLIC_KEY_LEN]) -> String {
        format!(
            "[[provider]]\nid = 1\nname = \"alipay\"\n\n[[issuer_key]]\nprovider_id = 1\nkey_id = {}\npublic_key = \"{}\"\n",
            key_id_of(key),
            encode_public_key(key)
        )
    }

    /// The identity point: the key that makes R = identity, S = 0 verify for any message.
    const IDENTITY: [u8; PUBLIC_KEY_LEN] = {
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        bytes[0] = 1;
        bytes
    };

    /// The eight points of order dividing 8, canonically encoded: the identity, the point
    /// of order 2, the two of order 4 and the four of order 8.
    const SMALL_ORDER_HEX: [&str; 8] = [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    ];

    #[test]
    fn a_registry_file_round_trips() {
        let registry = IssuerRegistry::from_toml(&sample()).unwrap();
        let key = registry.key(1, key_id_of(&sample_key())).unwrap();
        assert_eq!(key.revoked_at, None);
        let text = toml::to_string(&registry.to_file()).unwrap();
        assert_eq!(IssuerRegistry::from_toml(&text).unwrap(), registry);
    }

    #[test]
    fn a_wrong_key_id_is_refused() {
        let text = sample().replace(
            &format!("key_id = {}", key_id_of(&sample_key())),
            "key_id = 5",
        );
        assert!(matches!(
            IssuerRegistry::from_toml(&text),
            Err(KeyError::KeyIdMismatch { listed: 5, .. })
        ));
    }

    #[test]
    fn a_key_of_an_unlisted_provider_is_refused() {
        let text = sample().replace("provider_id = 1", "provider_id = 2");
        assert_eq!(
            IssuerRegistry::from_toml(&text).unwrap_err().code(),
            "unknown_provider"
        );
    }

    #[test]
    fn revoking_an_unknown_key_is_an_error() {
        let mut registry = IssuerRegistry::from_toml(&sample()).unwrap();
        assert_eq!(
            registry.revoke(1, 99, UnixMillis(5)).unwrap_err().code(),
            "unknown_issuer_key"
        );
        registry
            .revoke(1, key_id_of(&sample_key()), UnixMillis(5))
            .unwrap();
        assert!(
            registry
                .key(1, key_id_of(&sample_key()))
                .unwrap()
                .revoked_at
                .is_some()
        );
    }

    #[test]
    fn a_revocation_keeps_its_first_time_and_round_trips_through_the_file() {
        let mut registry = IssuerRegistry::from_toml(&sample()).unwrap();
        let key_id = key_id_of(&sample_key());
        registry.revoke(1, key_id, UnixMillis(5_000)).unwrap();
        registry.revoke(1, key_id, UnixMillis(9_000)).unwrap();
        let key = registry.key(1, key_id).unwrap().clone();
        assert_eq!(key.revoked_at, Some(UnixMillis(5_000)));
        assert!(!key.is_revoked_at(UnixMillis(4_999)));
        assert!(key.is_revoked_at(UnixMillis(5_000)));
        let text = toml::to_string(&registry.to_file()).unwrap();
        assert!(
            text.contains("revoked = true\nrevoked_at_ms = 5000\n"),
            "{text}"
        );
        assert_eq!(IssuerRegistry::from_toml(&text).unwrap(), registry);
        // Revoked since the start of time: written as files were before times were kept.
        let mut legacy = IssuerRegistry::from_toml(&sample()).unwrap();
        legacy.revoke(1, key_id, UnixMillis(0)).unwrap();
        let text = toml::to_string(&legacy.to_file()).unwrap();
        assert!(text.ends_with("revoked = true\n"), "{text}");
    }

    #[test]
    fn a_key_revoked_without_a_time_is_revoked_since_the_start_and_a_lone_time_is_refused() {
        let revoked = format!("{}revoked = true\n", sample());
        let registry = IssuerRegistry::from_toml(&revoked).unwrap();
        let key = registry.key(1, key_id_of(&sample_key())).unwrap();
        assert_eq!(key.revoked_at, Some(UnixMillis(0)));
        let lone_time = format!("{}revoked_at_ms = 7\n", sample());
        let err = IssuerRegistry::from_toml(&lone_time).unwrap_err();
        assert_eq!(err.code(), "key_file_invalid");
        assert!(
            err.to_string()
                .contains("revoked_at_ms but not revoked = true"),
            "{err}"
        );
    }

    #[test]
    fn real_keys_pass_the_check() {
        assert_eq!(check_public_key(&sample_key()), Ok(()));
        let seeded = Device::public_key_of(&Device::key_from_seed(&[3; 32]));
        assert_eq!(check_public_key(&seeded), Ok(()));
        let random = Device::public_key_of(&Device::generate_key().unwrap());
        assert_eq!(check_public_key(&random), Ok(()));
    }

    #[test]
    fn every_small_order_point_is_refused() {
        for hex in SMALL_ORDER_HEX {
            let key = crate::hex::decode_32(hex).unwrap();
            assert_eq!(check_public_key(&key), Err(WeakKey::SmallOrder), "{hex}");
        }
        // The identity and the all-zero key by name, as the ones an attacker tries first.
        assert_eq!(check_public_key(&IDENTITY), Err(WeakKey::SmallOrder));
        assert_eq!(check_public_key(&[0; 32]), Err(WeakKey::SmallOrder));
    }

    #[test]
    fn bytes_that_are_no_curve_point_are_refused() {
        assert_eq!(check_public_key(&[7; 32]), Err(WeakKey::NotOnCurve));
        let mut y_is_2 = [0u8; 32];
        y_is_2[0] = 2;
        assert_eq!(check_public_key(&y_is_2), Err(WeakKey::NotOnCurve));
    }

    #[test]
    fn a_second_encoding_of_a_point_is_refused() {
        // y = 3 names a point of large order; p + 3 (still below 2^255) names the same one.
        let mut canonical = [0u8; 32];
        canonical[0] = 3;
        assert_eq!(check_public_key(&canonical), Ok(()));
        let mut y_plus_p = [0xff; 32];
        y_plus_p[0] = 0xf0;
        y_plus_p[31] = 0x7f;
        assert_eq!(check_public_key(&y_plus_p), Err(WeakKey::NonCanonical));
        // The identity with the sign bit of x set, though x = 0: "negative zero".
        let mut negative_zero = IDENTITY;
        negative_zero[31] |= 0x80;
        assert_eq!(check_public_key(&negative_zero), Err(WeakKey::NonCanonical));
    }

    #[test]
    fn the_registry_refuses_a_weak_issuer_key_from_its_file_and_from_add_key() {
        let text = registry_text(&IDENTITY);
        let err = IssuerRegistry::from_toml(&text).unwrap_err();
        assert_eq!(err.code(), "weak_public_key");
        assert!(err.to_string().contains("small order"), "{err}");

        // The admin API's path: a listed provider, a key that is not a point. Nothing changes.
        let mut registry = IssuerRegistry::from_toml(&sample()).unwrap();
        let before = registry.clone();
        let err = registry.add_key(IssuerKey::new(1, [7; 32])).unwrap_err();
        assert!(matches!(
            err,
            KeyError::WeakPublicKey {
                provider_id: 1,
                weakness: WeakKey::NotOnCurve,
                ..
            }
        ));
        assert_eq!(registry, before);
    }
}
