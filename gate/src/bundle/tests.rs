#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use super::*;
use crate::offline::{OfflineDecision, OfflineGate, OfflineRefusal};
use crate::token::Reason;
use crate::token::mint::{Device, Issuer, ed25519_from_seed, public_key_of};

pub(crate) const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

pub(crate) fn engine_key() -> Ed25519KeyPair {
    ed25519_from_seed(&[5; 32])
}

fn issuer() -> Issuer {
    Issuer::from_seed(1, [7; 32])
}

pub(crate) fn bundle(denied: impl IntoIterator<Item = u64>) -> Bundle {
    Bundle {
        version: 10,
        positions: vec![4, 6],
        settings: Settings {
            code_validity_ms: 120_000,
            clock_skew_ms: 30_000,
        },
        providers: vec![Provider {
            id: 1,
            name: "metro-pay".into(),
        }],
        keys: vec![BundleKey {
            provider_id: 1,
            public_key: issuer().public_key(),
            revoked_at: None,
        }],
        denied: denied.into_iter().collect(),
    }
}

/// Signs a body and opens it as a gate does.
fn round_trip(body: &[u8]) -> Result<Body, BundleError> {
    let signature = sign(body, &engine_key());
    open(body, &signature, &public_key_of(&engine_key()))
}

pub(crate) fn code_of(account_id: u64, seed: u8) -> String {
    let key = Device::key_from_seed(&[seed; 32]);
    let credential = issuer().issue(
        account_id,
        NOW.saturating_add(86_400_000),
        0,
        Device::public_key_of(&key),
    );
    Device::new(key, credential, 0).code_text(NOW)
}

#[test]
fn a_whole_bundle_opens_to_what_was_signed() {
    let whole = bundle([3, 17, 1_000_000_007, u64::MAX]);
    let body = whole.encode();
    assert_eq!(&body[..6], b"FWGB\x01\x01");
    assert_eq!(round_trip(&body).unwrap(), Body::Whole(whole));
}

#[test]
fn a_bundle_the_gate_cannot_check_is_refused() {
    let body = bundle([3]).encode();
    let signature = sign(&body, &engine_key());
    let engine = public_key_of(&engine_key());

    let mut tampered = body.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        open(&tampered, &signature, &engine),
        Err(BundleError::BadSignature)
    );
    let other = public_key_of(&ed25519_from_seed(&[6; 32]));
    assert_eq!(
        open(&body, &signature, &other),
        Err(BundleError::BadSignature)
    );
    assert_eq!(
        open(&body, &signature[..10], &engine),
        Err(BundleError::BadSignature)
    );
    // The identity point: under it, anybody could sign anything.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(matches!(
        open(&body, &signature, &identity),
        Err(BundleError::WeakEngineKey(_))
    ));

    // Signed, but in a format this build does not read.
    let mut newer = body.clone();
    newer[4] = 2;
    assert_eq!(
        round_trip(&newer),
        Err(BundleError::Format(
            "format version 2, this build reads 1".into()
        ))
    );
}

#[test]
fn every_cut_or_padded_body_is_an_error_never_a_panic() {
    let mut delta = Delta {
        version: 12,
        base: vec![4, 6],
        positions: vec![5, 6],
        settings: bundle([]).settings,
        providers: bundle([]).providers,
        keys: bundle([]).keys,
        changes: vec![(3, false), (99, true)],
    };
    for body in [bundle([3, 17, 400]).encode(), delta.encode()] {
        for len in 0..body.len() {
            assert!(
                matches!(round_trip(&body[..len]), Err(BundleError::Format(_))),
                "a body cut to {len} bytes"
            );
        }
        let mut padded = body.clone();
        padded.push(0);
        assert_eq!(
            round_trip(&padded),
            Err(BundleError::Format("1 bytes after its end".into()))
        );
    }
    // A number past 64 bits in the deny list.
    let mut long = bundle([]).encode();
    let at = long.len() - 4;
    long[at..].copy_from_slice(&1u32.to_be_bytes());
    long.extend_from_slice(&[0xff; 9]);
    long.push(0x02);
    assert_eq!(
        round_trip(&long),
        Err(BundleError::Format("a number runs past 64 bits".into()))
    );
    // A count far beyond the bytes is refused before anything is allocated for it.
    delta.changes.clear();
    let mut body = delta.encode();
    let at = body.len() - 4;
    body[at..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(round_trip(&body), Err(BundleError::Format(_))));
}

#[test]
fn a_delta_applies_to_its_base_only_and_versions_only_grow() {
    let held = bundle([3, 17]);
    let delta = Delta {
        version: 12,
        base: vec![4, 6],
        positions: vec![5, 7],
        settings: held.settings,
        providers: held.providers.clone(),
        keys: held.keys.clone(),
        changes: vec![(3, false), (99, true), (17, false), (17, true)],
    };
    let Body::Delta(opened) = round_trip(&delta.encode()).unwrap() else {
        panic!("a delta opens as a delta");
    };
    assert_eq!(opened, delta);
    let next = held.apply(Body::Delta(opened.clone())).unwrap();
    assert_eq!(next.version, 12);
    assert_eq!(next.positions, vec![5, 7]);
    assert_eq!(next.denied, BTreeSet::from([17, 99]));

    // The same delta again does not apply to the bundle it made.
    assert_eq!(next.apply(Body::Delta(opened)), Err(BundleError::WrongBase));
    // An older whole bundle is refused; the same version again is taken.
    assert_eq!(
        next.apply(Body::Whole(held.clone())),
        Err(BundleError::Older { have: 12, got: 10 })
    );
    let mut same = next.clone();
    same.denied.insert(5);
    assert_eq!(next.apply(Body::Whole(same.clone())).unwrap(), same);
    // A whole bundle at a newer version but behind in a shard would undo a change.
    let mut behind = next.clone();
    behind.version = 20;
    behind.positions = vec![4, 8];
    assert_eq!(next.apply(Body::Whole(behind)), Err(BundleError::Behind));
}

