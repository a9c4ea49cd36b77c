//! Fareway's gate side: everything a gate (or a simulator of gates) needs without a
//! storage engine. [`token`] is the rider's QR code (its format, minting, and the
//! verifier with its issuer keys and revocations), [`bundle`] the signed gate bundle,
//! [`offline`] a gate deciding alone from it, [`queue`] its durable queue of offline
//! taps, [`link`] the gate with its link to the engine (upload and refresh), [`fares`]
//! the network and pricing,
//! [`client`] the gRPC client side; [`clock`], [`money`], [`hex`] and [`files`] are the
//! small parts they share. The engine (`fareway`) uses the same modules, re-exported
//! under its own paths, so that a gate deciding offline and the engine deciding online
//! give the same answers for the same reasons (`docs/offline.md`).

pub mod bundle;
pub mod client;
pub mod clock;
pub mod fares;
pub mod files;
pub mod hex;
pub mod link;
pub mod money;
pub mod offline;
pub mod queue;
pub mod settlement;
pub mod token;
