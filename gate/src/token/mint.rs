//! Minting: what a payment provider does to issue a credential and what a phone does to
//! show a code. The simulator, the tests and `fareway token mint` use it; the verifier
//! never does. Private keys live here and nowhere else.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;

use super::format::{
    self, CREDENTIAL_BODY_LEN, CREDENTIAL_LEN, CodeFields, Credential, PUBLIC_KEY_LEN,
};
use super::key_id_of;
use super::keys::{IssuerKey, encode_public_key};

/// Bytes of an Ed25519 private key seed.
pub const SEED_LEN: usize = 32;

/// Errors of minting and of private key files.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A key file could not be read or written.
    #[error("issuer private key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the file system said.
        source: std::io::Error,
    },
    /// A key file is not of the documented shape.
    #[error("issuer private key file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl MintError {
    /// The stable code string of this error.
    pub fn code(&self) -> &'static str {
        match self {
            MintError::Random => "random_failed",
            MintError::Io { .. } => "key_file_io",
            MintError::Parse { .. } => "key_file_invalid",
        }
    }
}

/// A payment provider's issuer key pair.
pub struct Issuer {
    provider_id: u16,
    key_id: u32,
    seed: [u8; SEED_LEN],
    key_pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Issuer {
    // By hand, so that the private seed never reaches a log or a panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("provider_id", &self.provider_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// An issuer private key file (TOML, owner-only permissions).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerKeyFile {
    /// The provider's name.
    pub provider: String,
    /// The provider's id.
    pub provider_id: u16,
    /// The key id, derived from the public key.
    pub key_id: u32,
    /// The public key, base64url.
    pub public_key: String,
    /// The private key's 32-byte Ed25519 seed, base64url. Secret.
    pub private_seed: String,
}

impl Issuer {
    /// An issuer from a seed (deterministic: for test vectors and reproducible simulations).
    pub fn from_seed(provider_id: u16, seed: [u8; SEED_LEN]) -> Issuer {
        let key_pair = ed25519_from_seed(&seed);
        let public_key = public_key_of(&key_pair);
        Issuer {
            provider_id,
            key_id: key_id_of(&public_key),
            seed,
            key_pair,
        }
    }

    /// A new issuer with a key from the system's random number generator.
    pub fn generate(provider_id: u16) -> Result<Issuer, MintError> {
        Ok(Issuer::from_seed(provider_id, random_seed()?))
    }

    /// The provider id.
    pub fn provider_id(&self) -> u16 {
        self.provider_id
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        public_key_of(&self.key_pair)
    }

    /// The public half, as the registry holds it.
    pub fn issuer_key(&self) -> IssuerKey {
        IssuerKey::new(self.provider_id, self.public_key())
    }

    /// Signs a credential for a rider's device. The provider and key id are this issuer's.
    pub fn issue(
        &self,
        account_id: u64,
        expires_at: UnixMillis,
        flags: u8,
        device_public_key: [u8; PUBLIC_KEY_LEN],
    ) -> SignedCredential {
        let credential = Credential {
            flags,
            provider_id: self.provider_id,
            issuer_key_id: self.key_id,
            account_id,
            expires_at,
            device_public_key,
        };
        let body = format::credential_body(&credential);
        let mut bytes = [0u8; CREDENTIAL_LEN];
        bytes[..CREDENTIAL_BODY_LEN].copy_from_slice(&body);
        bytes[CREDENTIAL_BODY_LEN..].copy_from_slice(self.key_pair.sign(&body).as_ref());
        SignedCredential { bytes }
    }

    /// The key file for this issuer.
    pub fn to_key_file(&self, provider_name: &str) -> IssuerKeyFile {
        IssuerKeyFile {
            provider: provider_name.to_string(),
            provider_id: self.provider_id,
            key_id: self.key_id,
            public_key: encode_public_key(&self.public_key()),
            private_seed: URL_SAFE_NO_PAD.encode(self.seed),
        }
    }

