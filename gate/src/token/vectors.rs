//! The published test vectors of the rider code format: made deterministically from fixed
//! seeds, so that regenerating them gives the same file byte for byte, and so that any
//! other implementation can check itself against `tests/vectors/qr-v1.json`.
//!
//! Regenerate with `fareway token vectors --out tests/vectors/qr-v1.json`.

use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;

use super::Reason;
use super::format::{
    self, CODE_LEN, CREDENTIAL_BODY_LEN, CodeFields, PUBLIC_KEY_LEN, TEXT_LEN_MAX, encode_text,
};
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
/// The identity point's encoding: a small-order device key, under which a signature with
/// R = identity and S = 0 verifies for any message in a verifier that does not check keys.
const IDENTITY_POINT: [u8; PUBLIC_KEY_LEN] = {
    let mut bytes = [0u8; PUBLIC_KEY_LEN];
    bytes[0] = 1;
    bytes
};

/// Makes the vector file from fixed seeds. Same output on every run and machine.
///
/// The steps below append their vectors in the published order; a new vector goes at the
/// end, so that the existing ones keep their place in the file.
pub fn generate() -> VectorFile {
    let fixture = Fixture::new();
    let registry = registry_of(&fixture);
    let cases = [
        valid_codes(&fixture),
        text_faults(&fixture),
        layout_faults(&fixture),
        issuer_key_faults(&fixture),
        credential_faults(&fixture),
        code_faults(&fixture),
        account_faults(&fixture),
        device_key_faults(&fixture),
    ];
    let vectors = cases.into_iter().flatten().map(Case::into_vector).collect();
    VectorFile {
        format: "fareway-qr".into(),
        format_version: format::FORMAT_VERSION,
        generated_by: "fareway token vectors --out tests/vectors/qr-v1.json".into(),
        code_validity_ms: fixture.config.code_validity_ms,
        clock_skew_ms: fixture.config.clock_skew_ms,
        registry: registry.to_file(),
        deny_list: vec![DENIED_ACCOUNT],
        issuer_seeds: issuer_seeds(&fixture),
        vectors,
    }
}

/// One vector before it is judged: its input and the outcome declared for it.
struct Case {
    name: &'static str,
    description: &'static str,
    text: String,
    at: UnixMillis,
    /// `None` for a code that must be accepted.
    expected: Option<Reason>,
}

impl Case {
    /// The published vector. The expected outcome is declared with each case, not taken
    /// from the verifier, so a broken verifier cannot write its own mistakes into the file.
    fn into_vector(self) -> Vector {
        let decision = match self.expected {
            None => Decision::Accepted(expected_fields(&self.text)),
            Some(reason) => Decision::Rejected(reason),
        };
        vector(self.name, self.description, self.text, self.at, decision)
    }
}

fn case(
    name: &'static str,
    description: &'static str,
    text: String,
    at: UnixMillis,
    expected: Option<Reason>,
) -> Case {
    Case {
        name,
        description,
        text,
        at,
        expected,
    }
}

/// The fixed keys, times and valid code that the vectors are made from.
struct Fixture {
    config: VerifierConfig,
    metro_pay: Issuer,
    metro_pay_revoked: Issuer,
    city_wallet: Issuer,
    unregistered: Issuer,
    unknown_provider: Issuer,
    /// The verification time of most vectors.
    now: UnixMillis,
    /// When every credential expires.
    expires: UnixMillis,
    /// When most codes were made: a second before `now`.
    made: UnixMillis,
    /// The fields of most codes.
    fields: CodeFields,
    /// The code that most faults are made from: metro-pay's, for account 1001.
    valid: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let now = UnixMillis(BASE_TIME_MS);
        let made = now.saturating_sub(1_000);
        let mut fixture = Fixture {
            config: VerifierConfig::default(),
            metro_pay: Issuer::from_seed(1, [0x01; 32]),
            metro_pay_revoked: Issuer::from_seed(1, [0x02; 32]),
            city_wallet: Issuer::from_seed(2, [0x03; 32]),
            unregistered: Issuer::from_seed(1, [0x04; 32]),
            unknown_provider: Issuer::from_seed(9, [0x05; 32]),
            now,
            expires: UnixMillis(BASE_TIME_MS + 7 * DAY_MS),
            made,
            fields: CodeFields {
                sequence: 41,
                generated_at: made,
            },
            valid: Vec::new(),
        };
        fixture.valid = fixture.code(&fixture.metro_pay, 1_001, 0x11, fixture.fields);
        fixture
    }

    /// A code of a credential that `issuer` made for `account`, whose device key comes
    /// from a seed of `device_seed` bytes.
    fn code(&self, issuer: &Issuer, account: u64, device_seed: u8, fields: CodeFields) -> Vec<u8> {
        let key = Device::key_from_seed(&[device_seed; 32]);
        let credential = issuer.issue(account, self.expires, 0, Device::public_key_of(&key));
        Device::new(key, credential, 0).code_bytes_with(fields)
    }
}

