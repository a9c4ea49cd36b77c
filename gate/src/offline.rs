//! A gate deciding alone (`docs/offline.md`): the engine's own verification
//! ([`crate::token::Verifier`]) against the keys, revocations, deny list and settings of
//! the gate's [`Bundle`], and a code used at this gate refused when shown again.

use std::collections::HashMap;

use crate::bundle::{Body, Bundle, BundleError};
use crate::clock::UnixMillis;
use crate::token::{Decision, Reason, VerifiedCode, Verifier, VerifierConfig};

/// Most codes a gate remembers as used (a code is refused as expired once older than the
/// validity window, so only the codes of that window need remembering).
pub const USED_CODES_MAX: usize = 100_000;

/// A gate's own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineDecision {
    /// Open: the code verified and was not used here before.
    Open(VerifiedCode),
    /// Stay shut, and why.
    Refuse(OfflineRefusal),
}

/// Why a gate stayed shut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineRefusal {
    /// The code failed a check (the engine's reasons, the deny list's included).
    Code(Reason),
    /// The code was used at this gate already.
    CodeReused,
}

impl OfflineRefusal {
    /// The stable code string: the engine's for the same refusal.
    pub fn code(self) -> &'static str {
        match self {
            OfflineRefusal::Code(reason) => reason.code(),
            OfflineRefusal::CodeReused => "code_reused",
        }
    }
}

/// A gate's bundle, verifier, and the codes used at it.
#[derive(Debug)]
pub struct OfflineGate {
    bundle: Bundle,
    verifier: Verifier,
    /// Code fingerprint → when its code was made.
    used: HashMap<[u8; 16], UnixMillis>,
}

impl OfflineGate {
    /// A gate holding `bundle`.
    pub fn new(bundle: Bundle) -> Result<OfflineGate, BundleError> {
        let verifier = verifier_of(&bundle)?;
        Ok(OfflineGate {
            bundle,
            verifier,
            used: HashMap::new(),
        })
    }

    /// The bundle in force.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Applies a bundle the engine sent (opened with [`crate::bundle::open`]). One that is
    /// older, made for another position, or whose keys are refused changes nothing.
    pub fn update(&mut self, update: Body) -> Result<(), BundleError> {
        let bundle = self.bundle.apply(update)?;
        self.verifier = verifier_of(&bundle)?;
        self.bundle = bundle;
        Ok(())
    }

    /// Decides on a code as scanned at `now`.
    pub fn decide(&mut self, code_text: &str, now: UnixMillis) -> OfflineDecision {
        let code = match self.verifier.verify_text(code_text, now) {
            Decision::Accepted(code) => code,
            Decision::Rejected(reason) => {
                return OfflineDecision::Refuse(OfflineRefusal::Code(reason));
            }
        };
        if self.used.contains_key(&code.code_fingerprint) {
            return OfflineDecision::Refuse(OfflineRefusal::CodeReused);
        }
        if self.used.len() >= USED_CODES_MAX {
            self.forget_expired(now);
        }
        self.used.insert(code.code_fingerprint, code.generated_at);
        OfflineDecision::Open(code)
    }

    /// Remembers a code as used at this gate (read back from the gate's queue after a
    /// restart); text that is not a code is ignored.
    pub fn remember(&mut self, code_text: &str) {
        let parsed = crate::token::format::decode_text(code_text)
            .ok()
            .and_then(|bytes| {
                let code = crate::token::format::parse(&bytes).ok()?;
                Some((
                    crate::token::format::fingerprint(&bytes),
                    code.code.generated_at,
                ))
            });
        if let Some((fingerprint, generated_at)) = parsed {
            self.used.insert(fingerprint, generated_at);
        }
    }

    /// Forgets that a code was used here (its tap could not be queued, and the gate
    /// stayed shut).
    pub fn forget(&mut self, code: &VerifiedCode) {
        self.used.remove(&code.code_fingerprint);
    }

    /// Forgets the codes too old to verify any more.
    fn forget_expired(&mut self, now: UnixMillis) {
        let validity = self.bundle.settings.code_validity_ms;
        self.used
            .retain(|_, generated_at| generated_at.0.saturating_add(validity) >= now.0);
    }
}

/// The verifier of a bundle: its keys with their revocation times, its settings, its deny
/// list.
fn verifier_of(bundle: &Bundle) -> Result<Verifier, BundleError> {
    let config = VerifierConfig {
        code_validity_ms: bundle.settings.code_validity_ms,
        clock_skew_ms: bundle.settings.clock_skew_ms,
        ..VerifierConfig::default()
    };
    let verifier = Verifier::new(config, bundle.registry()?);
    for &account in &bundle.denied {
        verifier.set_denied(account, true);
    }
    Ok(verifier)
}
