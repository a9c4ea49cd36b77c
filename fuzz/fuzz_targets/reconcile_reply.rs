//! Any provider reply (and any batch file): reconciliation answers a report or a named
//! error, never a panic. The input is the reply alone, compared with a real batch file;
//! or, when it holds a zero byte, a batch file before it and a reply after it.
#![no_main]

use fareway::settlement::reconcile::reconcile;
use libfuzzer_sys::fuzz_target;

/// A batch of the shape of `docs/settlement.md`'s example (also read by
/// `tests/fuzz_corpus.rs`).
const BATCH: &str = include_str!("../seeds/reconcile_batch.csv");

fuzz_target!(|data: &[u8]| {
    let (batch, reply) = match data.iter().position(|byte| *byte == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (BATCH.as_bytes(), data),
    };
    if let Ok(report) = reconcile(batch, reply) {
        let _ = report.is_clean();
    }
});
