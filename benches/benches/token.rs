//! Rider code verification against the bare cost of one Ed25519 verify.
//!
//! Run: `cargo bench -p fareway-benches --bench token`. Goal (issue 2): a code whose
//! credential is cached costs at most 1.15x a bare verify; one whose credential is not
//! cached, at most 2.2x.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fareway::token::{Decision, Verifier, VerifierConfig};
use fareway_benches::{NOW, device, registry_and_issuer};
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};

fn verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("token");

    let key =
        Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap_or_else(|err| unreachable!("{err}"));
    let message = [0x5a_u8; 64];
    let signature = key.sign(&message);
    let public_key = ring::signature::KeyPair::public_key(&key).as_ref().to_vec();
    group.bench_function("bare_ed25519_verify_64_bytes", |b| {
        b.iter(|| {
            UnparsedPublicKey::new(&ED25519, black_box(&public_key))
                .verify(black_box(&message), black_box(signature.as_ref()))
                .is_ok()
        })
    });

    // The same check by ed25519-dalek (its AVX2 backend where the CPU has it): a
    // candidate second verifier (issue 16), measured beside ring's.
    // Like ring's, from the key's bytes (its decompression included).
    let key_bytes: [u8; 32] = public_key
        .as_slice()
        .try_into()
        .unwrap_or_else(|err| unreachable!("{err}"));
    let signature_bytes: [u8; 64] = signature
        .as_ref()
        .try_into()
        .unwrap_or_else(|err| unreachable!("{err}"));
    group.bench_function("dalek_ed25519_verify_64_bytes", |b| {
        b.iter(|| {
            ed25519_dalek::VerifyingKey::from_bytes(black_box(&key_bytes)).is_ok_and(|key| {
                let signature = ed25519_dalek::Signature::from_bytes(black_box(&signature_bytes));
                ed25519_dalek::Verifier::verify(&key, black_box(&message), &signature).is_ok()
            })
        })
    });

    // The weak-key check every scan makes of the credential's device key (a point
    // decompression and a multiplication by 8), beside the verify it protects.
    let device_key: [u8; 32] = public_key
        .as_slice()
        .try_into()
        .unwrap_or_else(|err| unreachable!("{err}"));
    group.bench_function("check_public_key", |b| {
        b.iter(|| fareway::token::check_public_key(black_box(&device_key)).is_ok())
    });

    let (registry, issuer) = registry_and_issuer();
    let mut rider = device(&issuer, 42);
    let code = rider.code_bytes(NOW);

    let cached = Verifier::new(VerifierConfig::default(), registry.clone());
    assert!(matches!(
        cached.verify_bytes(&code, NOW),
        Decision::Accepted(_)
    ));
    group.bench_function("verify_code_credential_cached", |b| {
        b.iter(|| {
            matches!(
                cached.verify_bytes(black_box(&code), NOW),
                Decision::Accepted(_)
            )
        })
    });

    let uncached = Verifier::new(
        VerifierConfig {
            credential_cache_entries_max: 0,
            ..VerifierConfig::default()
        },
        registry,
    );
    group.bench_function("verify_code_credential_not_cached", |b| {
        b.iter(|| {
            matches!(
                uncached.verify_bytes(black_box(&code), NOW),
                Decision::Accepted(_)
            )
        })
    });

    let text = fareway::token::format::encode_text(&code);
    group.bench_function("decode_code_text", |b| {
        b.iter(|| fareway::token::format::decode_text(black_box(&text)))
    });
    group.bench_function("verify_text_credential_cached", |b| {
        b.iter(|| {
            matches!(
                cached.verify_text(black_box(&text), NOW),
                Decision::Accepted(_)
            )
        })
    });
    group.finish();
}

criterion_group!(benches, verification);
criterion_main!(benches);
