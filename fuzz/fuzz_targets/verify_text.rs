//! Any scanned text: the verifier must answer (accept or reject) and never panic.
#![no_main]

use fareway::token::vectors;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static VERIFIER: fareway::token::Verifier = vectors::verifier_for(&vectors::generate())
            .unwrap_or_else(|err| unreachable!("the vector registry is valid: {err}"));
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    VERIFIER.with(|verifier| {
        let _ = verifier.verify_text(text, fareway::clock::UnixMillis(vectors::BASE_TIME_MS));
    });
});
