//! The rider code (QR token): its format, the issuer key registry, the verifier that gates
//! depend on, and the minting functions that phones (and the simulator and tests) use.
//!
//! Verification never panics and never returns `Err` for a bad code: a bad code is a
//! [`Decision::Rejected`] with a [`Reason`]. Minting lives in [`mint`], apart from
//! verification, so that the verifier's code path never holds a private key.

pub mod device_signature;
pub mod format;
pub mod keys;
pub mod mint;
pub mod vectors;
pub mod verifier;

pub use format::{CodeFields, Credential};
pub use keys::{IssuerKey, IssuerRegistry, KeyError, Provider, WeakKey, check_public_key};
pub use verifier::{Decision, VerifiedCode, Verifier, VerifierConfig};

/// Why a code was rejected. Each has a stable code string (see [`Reason::code`]) that
/// gates and reports match on; `docs/qr-token.md` lists them in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The text is longer than any code can be.
    TooLong,
    /// The text is not valid Base45.
    BadEncoding,
    /// The first byte names a format version this build does not understand.
    UnsupportedVersion,
    /// The bytes end before the layout does.
    Truncated,
    /// There are bytes after the layout's end.
    TrailingBytes,
    /// No issuer key with this provider id and key id is registered.
    UnknownIssuerKey,
    /// The issuer key is registered but revoked.
    RevokedIssuerKey,
    /// The issuer's signature over the credential does not verify.
    BadCredentialSignature,
    /// The credential's expiry time has passed.
    CredentialExpired,
    /// The credential's device key is not a safe Ed25519 public key (not a curve point,
    /// not canonically encoded, or of small order), so a signature under it proves nothing.
    WeakDeviceKey,
    /// The device's signature over the code does not verify.
    BadCodeSignature,
    /// The code was made longer ago than the validity window allows.
    CodeExpired,
    /// The code claims to be made later than now plus the allowed clock skew.
    CodeFromFuture,
    /// The rider's account is on the deny list.
    AccountDenied,
}

impl Reason {
    /// Every reason, in the order the verifier checks them. The ledger stores a reason by
    /// its place here (a lost fare's), so a new reason is only ever appended.
    pub const ALL: [Reason; 14] = [
        Reason::TooLong,
        Reason::BadEncoding,
        Reason::UnsupportedVersion,
        Reason::Truncated,
        Reason::TrailingBytes,
        Reason::UnknownIssuerKey,
        Reason::RevokedIssuerKey,
        Reason::BadCredentialSignature,
        Reason::CredentialExpired,
        Reason::WeakDeviceKey,
        Reason::BadCodeSignature,
        Reason::CodeExpired,
        Reason::CodeFromFuture,
        Reason::AccountDenied,
    ];

    /// The stable code string of this reason.
    pub fn code(self) -> &'static str {
        match self {
            Reason::TooLong => "too_long",
            Reason::BadEncoding => "bad_encoding",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::Truncated => "truncated",
            Reason::TrailingBytes => "trailing_bytes",
            Reason::UnknownIssuerKey => "unknown_issuer_key",
            Reason::RevokedIssuerKey => "revoked_issuer_key",
            Reason::BadCredentialSignature => "bad_credential_signature",
            Reason::CredentialExpired => "credential_expired",
            Reason::WeakDeviceKey => "weak_device_key",
            Reason::BadCodeSignature => "bad_code_signature",
            Reason::CodeExpired => "code_expired",
            Reason::CodeFromFuture => "code_from_future",
            Reason::AccountDenied => "account_denied",
        }
    }

    /// A sentence for people (support staff, `token inspect`).
    pub fn describe(self) -> &'static str {
        match self {
            Reason::TooLong => "the text is longer than any rider code",
            Reason::BadEncoding => "the text is not valid Base45",
            Reason::UnsupportedVersion => "the code's format version is not supported",
            Reason::Truncated => "the code ends too early",
            Reason::TrailingBytes => "the code has extra bytes after its end",
            Reason::UnknownIssuerKey => "no issuer key with this provider and key id is registered",
            Reason::RevokedIssuerKey => "the issuer key that signed the credential is revoked",
            Reason::BadCredentialSignature => "the provider's signature on the credential is wrong",
            Reason::CredentialExpired => "the credential has expired",
            Reason::WeakDeviceKey => "the credential's device key is not a safe public key",
            Reason::BadCodeSignature => "the phone's signature on the code is wrong",
            Reason::CodeExpired => "the code is older than the validity window",
            Reason::CodeFromFuture => {
                "the code's time is later than now plus the allowed clock skew"
            }
            Reason::AccountDenied => "the rider's account is deny-listed",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// The key id of an issuer public key: the first four bytes of its SHA-256, big-endian.
/// Deriving it means a key file cannot claim an id that belongs to another key.
pub fn key_id_of(public_key: &[u8; format::PUBLIC_KEY_LEN]) -> u32 {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    let mut id = [0u8; 4];
    id.copy_from_slice(&digest.as_ref()[..4]);
    u32::from_be_bytes(id)
}
