//! The engine's side of the gate bundle (`docs/offline.md`): what a gate needs to decide
//! alone, built from the issuer key registry and the ledger's deny list and its journal,
//! signed with the engine's bundle key. The format is the gate library's
//! ([`fareway_gate::bundle`]).
//!
//! A shard's position is its last transaction sequence, which every replica of the shard
//! agrees on; the deny journal keys each change by the sequence of the group commit that
//! made it. The version is the sum of the positions plus the key registry's count of keys
//! and revocations: each only grows, so the version does. A gate that sends the positions
//! of the bundle it holds gets the changes since then (a delta) while the journal holds
//! them and they are few enough, else the whole bundle.

use fareway_gate::bundle::{Body, Bundle, BundleKey, Delta, Settings};

use crate::clock::UnixMillis;
use crate::commands::Commands;
use crate::ledger::{LedgerError, LedgerView};
use crate::settlement::key::SettlementKey;
use crate::token::IssuerRegistry;

/// Most deny-list changes a delta carries; a gate further behind gets the whole bundle.
pub const DELTA_CHANGES_MAX: usize = 100_000;

/// The engine's bundle key and the settings gates decide by.
#[derive(Debug)]
pub struct Bundles {
    key: SettlementKey,
    settings: Settings,
}

/// A signed bundle, as a gate gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBundle {
    /// The body (`fareway_gate::bundle`'s format).
    pub body: Vec<u8>,
    /// Ed25519 over the body, by the bundle key.
    pub signature: [u8; 64],
    /// The body's version.
    pub version: u64,
    /// Whether the body holds the changes since the gate's position (else the whole).
    pub delta: bool,
}

/// Why a bundle request was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleRequestError {
    /// The gate's bundle is newer than what this node holds (not this engine's, or this
    /// node's replicas are behind another's).
    #[error(
        "the gate's bundle (version {have}) is newer than this node's ({version}); ask again later or another node"
    )]
    Future {
        /// The gate's version.
        have: u64,
        /// This node's.
        version: u64,
    },
    /// The ledger could not be read.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl Bundles {
    /// Bundles signed with `key`, telling gates `settings`.
    pub fn new(key: SettlementKey, settings: Settings) -> Bundles {
        Bundles { key, settings }
    }

    /// The public key gates check bundles with.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    /// The bundle for a gate holding version `have_version` at `have_positions` (empty:
    /// none). Blocks on reads of the ledger.
    pub fn answer(
        &self,
        commands: &Commands,
        registry: &IssuerRegistry,
        have_version: u64,
        have_positions: &[u64],
    ) -> Result<SignedBundle, BundleRequestError> {
        let views = views(commands)?;
        // Positions first, then the deny list: a list read after its position may hold
        // later changes too, which the next delta applies again to the same end.
        let positions = views
            .iter()
            .map(|view| Ok(view.next_sequence()?.saturating_sub(1)))
            .collect::<Result<Vec<u64>, LedgerError>>()?;
        let (providers, keys, keys_revision) = keys_of(registry);
        let version = positions.iter().sum::<u64>() + keys_revision;
        let ahead = have_positions.len() == positions.len()
            && have_positions
                .iter()
                .zip(&positions)
                .any(|(have, now)| have > now);
        if have_version > version || ahead {
            return Err(BundleRequestError::Future {
                have: have_version,
                version,
            });
        }
        let body = match self.changes_since(&views, have_positions, &positions)? {
            Some(changes) => Body::Delta(Delta {
                version,
                base: have_positions.to_vec(),
                positions,
                settings: self.settings,
                providers,
                keys,
                changes,
            }),
            None => whole(&views, version, positions, self.settings, providers, keys)?,
        };
        // The positions and lists read may include writes still being synced: a gate
        // must not hold a version that a crash could take back.
        commands.wait_durable()?;
        let (body, delta) = match &body {
            Body::Whole(bundle) => (bundle.encode(), false),
            Body::Delta(delta) => (delta.encode(), true),
        };
        Ok(SignedBundle {
            signature: self.key.sign(&body),
            body,
            version,
            delta,
        })
    }

    /// The deny-list changes from `have` (the gate's positions) to `now`, in shard order,
    /// when a delta can carry them: the gate holds a position of every shard, the
    /// journals hold every change since, and they are at most [`DELTA_CHANGES_MAX`].
    fn changes_since(
        &self,
        views: &[&LedgerView],
        have: &[u64],
        now: &[u64],
    ) -> Result<Option<Vec<(u64, bool)>>, LedgerError> {
        if have.len() != now.len() {
            // None held, or from a cluster of another shard count: the whole bundle.
            return Ok(None);
        }
        let mut changes = Vec::new();
        for ((view, have), now) in views.iter().zip(have).zip(now) {
            let room = DELTA_CHANGES_MAX - changes.len();
            let entries = view.deny_journal_between(*have, *now, room + 1)?;
            // Read after the entries: pruning forgets changes only below the journal's
            // start and moves it in the same batch, so a start still at or before the
            // gate's position means none of the changes read was missing.
            if view.deny_journal_from()? > have.saturating_add(1) || entries.len() > room {
                return Ok(None);
            }
            changes.extend(
                entries
                    .into_iter()
                    .map(|(_, account, denied)| (account, denied)),
            );
        }
        Ok(Some(changes))
    }
}

