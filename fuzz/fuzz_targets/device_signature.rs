//! Any key, signature and message: the device-signature check (`ed25519-dalek`) says what
//! `ring`, the reference, says. Input: 32 bytes of public key, 64 of signature, the rest
//! the message.
#![no_main]

use fareway::token::device_signature;
use libfuzzer_sys::fuzz_target;
use ring::signature::{ED25519, UnparsedPublicKey};

fuzz_target!(|data: &[u8]| {
    let Some((key, rest)) = data.split_first_chunk::<32>() else {
        return;
    };
    let Some((signature, message)) = rest.split_first_chunk::<64>() else {
        return;
    };
    let ring_says = UnparsedPublicKey::new(&ED25519, key)
        .verify(message, signature)
        .is_ok();
    assert_eq!(device_signature::verifies(key, message, signature), ring_says);
});
