//! Cluster mode on real parts: a 3-server NATS JetStream cluster on 127.0.0.1 (started by
//! the test, temporary storage, `sync_interval: always`) and real `fareway serve` nodes.
//!
//! - Appends are fenced: a leader that is behind the log cannot append, and catches up
//!   by replay to the same state digest; a log message that does not decode stops a
//!   replica with an error naming its sequence.
//! - A node configured with another shard count than the cluster's refuses to start.
//! - Under load from the simulator's gates (every unanswered tap retried with the same
//!   id), the leader of a shard is killed with SIGKILL and started again later: the shard
//!   fails over, every accepted tap is charged exactly once, open journeys survive, every
//!   shard's audit passes (money conserved per shard and in total), and the replicas of
//!   each shard have the same state digest.
//!
//! `FAREWAY_CLUSTER_SOAK_S` makes the load of the fault tests longer (10 to 18 s by
//! default), for a soak: the leader kills, the NATS server faults and the leader pauses
//! repeat until it ends.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use fareway::clock::{Clock as _, SystemClock, UnixMillis};
use fareway::cluster::local::ServerTls;
use fareway::cluster::log::{self, ShardLog, catch_up};
use fareway::cluster::{ClusterConfig, manage, names};
use fareway::fares::FareTable;
use fareway::ledger::{
    AccountRef, Command, LedgerConfig, LedgerError, LedgerView, Outcome, Replica, Request, Rules,
    ShardId, StoreConfig, TxId, audit,
};
use fareway::money::Amount;
use fareway::settlement::key::SettlementKey;
use fareway::token::IssuerKey;
use fareway_proto::v1 as pb;
use fareway_tests::certs::{Ca, write};
use fareway_tests::nats::NatsCluster;
use fareway_tests::process::{
    Played, ServerProcess, engine_at, fareway_binary, http_get, plan_phase, play_with_retries,
    provision_sample_city,
};
use fareway_tests::server::{config_file_text, write_config};
use fareway_tests::{env_number, workspace_root};
use rcgen::ExtendedKeyUsagePurpose;

fn cluster_config(nats: &NatsCluster, node_id: &str, shards: u32) -> ClusterConfig {
    let node = nats.node_credentials();
    ClusterConfig {
        node_id: node_id.into(),
        nats_urls: nats.urls(),
        nats_user: Some(node.user.clone()),
        nats_password: Some(node.password.clone()),
        shards,
        lease_ttl_ms: 2_000,
        lease_renew_ms: 500,
        ..ClusterConfig::default()
    }
}

/// Makes the cluster, retrying while the servers elect their JetStream leader.
async fn init(config: &ClusterConfig) {
    let started = Instant::now();
    loop {
        let made = async { manage::init(&config.jetstream().await?, config).await }.await;
        match made {
            Ok(()) => return,
            Err(err) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("cluster not ready yet: {err:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => panic!("the cluster could not be made: {err:#}"),
        }
    }
}

fn rules() -> Rules {
    let text = std::fs::read_to_string(workspace_root().join("docs/sample-city.toml")).unwrap();
    Rules {
        fares: Some(Arc::new(FareTable::from_toml(&text).unwrap())),
        code_retry_window_ms: 60_000,
    }
}

fn open_replica(dir: &Path, shard: u32, shards: u32) -> Replica {
    Replica::open(
        dir,
        ShardId { shard, shards },
        LedgerConfig::default(),
        rules(),
    )
    .unwrap()
}

fn request(id: u128, command: Command) -> Request {
    Request {
        id: TxId(id),
        time: UnixMillis(1_700_000_000_000),
        command,
    }
}

fn digest(view: &LedgerView) -> String {
    fareway::hex::encode(&audit::state_digest(view).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leader_cannot_append_and_catches_up_by_replay() {
    let nats = NatsCluster::start(3);
    let config = cluster_config(&nats, "a", 1);
    init(&config).await;
    let js = config.jetstream().await.unwrap();
    let folder = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Handle::current();

    // Replica A leads and records an account with money on it.
    let a = open_replica(&folder.path().join("a"), 0, 1);
    let leader = a
        .lead(Box::new(ShardLog::new(
            js.clone(),
            runtime.clone(),
            0,
            "a-1".into(),
        )))
        .unwrap();
    let open = Command::OpenAccount {
        account_id: 1,
        provider_id: 1,
        credit_limit: Amount(0),
    };
    let top_up = Command::TopUp {
        account_id: 1,
        amount: Amount(1_000),
    };
    for (id, command) in [(1, open), (2, top_up)] {
        let receipt = leader.submit_async(request(id, command)).await.unwrap();
        assert_eq!(receipt.record.outcome, Outcome::Accepted);
    }
    assert_eq!(a.applied_stream_sequence().unwrap(), 2);

    // Replica B believes it leads from an empty log: its append is fenced off, nothing is
    // written, and its ledger refuses everything after.
    let b = open_replica(&folder.path().join("b"), 0, 1);
    let mut stale = b
        .lead(Box::new(ShardLog::new(
            js.clone(),
            runtime.clone(),
            0,
            "b-1".into(),
        )))
        .unwrap();
    let fenced = stale.submit_async(request(3, open)).await.unwrap_err();
    assert!(
        matches!(&fenced, LedgerError::Unavailable(message) if message.contains("another leader appended after sequence 0")),
        "{fenced}"
    );
    let after = stale.submit_async(request(4, top_up)).await.unwrap_err();
    assert!(matches!(after, LedgerError::Unavailable(_)), "{after}");
    tokio::task::block_in_place(|| stale.shutdown());
    assert_eq!(b.applied_stream_sequence().unwrap(), 0);
    assert_eq!(b.view().account(AccountRef::Rider(1)).unwrap(), None);

    // B follows: it replays the log to A's state, byte for byte.
    assert_eq!(catch_up(&js, 0, &b).await.unwrap(), 2);
    let balance = |replica: &Replica| {
        replica
            .view()
            .account(AccountRef::Rider(1))
            .unwrap()
            .unwrap()
            .balance
    };
    assert_eq!(balance(&b), Amount(1_000));
    assert_eq!(balance(&a), Amount(1_000));
    assert_eq!(digest(b.view()), digest(a.view()));
    let report = audit::audit(b.view()).unwrap();
    assert!(report.ok(), "{:?}", report.violations);
    assert_eq!(report.balance_sum, 0);

    // A message no build can decode stops a replica, naming its sequence.
    js.send_publish(
        names::log_subject(0),
        async_nats::jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::from_static(b"\x09not a log entry")),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let c = open_replica(&folder.path().join("c"), 0, 1);
    let refused = catch_up(&js, 0, &c).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("log message 3 cannot be applied")
            && refused.to_string().contains("unknown log entry version"),
        "{refused}"
    );
    drop(leader);
}

/// Only engine nodes may write a shard's log or touch a lease: a client without
/// credentials is refused when it connects; a client with a user that is not a node's (a
/// gate's) can neither append to a shard's stream, by JetStream or by a plain publish, nor
/// read the lease bucket, and nothing it sent is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_may_write_the_log_or_read_a_lease() {
    let nats = NatsCluster::start(3);
    let config = cluster_config(&nats, "n0", 1);
    init(&config).await;
    let js = config.jetstream().await.unwrap();
    let node_leases = js.get_key_value(names::LEASE_BUCKET).await.unwrap();
    node_leases
        .put(names::lease_key(0), "n0".into())
        .await
        .unwrap();
    let stored_before = log::last_sequence(&js, 0).await.unwrap();

    let anonymous = async_nats::connect(nats.urls()[0].as_str()).await;
    let refused = anonymous.unwrap_err().to_string();
    assert!(refused.contains("authorization"), "{refused}");

    let gate = nats.gate_credentials();
    let client = async_nats::ConnectOptions::with_user_and_password(
        gate.user.clone(),
        gate.password.clone(),
    )
    .request_timeout(Some(Duration::from_millis(500)))
    .connect(nats.urls())
    .await
    .unwrap();
    let gate_js = async_nats::jetstream::new(client.clone());
    let appended = match gate_js
        .publish(names::log_subject(0), "forged".into())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|err| err.to_string()),
        Err(err) => Err(err.to_string()),
    };
    assert!(appended.is_err(), "a gate's append was acknowledged");
    client
        .publish(names::log_subject(0), "forged".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert!(
        gate_js.get_key_value(names::LEASE_BUCKET).await.is_err(),
        "a gate opened the lease bucket"
    );
    let lease_get = client
        .request(
            format!(
                "$JS.API.DIRECT.GET.KV_{0}.$KV.{0}.{1}",
                names::LEASE_BUCKET,
                names::lease_key(0)
            ),
            "".into(),
        )
        .await;
    assert!(lease_get.is_err(), "a gate read a lease: {lease_get:?}");

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        log::last_sequence(&js, 0).await.unwrap(),
        stored_before,
        "a gate's message was stored in the log"
    );
}

