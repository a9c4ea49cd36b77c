//! The published test vectors of the rider code format: made deterministically from fixed
//! seeds, so that regenerating them gives the same file byte for byte, and so that any
//! other implementation can check itself against `tests/vectors/qr-v1.json`.
//!
//! Regenerate with `fareway token vectors --out tests/vectors/qr-v1.json`.

use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;

use super::Reason;
use super::format::{self, CODE_LEN, CREDENTIAL_BODY_LEN, CodeFields, TEXT_LEN_MAX};
use super::keys::{IssuerRegistry, Provider, RegistryFile};
use super::mint::{Device, Issuer};
use super::verifier::{Decision, VerifiedCode, Verifier, VerifierConfig};

/// The whole vector file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorFile {
    /// Always `fareway-qr`.
    pub format: String,
    /// The code format version the vectors are for.
    pub format_version: u8,
    /// How to regenerate the file.
    pub generated_by: String,
    /// The verifier's time settings every vector is judged with.
    pub code_validity_ms: u64,
    /// Allowed clock skew for codes from the future.
    pub clock_skew_ms: u64,
    /// The issuer key registry, in the registry file's shape.
    pub registry: RegistryFile,
    /// Deny-listed account ids.
    pub deny_list: Vec<u64>,
    /// The seeds of the issuer keys (test keys only: never use them for real).
    pub issuer_seeds: Vec<SeedEntry>,
    /// The vectors.
    pub vectors: Vec<Vector>,
}

/// A test issuer key's seed, so that an implementation can mint its own codes too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedEntry {
    /// The provider.
    pub provider_id: u16,
    /// The key id.
    pub key_id: u32,
    /// The 32-byte seed, hex.
    pub seed_hex: String,
    /// Whether the registry knows this key.
    pub registered: bool,
}

/// One vector: a text, a time, and what the verifier must say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    /// A short unique name.
    pub name: String,
    /// What the vector checks.
    pub description: String,
    /// The scanned text.
    pub text: String,
    /// The verification time, ms since the epoch.
    pub now_ms: u64,
    /// `accepted` or `rejected`.
    pub decision: String,
    /// For a rejection, the reason's code string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For an acceptance, the fields the verifier returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<AcceptedFields>,
}

/// The fields of an accepted code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptedFields {
    /// The rider's account.
    pub account_id: u64,
    /// The provider.
    pub provider_id: u16,
    /// The issuer key id.
    pub issuer_key_id: u32,
    /// Credential expiry, ms.
    pub credential_expires_at_ms: u64,
    /// The code's sequence number.
    pub sequence: u32,
    /// When the code was made, ms.
    pub generated_at_ms: u64,
    /// The credential's flags byte.
    pub flags: u8,
    /// The first 16 bytes of the SHA-256 of the code's bytes, hex.
    pub code_fingerprint_hex: String,
}

/// The time every vector is built around: 2027-01-15T08:00:00Z.
pub const BASE_TIME_MS: u64 = 1_800_000_000_000;
const DAY_MS: u64 = 86_400_000;
const DENIED_ACCOUNT: u64 = 6_666;

