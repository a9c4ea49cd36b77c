//! The check of a code's device signature: the one Ed25519 verify a tap cannot avoid (the
//! issuer's signature is checked once per credential and cached).
//!
//! It is made with `ed25519-dalek` rather than `ring`, because it is the hottest
//! instruction path of a tap and dalek's is faster on the machines we run: its AVX-512
//! IFMA backend where the CPU has it (compiled in by `.cargo/config.toml`, picked at run
//! time; else AVX2, else plain 64-bit code). `docs/PERFORMANCE.md` has the figures
//! against ring's. `ring` stays the reference: it mints every code, signs the issuer's
//! credentials, and the tests below hold dalek to it.
//!
//! Both check the same equation, the one RFC 8032 allows without the cofactor: the
//! signature's `s` must be canonical (below the group order), and `[s]B - [k]A`, with
//! `k = SHA-512(R || A || message)`, compressed, must be byte for byte the signature's
//! `R`. So a non-canonical or small-order `R`, or a signature made with a torsion
//! component, is judged by the same arithmetic in both. dalek's `verify_strict` is not
//! used: it refuses small-order `R` that ring accepts. The device key reaches this
//! check only once [`super::check_public_key`] found it canonical and not of small order,
//! so both decode it alike.

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};

use super::format::{PUBLIC_KEY_LEN, SIGNATURE_LEN};

/// Whether `signature` is `public_key`'s Ed25519 signature of `message`, as `ring`
/// judges it.
pub fn verifies(public_key: &[u8; PUBLIC_KEY_LEN], message: &[u8], signature: &[u8]) -> bool {
    key(public_key).is_some_and(|key| verifies_under(&key, message, signature))
}

/// A public key decompressed for [`verifies_under`] (`None`: not a curve point). The
/// verifier keeps it with the credential it came in, so that a repeat rider's scan does
/// not decompress it again (a tenth of a verify).
pub fn key(public_key: &[u8; PUBLIC_KEY_LEN]) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(public_key).ok()
}