/// With TLS required by the servers (certificates made by the test), a node that trusts
/// their authority makes the cluster and uses it (its 3-replica streams replicate over
/// TLS routes too); a client without TLS, or one that does not trust the servers'
/// authority, cannot connect at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_speak_tls_to_servers_that_require_it() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("fareway nats CA");
    let (cert, key) = ca.issue(
        &["127.0.0.1", "localhost"],
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let tls = ServerTls {
        cert_file: write(certs.path(), "server.pem", &cert),
        key_file: write(certs.path(), "server.key", &key),
        ca_file: write(certs.path(), "ca.pem", &ca.pem()),
    };
    let nats = NatsCluster::start_with(3, Some(&tls));
    let mut config = cluster_config(&nats, "n0", 1);
    config.nats_ca_file = Some(tls.ca_file.clone());
    init(&config).await;
    let js = config.jetstream().await.unwrap();
    let leases = js.get_key_value(names::LEASE_BUCKET).await.unwrap();
    leases.put(names::lease_key(0), "n0".into()).await.unwrap();
    assert_eq!(
        leases.get(names::lease_key(0)).await.unwrap().as_deref(),
        Some(&b"n0"[..])
    );

    let mut plain = config.clone();
    plain.nats_ca_file = None;
    let refused = plain.connect().await;
    assert!(refused.is_err(), "a client without TLS connected");
    let mut stranger = config.clone();
    stranger.nats_ca_file = Some(write(
        certs.path(),
        "other-ca.pem",
        &Ca::new("someone else").pem(),
    ));
    let refused = stranger.connect().await;
    assert!(
        refused.is_err(),
        "a client that does not trust the servers' authority connected"
    );
}

/// A cluster node serves `/metrics` when `metrics_listen` is set: its ledger gauges sum
/// the shards it leads (here the one shard, after one account was opened through it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_the_metrics_of_the_shards_it_leads() {
    let nats = NatsCluster::start(3);
    let cluster = cluster_config(&nats, "n0", 1);
    init(&cluster).await;
    let folder = tempfile::tempdir().unwrap();
    let config = write_config(folder.path(), |config| {
        config.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        config.cluster = Some(cluster.clone());
    });
    let node = fareway::cluster::node::start(config, cluster.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let js = cluster.jetstream().await.unwrap();
    leader_of(&js, &cluster, 0).await;
    let mut admin = engine_at(node.addr).admin().await.unwrap();
    admin
        .open_account(pb::OpenAccountRequest {
            transaction_id: 1u128.to_be_bytes().to_vec(),
            account_id: 42,
            provider_id: 1,
            credit_limit_minor: 0,
        })
        .await
        .unwrap();
    let text = scrape(node.metrics_addr.unwrap()).await;
    assert!(
        text.lines().any(|line| line == "fareway_ledger_requests 1"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|line| line == "fareway_ledger_group_commits 1"),
        "{text}"
    );
    node.stop().await.unwrap();
}

