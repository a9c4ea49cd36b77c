//! Shared set-up for the benchmarks: a registry with one provider, and riders' devices.

use fareway::clock::UnixMillis;
use fareway::token::mint::{Device, Issuer};
use fareway::token::{IssuerRegistry, Provider};

/// The time every benchmark runs at.
pub const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

/// A registry with provider 1 and its issuer, whose key has a fixed seed.
pub fn registry_and_issuer() -> (IssuerRegistry, Issuer) {
    let issuer = Issuer::from_seed(1, [1; 32]);
    let mut registry = IssuerRegistry::default();
    registry
        .add_provider(Provider {
            id: 1,
            name: "metro-pay".into(),
        })
        .unwrap_or_else(|err| unreachable!("{err}"));
    registry
        .add_key(issuer.issuer_key())
        .unwrap_or_else(|err| unreachable!("{err}"));
    (registry, issuer)
}

/// A rider's device for `account_id`, with a credential valid for a week from [`NOW`].
pub fn device(issuer: &Issuer, account_id: u64) -> Device {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&account_id.to_be_bytes());
    let key = Device::key_from_seed(&seed);
    let credential = issuer.issue(
        account_id,
        NOW.saturating_add(7 * 86_400_000),
        0,
        Device::public_key_of(&key),
    );
    Device::new(key, credential, 0)
}
