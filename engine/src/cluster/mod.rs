//! Cluster mode: shards of the ledger replicated through NATS JetStream, failover by
//! replay. `docs/cluster.md` is the design; in short:
//!
//! - Rider accounts map to a fixed number of shards ([`shard_of`]); each shard is an
//!   ordinary ledger (its own RocksDB, the same state machine) with its own operator and
//!   provider sub-accounts, so every command touches one shard.
//! - A shard's log is a JetStream stream ([`log`]): one message per group commit. The
//!   shard's leader appends each group commit, fenced by the sequence it expects to
//!   follow, before it writes locally; followers apply the stream as hot standbys.
//! - One node leads a shard at a time, by a lease in a key-value bucket ([`lease`]).
//! - Every node serves the gRPC API and forwards commands to the shard's leader over NATS
//!   request-reply ([`router`]).
//!
//! Embedded mode (the default) uses none of this.

pub mod config;
pub mod keys;
pub mod lease;
pub mod local;
pub mod log;
pub mod manage;
pub mod node;
pub mod router;
pub mod settlement;
pub mod shard;

pub use config::ClusterConfig;

use crate::ledger::{Command, TxId};

/// The shard a rider account belongs to: the account id modulo the cluster's shard count.
/// Account ids are issued in sequence, so the shards fill evenly.
pub fn shard_of(account_id: u64, shards: u32) -> u32 {
    (account_id % u64::from(shards.max(1))) as u32
}

/// How often a node looks whether its replica has applied what a read, a close or a pull
/// waits for.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Waits until `done` holds, looking every few milliseconds, for at most `max`: whether it
/// came to hold.
pub async fn wait_until<E>(
    max: std::time::Duration,
    done: impl Fn() -> Result<bool, E>,
) -> Result<bool, E> {
    let deadline = tokio::time::Instant::now() + max;
    while !done()? {
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
    Ok(true)
}

/// What decides a command's shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteBy {
    /// The rider account the command names.
    Account(u64),
    /// A refund names only the charge it reverses: its shard is the charge's.
    Charge(TxId),
}

/// What decides `command`'s shard.
pub fn route_by(command: &Command) -> RouteBy {
    match *command {
        Command::OpenAccount { account_id, .. }
        | Command::SetStatus { account_id, .. }
        | Command::TopUp { account_id, .. }
        | Command::Charge { account_id, .. }
        | Command::Adjust { account_id, .. }
        | Command::CloseJourney { account_id, .. }
        | Command::Correct { account_id, .. } => RouteBy::Account(account_id),
        Command::Tap(tap) => RouteBy::Account(tap.account_id),
        // A forged code names no rider to trust: spread by the gate that took it.
        Command::LostFare { gate_id, .. } => RouteBy::Account(u64::from(gate_id)),
        Command::Refund { original } => RouteBy::Charge(original),
    }
}

/// The names of everything a cluster keeps in NATS, in one place.
pub mod names {
    /// The stream that holds shard `shard`'s log.
    pub fn stream(shard: u32) -> String {
        format!("FAREWAY_SHARD_{shard}")
    }

    /// The subject of shard `shard`'s log messages.
    pub fn log_subject(shard: u32) -> String {
        format!("fareway.shard.{shard}.log")
    }

    /// The subject on which shard `shard`'s leader takes forwarded commands.
    pub fn submit_subject(shard: u32) -> String {
        format!("fareway.shard.{shard}.submit")
    }

    /// The bucket of the issuer key registry every node enforces (`super::keys`).
    pub const KEY_BUCKET: &str = "fareway_keys";

    /// The stream of settlement closes and acknowledgements.
    pub const SETTLEMENT_STREAM: &str = "FAREWAY_SETTLEMENT";

    /// The subject of its closes.
    pub const SETTLEMENT_CLOSE_SUBJECT: &str = "fareway.settlement.close";

    /// The subject of its acknowledgements.
    pub const SETTLEMENT_ACK_SUBJECT: &str = "fareway.settlement.ack";

    /// The key-value bucket of the shards' leases.
    pub const LEASE_BUCKET: &str = "fareway_leases";

    /// The key of shard `shard`'s lease.
    pub fn lease_key(shard: u32) -> String {
        format!("shard-{shard}")
    }

    /// The folder of a node's replica of shard `shard`, in its data directory (and in a
    /// checkpoint the node writes).
    pub fn replica_dir(shard: u32) -> String {
        format!("shard-{shard}")
    }

    /// The key-value bucket of the cluster's own settings.
    pub const CLUSTER_BUCKET: &str = "fareway_cluster";

    /// The key of the shard count, written once by `fareway cluster init`.
    pub const SHARDS_KEY: &str = "shards";

    /// The key of the digest of the rules every replica decides by.
    pub const RULES_KEY: &str = "rules";

    /// The key of the settlement key's id every node signs with.
    pub const SETTLEMENT_KEY_KEY: &str = "settlement-key";

    /// The key of the gate bundle key's id every node signs with.
    pub const BUNDLE_KEY_KEY: &str = "bundle-key";

    /// The bucket where each replica reports the sequence it applied (one key per shard
    /// and node), for `cluster status`.
    pub const REPLICA_BUCKET: &str = "fareway_replicas";

    /// The key under which node `node_id` reports what it applied of shard `shard`.
    pub fn replica_key(shard: u32, node_id: &str) -> String {
        format!("shard-{shard}.{node_id}")
    }

    /// The shard and node of a key written by [`replica_key`].
    pub fn parse_replica_key(key: &str) -> Option<(u32, &str)> {
        let (shard, node_id) = key.strip_prefix("shard-")?.split_once('.')?;
        Some((shard.parse().ok()?, node_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_spread_over_shards_by_their_remainder() {
        assert_eq!(shard_of(0, 4), 0);
        assert_eq!(shard_of(5, 4), 1);
        assert_eq!(shard_of(1_000_003, 4), 3);
        assert_eq!(shard_of(7, 1), 0);
        let mut counts = [0u32; 3];
        for account in 1..=3_000 {
            counts[shard_of(account, 3) as usize] += 1;
        }
        assert_eq!(counts, [1_000, 1_000, 1_000]);
    }

    #[test]
    fn a_replica_key_names_its_shard_and_node() {
        let key = names::replica_key(12, "node-3");
        assert_eq!(key, "shard-12.node-3");
        assert_eq!(names::parse_replica_key(&key), Some((12, "node-3")));
        assert_eq!(names::parse_replica_key("shard-x.node-3"), None);
        assert_eq!(names::parse_replica_key("lease-1.node-3"), None);
    }
}