/// [`verifies`] under a key already decompressed.
pub fn verifies_under(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    let Ok(signature) = <&[u8; SIGNATURE_LEN]>::try_from(signature) else {
        return false;
    };
    key.verify(message, &Signature::from_bytes(signature))
        .is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use proptest::prelude::*;
    use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

    use super::*;
    use crate::token::check_public_key;

    /// ring's answer: the reference.
    fn ring_verifies(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(message, signature)
            .is_ok()
    }

    /// Both agree on this input, and what they say.
    fn agreed(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
        let ours = verifies(public_key, message, signature);
        assert_eq!(
            ours,
            ring_verifies(public_key, message, signature),
            "dalek and ring disagree: key {public_key:02x?}, message {message:02x?}, signature {signature:02x?}"
        );
        ours
    }

    fn key_pair(seed: [u8; 32]) -> (Ed25519KeyPair, [u8; 32]) {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let public_key = pair.public_key().as_ref().try_into().unwrap();
        (pair, public_key)
    }

    /// The scalar `k = SHA-512(R || A || message)` mod the group order.
    fn challenge(r: &[u8; 32], public_key: &[u8; 32], message: &[u8]) -> Scalar {
        let mut hash = ring::digest::Context::new(&ring::digest::SHA512);
        hash.update(r);
        hash.update(public_key);
        hash.update(message);
        let digest: [u8; 64] = hash.finish().as_ref().try_into().unwrap();
        Scalar::from_bytes_mod_order_wide(&digest)
    }

    /// A signature that a holder of secret scalar `a` of key `public_key` makes by hand,
    /// with its nonce point moved by `torsion` (a point of small order): ring and dalek
    /// must both refuse it unless the torsion cancels.
    fn signature_with_torsion_nonce(
        a: Scalar,
        public_key: &[u8; 32],
        message: &[u8],
        nonce: Scalar,
        torsion: EdwardsPoint,
    ) -> [u8; 64] {
        let r = (ED25519_BASEPOINT_POINT * nonce + torsion)
            .compress()
            .to_bytes();
        let s = nonce + challenge(&r, public_key, message) * a;
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&r);
        signature[32..].copy_from_slice(s.as_bytes());
        signature
    }

    /// The published test vectors of RFC 8032, section 7.1 (tests 1 and 2): valid, and
    /// invalid once any byte changes.
    #[test]
    fn the_rfc_8032_vectors_verify_alike() {
        let vectors: [(&str, &str, &str); 2] = [
            (
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ];
        let bytes = |hex: &str| -> Vec<u8> {
            (0..hex.len())
                .step_by(2)
                .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
                .collect()
        };
        for (key, message, signature) in vectors {
            let key: [u8; 32] = bytes(key).try_into().unwrap();
            let (message, signature) = (bytes(message), bytes(signature));
            assert!(agreed(&key, &message, &signature));
            for index in 0..signature.len() {
                let mut altered = signature.clone();
                altered[index] ^= 0x01;
                assert!(!agreed(&key, &message, &altered));
            }
        }
    }

    /// Inputs built to find a disagreement: `s` past the group order, `R` of small order
    /// or in a second encoding, nonces with a torsion part, the identity as `R`.
    #[test]
    fn crafted_signatures_are_judged_alike() {
        let (pair, public_key) = key_pair([3; 32]);
        let message = b"a code body";
        let good: [u8; 64] = pair.sign(message).as_ref().try_into().unwrap();
        assert!(agreed(&public_key, message, &good));
        // s + the group order: the same s modulo it, but not canonical.
        let s = Scalar::from_canonical_bytes(good[32..].try_into().unwrap()).unwrap();
        let mut past_order = good;
        let order_plus_s = add_le(s.as_bytes(), &GROUP_ORDER);
        past_order[32..].copy_from_slice(&order_plus_s);
        assert!(!agreed(&public_key, message, &past_order));
        // Every small-order point as R, and R moved by each of them.
        for torsion in EIGHT_TORSION {
            let mut small_r = good;
            small_r[..32].copy_from_slice(torsion.compress().as_bytes());
            agreed(&public_key, message, &small_r);
            let r = CompressedEdwardsY(good[..32].try_into().unwrap())
                .decompress()
                .unwrap();
            let mut moved = good;
            moved[..32].copy_from_slice((r + torsion).compress().as_bytes());
            agreed(&public_key, message, &moved);
        }
        // The signer's own hand-made signatures with a torsion part in the nonce point.
        let a = secret_scalar([3; 32]);
        for (index, torsion) in EIGHT_TORSION.iter().enumerate() {
            let nonce = Scalar::from(1_000 + index as u64);
            let signature = signature_with_torsion_nonce(a, &public_key, message, nonce, *torsion);
            let verified = agreed(&public_key, message, &signature);
            assert_eq!(verified, index == 0, "torsion point {index}");
        }
        // Second encodings (y + p) of the small-order points whose y allows one (y of 0
        // or 1), as R: refused by both, as the canonical ones are judged by both above.
        for torsion in EIGHT_TORSION {
            if let Some(second) = second_encoding(torsion.compress().as_bytes()) {
                let mut signature = good;
                signature[..32].copy_from_slice(&second);
                assert!(!agreed(&public_key, message, &signature));
            }
        }
        // A key with a torsion part (it passes the weak-key check: not of small order).
        let mixed = (CompressedEdwardsY(public_key).decompress().unwrap() + EIGHT_TORSION[1])
            .compress()
            .to_bytes();
        assert!(check_public_key(&mixed).is_ok());
        // Signed as if the key had no torsion part, a signature verifies when its `k`
        // kills the torsion (8 divides `k`: one in eight): some must, some must not.
        let mut verified = 0;
        for nonce in 1..80u64 {
            let signature = signature_with_torsion_nonce(
                a,
                &mixed,
                message,
                Scalar::from(nonce),
                EdwardsPoint::default(),
            );
            verified += usize::from(agreed(&mixed, message, &signature));
        }
        assert!((1..79).contains(&verified), "{verified} of 79 verified");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Random keys, messages and signatures, valid and with random bytes changed:
        /// dalek says what ring says.
        #[test]
        fn random_and_altered_signatures_are_judged_alike(
            seed in any::<[u8; 32]>(),
            message in prop::collection::vec(any::<u8>(), 0..200),
            changes in prop::collection::vec((0usize..160, any::<u8>()), 0..3),
        ) {
            let (pair, public_key) = key_pair(seed);
            let mut signature: [u8; 64] = pair.sign(&message).as_ref().try_into().unwrap();
            let mut key = public_key;
            let mut message = message;
            for (at, value) in changes {
                match at {
                    0..64 => signature[at] = value,
                    64..96 => key[at - 64] = value,
                    _ if !message.is_empty() => {
                        let index = at % message.len();
                        message[index] = value;
                    }
                    _ => {}
                }
            }
            agreed(&key, &message, &signature);
        }
    }

    /// The group order, little-endian.
    const GROUP_ORDER: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    /// `x + y` of two little-endian 256-bit numbers (no overflow here: both are below 2^253).
    fn add_le(x: &[u8; 32], y: &[u8; 32]) -> [u8; 32] {
        let mut sum = [0u8; 32];
        let mut carry = 0u16;
        for index in 0..32 {
            let total = u16::from(x[index]) + u16::from(y[index]) + carry;
            sum[index] = total as u8;
            carry = total >> 8;
        }
        sum
    }

    /// The encoding of the same point with `y + p` in place of `y`, when that fits below
    /// the sign bit (only for `y` below 19).
    fn second_encoding(r: &[u8; 32]) -> Option<[u8; 32]> {
        let sign = r[31] & 0x80;
        let mut y = *r;
        y[31] &= 0x7f;
        if y[1..].iter().any(|byte| *byte != 0) || y[0] >= 19 {
            return None;
        }
        // p = 2^255 - 19, little-endian.
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        let mut second = add_le(&y, &p);
        second[31] |= sign;
        Some(second)
    }

    /// The secret scalar of a ring key pair's seed, as RFC 8032 derives it.
    fn secret_scalar(seed: [u8; 32]) -> Scalar {
        let digest = ring::digest::digest(&ring::digest::SHA512, &seed);
        let mut a: [u8; 32] = digest.as_ref()[..32].try_into().unwrap();
        a[0] &= 248;
        a[31] &= 127;
        a[31] |= 64;
        Scalar::from_bytes_mod_order(a)
    }
}
