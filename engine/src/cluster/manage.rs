//! Making a cluster and looking at it: `fareway cluster init` makes each shard's stream,
//! the lease and replica buckets, and records the shard count; `fareway cluster status`
//! says, for each shard, its leader, its log's last sequence, and how far each replica
//! has applied it. Every node checks the recorded shard count before it starts.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};

use super::config::ClusterConfig;
use super::{lease, log, names};

/// Makes the cluster's streams and buckets and records its shard count. Running it again
/// with the same count changes nothing; with another count it refuses.
pub async fn init(js: &jetstream::Context, config: &ClusterConfig) -> anyhow::Result<()> {
    let settings = bucket(
        js,
        names::CLUSTER_BUCKET,
        config.replicas,
        std::time::Duration::ZERO,
    )
    .await?;
    match settings.get(names::SHARDS_KEY).await? {
        Some(found) => check_count(&found, config.shards)?,
        None => {
            settings
                .create(names::SHARDS_KEY, config.shards.to_string().into())
                .await
                .map_err(|err| anyhow::anyhow!("cannot record the shard count: {err}"))?;
        }
    }
    bucket(
        js,
        names::KEY_BUCKET,
        config.replicas,
        std::time::Duration::ZERO,
    )
    .await?;
    // Leases expire unless renewed: the bucket's entries live for the lease's TTL.
    bucket(js, names::LEASE_BUCKET, config.replicas, config.lease_ttl()).await?;
    bucket(
        js,
        names::REPLICA_BUCKET,
        config.replicas,
        std::time::Duration::from_secs(60),
    )
    .await?;
    for shard in 0..config.shards {
        log::ensure_stream(js, shard, config.replicas).await?;
    }
    super::settlement::ensure_stream(js, config.replicas).await
}

/// Refuses to go on unless the cluster was made with this node's shard count.
pub async fn check_shard_count(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> anyhow::Result<()> {
    let settings = js
        .get_key_value(names::CLUSTER_BUCKET)
        .await
        .map_err(|err| {
            anyhow::anyhow!("the cluster has not been made (run `fareway cluster init`): {err}")
        })?;
    let found = settings.get(names::SHARDS_KEY).await?.ok_or_else(|| {
        anyhow::anyhow!("the cluster records no shard count (run `fareway cluster init`)")
    })?;
    check_count(&found, config.shards)
}

fn check_count(found: &[u8], configured: u32) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(found);
    match text.parse::<u32>() {
        Ok(count) if count == configured => Ok(()),
        Ok(count) => anyhow::bail!(
            "the cluster was made with {count} shards, but this node is configured with {configured} (cluster.shards); a shard count is fixed when a cluster is made"
        ),
        Err(_) => anyhow::bail!("the cluster's recorded shard count {text:?} is not a number"),
    }
}

/// Makes a key-value bucket that keeps one value per key (for `max_age`; zero is for
/// ever), or opens the one there.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
    max_age: std::time::Duration,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.into(),
        history: 1,
        max_age,
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|err| anyhow::anyhow!("cannot make bucket {name}: {err}"))
}

/// Replicas replay requests, not their effects, so every node must decide by the same
/// rules (the fares file and the code retry window): the first node to start records
/// their digest, and a node with other rules refuses to start, naming both digests.
pub async fn check_rules(
    js: &jetstream::Context,
    config: &crate::server::config::ServerConfig,
) -> anyhow::Result<()> {
    let fares = crate::files::read_bounded(
        &config.fares_file,
        crate::fares::FARES_FILE_BYTES_MAX as u64,
    )?;
    let mut input = fares.into_bytes();
    input.extend_from_slice(&config.taps.code_retry_window_ms.to_be_bytes());
    let digest = crate::hex::encode(ring::digest::digest(&ring::digest::SHA256, &input).as_ref());
    let found = recorded_or_first(js, names::RULES_KEY, &digest).await?;
    anyhow::ensure!(
        found == digest,
        "this node's fares file and code retry window (digest {digest}) differ from the cluster's (digest {found}): replicas would price the same taps differently. A fare change is a new cluster for now"
    );
    Ok(())
}