/// Makes the vector file from fixed seeds. Same output on every run and machine.
pub fn generate() -> VectorFile {
    let config = VerifierConfig::default();
    let metro_pay = Issuer::from_seed(1, [0x01; 32]);
    let metro_pay_revoked = Issuer::from_seed(1, [0x02; 32]);
    let city_wallet = Issuer::from_seed(2, [0x03; 32]);
    let unregistered = Issuer::from_seed(1, [0x04; 32]);
    let unknown_provider = Issuer::from_seed(9, [0x05; 32]);

    let mut registry = IssuerRegistry::default();
    for (id, name) in [(1, "metro-pay"), (2, "city-wallet")] {
        registry
            .add_provider(Provider {
                id,
                name: name.to_string(),
            })
            .unwrap_or_else(|err| unreachable!("fixed providers are valid: {err}"));
    }
    for issuer in [&metro_pay, &metro_pay_revoked, &city_wallet] {
        registry
            .add_key(issuer.issuer_key())
            .unwrap_or_else(|err| unreachable!("fixed keys are valid: {err}"));
    }
    registry
        .revoke(1, metro_pay_revoked.key_id())
        .unwrap_or_else(|err| unreachable!("the key was just added: {err}"));

    let now = UnixMillis(BASE_TIME_MS);
    let expires = UnixMillis(BASE_TIME_MS + 7 * DAY_MS);
    let made = now.saturating_sub(1_000);
    let code = |issuer: &Issuer, account: u64, device_seed: u8, fields: CodeFields| {
        let key = Device::key_from_seed(&[device_seed; 32]);
        let credential = issuer.issue(account, expires, 0, Device::public_key_of(&key));
        Device::new(key, credential, 0).code_bytes_with(fields)
    };
    let fields = CodeFields {
        sequence: 41,
        generated_at: made,
    };
    let valid = code(&metro_pay, 1_001, 0x11, fields);
    let text = |bytes: &[u8]| format::encode_text(bytes);

    let mut cases: Vec<(&str, &str, String, UnixMillis, Option<Reason>)> = vec![
        (
            "valid",
            "a fresh code of an active key",
            text(&valid),
            now,
            None,
        ),
        (
            "valid_second_provider",
            "a fresh code of another provider",
            text(&code(
                &city_wallet,
                2_002,
                0x12,
                CodeFields {
                    sequence: 7,
                    generated_at: made,
                },
            )),
            now,
            None,
        ),
        (
            "valid_at_validity_edge",
            "a code exactly code_validity_ms old is still accepted",
            text(&valid),
            made.saturating_add(config.code_validity_ms),
            None,
        ),
        (
            "valid_at_skew_edge",
            "a code exactly clock_skew_ms in the future is still accepted",
            text(&valid),
            made.saturating_sub(config.clock_skew_ms),
            None,
        ),
        (
            "too_long",
            "a text longer than any code",
            "0".repeat(TEXT_LEN_MAX + 1),
            now,
            Some(Reason::TooLong),
        ),
        (
            "bad_encoding_character",
            "a character outside the Base45 alphabet",
            "FAREWAY~CODE".into(),
            now,
            Some(Reason::BadEncoding),
        ),
        (
            "bad_encoding_value",
            "a Base45 triple above 65535",
            "ZZZ".into(),
            now,
            Some(Reason::BadEncoding),
        ),
        (
            "bad_encoding_pair",
            "a final Base45 pair above 255",
            "ZZ".into(),
            now,
            Some(Reason::BadEncoding),
        ),
        (
            "bad_encoding_length",
            "a Base45 text whose length leaves one character over",
            "0".into(),
            now,
            Some(Reason::BadEncoding),
        ),
        (
            "empty",
            "no bytes at all",
            String::new(),
            now,
            Some(Reason::Truncated),
        ),
    ];
    let mut wrong_version = valid.clone();
    wrong_version[0] = 2;
    cases.push((
        "unsupported_version",
        "format version 2",
        text(&wrong_version),
        now,
        Some(Reason::UnsupportedVersion),
    ));
    cases.push((
        "truncated",
        "the last two bytes are missing",
        text(&valid[..CODE_LEN - 2]),
        now,
        Some(Reason::Truncated),
    ));
    let mut trailing = valid.clone();
    trailing.extend_from_slice(&[0, 0]);
    cases.push((
        "trailing_bytes",
        "two bytes after the code's end",
        text(&trailing),
        now,
        Some(Reason::TrailingBytes),
    ));
    cases.push((
        "unknown_issuer_key",
        "signed by a key the registry does not list",
        text(&code(&unregistered, 1_003, 0x13, fields)),
        now,
        Some(Reason::UnknownIssuerKey),
    ));
    cases.push((
        "unknown_provider",
        "a provider id the registry does not list",
        text(&code(&unknown_provider, 1_004, 0x14, fields)),
        now,
        Some(Reason::UnknownIssuerKey),
    ));
    cases.push((
        "revoked_issuer_key",
        "signed by a revoked key",
        text(&code(&metro_pay_revoked, 1_005, 0x15, fields)),
        now,
        Some(Reason::RevokedIssuerKey),
    ));
    // A rider who edits the account id in a credential and re-signs the code with their own
    // device key: only the issuer's signature catches it.
    let mut forged = valid.clone();
    forged[8..16].copy_from_slice(&9_999u64.to_be_bytes());
    let device = Device::key_from_seed(&[0x11; 32]);
    let body_len = format::CODE_BODY_LEN;
    let forged_signature = device.sign(&forged[..body_len]);
    forged[body_len..].copy_from_slice(forged_signature.as_ref());
    cases.push((
        "bad_credential_signature",
        "the account id was changed after the issuer signed",
        text(&forged),
        now,
        Some(Reason::BadCredentialSignature),
    ));
    let last_moment = expires.saturating_sub(1);
    cases.push((
        "valid_just_before_credential_expiry",
        "a fresh code verified one millisecond before the credential expires",
        text(&code(
            &metro_pay,
            1_001,
            0x11,
            CodeFields {
                sequence: 42,
                generated_at: last_moment.saturating_sub(1_000),
            },
        )),
        last_moment,
        None,
    ));
    cases.push((
        "credential_expired",
        "verified at the credential's expiry time",
        text(&valid),
        expires,
        Some(Reason::CredentialExpired),
    ));
    let mut bad_code_signature = valid.clone();
    bad_code_signature[CODE_LEN - 1] ^= 0x01;
    cases.push((
        "bad_code_signature",
        "one bit of the device signature flipped",
        text(&bad_code_signature),
        now,
        Some(Reason::BadCodeSignature),
    ));
    let mut sequence_edited = valid.clone();
    sequence_edited[CREDENTIAL_BODY_LEN + 64 + 3] ^= 0x01;
    cases.push((
        "bad_code_signature_sequence_edited",
        "the sequence number was changed after the device signed",
        text(&sequence_edited),
        now,
        Some(Reason::BadCodeSignature),
    ));
    cases.push((
        "code_expired",
        "verified one millisecond after the validity window",
        text(&valid),
        made.saturating_add(config.code_validity_ms + 1),
        Some(Reason::CodeExpired),
    ));
    cases.push((
        "code_from_future",
        "made one millisecond beyond the allowed clock skew",
        text(&valid),
        made.saturating_sub(config.clock_skew_ms + 1),
        Some(Reason::CodeFromFuture),
    ));
    cases.push((
        "account_denied",
        "a valid code of a deny-listed account",
        text(&code(&metro_pay, DENIED_ACCOUNT, 0x16, fields)),
        now,
        Some(Reason::AccountDenied),
    ));

    let vectors = cases
        .into_iter()
        .map(|(name, description, text, at, expected)| {
            // The expected outcome is declared with each case, not taken from the verifier,
            // so a broken verifier cannot write its own mistakes into the published file.
            let decision = match expected {
                None => Decision::Accepted(expected_fields(&text)),
                Some(reason) => Decision::Rejected(reason),
            };
            vector(name, description, text, at, decision)
        })
        .collect();

    let seed_entry = |issuer: &Issuer, seed: u8, registered: bool| SeedEntry {
        provider_id: issuer.provider_id(),
        key_id: issuer.key_id(),
        seed_hex: format!("{seed:02x}").repeat(32),
        registered,
    };
    VectorFile {
        format: "fareway-qr".into(),
        format_version: format::FORMAT_VERSION,
        generated_by: "fareway token vectors --out tests/vectors/qr-v1.json".into(),
        code_validity_ms: config.code_validity_ms,
        clock_skew_ms: config.clock_skew_ms,
        registry: registry.to_file(),
        deny_list: vec![DENIED_ACCOUNT],
        issuer_seeds: vec![
            seed_entry(&metro_pay, 0x01, true),
            seed_entry(&metro_pay_revoked, 0x02, true),
            seed_entry(&city_wallet, 0x03, true),
            seed_entry(&unregistered, 0x04, false),
            seed_entry(&unknown_provider, 0x05, false),
        ],
        vectors,
    }
}

