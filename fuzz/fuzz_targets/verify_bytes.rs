//! Any decoded bytes: layout parsing and verification never panic, and a code that parses
//! lays out again to the same bytes.
#![no_main]

use fareway::token::{format, vectors};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static VERIFIER: fareway::token::Verifier = vectors::verifier_for(&vectors::generate())
            .unwrap_or_else(|err| unreachable!("the vector registry is valid: {err}"));
    }
    VERIFIER.with(|verifier| {
        let _ = verifier.verify_bytes(data, fareway::clock::UnixMillis(vectors::BASE_TIME_MS));
    });
    if let Ok(code) = format::parse(data) {
        let credential_body = format::credential_body(&code.credential);
        assert_eq!(&credential_body[..], code.credential_body);
        let code_body = format::code_body(code.credential_bytes, &code.code);
        assert_eq!(&code_body[..], code.code_body);
        assert_eq!(format::decode_text(&format::encode_text(data)).as_deref(), Ok(data));
    }
});
