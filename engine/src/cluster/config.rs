//! The `[cluster]` section of `fareway serve --config`: present, the node runs in cluster
//! mode. Every setting, its default and why, is in `docs/configuration.md`.

use std::time::Duration;

use serde::Deserialize;

/// How a node takes part in a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster: it names the node in leases and status.
    pub node_id: String,
    /// The NATS servers (any one is enough to connect; the client learns the rest).
    pub nats_urls: Vec<String>,
    /// The cluster's shard count. It is fixed when the cluster is made
    /// (`fareway cluster init`); a node configured with another refuses to start.
    pub shards: u32,
    /// The shards this node holds a replica of; empty means all.
    pub shards_held: Vec<u32>,
    /// Replicas of each shard's stream and of the buckets (used by `cluster init`).
    pub replicas: usize,
    /// How long a lease lasts without renewal: a dead leader's shard waits this long at
    /// most before another node may take it.
    pub lease_ttl_ms: u64,
    /// How often a leader renews its lease: well inside the TTL, so that a renewal or two
    /// may be late without losing it.
    pub lease_renew_ms: u64,
    /// How long a log append or a forwarded command waits for its answer.
    pub request_timeout_ms: u64,
    /// NATS user name and password of this node, when the servers require them.
    pub nats_user: Option<String>,
    /// See `nats_user`.
    pub nats_password: Option<String>,
    /// The certificate authority (PEM) that signs the NATS servers' certificates: when
    /// set, the node speaks to the servers over TLS only, checking their certificates
    /// against it.
    pub nats_ca_file: Option<std::path::PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            shards: 4,
            shards_held: Vec::new(),
            replicas: 3,
            lease_ttl_ms: 3_000,
            lease_renew_ms: 1_000,
            request_timeout_ms: 2_000,
            nats_user: None,
            nats_password: None,
            nats_ca_file: None,
        }
    }
}

impl ClusterConfig {
    /// The shards this node holds, in order.
    pub fn held(&self) -> Vec<u32> {
        if self.shards_held.is_empty() {
            (0..self.shards).collect()
        } else {
            let mut held = self.shards_held.clone();
            held.sort_unstable();
            held.dedup();
            held
        }
    }

    /// What is wrong with the settings, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.node_id.is_empty()
            || !self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "cluster.node_id must be letters, digits, '-' or '_', and not empty; got {:?}",
                self.node_id
            ));
        }
        if self.nats_urls.is_empty() {
            return Err("cluster.nats_urls must name at least one NATS server".into());
        }
        if self.shards == 0 || self.shards > 1_024 {
            return Err(format!(
                "cluster.shards must be 1 to 1024; got {}",
                self.shards
            ));
        }
        if let Some(shard) = self.shards_held.iter().find(|shard| **shard >= self.shards) {
            return Err(format!(
                "cluster.shards_held names shard {shard}, but the cluster has shards 0 to {}",
                self.shards - 1
            ));
        }
        if self.lease_renew_ms == 0 || self.lease_renew_ms * 2 > self.lease_ttl_ms {
            return Err(format!(
                "cluster.lease_renew_ms ({}) must be positive and at most half of cluster.lease_ttl_ms ({})",
                self.lease_renew_ms, self.lease_ttl_ms
            ));
        }
        if self.request_timeout_ms == 0 || !(1..=5).contains(&self.replicas) {
            return Err(
                "cluster.request_timeout_ms must be positive and cluster.replicas 1 to 5".into(),
            );
        }
        Ok(())
    }

    /// The lease's time to live.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// The time between renewals.
    pub fn lease_renew(&self) -> Duration {
        Duration::from_millis(self.lease_renew_ms)
    }

    /// The time an append or a forwarded command waits.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Connects to NATS as this node.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        // A server that stops answering (a paused process, a cut link) leaves the TCP
        // connection open: pings every renewal interval find it within a few, and the
        // client moves to another server. A connection attempt that gets no greeting
        // within a renewal interval goes on to the next server (the default 5 s would
        // outlast the lease).
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("fareway-{}", self.node_id))
            .request_timeout(Some(self.request_timeout()))
            .ping_interval(self.lease_renew())
            .connection_timeout(self.lease_renew());
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca_file) = &self.nats_ca_file {
            options = options
                .add_root_certificates(ca_file.clone())
                .require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = self
            .nats_urls
            .iter()
            .map(|url| url.parse())
            .collect::<Result<_, _>>()
            .map_err(|err| anyhow::anyhow!("cluster.nats_urls: {err}"))?;
        Ok(options.connect(urls).await?)
    }

    /// JetStream over a connection as this node.
    pub async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        let client = self.connect().await.map_err(|err| {
            anyhow::anyhow!("cannot connect to NATS at {:?}: {err}", self.nats_urls)
        })?;
        Ok(async_nats::jetstream::new(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named() -> ClusterConfig {
        ClusterConfig {
            node_id: "node-1".into(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn the_defaults_with_a_name_are_valid_and_hold_every_shard() {
        assert_eq!(named().check(), Ok(()));
        assert_eq!(named().held(), vec![0, 1, 2, 3]);
        let some = ClusterConfig {
            shards_held: vec![3, 1, 3],
            ..named()
        };
        assert_eq!(some.held(), vec![1, 3]);
    }

    #[test]
    fn each_bad_setting_is_refused_by_name() {
        let cases = [
            (ClusterConfig::default(), "cluster.node_id"),
            (
                ClusterConfig {
                    node_id: "a b".into(),
                    ..named()
                },
                "cluster.node_id",
            ),
            (
                ClusterConfig {
                    nats_urls: vec![],
                    ..named()
                },
                "cluster.nats_urls",
            ),
            (
                ClusterConfig {
                    shards: 0,
                    ..named()
                },
                "cluster.shards must be 1 to 1024",
            ),
            (
                ClusterConfig {
                    shards_held: vec![4],
                    ..named()
                },
                "names shard 4",
            ),
            (
                ClusterConfig {
                    lease_renew_ms: 2_000,
                    ..named()
                },
                "at most half",
            ),
            (
                ClusterConfig {
                    replicas: 0,
                    ..named()
                },
                "cluster.replicas",
            ),
        ];
        for (config, expected) in cases {
            let refused = config.check().unwrap_err();
            assert!(refused.contains(expected), "{refused}");
        }
    }
}