/// The body of `GET /metrics` at `addr`.
async fn scrape(addr: std::net::SocketAddr) -> String {
    tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap()
}

/// A node's configuration in `folder`, for the cluster's node `node_id`, signing
/// settlement manifests with the key in `settlement_key` (every node of a cluster has the
/// same one).
fn node_config(folder: &Path, cluster: ClusterConfig, settlement_key: &Path) -> PathBuf {
    // No issuer keys: the simulator registers its own, on every node.
    let no_keys = folder.join("no-keys.toml");
    std::fs::write(&no_keys, "provider = []\nissuer_key = []\n").unwrap();
    let config = write_config(folder, |config| {
        config.issuer_keys_file = no_keys;
        config.metrics_listen = None;
        config.cluster = Some(cluster);
        config.settlement.key_file = settlement_key.to_path_buf();
        // Every node signs gate bundles with the same key too: beside the settlement key.
        config.bundle.key_file = settlement_key.with_file_name("bundle.key");
    });
    let file = folder.join("node.toml");
    std::fs::write(&file, config_file_text(&config)).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_shard_count_refuses_to_start() {
    let nats = NatsCluster::start(3);
    init(&cluster_config(&nats, "n0", 2)).await;
    let folder = tempfile::tempdir().unwrap();
    let file = node_config(
        folder.path(),
        cluster_config(&nats, "n9", 3),
        &folder.path().join("settlement.key"),
    );
    let output = std::process::Command::new(fareway_binary())
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        said.contains("the cluster was made with 2 shards, but this node is configured with 3"),
        "{said}"
    );

    // Replicas replay requests under their own rules: the first node records the rules'
    // digest, and a node whose rules differ is refused.
    let js = cluster_config(&nats, "n0", 2).jetstream().await.unwrap();
    let mut config = write_config(folder.path(), |_| {});
    manage::check_rules(&js, &config).await.unwrap();
    manage::check_rules(&js, &config).await.unwrap();
    config.taps.code_retry_window_ms += 1;
    let refused = manage::check_rules(&js, &config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("differ from the cluster's")
            && refused.contains("would price the same taps differently"),
        "{refused}"
    );
}

/// Waits until every replica of every shard reports the log's last sequence applied.
async fn wait_for_replicas(js: &Context, config: &ClusterConfig, replicas_per_shard: &[usize]) {
    let started = Instant::now();
    loop {
        // While NATS elects a leader after a fault, the status may not be readable.
        let status = manage::status(js, config).await.unwrap_or_default();
        let caught_up = !status.is_empty()
            && status.iter().all(|shard| {
                shard
                    .replicas
                    .iter()
                    .filter(|(_, applied)| *applied == shard.stream_sequence)
                    .count()
                    >= replicas_per_shard[shard.shard as usize]
            });
        if caught_up {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "replicas did not catch up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn leader_of(js: &Context, config: &ClusterConfig, shard: u32) -> String {
    let started = Instant::now();
    loop {
        // While NATS elects a leader after a fault, the status may not be readable.
        let status = manage::status(js, config).await.unwrap_or_default();
        if let Some(leader) = status.get(shard as usize).and_then(|s| s.leader.as_ref()) {
            return leader.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "shard {shard} has no leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Settlement across shards: a node that lacks a shard's replica cannot close; a node that
/// holds every shard closes one batch per provider whose totals are the fares the gates
/// saw charged; the same close asked of another node answers the same batches, and the
/// files pulled from either node are byte-identical and signed.
async fn assert_settled_alike(
    [partial, closer, other]: [std::net::SocketAddr; 3],
    plan: &[gate_sim::plan::PlannedTap],
    run: &gate_sim::run::RunResult,
    folder: &Path,
) {
    let close = |id: u128| pb::CloseBatchesRequest {
        close_id: id.to_be_bytes().to_vec(),
        ..Default::default()
    };
    let refused = engine_at(partial)
        .settlement()
        .await
        .unwrap()
        .close_batches(close(9))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("holds no replica of shard 1"),
        "{refused:?}"
    );
    let by_sequence = engine_at(closer)
        .settlement()
        .await
        .unwrap()
        .close_batches(pb::CloseBatchesRequest {
            cutoff_sequence: Some(5),
            ..close(8)
        })
        .await
        .unwrap_err();
    assert_eq!(by_sequence.code(), tonic::Code::InvalidArgument);

    let mut pulled = Vec::new();
    for (node, name) in [(closer, "closer"), (other, "other")] {
        let engine = engine_at(node);
        let mut client = engine.settlement().await.unwrap();
        let into = folder.join(format!("settled-{name}"));
        // A gate's resent tap may reach a shard after the rider's next tap: its fare
        // corrections settle too.
        let admin = engine.admin().await.unwrap();
        let (_, statements) = gate_sim::check::charged_exactly_once(&admin, plan, run)
            .await
            .unwrap();
        let report =
            gate_sim::check::settlement(&engine, &mut client, 1, plan, run, &statements, &into)
                .await
                .unwrap();
        assert_eq!(report["ok"], true, "{report:#}");
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&into)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).unwrap())
            })
            .collect();
        files.sort();
        pulled.push(files);
    }
    assert!(!pulled[0].is_empty());
    assert_eq!(pulled[0], pulled[1], "the nodes' files differ");
    let csv = String::from_utf8(pulled[0][0].1.clone()).unwrap();
    assert!(csv.starts_with("H,2,"), "{csv}");
    assert!(
        csv.contains("\nS,0,0,") && csv.contains("\nS,1,0,"),
        "{csv}"
    );
}

