//! A cluster node: `fareway serve --config FILE` with a `[cluster]` section. It opens a
//! replica of every shard it holds (`DATA_DIR/shard-N`), follows or leads each, and
//! serves the gate and admin APIs (with health and reflection) for every shard, sending
//! each command to its shard's leader.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::commands::Commands;
use crate::gate::Gatekeeper;
use crate::ledger::{Replica, ShardId};
use crate::server;
use crate::server::config::ServerConfig;
use crate::server::metrics::Metrics;

use super::config::ClusterConfig;
use super::keys::SharedKeys;
use super::router::{Router, ShardSlot};
use super::settlement::ClusterSettlement;
use super::shard::{self, ShardContext, Taking};
use super::{manage, names};

/// A node that is running.
#[derive(Debug)]
pub struct RunningNode {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// The Prometheus endpoint's address, when configured.
    pub metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Starts a node; returns once it listens. Its shards lead or follow in the background.
pub async fn start(
    config: ServerConfig,
    cluster: ClusterConfig,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<RunningNode> {
    cluster.check().map_err(anyhow::Error::msg)?;
    let client = cluster.connect().await.context("cannot connect to NATS")?;
    let js = jetstream::new(client.clone());
    manage::check_shard_count(&js, &cluster).await?;
    check_group_commit_fits(&config, &client)?;
    let (fares, verifier, rules) = server::load_rules(&config)?;
    manage::check_rules(&js, &config).await?;
    let slots = open_replicas(&config, &cluster, rules).await?;
    let router = Arc::new(Router::new(
        cluster.shards,
        client.clone(),
        slots.clone(),
        cluster.request_timeout(),
    ));
    let gate = Arc::new(Gatekeeper::with_commands(
        Arc::clone(&verifier),
        Commands::Cluster(Arc::clone(&router)),
        fares,
        Arc::clone(&clock),
        config.scan_time_limits(),
    ));
    let settlement = open_settlement(&config, &cluster, &js, &slots).await?;
    let shared_keys = open_shared_keys(&config, &js, &verifier).await?;
    let (stop, stopped) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let mut apis = server::apis(
        &config,
        &gate,
        Arc::clone(&verifier),
        clock,
        &metrics,
        stopped.clone(),
        Some(settlement),
    );
    apis.admin = apis.admin.with_shared_keys(shared_keys.clone());
    apis.gate = apis
        .gate
        .with_bundles(Arc::new(open_bundles(&config, &js).await?));
    let (_health, routes) = server::routes_with_health(apis, &config).await?;
    let budget = server::descriptor_budget(&config)?;
    let (addr, incoming) = server::listen_guarded(&config, &budget, &metrics).await?;
    let server = server::serve_grpc(&config, incoming, routes, &metrics, stopped.clone())?;
    let metrics_server =
        server::serve_metrics(&config, render_led(&router, &metrics), stopped.clone()).await?;
    let metrics_addr = metrics_server.as_ref().map(|(addr, _)| *addr);
    let context = shard_context(&cluster, client, js, &config).await?;
    let mut tasks: Vec<JoinHandle<()>> = slots
        .iter()
        .map(|slot| {
            tokio::spawn(shard::run(
                context.clone(),
                Arc::clone(slot),
                stopped.clone(),
            ))
        })
        .collect();
    tasks.push(tokio::spawn(shared_keys.follow(verifier, stopped.clone())));
    tasks.push(tokio::spawn(report_applied(
        context,
        slots,
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(server::sweep(
        gate,
        Duration::from_millis(config.taps.journey_sweep_interval_ms),
        stopped,
    )));
    tracing::info!(%addr, node = cluster.node_id, shards = cluster.shards, held = ?cluster.held(), "fareway cluster node serving");
    if let Some((_, task)) = metrics_server {
        tasks.push(tokio::spawn(async move {
            let _ = task.await;
        }));
    }
    Ok(RunningNode {
        addr,
        metrics_addr,
        stop,
        tasks,
        server,
    })
}

impl RunningNode {
    /// Stops: the server stops taking calls, each led shard's lease is released (so
    /// another node takes over at once), and the shards' writers drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.server.await.context("server task failed")??;
        Ok(())
    }
}

/// The node's metrics: its own counters, and the ledger gauges summed over the shards it
/// leads now (a shard's writer counts from when this node began to lead it).
fn render_led(
    router: &Arc<Router>,
    metrics: &Arc<Metrics>,
) -> Arc<dyn Fn() -> String + Send + Sync> {
    use std::sync::atomic::Ordering::Relaxed;
    let (router, metrics) = (Arc::clone(router), Arc::clone(metrics));
    Arc::new(move || {
        let total = crate::ledger::WriterStats::default();
        for ledger in router.held().filter_map(|slot| slot.leader()) {
            let stats = ledger.stats();
            total
                .queue_depth
                .fetch_add(stats.queue_depth.load(Relaxed), Relaxed);
            for (sum, part) in [
                (&total.group_commits, &stats.group_commits),
                (&total.requests, &stats.requests),
                (&total.write_failures, &stats.write_failures),
            ] {
                sum.fetch_add(part.load(Relaxed), Relaxed);
            }
            total
                .write_time_us_max
                .fetch_max(stats.write_time_us_max.load(Relaxed), Relaxed);
            for (sum, part) in [
                (&total.write_times, &stats.write_times),
                (&total.queue_waits, &stats.queue_waits),
                (&total.decide_writes, &stats.decide_writes),
                (&total.sync_waits, &stats.sync_waits),
            ] {
                sum.add(part);
            }
        }
        metrics.render(&total)
    })
}

/// A group commit is one log message: its most requests must fit the count's 16 bits and
/// the servers' payload limit.
fn check_group_commit_fits(
    config: &ServerConfig,
    client: &async_nats::Client,
) -> anyhow::Result<()> {
    use crate::ledger::codec::{LOG_ENTRY_REQUEST_BYTES_MAX, LOG_ENTRY_REQUESTS_MAX};
    let requests_max = config.limits.ledger_group_commit_requests_max;
    let payload_max = client.server_info().max_payload;
    let bytes_max = 3 + requests_max.saturating_mul(LOG_ENTRY_REQUEST_BYTES_MAX);
    anyhow::ensure!(
        requests_max <= LOG_ENTRY_REQUESTS_MAX && bytes_max <= payload_max,
        "limits.ledger_group_commit_requests_max = {requests_max} makes log messages of up to {bytes_max} bytes; the NATS servers take at most {payload_max} (and a message at most {LOG_ENTRY_REQUESTS_MAX} requests)"
    );
    Ok(())
}

/// Opens a replica of each shard this node holds.
async fn open_replicas(
    config: &ServerConfig,
    cluster: &ClusterConfig,
    rules: crate::ledger::Rules,
) -> anyhow::Result<Vec<Arc<ShardSlot>>> {
    let mut slots = Vec::new();
    for shard in cluster.held() {
        let dir = config.data_dir.join(names::replica_dir(shard));
        let ledger_config = config.ledger_config();
        let rules = rules.clone();
        let id = ShardId {
            shard,
            shards: cluster.shards,
        };
        let replica =
            tokio::task::spawn_blocking(move || Replica::open(&dir, id, ledger_config, rules))
                .await
                .context("replica open task failed")?
                .with_context(|| format!("cannot open the replica of shard {shard}"))?;
        slots.push(Arc::new(ShardSlot::new(shard, Arc::new(replica))));
    }
    Ok(slots)
}

/// The gate bundles' signer, with the deployment's bundle key: gates hold one public key,
/// so every node signs with the same one.
async fn open_bundles(
    config: &ServerConfig,
    js: &jetstream::Context,
) -> anyhow::Result<crate::gate::bundle::Bundles> {
    let bundles = server::gate_bundles(config)?;
    let key_id = crate::settlement::key::key_id_text(&bundles.public_key());
    manage::check_signing_key(js, manage::SigningKey::GateBundles, &key_id).await?;
    Ok(bundles)
}

/// Settlement over every shard this node holds (closes and pulls need all of them), with
/// the deployment's settlement key: every node signs with the same one.
async fn open_settlement(
    config: &ServerConfig,
    cluster: &ClusterConfig,
    js: &jetstream::Context,
    slots: &[Arc<ShardSlot>],
) -> anyhow::Result<Arc<ClusterSettlement>> {
    js.get_stream(names::SETTLEMENT_STREAM)
        .await
        .context("cannot open the settlement stream (was `fareway cluster init` run? is JetStream answering?)")?;
    let replicas = slots
        .iter()
        .map(|slot| (slot.shard, Arc::clone(&slot.replica)))
        .collect();
    let key = server::settlement_key(config)?;
    manage::check_signing_key(js, manage::SigningKey::Settlement, &key.key_id()).await?;
    Ok(Arc::new(ClusterSettlement::new(
        js.clone(),
        key,
        config.settlement.currency.clone(),
        cluster.shards,
        replicas,
        // A replica that trails its log by more than a few request timeouts is not one
        // to settle from.
        cluster.request_timeout() * 5,
    )))
}

/// The cluster's issuer key registry, enforced here before the node serves (this node's
/// key file seeds it when the cluster has none yet).
async fn open_shared_keys(
    config: &ServerConfig,
    js: &jetstream::Context,
    verifier: &crate::token::Verifier,
) -> anyhow::Result<SharedKeys> {
    let bucket = js
        .get_key_value(names::KEY_BUCKET)
        .await
        .context("cannot open the issuer key bucket (was `fareway cluster init` run? is JetStream answering?)")?;
    let shared = SharedKeys::new(bucket, config.issuer_keys_file.clone());
    shared
        .load_or_seed(verifier)
        .await
        .context("cannot load the cluster's issuer keys")?;
    Ok(shared)
}

async fn shard_context(
    cluster: &ClusterConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    config: &ServerConfig,
) -> anyhow::Result<ShardContext> {
    let leases = js.get_key_value(names::LEASE_BUCKET).await.context(
        "cannot open the lease bucket (was `fareway cluster init` run? is JetStream answering?)",
    )?;
    let reports = js.get_key_value(names::REPLICA_BUCKET).await.context(
        "cannot open the replica bucket (was `fareway cluster init` run? is JetStream answering?)",
    )?;
    Ok(ShardContext {
        node_id: cluster.node_id.clone(),
        client,
        js,
        leases,
        reports,
        renew: cluster.lease_renew(),
        forwarded_in_flight_max: config.limits.ledger_queue_depth_max,
        leading: Arc::default(),
        taking: Arc::new(Taking::new(cluster.lease_ttl())),
    })
}

/// Every renewal interval, reports what each replica applied, for `cluster status`.
async fn report_applied(
    context: ShardContext,
    slots: Vec<Arc<ShardSlot>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(context.renew);
    loop {
        tokio::select! {
            () = shard::until_stopped(&mut stopped) => return,
            _ = ticks.tick() => {}
        }
        for slot in &slots {
            let Ok(applied) = slot.replica.applied_stream_sequence() else {
                continue;
            };
            let key = names::replica_key(slot.shard, &context.node_id);
            let _ = context.reports.put(key, applied.to_string().into()).await;
        }
    }
}