/// The whole bundle: every shard's deny list.
fn whole(
    views: &[&LedgerView],
    version: u64,
    positions: Vec<u64>,
    settings: Settings,
    providers: Vec<crate::token::Provider>,
    keys: Vec<BundleKey>,
) -> Result<Body, LedgerError> {
    let mut denied = std::collections::BTreeSet::new();
    for view in views {
        denied.extend(view.deny_list()?);
    }
    Ok(Body::Whole(Bundle {
        version,
        positions,
        settings,
        providers,
        keys,
        denied,
    }))
}

/// The registry's providers and keys as a bundle carries them, and its revision: keys
/// are never removed and a revocation is never undone, so keys plus revocations only
/// grows.
fn keys_of(registry: &IssuerRegistry) -> (Vec<crate::token::Provider>, Vec<BundleKey>, u64) {
    let providers = registry.providers().cloned().collect();
    let keys: Vec<BundleKey> = registry
        .keys()
        .map(|key| BundleKey {
            provider_id: key.provider_id,
            public_key: key.public_key,
            // A bundle writes 0 for "not revoked": a key revoked since the start of
            // time (a keys file from before revocation times) goes out as revoked at 1.
            revoked_at: key.revoked_at.map(|at| UnixMillis(at.0.max(1))),
        })
        .collect();
    let revoked = keys.iter().filter(|key| key.revoked_at.is_some()).count();
    let revision = (keys.len() + revoked) as u64;
    (providers, keys, revision)
}

/// The ledgers a bundle is read from: the embedded one, or a replica of every shard, in
/// shard order.
fn views(commands: &Commands) -> Result<Vec<&LedgerView>, LedgerError> {
    match commands {
        Commands::Local(ledger) => Ok(vec![ledger.view()]),
        Commands::Cluster(router) => {
            let held: Vec<_> = router.held().collect();
            if held.len() != router.shards() as usize {
                return Err(LedgerError::Unavailable(format!(
                    "this node holds {} of the {} shards, and a gate bundle needs every shard's deny list: ask a node that holds them all",
                    held.len(),
                    router.shards()
                )));
            }
            Ok(held.iter().map(|slot| slot.replica.view()).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::mint::Issuer;

    /// A keys file from before revocation times says `revoked = true` alone: the key is
    /// revoked since the start of time, and a bundle (where 0 means "not revoked") must
    /// still say revoked, or offline gates would take its codes again.
    #[test]
    fn a_key_revoked_before_revocation_times_goes_out_revoked() {
        let issuer = Issuer::from_seed(1, [7; 32]);
        let text = format!(
            "[[provider]]\nid = 1\nname = \"alipay\"\n\n[[issuer_key]]\nprovider_id = 1\nkey_id = {}\npublic_key = \"{}\"\nrevoked = true\n",
            issuer.key_id(),
            crate::token::keys::encode_public_key(&issuer.public_key())
        );
        let registry = IssuerRegistry::from_toml(&text).unwrap();
        let (_, keys, revision) = keys_of(&registry);
        assert_eq!(keys[0].revoked_at, Some(UnixMillis(1)));
        assert_eq!(revision, 2);
        let bundle = Bundle {
            version: revision,
            positions: vec![0],
            settings: Settings {
                code_validity_ms: 120_000,
                clock_skew_ms: 30_000,
            },
            providers: registry.providers().cloned().collect(),
            keys,
            denied: std::collections::BTreeSet::new(),
        };
        // Through the body's bytes and signature, as a gate gets it.
        let key = SettlementKey::from_seed([9; 32]);
        let body = bundle.encode();
        let signature = key.sign(&body);
        let Body::Whole(bundle) =
            fareway_gate::bundle::open(&body, &signature, &key.public_key()).unwrap()
        else {
            panic!("a whole bundle decodes whole");
        };
        let gate_registry = bundle.registry().unwrap();
        assert!(
            gate_registry
                .key(1, issuer.key_id())
                .unwrap()
                .is_revoked_at(UnixMillis(1))
        );
    }
}
