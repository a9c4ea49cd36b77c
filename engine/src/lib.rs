//! Fareway: a transit payment clearing engine.
//!
//! One folder per domain concept: [`token`] (the rider's QR code and its verifier),
//! [`ledger`] (double-entry accounts in RocksDB), [`fares`] (the network and pricing),
//! [`gate`] (a tap, end to end), [`settlement`] (batches and
//! files for the payment providers). [`grpc`] is the boundary to protobuf and tonic;
//! [`server`] runs it all. [`clock`] and [`money`] are the small
//! types they share. See `ARCHITECTURE.md` for the map.

// The parts a gate needs without a database live in `fareway-gate` (`gate/`); they keep
// their paths here.
pub use fareway_gate::{clock, fares, files, hex, money, token};

pub mod cluster;
pub mod commands;
pub mod cpus;
pub mod fares_replay;
pub mod gate;
pub mod grpc;
pub mod ledger;
pub mod server;
pub mod settlement;

/// How many cases a property test runs: its own default, or `PROPTEST_CASES` when set
/// (for a longer search than the normal test run can afford; `docs/testing.md`).
#[cfg(test)]
pub(crate) fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}