    /// Writes the key file with owner-only permissions (0600), refusing to overwrite.
    pub fn write_key_file(&self, provider_name: &str, path: &Path) -> Result<(), MintError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |source| MintError::Io {
            path: path.display().to_string(),
            source,
        };
        let text =
            toml::to_string(&self.to_key_file(provider_name)).map_err(|err| MintError::Parse {
                path: path.display().to_string(),
                message: err.to_string(),
            })?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Reads a key file, checking that its public key and key id match its seed.
    pub fn read_key_file(path: &Path) -> Result<(Issuer, String), MintError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| MintError::Io {
            path: shown.clone(),
            source,
        })?;
        let parse = |message: String| MintError::Parse {
            path: shown.clone(),
            message,
        };
        let file: IssuerKeyFile = toml::from_str(&text).map_err(|err| parse(err.to_string()))?;
        let seed: [u8; SEED_LEN] = URL_SAFE_NO_PAD
            .decode(&file.private_seed)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| parse("private_seed is not 32 bytes of base64url".into()))?;
        let issuer = Issuer::from_seed(file.provider_id, seed);
        if issuer.key_id != file.key_id
            || encode_public_key(&issuer.public_key()) != file.public_key
        {
            return Err(parse(
                "key_id or public_key does not match private_seed".into(),
            ));
        }
        Ok((issuer, file.provider))
    }
}

/// A credential as the issuer signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedCredential {
    /// The credential's bytes, body and signature.
    pub bytes: [u8; CREDENTIAL_LEN],
}

/// A rider's phone: a device key and the credential issued for it.
#[derive(Debug)]
pub struct Device {
    key_pair: Ed25519KeyPair,
    credential: SignedCredential,
    next_sequence: u32,
}

impl Device {
    /// A device key from a seed.
    pub fn key_from_seed(seed: &[u8; SEED_LEN]) -> Ed25519KeyPair {
        ed25519_from_seed(seed)
    }

    /// A device key from the system's random number generator.
    pub fn generate_key() -> Result<Ed25519KeyPair, MintError> {
        Ok(ed25519_from_seed(&random_seed()?))
    }

    /// The public half of a device key, to put in a credential.
    pub fn public_key_of(key_pair: &Ed25519KeyPair) -> [u8; PUBLIC_KEY_LEN] {
        public_key_of(key_pair)
    }

    /// A device holding `credential`, whose next code has sequence `next_sequence`.
    pub fn new(
        key_pair: Ed25519KeyPair,
        credential: SignedCredential,
        next_sequence: u32,
    ) -> Device {
        Device {
            key_pair,
            credential,
            next_sequence,
        }
    }

    /// Makes the next code's bytes, generated at `at`.
    pub fn code_bytes(&mut self, at: UnixMillis) -> Vec<u8> {
        let fields = CodeFields {
            sequence: self.next_sequence,
            generated_at: at,
        };
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.code_bytes_with(fields)
    }

    /// Makes a code with the given fields, not moving the sequence.
    pub fn code_bytes_with(&self, fields: CodeFields) -> Vec<u8> {
        let body = format::code_body(&self.credential.bytes, &fields);
        let mut code = Vec::with_capacity(format::CODE_LEN);
        code.extend_from_slice(&body);
        code.extend_from_slice(self.key_pair.sign(&body).as_ref());
        code
    }

    /// Makes the next code as QR text.
    pub fn code_text(&mut self, at: UnixMillis) -> String {
        format::encode_text(&self.code_bytes(at))
    }
}

/// The Ed25519 key pair of a 32-byte seed (the settlement key is kept as one too).
pub fn ed25519_from_seed(seed: &[u8; SEED_LEN]) -> Ed25519KeyPair {
    // Any 32 bytes are a valid Ed25519 seed, so this cannot fail for a seed of that length.
    #[allow(clippy::expect_used)]
    Ed25519KeyPair::from_seed_unchecked(seed).expect("a 32-byte seed is always valid")
}

/// The public key of a key pair, as bytes.
pub fn public_key_of(key_pair: &Ed25519KeyPair) -> [u8; PUBLIC_KEY_LEN] {
    let mut public_key = [0u8; PUBLIC_KEY_LEN];
    public_key.copy_from_slice(key_pair.public_key().as_ref());
    public_key
}

/// A new random seed from the system's generator.
pub fn random_seed() -> Result<[u8; SEED_LEN], MintError> {
    let mut seed = [0u8; SEED_LEN];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| MintError::Random)?;
    Ok(seed)
}