#[test]
fn a_deny_list_of_a_million_accounts_fits_in_about_a_byte_each() {
    // Accounts spread over ten million ids, every tenth denied.
    let denied: BTreeSet<u64> = (0..1_000_000u64)
        .map(|n| 10_000_000 + n * 10 + n % 7)
        .collect();
    let whole = bundle(denied.iter().copied());
    let body = whole.encode();
    let started = std::time::Instant::now();
    let opened = round_trip(&body).unwrap();
    eprintln!(
        "a whole bundle with 1,000,000 denied accounts: {} bytes, signed and opened in {:?}",
        body.len(),
        started.elapsed()
    );
    assert!(body.len() < 1_200_000, "{} bytes", body.len());
    assert_eq!(opened, Body::Whole(whole));
}

#[test]
fn an_offline_gate_decides_like_the_engine_and_refuses_a_code_used_at_it() {
    let mut gate = OfflineGate::new(bundle([2])).unwrap();
    let text = code_of(1, 9);
    let OfflineDecision::Open(code) = gate.decide(&text, NOW) else {
        panic!("a valid code opens the gate");
    };
    assert_eq!(code.account_id, 1);
    assert_eq!(
        gate.decide(&text, NOW),
        OfflineDecision::Refuse(OfflineRefusal::CodeReused)
    );
    assert_eq!(OfflineRefusal::CodeReused.code(), "code_reused");

    // The deny list of the bundle, and its lifting by a delta.
    let denied = code_of(2, 8);
    assert_eq!(
        gate.decide(&denied, NOW),
        OfflineDecision::Refuse(OfflineRefusal::Code(Reason::AccountDenied))
    );
    let lift = Delta {
        version: 11,
        base: vec![4, 6],
        positions: vec![5, 6],
        settings: gate.bundle().settings,
        providers: gate.bundle().providers.clone(),
        keys: gate.bundle().keys.clone(),
        changes: vec![(2, false)],
    };
    gate.update(round_trip(&lift.encode()).unwrap()).unwrap();
    assert!(matches!(
        gate.decide(&denied, NOW),
        OfflineDecision::Open(_)
    ));

    // A code older than the bundle's validity window.
    assert_eq!(
        gate.decide(&code_of(4, 6), NOW.saturating_add(600_000)),
        OfflineDecision::Refuse(OfflineRefusal::Code(Reason::CodeExpired))
    );

    // A revocation in the next bundle; a refused update keeps the bundle in force.
    let mut revoked = gate.bundle().clone();
    revoked.version = 13;
    revoked.keys[0].revoked_at = Some(NOW);
    gate.update(Body::Whole(revoked)).unwrap();
    assert_eq!(
        gate.decide(&code_of(3, 7), NOW),
        OfflineDecision::Refuse(OfflineRefusal::Code(Reason::RevokedIssuerKey))
    );
    assert_eq!(
        gate.update(Body::Whole(bundle([]))),
        Err(BundleError::Older { have: 13, got: 10 })
    );
    assert_eq!(gate.bundle().version, 13);
}

#[test]
fn a_delta_of_100_changes_is_small_and_applies_to_a_million_account_bundle_at_once() {
    let denied: BTreeSet<u64> = (0..1_000_000u64)
        .map(|n| 10_000_000 + n * 10 + n % 7)
        .collect();
    let held = bundle(denied.iter().copied());
    // 100 changes over the whole id range: 50 denied accounts lifted, and 50 accounts
    // denied that were not (an id ending in 9 is never in the list above).
    let lifted = denied
        .iter()
        .step_by(20_000)
        .take(50)
        .map(|id| (*id, false));
    let added = (0..50u64).map(|n| (10_000_000 + n * 200_000 + 9, true));
    let changes: Vec<(u64, bool)> = lifted.chain(added).collect();
    assert_eq!(changes.len(), 100);
    let delta = Delta {
        version: held.version + 100,
        base: held.positions.clone(),
        positions: vec![104, 6],
        settings: held.settings,
        providers: held.providers.clone(),
        keys: held.keys.clone(),
        changes: changes.clone(),
    };
    let body = delta.encode();
    let started = std::time::Instant::now();
    let opened = round_trip(&body).unwrap();
    let applied = held.apply(opened).unwrap();
    eprintln!(
        "a delta of 100 changes: {} bytes, opened and applied to a bundle of 1,000,000 denied accounts in {:?}",
        body.len(),
        started.elapsed()
    );
    // Fixed fields, one provider and one key (about 160 bytes), then about 5 bytes a change.
    assert!(body.len() < 800, "{} bytes", body.len());
    for (account, now_denied) in changes {
        assert_eq!(applied.denied.contains(&account), now_denied, "{account}");
    }
    assert_eq!(applied.denied.len(), 1_000_000);
}