/// Two providers with three keys, one of them revoked.
fn registry_of(fixture: &Fixture) -> IssuerRegistry {
    let mut registry = IssuerRegistry::default();
    for (id, name) in [(1, "metro-pay"), (2, "city-wallet")] {
        registry
            .add_provider(Provider {
                id,
                name: name.to_string(),
            })
            .unwrap_or_else(|err| unreachable!("fixed providers are valid: {err}"));
    }
    for issuer in [
        &fixture.metro_pay,
        &fixture.metro_pay_revoked,
        &fixture.city_wallet,
    ] {
        registry
            .add_key(issuer.issuer_key())
            .unwrap_or_else(|err| unreachable!("fixed keys are valid: {err}"));
    }
    registry
        .revoke(1, fixture.metro_pay_revoked.key_id(), UnixMillis(0))
        .unwrap_or_else(|err| unreachable!("the key was just added: {err}"));
    registry
}

/// Every issuer key's seed, registered or not.
fn issuer_seeds(fixture: &Fixture) -> Vec<SeedEntry> {
    let seed_entry = |issuer: &Issuer, seed: u8, registered: bool| SeedEntry {
        provider_id: issuer.provider_id(),
        key_id: issuer.key_id(),
        seed_hex: format!("{seed:02x}").repeat(32),
        registered,
    };
    vec![
        seed_entry(&fixture.metro_pay, 0x01, true),
        seed_entry(&fixture.metro_pay_revoked, 0x02, true),
        seed_entry(&fixture.city_wallet, 0x03, true),
        seed_entry(&fixture.unregistered, 0x04, false),
        seed_entry(&fixture.unknown_provider, 0x05, false),
    ]
}

/// Fresh codes, and the edges of the code's time window.
fn valid_codes(f: &Fixture) -> Vec<Case> {
    let second_provider = CodeFields {
        sequence: 7,
        generated_at: f.made,
    };
    vec![
        case(
            "valid",
            "a fresh code of an active key",
            encode_text(&f.valid),
            f.now,
            None,
        ),
        case(
            "valid_second_provider",
            "a fresh code of another provider",
            encode_text(&f.code(&f.city_wallet, 2_002, 0x12, second_provider)),
            f.now,
            None,
        ),
        case(
            "valid_at_validity_edge",
            "a code exactly code_validity_ms old is still accepted",
            encode_text(&f.valid),
            f.made.saturating_add(f.config.code_validity_ms),
            None,
        ),
        case(
            "valid_at_skew_edge",
            "a code exactly clock_skew_ms in the future is still accepted",
            encode_text(&f.valid),
            f.made.saturating_sub(f.config.clock_skew_ms),
            None,
        ),
    ]
}

/// Texts that are no code's Base45 text, or no bytes at all.
fn text_faults(f: &Fixture) -> Vec<Case> {
    vec![
        case(
            "too_long",
            "a text longer than any code",
            "0".repeat(TEXT_LEN_MAX + 1),
            f.now,
            Some(Reason::TooLong),
        ),
        case(
            "bad_encoding_character",
            "a character outside the Base45 alphabet",
            "FAREWAY~CODE".into(),
            f.now,
            Some(Reason::BadEncoding),
        ),
        case(
            "bad_encoding_value",
            "a Base45 triple above 65535",
            "ZZZ".into(),
            f.now,
            Some(Reason::BadEncoding),
        ),
        case(
            "bad_encoding_pair",
            "a final Base45 pair above 255",
            "ZZ".into(),
            f.now,
            Some(Reason::BadEncoding),
        ),
        case(
            "bad_encoding_length",
            "a Base45 text whose length leaves one character over",
            "0".into(),
            f.now,
            Some(Reason::BadEncoding),
        ),
        case(
            "empty",
            "no bytes at all",
            String::new(),
            f.now,
            Some(Reason::Truncated),
        ),
    ]
}

/// Bytes of the wrong version or length.
fn layout_faults(f: &Fixture) -> Vec<Case> {
    let mut wrong_version = f.valid.clone();
    wrong_version[0] = 2;
    let mut trailing = f.valid.clone();
    trailing.extend_from_slice(&[0, 0]);
    vec![
        case(
            "unsupported_version",
            "format version 2",
            encode_text(&wrong_version),
            f.now,
            Some(Reason::UnsupportedVersion),
        ),
        case(
            "truncated",
            "the last two bytes are missing",
            encode_text(&f.valid[..CODE_LEN - 2]),
            f.now,
            Some(Reason::Truncated),
        ),
        case(
            "trailing_bytes",
            "two bytes after the code's end",
            encode_text(&trailing),
            f.now,
            Some(Reason::TrailingBytes),
        ),
    ]
}