/// A key every node of a cluster signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    /// Settlement manifests: a batch is signed once, by the node that closed it, and
    /// `GetSigningKey` must answer alike everywhere.
    Settlement,
    /// Gate bundles: a gate holds one engine public key, and may fetch from any node.
    GateBundles,
}

/// Every node signs with the same key of each kind: the first node to start records its
/// key id, and a node with another key refuses to start.
pub async fn check_signing_key(
    js: &jetstream::Context,
    which: SigningKey,
    key_id: &str,
) -> anyhow::Result<()> {
    let (recorded_as, what, setting) = match which {
        SigningKey::Settlement => (
            names::SETTLEMENT_KEY_KEY,
            "settlement",
            "settlement.key_file",
        ),
        SigningKey::GateBundles => (names::BUNDLE_KEY_KEY, "gate bundle", "bundle.key_file"),
    };
    let found = recorded_or_first(js, recorded_as, key_id).await?;
    anyhow::ensure!(
        found == key_id,
        "this node's {what} key (id {key_id}) is not the cluster's (id {found}): every node signs with the same key; copy the cluster's key file to {setting}"
    );
    Ok(())
}

/// The value recorded under `key` in the cluster's bucket, recording `value` there first
/// when there is none.
async fn recorded_or_first(
    js: &jetstream::Context,
    key: &str,
    value: &str,
) -> anyhow::Result<String> {
    let settings = js.get_key_value(names::CLUSTER_BUCKET).await?;
    match settings.create(key, value.to_string().into()).await {
        Ok(_) => Ok(value.to_string()),
        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(settings
            .get(key)
            .await?
            .map(|found| String::from_utf8_lossy(&found).into_owned())
            .unwrap_or_default()),
        Err(err) => anyhow::bail!("cannot record {key} in the cluster's settings: {err}"),
    }
}

/// One shard as `cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    /// The shard.
    pub shard: u32,
    /// The node holding its lease, if any.
    pub leader: Option<String>,
    /// The last sequence of its log.
    pub stream_sequence: u64,
    /// Each replica's node and the sequence it reported applied (within the last minute).
    pub replicas: Vec<(String, u64)>,
}

/// Every replica's report (within the last minute), by shard: node and applied sequence.
async fn replica_reports(reports: &kv::Store) -> anyhow::Result<BTreeMap<u32, Vec<(String, u64)>>> {
    let mut by_shard: BTreeMap<u32, Vec<(String, u64)>> = BTreeMap::new();
    let mut keys = reports.keys().await?;
    while let Some(key) = tokio_stream::StreamExt::next(&mut keys).await {
        let key = key?;
        let (Some((shard, node_id)), Some(value)) =
            (names::parse_replica_key(&key), reports.get(&key).await?)
        else {
            continue;
        };
        let applied = String::from_utf8_lossy(&value).parse().unwrap_or(0);
        by_shard
            .entry(shard)
            .or_default()
            .push((node_id.to_owned(), applied));
    }
    Ok(by_shard)
}

/// Every shard's status.
pub async fn status(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> anyhow::Result<Vec<ShardStatus>> {
    check_shard_count(js, config).await?;
    let leases = js.get_key_value(names::LEASE_BUCKET).await?;
    let reports = js.get_key_value(names::REPLICA_BUCKET).await?;
    let replicas = replica_reports(&reports).await?;
    let mut shards = Vec::new();
    for shard in 0..config.shards {
        shards.push(ShardStatus {
            shard,
            leader: lease::holder(&leases, shard).await,
            stream_sequence: log::last_sequence(js, shard).await?,
            replicas: replicas.get(&shard).cloned().unwrap_or_default(),
        });
    }
    Ok(shards)
}