/// Issuer keys are the cluster's: codes signed with a key registered at n0 verify at
/// `checker`, and a key revoked at `changer` is refused at `checker` within a bound (the
/// time measured is printed).
async fn assert_keys_shared(
    provisioned: &mut gate_sim::provision::Provisioned,
    network: &gate_sim::Network,
    changer: std::net::SocketAddr,
    checker: std::net::SocketAddr,
) {
    let (taps, _) = plan_phase(provisioned, network, 50.0, 1.0, 9);
    let template = taps
        .into_iter()
        .find(|tap| tap.fault.is_none() && tap.request.direction == pb::Direction::Bus as i32)
        .unwrap();
    let rider = provisioned
        .riders
        .iter_mut()
        .find(|rider| rider.account_id == template.account_id)
        .unwrap();
    let mut gate = engine_at(checker).gate().await.unwrap();
    let mut next_id = u128::MAX - 1_000;
    let mut tap_now = || {
        std::thread::sleep(Duration::from_millis(2)); // a new code each time
        let now = SystemClock.now();
        next_id += 1;
        pb::TapRequest {
            transaction_id: next_id.to_be_bytes().to_vec(),
            scan_time_ms: now.0,
            code: Some(pb::ScannedCode {
                text: rider.device.code_text(now),
            }),
            ..template.request.clone()
        }
    };
    let accepted = gate.tap(tap_now()).await.unwrap().into_inner();
    assert_eq!(
        accepted.decision,
        pb::TapDecision::Accepted as i32,
        "{accepted:?}"
    );

    let provider_id = template.provider_id;
    let public_key = gate_sim::provision::issuer_of(provider_id, 7).public_key();
    let key_id = IssuerKey::new(provider_id, public_key).key_id;
    engine_at(changer)
        .admin()
        .await
        .unwrap()
        .revoke_issuer_key(pb::RevokeIssuerKeyRequest {
            transaction_id: 77u128.to_be_bytes().to_vec(),
            provider_id: u32::from(provider_id),
            key_id,
        })
        .await
        .unwrap();
    let revoked_at = Instant::now();
    loop {
        let answer = gate.tap(tap_now()).await.unwrap().into_inner();
        if answer.decision == pb::TapDecision::Rejected as i32 {
            assert_eq!(answer.reason_code, "revoked_issuer_key", "{answer:?}");
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "a key revoked at one node is still accepted at another"
        );
    }
    eprintln!(
        "a key revoked at one node was refused at another {:?} later",
        revoked_at.elapsed()
    );
}

/// Three `fareway serve` nodes on a 3-server NATS cluster (lease TTL 2 s, renewed every
/// 0.5 s), one settlement key for all, the sample city provisioned through n0, whose gates
/// the tests drive.
struct TestCluster {
    nats: NatsCluster,
    base: ClusterConfig,
    folder: tempfile::TempDir,
    files: Vec<PathBuf>,
    /// The shards each node holds.
    held: Vec<Vec<u32>>,
    nodes: Vec<Option<ServerProcess>>,
    addrs: Vec<std::net::SocketAddr>,
    js: Context,
    /// The lease bucket, opened once (opening it asks its stream's leader, which a
    /// fault may have taken away).
    leases: async_nats::jetstream::kv::Store,
    provisioned: gate_sim::provision::Provisioned,
    network: gate_sim::Network,
}

