//! Helpers shared by the end-to-end tests.

use std::path::PathBuf;

/// The simulator's seeded generator: tests that pick random moments can be replayed from
/// their seed, and the workspace has one generator.
pub use gate_sim::rng::Rng;

pub mod certs;
pub mod nats;
pub mod process;
pub mod server;

/// A number from an environment variable (for soak settings), or `default` when it is
/// unset or not a number.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The workspace's root folder: from the `CARGO_MANIFEST_DIR` cargo sets when it runs a
/// test, else as it was at build time. Cargo may run a test executable that was built in
/// another clone sharing the build folder (it finds it up to date when the sources here
/// are older), and that clone's fixtures may be gone.
pub fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
}
