//! The issuer key registry: which payment providers exist and which of their public keys
//! may sign credentials. A provider may have several active keys at once (rotation); a
//! revoked key stays listed so that its credentials are refused with a clear reason.
//!
//! The registry is loaded from a TOML file the operator controls (`docs/configuration.md`)
//! and holds public keys only.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::format::PUBLIC_KEY_LEN;
use super::key_id_of;

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
    /// A revoked key's credentials are refused.
    pub revoked: bool,
}

impl IssuerKey {
    /// An active key for `provider_id`.
    pub fn new(provider_id: u16, public_key: [u8; PUBLIC_KEY_LEN]) -> IssuerKey {
        IssuerKey {
            provider_id,
            key_id: key_id_of(&public_key),
            public_key,
            revoked: false,
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
}

impl IssuerRegistry {
    /// Reads a registry file.
    pub fn load(path: &Path) -> Result<IssuerRegistry, KeyError> {
        let shown = path.display().to_string();
        let metadata = std::fs::metadata(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        if metadata.len() > REGISTRY_FILE_BYTES_MAX {
            return Err(KeyError::TooLarge { path: shown });
        }
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
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
            key.revoked = entry.revoked;
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
                    revoked: key.revoked,
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

    /// Adds an issuer key of a listed provider.
    pub fn add_key(&mut self, key: IssuerKey) -> Result<(), KeyError> {
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

    /// Marks a key revoked. Revoking a revoked key changes nothing.
    pub fn revoke(&mut self, provider_id: u16, key_id: u32) -> Result<(), KeyError> {
        let key = self
            .keys
            .get_mut(&(provider_id, key_id))
            .ok_or(KeyError::UnknownKey {
                provider_id,
                key_id,
            })?;
        key.revoked = true;
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

    fn sample() -> String {
        let key = [7u8; 32];
        format!(
            "[[provider]]\nid = 1\nname = \"alipay\"\n\n[[issuer_key]]\nprovider_id = 1\nkey_id = {}\npublic_key = \"{}\"\n",
            key_id_of(&key),
            encode_public_key(&key)
        )
    }

    #[test]
    fn a_registry_file_round_trips() {
        let registry = IssuerRegistry::from_toml(&sample()).unwrap();
        let key = registry.key(1, key_id_of(&[7u8; 32])).unwrap();
        assert!(!key.revoked);
        let text = toml::to_string(&registry.to_file()).unwrap();
        assert_eq!(IssuerRegistry::from_toml(&text).unwrap(), registry);
    }

    #[test]
    fn a_wrong_key_id_is_refused() {
        let text = sample().replace(&format!("key_id = {}", key_id_of(&[7u8; 32])), "key_id = 5");
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
            registry.revoke(1, 99).unwrap_err().code(),
            "unknown_issuer_key"
        );
        registry.revoke(1, key_id_of(&[7u8; 32])).unwrap();
        assert!(registry.key(1, key_id_of(&[7u8; 32])).unwrap().revoked);
    }
}