/// The fields an accepted case must yield, read straight from its layout.
fn expected_fields(text: &str) -> VerifiedCode {
    let bytes =
        format::decode_text(text).unwrap_or_else(|reason| unreachable!("accepted case: {reason}"));
    let code =
        format::parse(&bytes).unwrap_or_else(|reason| unreachable!("accepted case: {reason}"));
    VerifiedCode {
        account_id: code.credential.account_id,
        provider_id: code.credential.provider_id,
        issuer_key_id: code.credential.issuer_key_id,
        credential_expires_at: code.credential.expires_at,
        sequence: code.code.sequence,
        generated_at: code.code.generated_at,
        flags: code.credential.flags,
        code_fingerprint: format::fingerprint(&bytes),
    }
}

/// The vector file as its published text.
pub fn generate_json() -> String {
    let mut text = serde_json::to_string_pretty(&generate())
        .unwrap_or_else(|err| unreachable!("plain structs always serialize: {err}"));
    text.push('\n');
    text
}

/// A verifier set up as the file says.
pub fn verifier_for(file: &VectorFile) -> Result<Verifier, super::KeyError> {
    let registry = IssuerRegistry::from_file(RegistryFile {
        provider: file.registry.provider.clone(),
        issuer_key: file.registry.issuer_key.clone(),
    })?;
    let config = VerifierConfig {
        code_validity_ms: file.code_validity_ms,
        clock_skew_ms: file.clock_skew_ms,
        ..VerifierConfig::default()
    };
    let verifier = Verifier::new(config, registry);
    for account in &file.deny_list {
        verifier.set_denied(*account, true);
    }
    Ok(verifier)
}

/// The vector that records `decision` for this input.
pub fn vector(
    name: &str,
    description: &str,
    text: String,
    at: UnixMillis,
    decision: Decision,
) -> Vector {
    let (decision, reason, accepted) = match decision {
        Decision::Accepted(code) => (
            "accepted",
            None,
            Some(AcceptedFields {
                account_id: code.account_id,
                provider_id: code.provider_id,
                issuer_key_id: code.issuer_key_id,
                credential_expires_at_ms: code.credential_expires_at.0,
                sequence: code.sequence,
                generated_at_ms: code.generated_at.0,
                flags: code.flags,
                code_fingerprint_hex: crate::hex::encode(&code.code_fingerprint),
            }),
        ),
        Decision::Rejected(reason) => ("rejected", Some(reason.code().to_string()), None),
    };
    Vector {
        name: name.into(),
        description: description.into(),
        text,
        now_ms: at.0,
        decision: decision.into(),
        reason,
        accepted,
    }
}
