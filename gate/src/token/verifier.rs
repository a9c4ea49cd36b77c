//! The verifier: scanned text in, [`Decision`] out, at gate speed.
//!
//! Checks run in the order documented in `docs/qr-token.md` and stop at the first failure.
//! A credential whose issuer signature has verified is remembered in a bounded cache
//! keyed by the SHA-256 of its issuer key and its bytes, so a repeat rider costs one signature check (the
//! device's) instead of two. The cache only skips the signature and the device key's
//! strength (judged once with it): revocation, expiry and the deny list are checked on
//! every scan.
//!
//! `ring` verifies a signature under any public key that decodes, including the small-order
//! points, under which anybody can sign anything (for the identity key, R = identity and
//! S = 0 verifies for every message). So every key is checked with [`check_public_key`]
//! before a signature under it counts: issuer keys when the registry takes them, a
//! credential's device key when its issuer signature is verified.
//!
//! This module never panics on input and never holds a private key.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use ed25519_dalek::VerifyingKey;
use ring::signature::{ED25519, UnparsedPublicKey};

use crate::clock::UnixMillis;

use super::Reason;
use super::device_signature;
use super::format::{self, ParsedCode};
use super::keys::{IssuerRegistry, KeyError, check_public_key};

/// How the verifier judges time, and how much it remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierConfig {
    /// A code is refused once it is older than this. Phones refresh codes every 30 to 60
    /// seconds; the window covers a slow queue at the gate.
    pub code_validity_ms: u64,
    /// How far in the future a code's time may be, for a phone whose clock runs fast.
    pub clock_skew_ms: u64,
    /// Most credentials remembered as verified; 0 turns the cache off.
    pub credential_cache_entries_max: usize,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            code_validity_ms: 120_000,
            clock_skew_ms: 30_000,
            credential_cache_entries_max: 200_000,
        }
    }
}

/// What a code that passed every check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedCode {
    /// The rider's account.
    pub account_id: u64,
    /// The provider that pays for the rider.
    pub provider_id: u16,
    /// The issuer key that signed the credential.
    pub issuer_key_id: u32,
    /// When the credential expires.
    pub credential_expires_at: UnixMillis,
    /// The device's sequence number of this code.
    pub sequence: u32,
    /// When the phone made the code.
    pub generated_at: UnixMillis,
    /// The credential's flags.
    pub flags: u8,
    /// A fingerprint of the code's exact bytes (the first 16 bytes of their SHA-256): the
    /// gate service uses it to tell a gate retrying from a code replayed elsewhere.
    pub code_fingerprint: [u8; 16],
}

/// The verifier's answer. A rejection is a result, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every check passed.
    Accepted(VerifiedCode),
    /// The first check that failed.
    Rejected(Reason),
}

/// Verifies rider codes. Shared by every request handler; all methods take `&self`.
///
/// ```
/// use fareway_gate::clock::UnixMillis;
/// use fareway_gate::token::mint::{Device, Issuer};
/// use fareway_gate::token::{Decision, IssuerRegistry, Provider, Reason, Verifier, VerifierConfig};
///
/// let issuer = Issuer::from_seed(1, [7; 32]);
/// let mut registry = IssuerRegistry::default();
/// registry.add_provider(Provider { id: 1, name: "metro-pay".into() }).unwrap();
/// registry.add_key(issuer.issuer_key()).unwrap();
/// let verifier = Verifier::new(VerifierConfig::default(), registry);
///
/// // A phone holding a credential for account 42 shows a code.
/// let now = UnixMillis(1_800_000_000_000);
/// let key = Device::key_from_seed(&[9; 32]);
/// let credential = issuer.issue(42, now.saturating_add(86_400_000), 0, Device::public_key_of(&key));
/// let text = Device::new(key, credential, 0).code_text(now);
///
/// let Decision::Accepted(code) = verifier.verify_text(&text, now) else { panic!("valid") };
/// assert_eq!(code.account_id, 42);
/// // Ten minutes later the same code is stale: a rejection is an answer, not an error.
/// let later = now.saturating_add(600_000);
/// assert_eq!(verifier.verify_text(&text, later), Decision::Rejected(Reason::CodeExpired));
/// ```
#[derive(Debug)]
pub struct Verifier {
    config: VerifierConfig,
    registry: RwLock<Arc<IssuerRegistry>>,
    deny_list: RwLock<HashSet<u64>>,
    verified_credentials: Option<quick_cache::sync::Cache<[u8; 32], VerifyingKey>>,
}