/// Credentials of keys the registry does not list, or lists as revoked.
fn issuer_key_faults(f: &Fixture) -> Vec<Case> {
    vec![
        case(
            "unknown_issuer_key",
            "signed by a key the registry does not list",
            encode_text(&f.code(&f.unregistered, 1_003, 0x13, f.fields)),
            f.now,
            Some(Reason::UnknownIssuerKey),
        ),
        case(
            "unknown_provider",
            "a provider id the registry does not list",
            encode_text(&f.code(&f.unknown_provider, 1_004, 0x14, f.fields)),
            f.now,
            Some(Reason::UnknownIssuerKey),
        ),
        case(
            "revoked_issuer_key",
            "signed by a revoked key",
            encode_text(&f.code(&f.metro_pay_revoked, 1_005, 0x15, f.fields)),
            f.now,
            Some(Reason::RevokedIssuerKey),
        ),
    ]
}

/// A forged credential, and the edge of a credential's expiry.
fn credential_faults(f: &Fixture) -> Vec<Case> {
    // A rider who edits the account id in a credential and re-signs the code with their own
    // device key: only the issuer's signature catches it.
    let mut forged = f.valid.clone();
    forged[8..16].copy_from_slice(&9_999u64.to_be_bytes());
    let device = Device::key_from_seed(&[0x11; 32]);
    let body_len = format::CODE_BODY_LEN;
    let forged_signature = device.sign(&forged[..body_len]);
    forged[body_len..].copy_from_slice(forged_signature.as_ref());
    let last_moment = f.expires.saturating_sub(1);
    let at_last_moment = CodeFields {
        sequence: 42,
        generated_at: last_moment.saturating_sub(1_000),
    };
    vec![
        case(
            "bad_credential_signature",
            "the account id was changed after the issuer signed",
            encode_text(&forged),
            f.now,
            Some(Reason::BadCredentialSignature),
        ),
        case(
            "valid_just_before_credential_expiry",
            "a fresh code verified one millisecond before the credential expires",
            encode_text(&f.code(&f.metro_pay, 1_001, 0x11, at_last_moment)),
            last_moment,
            None,
        ),
        case(
            "credential_expired",
            "verified at the credential's expiry time",
            encode_text(&f.valid),
            f.expires,
            Some(Reason::CredentialExpired),
        ),
    ]
}

/// Codes whose device signature does not verify, and codes outside the time window.
fn code_faults(f: &Fixture) -> Vec<Case> {
    let mut bad_code_signature = f.valid.clone();
    bad_code_signature[CODE_LEN - 1] ^= 0x01;
    let mut sequence_edited = f.valid.clone();
    sequence_edited[CREDENTIAL_BODY_LEN + 64 + 3] ^= 0x01;
    vec![
        case(
            "bad_code_signature",
            "one bit of the device signature flipped",
            encode_text(&bad_code_signature),
            f.now,
            Some(Reason::BadCodeSignature),
        ),
        case(
            "bad_code_signature_sequence_edited",
            "the sequence number was changed after the device signed",
            encode_text(&sequence_edited),
            f.now,
            Some(Reason::BadCodeSignature),
        ),
        case(
            "code_expired",
            "verified one millisecond after the validity window",
            encode_text(&f.valid),
            f.made.saturating_add(f.config.code_validity_ms + 1),
            Some(Reason::CodeExpired),
        ),
        case(
            "code_from_future",
            "made one millisecond beyond the allowed clock skew",
            encode_text(&f.valid),
            f.made.saturating_sub(f.config.clock_skew_ms + 1),
            Some(Reason::CodeFromFuture),
        ),
    ]
}

/// A valid code of a deny-listed account.
fn account_faults(f: &Fixture) -> Vec<Case> {
    vec![case(
        "account_denied",
        "a valid code of a deny-listed account",
        encode_text(&f.code(&f.metro_pay, DENIED_ACCOUNT, 0x16, f.fields)),
        f.now,
        Some(Reason::AccountDenied),
    )]
}

/// A credential the issuer really signed for a small-order device key, and a code under
/// it "signed" with R = identity, S = 0: a verifier that does not refuse weak keys (ring
/// alone, for one) accepts it, whatever the code says.
fn device_key_faults(f: &Fixture) -> Vec<Case> {
    let credential = f.metro_pay.issue(1_006, f.expires, 0, IDENTITY_POINT);
    let mut forged = format::code_body(&credential.bytes, &f.fields).to_vec();
    forged.extend_from_slice(&IDENTITY_POINT); // R
    forged.extend_from_slice(&[0; 32]); // S
    vec![case(
        "weak_device_key",
        "the device key is the identity point and the code is signed with R = identity, S = 0",
        encode_text(&forged),
        f.now,
        Some(Reason::WeakDeviceKey),
    )]
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