impl TestCluster {
    /// Starts the cluster with `shards` shards, node `i` holding `held[i]` (empty: all).
    async fn start(shards: u32, held: [Vec<u32>; 3]) -> TestCluster {
        let nats = NatsCluster::start(3);
        let base = cluster_config(&nats, "n0", shards);
        init(&base).await;
        let folder = tempfile::tempdir().unwrap();
        let settlement_key = folder.path().join("settlement.key");
        SettlementKey::load_or_create(&settlement_key).unwrap();
        let mut files = Vec::new();
        let mut held_shards = Vec::new();
        for (index, held) in held.into_iter().enumerate() {
            let node_folder = folder.path().join(format!("n{index}"));
            std::fs::create_dir_all(&node_folder).unwrap();
            let mut cluster = cluster_config(&nats, &format!("n{index}"), shards);
            cluster.shards_held = held;
            held_shards.push(cluster.held());
            files.push(node_config(&node_folder, cluster, &settlement_key));
        }
        let localhost = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let nodes: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(index, file)| {
                let log = folder.path().join(format!("n{index}.log"));
                Some(ServerProcess::start(file, localhost, &log))
            })
            .collect();
        let addrs: Vec<_> = nodes
            .iter()
            .map(|node| node.as_ref().unwrap().addr)
            .collect();
        let js = base.jetstream().await.unwrap();
        for shard in 0..shards {
            leader_of(&js, &base, shard).await;
        }
        // Every node verifies codes itself, with the issuer keys the cluster shares: the
        // simulator registers them at n0 only.
        let (provisioned, network) = provision_sample_city(&engine_at(addrs[0]), 200, 7).await;
        let leases = js.get_key_value(names::LEASE_BUCKET).await.unwrap();
        TestCluster {
            nats,
            base,
            folder,
            files,
            held: held_shards,
            nodes,
            addrs,
            js,
            leases,
            provisioned,
            network,
        }
    }

    /// Node `index` (while it runs).
    fn node(&self, index: usize) -> &ServerProcess {
        self.nodes[index].as_ref().unwrap()
    }

    /// Kills node `index` with SIGKILL.
    fn kill(&mut self, index: usize) {
        let node = self.nodes[index].take().unwrap();
        tokio::task::block_in_place(|| node.kill());
    }

    /// Starts node `index` again on its address.
    /// A node that cannot reach JetStream as it starts (NATS electing a leader after a
    /// fault) exits, saying why; like its supervisor would, this starts it again.
    fn restart(&mut self, index: usize) {
        let log = self.folder.path().join(format!("n{index}.log"));
        for _ in 0..10 {
            let started = tokio::task::block_in_place(|| {
                ServerProcess::try_start(&self.files[index], self.addrs[index], &log)
            });
            match started {
                Ok(node) => {
                    self.nodes[index] = Some(node);
                    return;
                }
                Err(said) => {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    let last = log.lines().last().unwrap_or_default().to_string();
                    eprintln!("n{index} did not start ({said:?}): {last}");
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("n{index} did not start again");
    }

    /// The index of shard `shard`'s leader once it is not `not`.
    async fn leader(&self, shard: u32, not: Option<usize>) -> usize {
        let started = Instant::now();
        loop {
            // The lease itself: `cluster status` also lists replicas, which takes a
            // consumer, which JetStream's meta group makes, and a test may have killed it.
            let holder = tokio::time::timeout(
                Duration::from_millis(250),
                fareway::cluster::lease::holder(&self.leases, shard),
            )
            .await
            .ok()
            .flatten();
            let leader = holder.and_then(|node| node[1..].parse::<usize>().ok());
            if let Some(leader) = leader.filter(|leader| Some(*leader) != not) {
                return leader;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "shard {shard} kept leader {leader:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// After the run: every replica catches up; every accepted tap is charged exactly
    /// once (read at node `reader`); then, the nodes stopped, every replica's audit passes
    /// (money conserved per shard and in total) and the replicas of each shard agree.
    async fn assert_whole(&mut self, played: &Played, reader: usize) {
        let shards = self.base.shards;
        let replicas: Vec<usize> = (0..shards)
            .map(|shard| {
                self.held
                    .iter()
                    .filter(|held| held.contains(&shard))
                    .count()
            })
            .collect();
        wait_for_replicas(&self.js, &self.base, &replicas).await;
        played
            .assert_charged_exactly_once(&engine_at(self.addrs[reader]), "after the faults")
            .await;
        for index in 0..3 {
            if self.nodes[index].is_some() {
                self.kill(index);
            }
        }
        let dirs = self.held.iter().enumerate().flat_map(|(index, held)| {
            held.iter()
                .map(move |shard| format!("n{index}/data/shard-{shard}"))
        });
        let said = cluster_audit(self.folder.path(), dirs, true);
        assert!(
            said.contains("cluster: balances of every shard sum to 0; ok"),
            "{said}"
        );
    }
}

/// Runs `fareway audit` on the replicas in `dirs` (relative to `folder`); returns what it
/// printed, once its exit status is `ok`'s.
fn cluster_audit(folder: &Path, dirs: impl IntoIterator<Item = String>, ok: bool) -> String {
    let mut audit = std::process::Command::new(fareway_binary());
    audit.arg("audit").current_dir(folder);
    for dir in dirs {
        audit.args(["--data-dir", &dir]);
    }
    let output = audit.output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    let complained = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.success(), ok, "{said}{complained}");
    said
}

/// Copies a closed ledger directory (RocksDB's files, all at its top level) to a new one.
fn copy_ledger_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for file in std::fs::read_dir(from).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
    }
}

/// `fareway audit` of a cluster's replicas sums the shards and names the replicas of a
/// shard that applied the same log sequence but hold other states; a replica's directory
/// opened as another shard is refused.
#[test]
fn the_cluster_audit_names_replicas_that_differ() {
    let folder = tempfile::tempdir().unwrap();
    let open = |account_id| Command::OpenAccount {
        account_id,
        provider_id: 1,
        credit_limit: Amount(0),
    };
    let top_up = |account_id, amount| Command::TopUp {
        account_id,
        amount: Amount(amount),
    };
    // Shard 0's replicas agree on message 1 and differ on message 2; shard 1 has one.
    let logs: [(&str, u32, Vec<Command>); 3] = [
        ("s0-a", 0, vec![open(2), top_up(2, 1_000)]),
        ("s0-b", 0, vec![open(2), top_up(2, 500)]),
        ("s1", 1, vec![open(1), top_up(1, 300)]),
    ];
    for (dir, shard, commands) in &logs {
        let replica = open_replica(&folder.path().join(dir), *shard, 2);
        for (index, command) in commands.iter().enumerate() {
            let id = index as u128 + 1;
            replica
                .apply_logged(index as u64 + 1, &[request(id, *command)])
                .unwrap();
        }
    }

    let said = cluster_audit(folder.path(), ["s0-a".into(), "s1".into()], true);
    assert!(
        said.contains("shard 0: replicas at log sequences [2], audits ok"),
        "{said}"
    );
    assert!(
        said.contains("cluster: balances of every shard sum to 0; ok"),
        "{said}"
    );

    let said = cluster_audit(
        folder.path(),
        ["s0-a".into(), "s0-b".into(), "s1".into()],
        false,
    );
    let a =
        digest(&LedgerView::open(&folder.path().join("s0-a"), &StoreConfig::default()).unwrap());
    let b =
        digest(&LedgerView::open(&folder.path().join("s0-b"), &StoreConfig::default()).unwrap());
    assert!(
        said.contains(&format!(
            "cluster: PROBLEM shard 0: replicas that applied the same log differ: at log sequence 2: s0-a has {a}, s0-b has {b}"
        )),
        "{said}"
    );

    // One replica alone is audited as such; the replicas of a cluster lacking a shard
    // are not a whole cluster's audit.
    let said = cluster_audit(folder.path(), ["s1".into()], true);
    assert!(
        said.contains("cluster: no replica given of shards [0]"),
        "{said}"
    );
    copy_ledger_dir(&folder.path().join("s1"), &folder.path().join("s1-again"));
    let said = cluster_audit(folder.path(), ["s1".into(), "s1-again".into()], false);
    assert!(
        said.contains("cluster: PROBLEM no replica given of shards [0]"),
        "{said}"
    );

    let refused = Replica::open(
        &folder.path().join("s1"),
        ShardId {
            shard: 0,
            shards: 2,
        },
        LedgerConfig::default(),
        rules(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        refused
            .contains("holds the replica of shard 1 of 2, but this node opens it as shard 0 of 2"),
        "{refused}"
    );
}

/// Latency of the taps due in `[from_ms, to_ms)` of a played phase: (count, p50, p99) in
/// milliseconds, from each tap's due time to its answer, retries included.
fn latency_between(played: &Played, from_ms: u64, to_ms: u64) -> (usize, u64, u64) {
    count_p50_p99(
        played
            .results
            .iter()
            .filter(|result| (from_ms..to_ms).contains(&result.due_ms))
            .map(|result| result.latency_us / 1_000)
            .collect(),
    )
}

/// How many values, their median and their 99th percentile.
fn count_p50_p99(mut values: Vec<u64>) -> (usize, u64, u64) {
    values.sort_unstable();
    let at = |q: f64| {
        let index = ((values.len() as f64 * q) as usize).min(values.len().saturating_sub(1));
        values.get(index).copied().unwrap_or(0)
    };
    (values.len(), at(0.5), at(0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_leader_killed_under_load_fails_over_and_charges_once() {
    let load_s = env_number("FAREWAY_CLUSTER_SOAK_S", 10) as f64;
    // The gates talk to n0, which holds shard 0 only; n1 and n2 hold both shards, so
    // shard 1's leader is n1 or n2, and killing it leaves the gates' node standing.
    let mut cluster = TestCluster::start(2, [vec![0], vec![], vec![]]).await;
    let addrs = cluster.addrs.clone();
    let play = {
        let (plan, start_at) =
            plan_phase(&mut cluster.provisioned, &cluster.network, 300.0, load_s, 1);
        let gates = engine_at(addrs[0]);
        async move {
            let (run, retried) = play_with_retries(&gates, &plan, start_at, 16).await;
            (plan, run, retried)
        }
    };
    // The first kill 4 s into the load; in a soak, another every cycle until the load ends
    // (each time the shard's leader then, the restarted node having caught up).
    let failovers = async {
        let started = Instant::now();
        let mut failovers = Vec::new();
        tokio::time::sleep(Duration::from_secs(4)).await;
        while failovers.is_empty() || started.elapsed().as_secs_f64() + 8.0 < load_s {
            let victim = cluster.leader(1, None).await;
            cluster.kill(victim);
            let killed_at = Instant::now();
            let new_leader = cluster.leader(1, Some(victim)).await;
            failovers.push((victim, new_leader, killed_at.elapsed()));
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.restart(victim);
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        failovers
    };
    let ((plan, run, retried), failovers) = tokio::join!(play, failovers);
    for (victim, new_leader, took) in &failovers {
        eprintln!(
            "killed n{victim} (shard 1's leader); n{new_leader} took the lease {took:?} later"
        );
        assert!(*took < Duration::from_secs(5), "failover took {took:?}");
    }
    eprintln!(
        "{} failovers in {load_s} s; {retried} of {} taps retried",
        failovers.len(),
        plan.len()
    );
    let accepted = run
        .results
        .iter()
        .filter(|result| {
            matches!(&result.answer, gate_sim::run::Answer::Response(response) if response.decision == fareway_proto::v1::TapDecision::Accepted as i32)
        })
        .count();
    assert!(
        accepted > plan.len() / 2,
        "only {accepted} of {} accepted",
        plan.len()
    );

    // Every replica catches up (the restarted node too); settlement and the shared keys
    // are checked on the nodes; then every accepted tap is charged once and the replicas
    // audit and agree.
    let replicas: Vec<usize> = vec![3, 2];
    wait_for_replicas(&cluster.js, &cluster.base, &replicas).await;
    assert_settled_alike(
        [addrs[0], addrs[1], addrs[2]],
        &plan,
        &run,
        cluster.folder.path(),
    )
    .await;
    let mut played = Played::default();
    played.add(plan, run);
    cluster.assert_whole(&played, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_keys_are_enforced_on_every_node() {
    let mut cluster = TestCluster::start(2, [vec![], vec![], vec![]]).await;
    let (network, addrs) = (cluster.network.clone(), cluster.addrs.clone());
    assert_keys_shared(&mut cluster.provisioned, &network, addrs[1], addrs[2]).await;
    assert_bundles_alike(&cluster).await;
}

/// Gate bundles in a cluster: every node signs with the cluster's bundle key, a bundle
/// holds one deny-list position per shard, and two nodes whose replicas applied the same
/// logs answer byte-identical bundles.
async fn assert_bundles_alike(cluster: &TestCluster) {
    wait_for_replicas(&cluster.js, &cluster.base, &[3, 3]).await;
    let key_file = cluster.folder.path().join("bundle.key");
    let engine_key = SettlementKey::load_or_create(&key_file)
        .unwrap()
        .0
        .public_key();
    let mut bodies = Vec::new();
    for addr in &cluster.addrs[1..] {
        let bundle = engine_at(*addr)
            .gate()
            .await
            .unwrap()
            .get_gate_bundle(pb::GetGateBundleRequest::default())
            .await
            .unwrap()
            .into_inner();
        let opened =
            fareway_gate::bundle::open(&bundle.body, &bundle.signature, &engine_key).unwrap();
        let fareway_gate::bundle::Body::Whole(whole) = opened else {
            panic!("a bundle asked for without a position is whole");
        };
        assert_eq!(whole.positions.len(), 2);
        bodies.push(bundle.body);
    }
    assert_eq!(bodies[0], bodies[1], "two nodes answered different bundles");
}

/// NATS servers fail under load: one is killed with SIGKILL and started again, then
/// another is paused (SIGSTOP) for ten seconds and resumed (in a soak, round after round,
/// other servers each time). The cluster goes on with the
/// other two (the taps' latency during the pause is printed); every accepted tap is
/// charged once and the replicas audit and agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_servers_killed_or_paused_under_load_lose_nothing() {
    let mut cluster = TestCluster::start(2, [vec![], vec![], vec![]]).await;
    // One round of faults takes 16 s; a soak plays as many rounds as fit, rotating the
    // servers.
    let rounds = ((env_number("FAREWAY_CLUSTER_SOAK_S", 18) as f64 - 2.0) / 16.0).max(1.0) as usize;
    let load_s = 2.0 + 16.0 * rounds as f64;
    let (plan, start_at) = plan_phase(&mut cluster.provisioned, &cluster.network, 150.0, load_s, 2);
    let gates = engine_at(cluster.addrs[0]);
    // Beside the taps, a bare JetStream publisher on the same servers: what NATS itself
    // does through the same faults.
    let probe = tokio::spawn(publish_probe(cluster.base.clone(), load_s));
    let faults = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for round in 0..rounds {
            let (killed, paused) = ((2 + round) % 3, (1 + round) % 3);
            cluster.nats.kill(killed);
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::block_in_place(|| cluster.nats.start_server(killed));
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.nats.signal(paused, "STOP");
            tokio::time::sleep(Duration::from_secs(10)).await;
            cluster.nats.signal(paused, "CONT");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    };
    let ((run, retried), ()) = tokio::join!(play_with_retries(&gates, &plan, start_at, 16), faults);
    let mut played = Played::default();
    played.add(plan, run);
    let (before, before_p50, before_p99) = latency_between(&played, 0, 2_000);
    let (paused, paused_p50, paused_p99) = latency_between(&played, 6_000, 16_000);
    eprintln!(
        "{retried} taps retried; latency before the faults: {before} taps, p50 {before_p50} ms, p99 {before_p99} ms; while a server was paused: {paused} taps, p50 {paused_p50} ms, p99 {paused_p99} ms"
    );
    let published = probe.await.unwrap();
    let probe_stats = |from: u64, to: u64| {
        count_p50_p99(
            published
                .iter()
                .filter(|(at, _)| (from..to).contains(at))
                .map(|(_, took)| *took)
                .collect(),
        )
    };
    eprintln!(
        "bare JetStream publishes (R3, acknowledged) in the same run: before the faults {:?}, while a server was paused {:?} (count, p50 ms, p99 ms)",
        probe_stats(0, 2_000),
        probe_stats(6_000, 16_000)
    );
    cluster.assert_whole(&played, 1).await;
}

/// Publishes to a 3-replica stream of its own every 20 ms for `seconds`, each awaited for
/// its acknowledgement: (when it was sent, ms from the start; how long it took, ms).
async fn publish_probe(config: ClusterConfig, seconds: f64) -> Vec<(u64, u64)> {
    let js = config.jetstream().await.unwrap();
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "PROBE".into(),
        subjects: vec!["probe".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let mut published = Vec::new();
    while started.elapsed().as_secs_f64() < seconds {
        let sent = Instant::now();
        let acked = async { js.publish("probe", vec![0u8; 200].into()).await?.await };
        let _ = tokio::time::timeout(Duration::from_secs(15), acked).await;
        published.push((
            (sent - started).as_millis() as u64,
            sent.elapsed().as_millis() as u64,
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    published
}

/// A shard's leader paused (SIGSTOP) past its lease, then resumed, under load: another
/// node leads meanwhile; the resumed node's appends are fenced, so it steps down and
/// follows; every accepted tap is charged once and the replicas audit and agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_cannot_append_when_resumed() {
    // n0 (the gates' node) holds shard 0 only, so shard 1's leader is n1 or n2.
    let mut cluster = TestCluster::start(2, [vec![0], vec![], vec![]]).await;
    let load_s = env_number("FAREWAY_CLUSTER_SOAK_S", 10) as f64;
    let (plan, start_at) = plan_phase(&mut cluster.provisioned, &cluster.network, 200.0, load_s, 3);
    let gates = engine_at(cluster.addrs[0]);
    // The first pause 3 s into the load; in a soak, another every 7 s or so, of whichever
    // node leads then.
    let pauses = async {
        let started = Instant::now();
        let mut pauses = Vec::new();
        tokio::time::sleep(Duration::from_secs(3)).await;
        while pauses.is_empty() || started.elapsed().as_secs_f64() + 7.0 < load_s {
            let paused = cluster.leader(1, None).await;
            cluster.node(paused).signal("STOP");
            let new_leader = cluster.leader(1, Some(paused)).await;
            // Past the lease: the other node has led for a while when the paused one wakes.
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.node(paused).signal("CONT");
            pauses.push((paused, new_leader));
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        pauses
    };
    let ((run, retried), pauses) =
        tokio::join!(play_with_retries(&gates, &plan, start_at, 16), pauses);
    eprintln!("{retried} taps retried");
    let mut played = Played::default();
    played.add(plan, run);
    // Each resumed node followed again: its own log says it stepped down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (paused, new_leader) in &pauses {
        eprintln!("paused n{paused} (shard 1's leader); n{new_leader} led meanwhile");
    }
    for node in 1..3 {
        let log =
            std::fs::read_to_string(cluster.folder.path().join(format!("n{node}.log"))).unwrap();
        let paused = pauses.iter().filter(|(paused, _)| *paused == node).count();
        assert!(
            log.matches("stepped down as leader").count() >= paused,
            "n{node} was paused {paused} times and did not step down each time"
        );
    }
    cluster.assert_whole(&played, 1).await;
}

/// A machine lost under load: the engine node that leads shard 1 and the nats-server
/// that leads JetStream's meta group (which makes consumers) are killed together, and
/// started again later. Another node takes the lease and catches up without waiting for
/// the meta group: within the lease's expiry plus 3 s of shard 1's log and the lease
/// bucket having leaders again (when the lost server led them too, NATS elects new
/// ones, which takes it 4 to 9 s; that part is NATS's, and is printed). Every accepted
/// tap is charged once and the replicas audit and agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_lost_with_a_shard_leader_and_the_nats_meta_leader_fails_over() {
    // n0 (the gates' node) holds shard 0 only, so shard 1's leader is n1 or n2.
    let mut cluster = TestCluster::start(2, [vec![0], vec![], vec![]]).await;
    let victim = cluster.leader(1, None).await;
    let meta = tokio::task::block_in_place(|| cluster.nats.meta_leader(0));
    let load_s = env_number("FAREWAY_CLUSTER_SOAK_S", 12) as f64;
    let (plan, start_at) = plan_phase(&mut cluster.provisioned, &cluster.network, 200.0, load_s, 4);
    let gates = engine_at(cluster.addrs[0]);
    let probe = tokio::spawn(publish_probe(cluster.base.clone(), load_s));
    let streams = [names::stream(1), format!("KV_{}", names::LEASE_BUCKET)];
    let faults = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.kill(victim);
        cluster.nats.kill(meta);
        let killed_at = Instant::now();
        let lost = format!("fareway-nats-{meta}");
        let ((new_leader, took), led_again) = tokio::join!(
            async {
                let new_leader = cluster.leader(1, Some(victim)).await;
                (new_leader, killed_at.elapsed())
            },
            streams_led_again(&cluster.js, &streams, &lost)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::block_in_place(|| cluster.nats.start_server(meta));
        cluster.restart(victim);
        (new_leader, took, led_again)
    };
    let ((run, retried), (new_leader, took, led_again)) =
        tokio::join!(play_with_retries(&gates, &plan, start_at, 16), faults);
    let published = probe.await.unwrap();
    let stalled = published.iter().map(|(_, took)| *took).max().unwrap_or(0);
    eprintln!(
        "killed n{victim} (shard 1's leader) and nats-server {meta} (the meta leader); shard 1's log and the leases had leaders {led_again:?} after the kill; n{new_leader} took the lease {took:?} after it; {retried} taps retried; the bare publisher's slowest publish in the same run took {stalled} ms"
    );
    let lease_ttl = Duration::from_millis(cluster.base.lease_ttl_ms);
    assert!(
        took < led_again.max(lease_ttl) + Duration::from_secs(3),
        "failover took {took:?}; NATS's streams had leaders after {led_again:?}"
    );
    let mut played = Played::default();
    played.add(plan, run);
    cluster.assert_whole(&played, new_leader).await;
}

/// How long until each stream in `streams` answers with a leader other than `lost` (the
/// part of a failover that is NATS electing new leaders for what a lost server led).
async fn streams_led_again(js: &Context, streams: &[String], lost: &str) -> Duration {
    let started = Instant::now();
    for stream in streams {
        loop {
            let info = tokio::time::timeout(Duration::from_millis(500), async {
                js.get_stream(stream).await.ok()?.info().await.ok().cloned()
            })
            .await;
            let leader = info.ok().flatten().and_then(|info| info.cluster?.leader);
            if leader.is_some_and(|leader| leader != lost) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{stream} has no leader"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    started.elapsed()
}

/// A node whose disk is lost rejoins from another node's checkpoint: n0 (which holds
/// shard 0 only) is killed and its replica deleted; n1 writes a checkpoint of its
/// replicas through the admin API while it serves; n0's replica of shard 0 is that copy,
/// and n0, started again, follows the log from the copy's sequence (not from the start)
/// while the gates go on. Every accepted tap is charged once and every replica audits
/// and agrees with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_is_lost_rejoins_from_a_checkpoint() {
    let mut cluster = TestCluster::start(2, [vec![0], vec![], vec![]]).await;
    let gates = engine_at(cluster.addrs[1]);
    let mut played = Played::default();
    let (plan, start_at) = plan_phase(&mut cluster.provisioned, &cluster.network, 200.0, 3.0, 5);
    let (run, _) = play_with_retries(&gates, &plan, start_at, 16).await;
    played.add(plan, run);

    cluster.kill(0);
    let lost = cluster.folder.path().join("n0/data/shard-0");
    std::fs::remove_dir_all(&lost).unwrap();
    let checkpoint = gates
        .admin()
        .await
        .unwrap()
        .create_checkpoint(pb::CreateCheckpointRequest {
            name: "for-n0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .path;
    let copy = PathBuf::from(&checkpoint).join("shard-0");
    assert!(PathBuf::from(&checkpoint).join("shard-1").is_dir());
    copy_ledger_dir(&copy, &lost);
    let from = {
        let view = LedgerView::open(&lost, &StoreConfig::default()).unwrap();
        fareway::ledger::replica::applied_stream_sequence(&view).unwrap()
    };
    assert!(from > 0, "the checkpoint holds none of the log");

    // More taps while n0 rejoins.
    let n0_log = cluster.folder.path().join("n0.log");
    let logged_before = std::fs::metadata(&n0_log).unwrap().len() as usize;
    let (plan, start_at) = plan_phase(&mut cluster.provisioned, &cluster.network, 200.0, 3.0, 6);
    let rejoin = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.restart(0);
    };
    let ((run, _), ()) = tokio::join!(play_with_retries(&gates, &plan, start_at, 16), rejoin);
    played.add(plan, run);
    wait_for_replicas(&cluster.js, &cluster.base, &[3, 2]).await;
    let log = std::fs::read_to_string(&n0_log).unwrap();
    let first_follow = log[logged_before..]
        .lines()
        .find(|line| line.contains("following the log") && line.contains("shard=0"))
        .unwrap_or_default();
    assert!(
        first_follow.contains(&format!("start={}", from + 1)),
        "n0 did not follow from the checkpoint's sequence {from}: {first_follow}"
    );
    cluster.assert_whole(&played, 1).await;
}