impl Verifier {
    /// A verifier over `registry` with an empty deny list.
    pub fn new(config: VerifierConfig, registry: IssuerRegistry) -> Verifier {
        Verifier {
            config,
            registry: RwLock::new(Arc::new(registry)),
            deny_list: RwLock::new(HashSet::new()),
            verified_credentials: (config.credential_cache_entries_max > 0)
                .then(|| quick_cache::sync::Cache::new(config.credential_cache_entries_max)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> VerifierConfig {
        self.config
    }

    /// The registry in force now.
    pub fn registry(&self) -> Arc<IssuerRegistry> {
        Arc::clone(
            &self
                .registry
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Replaces the registry. The credential cache is emptied so that it never grows
    /// with entries of keys that are gone.
    pub fn set_registry(&self, registry: IssuerRegistry) {
        self.update_registry(|current| {
            *current = registry;
            Ok(())
        })
        .unwrap_or_else(|err: KeyError| unreachable!("a plain replacement cannot fail: {err}"));
    }

    /// Changes the registry (add a key, revoke one) while holding its lock, so that two
    /// changes at once cannot overwrite each other. Nothing changes if `change` fails.
    pub fn update_registry<T>(
        &self,
        change: impl FnOnce(&mut IssuerRegistry) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let mut current = self
            .registry
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = IssuerRegistry::clone(&current);
        let result = change(&mut next)?;
        *current = Arc::new(next);
        if let Some(cache) = &self.verified_credentials {
            cache.clear();
        }
        Ok(result)
    }

    /// Puts an account on the deny list, or takes it off.
    pub fn set_denied(&self, account_id: u64, denied: bool) {
        let mut deny_list = self
            .deny_list
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if denied {
            deny_list.insert(account_id);
        } else {
            deny_list.remove(&account_id);
        }
    }

    /// Whether an account is deny-listed.
    pub fn is_denied(&self, account_id: u64) -> bool {
        self.deny_list
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&account_id)
    }

    /// Verifies a code as scanned (its Base45 text) at time `now`.
    pub fn verify_text(&self, text: &str, now: UnixMillis) -> Decision {
        match format::decode_text(text) {
            Ok(bytes) => self.verify_bytes(&bytes, now),
            Err(reason) => Decision::Rejected(reason),
        }
    }

    /// Verifies a code's bytes at time `now`.
    pub fn verify_bytes(&self, bytes: &[u8], now: UnixMillis) -> Decision {
        match self.check(bytes, now, DenyList::Checked) {
            Ok(verified) => Decision::Accepted(verified),
            Err(reason) => Decision::Rejected(reason),
        }
    }

    /// Verifies a code a gate took while offline and uploads now, at its scan time: every
    /// check of [`Verifier::verify_text`] (freshness against the scan time, the issuer key
    /// as it was then) but the deny list, which the gate judged by its own bundle and
    /// which the ledger does not hold against a rider the gate let through.
    pub fn verify_uploaded_text(&self, text: &str, scanned_at: UnixMillis) -> Decision {
        let checked = format::decode_text(text)
            .and_then(|bytes| self.check(&bytes, scanned_at, DenyList::Skipped));
        match checked {
            Ok(verified) => Decision::Accepted(verified),
            Err(reason) => Decision::Rejected(reason),
        }
    }

    fn check(
        &self,
        bytes: &[u8],
        now: UnixMillis,
        deny_list: DenyList,
    ) -> Result<VerifiedCode, Reason> {
        let code = format::parse(bytes)?;
        let credential = code.credential;
        let issuer_public_key = {
            let registry = self
                .registry
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let key = registry
                .key(credential.provider_id, credential.issuer_key_id)
                .ok_or(Reason::UnknownIssuerKey)?;
            if key.is_revoked_at(now) {
                return Err(Reason::RevokedIssuerKey);
            }
            key.public_key
        };
        let device_key = self.check_credential_signature(&code, &issuer_public_key)?;
        if now >= credential.expires_at {
            return Err(Reason::CredentialExpired);
        }
        let Some(device_key) = device_key else {
            return Err(Reason::WeakDeviceKey);
        };
        if !device_signature::verifies_under(&device_key, code.code_body, code.device_signature) {
            return Err(Reason::BadCodeSignature);
        }
        let generated_at = code.code.generated_at;
        if generated_at.saturating_add(self.config.code_validity_ms) < now {
            return Err(Reason::CodeExpired);
        }
        if generated_at > now.saturating_add(self.config.clock_skew_ms) {
            return Err(Reason::CodeFromFuture);
        }
        if deny_list == DenyList::Checked && self.is_denied(credential.account_id) {
            return Err(Reason::AccountDenied);
        }
        Ok(VerifiedCode {
            account_id: credential.account_id,
            provider_id: credential.provider_id,
            issuer_key_id: credential.issuer_key_id,
            credential_expires_at: credential.expires_at,
            sequence: code.code.sequence,
            generated_at,
            flags: credential.flags,
            code_fingerprint: format::fingerprint(bytes),
        })
    }

    /// Checks the issuer's signature over the credential, and judges the credential's
    /// device key with it: returns that key, decompressed, when it is strong (`None` when
    /// it is weak). Both are remembered together in the cache (an entry only for a strong
    /// key, holding it decompressed), so a repeat rider pays for neither; the weak-key
    /// check costs a fifth of a verify (`docs/PERFORMANCE.md`).
    /// Issuer keys need no check here: they reach the verifier only through the registry,
    /// which refuses weak ones.
    fn check_credential_signature(
        &self,
        code: &ParsedCode<'_>,
        issuer_public_key: &[u8; format::PUBLIC_KEY_LEN],
    ) -> Result<Option<VerifyingKey>, Reason> {
        let verify = || {
            UnparsedPublicKey::new(&ED25519, issuer_public_key)
                .verify(code.credential_body, code.issuer_signature)
                .map_err(|_| Reason::BadCredentialSignature)?;
            let device_public_key = &code.credential.device_public_key;
            Ok(check_public_key(device_public_key)
                .ok()
                .and_then(|()| device_signature::key(device_public_key)))
        };
        let Some(cache) = &self.verified_credentials else {
            return verify();
        };
        // The key covers the issuer public key too: an entry says "these bytes verified
        // under this key", which stays true whatever happens to the registry.
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        hasher.update(issuer_public_key);
        hasher.update(code.credential_bytes);
        let digest = hasher.finish();
        let mut cache_key = [0u8; 32];
        cache_key.copy_from_slice(digest.as_ref());
        if let Some(device_key) = cache.get(&cache_key) {
            return Ok(Some(device_key));
        }
        let device_key = verify()?;
        if let Some(device_key) = &device_key {
            cache.insert(cache_key, *device_key);
        }
        Ok(device_key)
    }
}

/// Whether a verification consults the deny list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DenyList {
    Checked,
    Skipped,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::format::{CODE_LEN, CodeFields, SIGNATURE_LEN};
    use crate::token::keys::Provider;
    use crate::token::mint::{Device, Issuer};

    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

    fn setup() -> (Verifier, Issuer, Device) {
        let issuer = Issuer::from_seed(1, [9; 32]);
        let mut registry = IssuerRegistry::default();
        registry
            .add_provider(Provider {
                id: 1,
                name: "metro-pay".into(),
            })
            .unwrap();
        registry.add_key(issuer.issuer_key()).unwrap();
        let key = Device::key_from_seed(&[3; 32]);
        let credential = issuer.issue(
            77,
            NOW.saturating_add(3_600_000),
            0,
            Device::public_key_of(&key),
        );
        let verifier = Verifier::new(VerifierConfig::default(), registry);
        (verifier, issuer, Device::new(key, credential, 10))
    }

    #[test]
    fn a_repeat_rider_is_accepted_from_the_cache_with_its_fields() {
        let (verifier, issuer, mut device) = setup();
        for sequence in 10..13 {
            let Decision::Accepted(code) = verifier.verify_bytes(&device.code_bytes(NOW), NOW)
            else {
                panic!("a fresh code must verify");
            };
            assert_eq!(code.account_id, 77);
            assert_eq!(code.provider_id, 1);
            assert_eq!(code.issuer_key_id, issuer.key_id());
            assert_eq!(code.sequence, sequence);
        }
        assert_eq!(verifier.verified_credentials.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn revocation_is_honoured_for_a_cached_credential() {
        let (verifier, issuer, mut device) = setup();
        assert!(matches!(
            verifier.verify_bytes(&device.code_bytes(NOW), NOW),
            Decision::Accepted(_)
        ));
        verifier
            .update_registry(|registry| registry.revoke(1, issuer.key_id(), NOW))
            .unwrap();
        assert_eq!(
            verifier.verify_bytes(&device.code_bytes(NOW), NOW),
            Decision::Rejected(Reason::RevokedIssuerKey)
        );
    }

    #[test]
    fn expiry_and_the_deny_list_are_honoured_for_a_cached_credential() {
        let (verifier, _issuer, mut device) = setup();
        assert!(matches!(
            verifier.verify_bytes(&device.code_bytes(NOW), NOW),
            Decision::Accepted(_)
        ));
        let later = NOW.saturating_add(3_600_000);
        assert_eq!(
            verifier.verify_bytes(&device.code_bytes(later), later),
            Decision::Rejected(Reason::CredentialExpired)
        );
        verifier.set_denied(77, true);
        assert_eq!(
            verifier.verify_bytes(&device.code_bytes(NOW), NOW),
            Decision::Rejected(Reason::AccountDenied)
        );
        verifier.set_denied(77, false);
        assert!(matches!(
            verifier.verify_bytes(&device.code_bytes(NOW), NOW),
            Decision::Accepted(_)
        ));
    }

    #[test]
    fn a_forged_code_is_rejected_even_after_its_credential_was_cached() {
        let (verifier, _issuer, mut device) = setup();
        let mut code = device.code_bytes(NOW);
        assert!(matches!(
            verifier.verify_bytes(&code, NOW),
            Decision::Accepted(_)
        ));
        code[CODE_LEN - 10] ^= 1;
        assert_eq!(
            verifier.verify_bytes(&code, NOW),
            Decision::Rejected(Reason::BadCodeSignature)
        );
    }

    #[test]
    fn the_same_code_always_has_the_same_fingerprint() {
        let (verifier, _issuer, mut device) = setup();
        let code = device.code_bytes(NOW);
        let other = device.code_bytes(NOW);
        let fingerprint = |bytes: &[u8]| match verifier.verify_bytes(bytes, NOW) {
            Decision::Accepted(code) => code.code_fingerprint,
            Decision::Rejected(reason) => panic!("rejected: {reason}"),
        };
        assert_eq!(fingerprint(&code), fingerprint(&code));
        assert_ne!(fingerprint(&code), fingerprint(&other));
    }

    /// The identity point's encoding, the simplest small-order key.
    const IDENTITY: [u8; format::PUBLIC_KEY_LEN] = {
        let mut bytes = [0u8; format::PUBLIC_KEY_LEN];
        bytes[0] = 1;
        bytes
    };

    /// The signature R = identity, S = 0: under the identity key it verifies for any message.
    fn identity_signature() -> [u8; SIGNATURE_LEN] {
        let mut signature = [0u8; SIGNATURE_LEN];
        signature[..32].copy_from_slice(&IDENTITY);
        signature
    }

    /// A code under a credential the issuer really signed, for the identity as device key,
    /// "signed" with R = identity, S = 0.
    fn forgery(issuer: &Issuer, account_id: u64, sequence: u32) -> Vec<u8> {
        let credential = issuer.issue(account_id, NOW.saturating_add(3_600_000), 0, IDENTITY);
        let fields = CodeFields {
            sequence,
            generated_at: NOW,
        };
        let mut code = format::code_body(&credential.bytes, &fields).to_vec();
        code.extend_from_slice(&identity_signature());
        code
    }

    #[test]
    fn a_forgery_under_a_small_order_device_key_is_rejected_with_its_reason() {
        let (verifier, issuer, _device) = setup();
        for (account_id, sequence) in [(77, 1), (78, 2)] {
            let code = forgery(&issuer, account_id, sequence);
            // ring alone accepts it, whatever the content: only the key check stops it.
            let parsed = format::parse(&code).unwrap();
            assert!(
                UnparsedPublicKey::new(&ED25519, &IDENTITY)
                    .verify(parsed.code_body, parsed.device_signature)
                    .is_ok()
            );
            assert_eq!(
                verifier.verify_bytes(&code, NOW),
                Decision::Rejected(Reason::WeakDeviceKey)
            );
        }
        // The documented order: the credential's expiry is checked before its device key.
        let later = NOW.saturating_add(3_600_000);
        assert_eq!(
            verifier.verify_bytes(&forgery(&issuer, 77, 1), later),
            Decision::Rejected(Reason::CredentialExpired)
        );
    }

    #[test]
    fn arbitrary_bytes_and_text_never_panic() {
        let (verifier, _issuer, mut device) = setup();
        let code = device.code_bytes(NOW);
        for len in 0..=code.len() + 2 {
            let mut bytes = code.clone();
            bytes.resize(len, 0xAB);
            let _ = verifier.verify_bytes(&bytes, NOW);
        }
        for text in ["", " ", "::::", "ÀÀÀ", "\u{0}\u{0}\u{0}", "ZZ", "ZZZZZZ"] {
            assert!(matches!(
                verifier.verify_text(text, NOW),
                Decision::Rejected(_)
            ));
        }
    }
}
