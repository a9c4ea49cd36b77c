//! The engine's settlement key: the Ed25519 key that signs every batch manifest, so that a
//! provider can check who made a settlement file.
//!
//! The key file holds the 32-byte private seed as 64 hex digits and a newline, readable by
//! its owner only. A server whose configured key file does not exist creates one (and
//! logs the new key's id); a file that exists but does not parse stops the server.

use std::path::Path;

use ring::signature::Ed25519KeyPair;

use super::manifest::Manifest;
use crate::files::write_atomically;
use crate::token::format::PUBLIC_KEY_LEN;
use crate::token::mint::{SEED_LEN, ed25519_from_seed, public_key_of, random_seed};

/// The signature algorithm, as named in manifests.
pub use fareway_gate::settlement::{ALGORITHM, key_id_text, verify_signature as verify};

/// Errors of the settlement key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("settlement key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Others than the owner may read the file.
    #[error("settlement key file {path} is readable by others (mode {mode:o}): chmod 600 it")]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file's content is not 64 hex digits.
    #[error("settlement key file {path} must hold the private seed as 64 hex digits")]
    Malformed {
        /// The file.
        path: String,
    },
    /// The system's random number generator failed.
    #[error("cannot make a settlement key: the system random number generator failed")]
    Random,
}

/// The key that signs manifests.
#[derive(Debug)]
pub struct SettlementKey {
    key_pair: Ed25519KeyPair,
    public_key: [u8; PUBLIC_KEY_LEN],
}

impl SettlementKey {
    /// The key with this seed (deterministic: for tests).
    pub fn from_seed(seed: [u8; SEED_LEN]) -> SettlementKey {
        let key_pair = ed25519_from_seed(&seed);
        let public_key = public_key_of(&key_pair);
        SettlementKey {
            key_pair,
            public_key,
        }
    }

    /// Reads the key file, or makes a new key and writes it there when the file does not
    /// exist. Returns the key and whether it was made now.
    pub fn load_or_create(path: &Path) -> Result<(SettlementKey, bool), KeyFileError> {
        let shown = path.display().to_string();
        let io = |source| KeyFileError::Io {
            path: shown.clone(),
            source,
        };
        // 64 hex digits and a line break; anything much larger is not a key file.
        match crate::files::read_bounded(path, 4_096) {
            Ok(text) => {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyFileError::Exposed {
                        path: shown.clone(),
                        mode,
                    });
                }
                let seed =
                    crate::hex::decode_32(text.trim()).map_err(|_| KeyFileError::Malformed {
                        path: shown.clone(),
                    })?;
                Ok((SettlementKey::from_seed(seed), false))
            }
            // A dangling symbolic link is a key file whose target is gone (a disk not
            // mounted): a new key written over the link would sign batches no provider
            // expects, so it is refused like a restart's missing key.
            Err(err)
                if err.kind() == std::io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(path).is_ok() =>
            {
                Err(io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "it is a symbolic link to a missing file; a new key is not made over it",
                )))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // Written whole and readable by its owner only: a crash leaves no key file
                // or a whole one.
                let seed = random_seed().map_err(|_| KeyFileError::Random)?;
                let text = format!("{}\n", crate::hex::encode(&seed));
                write_atomically(path, text.as_bytes(), 0o600).map_err(io)?;
                Ok((SettlementKey::from_seed(seed), true))
            }
            Err(err) => Err(io(err)),
        }
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.public_key
    }

    /// The key id: the first four bytes of the SHA-256 of the public key, as eight hex
    /// digits.
    pub fn key_id(&self) -> String {
        key_id_text(&self.public_key)
    }

    /// Signs a message.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.key_pair.sign(message).as_ref());
        signature
    }

    /// Signs `manifest`, filling in this key's id and the signature.
    pub fn sign_manifest(&self, manifest: &mut Manifest) {
        manifest.sign_with(self.key_id(), |message| self.sign(message));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_key_is_made_once_kept_private_and_refused_when_exposed_or_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settlement.key");
        let (made, created) = SettlementKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (loaded, created) = SettlementKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(loaded.public_key(), made.public_key());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SettlementKey::load_or_create(&path),
            Err(KeyFileError::Exposed { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not hex\n").unwrap();
        assert!(matches!(
            SettlementKey::load_or_create(&path),
            Err(KeyFileError::Malformed { .. })
        ));
    }

    #[test]
    fn a_dangling_key_link_is_refused_not_replaced_by_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settlement.key");
        std::os::unix::fs::symlink(dir.path().join("gone/settlement.key"), &path).unwrap();
        let err = SettlementKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // The link is still a link: no key was written over it.
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
