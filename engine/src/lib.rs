//! Fareway: a transit payment clearing engine.
//!
//! One folder per domain concept: [`token`] (the rider's QR code and its verifier),
//! [`ledger`] (double-entry accounts in RocksDB), [`fares`] (the network and pricing). [`clock`] and [`money`] are the small
//! types they share. See `ARCHITECTURE.md` for the map.

pub mod clock;
pub mod fares;
#[cfg(feature = "storage")]
pub mod ledger;
pub mod money;
pub mod token;
