//! `fareway demo --cluster`: the main job on a cluster on this machine. It starts 3
//! nats-servers (JetStream, `sync_interval: always`) and 3 `fareway serve` nodes holding
//! every shard, lets the gate simulator provision the sample city and play the rush hour
//! against all three nodes (unary calls; a gate resends a tap left unanswered, with the
//! same transaction id, to the next node), kills the leader of shard 0 with SIGKILL in the
//! middle and starts it again, closes and pulls the settlement batches, stops the nodes,
//! audits every replica of every shard, and prints the summary, the failover and the
//! audits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit::{self, ClusterAudit};
use anyhow::Context as _;
use fareway::cluster::local::{LocalNats, free_ports};
use fareway::cluster::{ClusterConfig, manage, shard_of};
use fareway::server::config::ServerConfig;
use gate_sim::run::Answer;
use gate_sim::{Engine, Mode, SimReport};
use serde_json::json;

use crate::demo::{self, DemoArgs};

/// Nodes, and NATS servers.
const NODES: usize = 3;
/// Shards of the demo's cluster.
const SHARDS: u32 = 3;
/// The shard whose leader is killed.
const VICTIM_SHARD: u32 = 0;
/// Taps the simulator has in flight at most.
const SIM_IN_FLIGHT_MAX: usize = 8_192;
/// How long a gate goes on resending a tap left unanswered.
const GATE_RETRY_FOR: Duration = Duration::from_secs(20);
/// How long the demo waits for the cluster to answer (JetStream's first leader
/// election, a node's start, a new shard leader).
const READY_MAX: Duration = Duration::from_secs(60);

pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let temp = tempfile::tempdir().context("making a temporary folder")?;
    let logs = args.out.join("cluster-logs");
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("cannot make folder {}", logs.display()))?;
    let (base, tokens) = demo::engine_config(temp.path(), &temp.path().join("unused"))?;
    let mut sim = demo::sim_config(args)?;
    sim.mode = Mode::Unary;
    sim.retry_for = GATE_RETRY_FOR;
    // While a shard has no leader its gates' taps wait and are resent: room for the
    // seconds of a failover's taps (the nodes admit 4,096 calls each).
    sim.in_flight_max = SIM_IN_FLIGHT_MAX;
    let window_started = Arc::new(tokio::sync::Notify::new());
    sim.window_started = Some(Arc::clone(&window_started));
    println!(
        "fareway demo --cluster: {NODES} nats-servers and {NODES} engine nodes on 127.0.0.1, {SHARDS} shards; {} riders; a {:.0}-second rush hour peaking at {:.0} taps/s (unary, gates resend unanswered taps to the next node); the leader of shard {VICTIM_SHARD} is killed at 40% of it; node logs in {}",
        args.riders,
        args.duration,
        args.rush_peak(),
        logs.display()
    );

    let runtime =
        fareway::server::runtime("fareway-demo").context("cannot start the async runtime")?;
    let nats = LocalNats::start(NODES, &temp.path().join("nats"))?;
    let cluster = ClusterConfig {
        nats_urls: nats.urls(),
        nats_user: Some(nats.node_credentials().user.clone()),
        nats_password: Some(nats.node_credentials().password.clone()),
        shards: SHARDS,
        ..ClusterConfig::default()
    };
    runtime.block_on(init_when_ready(&cluster))?;
    let mut nodes = Nodes::start(temp.path(), &logs, &base, &cluster)?;
    let engine = Engine {
        url: nodes.url(0),
        more_urls: (1..NODES).map(|index| nodes.url(index)).collect(),
        gate_token: tokens.gate,
        admin_token: tokens.admin,
        finance_token: tokens.finance,
        metrics_addr: None,
    };
    let played = runtime.block_on(async {
        let js = cluster.jetstream().await?;
        wait_for_leaders(&js, &cluster).await?;
        // The simulator and the fault run side by side; a simulation that fails before
        // its window starts tells the fault not to wait for it.
        let simulated = tokio::sync::Notify::new();
        let simulate = async {
            let report = gate_sim::simulate(&engine, &sim).await;
            simulated.notify_one();
            report
        };
        let chaos = async {
            if args.no_failover {
                return Ok(None);
            }
            tokio::select! {
                () = window_started.notified() => {}
                () = simulated.notified() => return Ok(None),
            }
            kill_a_leader(&mut nodes, &js, &cluster, args.duration)
                .await
                .map(Some)
        };
        let (report, failover) = tokio::join!(simulate, chaos);
        let key = demo::settlement_public_key(&engine).await;
        // Stopped with SIGKILL, the nodes keep what they applied: let every replica
        // apply its shard's whole log first, so that the replicas can be compared.
        wait_for_replicas(&js, &cluster).await?;
        anyhow::Ok((report?, failover?, key?))
    });
    nodes.stop();
    drop(nats);
    let (mut report, failover, public_key) = played?;

    let audits = audit_replicas(temp.path())?;
    let ok = record_cluster(&mut report, failover.as_ref(), &audits);
    let outputs = demo::write_outputs(&args.out, &report, &public_key)?;
    print_summary(&report, failover.as_ref(), &audits, &outputs, ok);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Makes the cluster's streams and buckets, retrying while the servers elect their
/// JetStream leader.
async fn init_when_ready(cluster: &ClusterConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let made = async { manage::init(&cluster.jetstream().await?, cluster).await }.await;
        match made {
            Ok(()) => return Ok(()),
            Err(_) if started.elapsed() < READY_MAX => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => return Err(err.context("the NATS servers did not become ready")),
        }
    }
}

/// The engine nodes: `fareway serve` processes of this same binary.
struct Nodes {
    files: Vec<PathBuf>,
    logs: Vec<PathBuf>,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl Nodes {
    /// Writes each node's configuration (its own data directory and port; the tokens,
    /// fares, issuer keys and settlement key of `base`) and starts every node.
    fn start(
        folder: &Path,
        logs: &Path,
        base: &ServerConfig,
        cluster: &ClusterConfig,
    ) -> anyhow::Result<Nodes> {
        let mut nodes = Nodes {
            files: Vec::new(),
            logs: Vec::new(),
            ports: Vec::new(),
            children: Vec::new(),
        };
        // One settlement key and one gate bundle key for every node, made before any
        // starts.
        fareway::settlement::key::SettlementKey::load_or_create(&base.settlement.key_file)?;
        fareway::settlement::key::SettlementKey::load_or_create(&base.bundle.key_file)?;
        let ports = free_ports(NODES)?;
        for (index, port) in ports.into_iter().enumerate() {
            let mut config = base.clone();
            config.data_dir = folder.join(format!("n{index}"));
            config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            config.metrics_listen = None;
            config.backup_dir = folder.join(format!("n{index}-backups"));
            config.issuer_keys_file = folder.join(format!("n{index}-issuer-keys.toml"));
            std::fs::copy(&base.issuer_keys_file, &config.issuer_keys_file)?;
            config.cluster = Some(ClusterConfig {
                node_id: format!("n{index}"),
                ..cluster.clone()
            });
            let file = folder.join(format!("n{index}.toml"));
            std::fs::write(&file, config.file_text().map_err(anyhow::Error::msg)?)?;
            nodes.files.push(file);
            nodes.logs.push(logs.join(format!("n{index}.log")));
            nodes.ports.push(port);
            nodes.children.push(None);
        }
        for index in 0..NODES {
            nodes.start_node(index)?;
        }
        Ok(nodes)
    }

    fn url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[index])
    }

    /// Starts node `index` and waits until it takes calls.
    fn start_node(&mut self, index: usize) -> anyhow::Result<()> {
        let (file, log, port) = self.node_files(index);
        self.children[index] = Some(spawn_node(index, &file, &log, port)?);
        Ok(())
    }

    /// Starts node `index` again, without holding up the tasks that run beside it.
    async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let (file, log, port) = self.node_files(index);
        let child = tokio::task::spawn_blocking(move || spawn_node(index, &file, &log, port))
            .await
            .context("the node start task failed")??;
        self.children[index] = Some(child);
        Ok(())
    }

    fn node_files(&self, index: usize) -> (PathBuf, PathBuf, u16) {
        (
            self.files[index].clone(),
            self.logs[index].clone(),
            self.ports[index],
        )
    }

    /// Kills node `index` with SIGKILL.
    fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.children[index].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops every node (SIGKILL: the log is the durable copy, and the audit checks
    /// what a crash leaves).
    fn stop(&mut self) {
        for index in 0..NODES {
            let _ = self.kill(index);
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `fareway serve --config FILE` (this same binary) as node `index`, its log in
/// `log`, and waits until it takes calls on `port`.
fn spawn_node(index: usize, file: &Path, log: &Path, port: u16) -> anyhow::Result<Child> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--config"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .context("cannot start an engine node")?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "node n{index} stopped ({status}); its log: {}",
                log.display()
            );
        }
        if started.elapsed() >= READY_MAX {
            let _ = child.kill();
            anyhow::bail!("node n{index} did not start; its log: {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// Waits until every shard has a leader (nodes take no lease in their first lease TTL,
/// so that leaders spread over the nodes), and says where they are.
async fn wait_for_leaders(
    js: &async_nats::jetstream::Context,
    cluster: &ClusterConfig,
) -> anyhow::Result<()> {
    let status = wait_for_status(js, cluster, "every shard to have a leader", |status| {
        status.iter().all(|shard| shard.leader.is_some())
    })
    .await?;
    let leaders: Vec<String> = status
        .iter()
        .map(|shard| {
            let leader = shard.leader.as_deref().unwrap_or_default();
            format!("shard {} {leader}", shard.shard)
        })
        .collect();
    println!("leaders: {}", leaders.join(", "));
    Ok(())
}

/// Waits until every replica of every shard has applied its shard's whole log.
async fn wait_for_replicas(
    js: &async_nats::jetstream::Context,
    cluster: &ClusterConfig,
) -> anyhow::Result<()> {
    let what = "every replica to apply its shard's log";
    wait_for_status(js, cluster, what, |status| {
        status.iter().all(|shard| {
            shard.replicas.len() >= NODES
                && shard
                    .replicas
                    .iter()
                    .all(|(_, applied)| *applied == shard.stream_sequence)
        })
    })
    .await?;
    Ok(())
}

/// The cluster's status once `done` holds of it (polled every 100 ms, at most
/// [`READY_MAX`]).
async fn wait_for_status(
    js: &async_nats::jetstream::Context,
    cluster: &ClusterConfig,
    what: &str,
    done: impl Fn(&[manage::ShardStatus]) -> bool,
) -> anyhow::Result<Vec<manage::ShardStatus>> {
    let started = Instant::now();
    loop {
        let status = manage::status(js, cluster).await?;
        if done(&status) {
            return Ok(status);
        }
        anyhow::ensure!(
            started.elapsed() < READY_MAX,
            "waited {READY_MAX:?} for {what}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What happened when the shard's leader was killed.
#[derive(Debug)]
struct Failover {
    shard: u32,
    killed: String,
    new_leader: String,
    /// When the leader was killed, from the start of the timed window.
    killed_at: Duration,
    /// From the kill until another node held the shard's lease.
    new_leader_after: Duration,
}

/// From the start of the timed window: kills shard 0's leader at 40% of it, waits for
/// another node to take the shard's lease, and starts the killed node again 2 seconds
/// later.
async fn kill_a_leader(
    nodes: &mut Nodes,
    js: &async_nats::jetstream::Context,
    cluster: &ClusterConfig,
    duration_s: f64,
) -> anyhow::Result<Failover> {
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(duration_s * 0.4)).await;
    let killed = leader_of(js, cluster, None).await?;
    let index: usize = killed
        .strip_prefix('n')
        .and_then(|index| index.parse().ok())
        .with_context(|| format!("the leader {killed:?} is not one of the demo's nodes"))?;
    let killed_at = Instant::now();
    nodes.kill(index)?;
    println!("killed {killed}, the leader of shard {VICTIM_SHARD} (SIGKILL)");
    let new_leader = leader_of(js, cluster, Some(&killed)).await?;
    let new_leader_after = killed_at.elapsed();
    println!("{new_leader} leads shard {VICTIM_SHARD} {new_leader_after:.2?} after the kill");
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes.restart(index).await?;
    println!("started {killed} again; it follows and catches up");
    Ok(Failover {
        shard: VICTIM_SHARD,
        killed,
        new_leader,
        killed_at: killed_at - window_start,
        new_leader_after,
    })
}

/// Shard 0's leader once it is not `not` (polled every 20 ms).
async fn leader_of(
    js: &async_nats::jetstream::Context,
    cluster: &ClusterConfig,
    not: Option<&str>,
) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let status = manage::status(js, cluster).await?;
        let leader = status
            .get(VICTIM_SHARD as usize)
            .and_then(|shard| shard.leader.clone());
        if let Some(leader) = leader
            && Some(leader.as_str()) != not
        {
            return Ok(leader);
        }
        anyhow::ensure!(
            started.elapsed() < READY_MAX,
            "shard {VICTIM_SHARD} got no new leader in {READY_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// From the kill until the first tap of the killed leader's shard sent after the kill was
/// answered accepted, by the simulator's clock (each tap's due time plus its latency). A
/// tap sent before may have been decided by the old leader, its answer still on its way.
fn first_accepted_after(report: &SimReport, failover: &Failover) -> Option<Duration> {
    let killed_at_us = failover.killed_at.as_micros() as u64;
    report
        .plan
        .iter()
        .zip(&report.run.results)
        .filter(|(tap, _)| shard_of(tap.account_id, SHARDS) == failover.shard)
        .filter(|(_, result)| result.due_ms * 1_000 > killed_at_us)
        .filter(|(_, result)| {
            matches!(&result.answer, Answer::Response(response)
                if response.decision == fareway_proto::v1::TapDecision::Accepted as i32)
        })
        .map(|(_, result)| result.due_ms * 1_000 + result.latency_us)
        .filter(|answered_us| *answered_us > killed_at_us)
        .min()
        .map(|answered_us| Duration::from_micros(answered_us - killed_at_us))
}

/// Audits every replica of every shard (the nodes have stopped), as `fareway audit` does.
fn audit_replicas(folder: &Path) -> anyhow::Result<ClusterAudit> {
    let dirs: Vec<_> = (0..SHARDS)
        .flat_map(|shard| (0..NODES).map(move |node| folder.join(format!("n{node}/shard-{shard}"))))
        .collect();
    audit::audit_dirs(&dirs)
}

/// Adds the failover and the replicas' audits to the report. Returns whether every
/// invariant holds: the simulator's, every replica's audit, money conserved per shard and
/// in total, and the replicas of each shard alike.
fn record_cluster(
    report: &mut SimReport,
    failover: Option<&Failover>,
    audits: &ClusterAudit,
) -> bool {
    let shards: Vec<_> = audits
        .by_shard()
        .into_iter()
        .map(|(shard, replicas)| {
            json!({
                "shard": shard,
                "ok": replicas.iter().all(|replica| replica.report.ok()),
                "replicas": replicas.iter().map(|replica| json!({
                    "data_dir": replica.dir.display().to_string(),
                    "ok": replica.report.ok(),
                    "applied_log_sequence": replica.applied,
                    "accounts": replica.report.accounts,
                    "transactions": replica.report.transactions,
                    "balance_sum": i64::try_from(replica.report.balance_sum).ok(),
                    "violations": replica.report.violations,
                    "state_digest": replica.digest,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    // The demo waited for every replica to catch up: one behind is a fault too.
    let audits_ok = audits.ok() && audits.behind.is_empty();
    let failover = failover.map(|failover| {
        let first_accepted = first_accepted_after(report, failover);
        json!({
            "shard": failover.shard,
            "killed": failover.killed,
            "new_leader": failover.new_leader,
            "killed_at_s": failover.killed_at.as_secs_f64(),
            "new_leader_after_s": failover.new_leader_after.as_secs_f64(),
            "first_accepted_tap_after_s": first_accepted.map(|after| after.as_secs_f64()),
        })
    });
    report.json["cluster"] = json!({
        "nodes": NODES,
        "shards": SHARDS,
        "failover": failover,
    });
    report.json["invariants"]["audit"] = json!({
        "ok": audits_ok,
        "balance_sum": i64::try_from(audits.balance_sum).ok(),
        "problems": audits.problems,
        "behind": audits.behind,
        "shards": shards,
    });
    let ok = report.ok && audits_ok;
    report.json["invariants"]["ok"] = json!(ok);
    ok
}

/// Prints the run's summary, the failover, each shard's audit, and where the files are.
fn print_summary(
    report: &SimReport,
    failover: Option<&Failover>,
    audits: &ClusterAudit,
    outputs: &demo::Outputs,
    ok: bool,
) {
    println!("{}", gate_sim::summary(&report.json));
    if let Some(failover) = failover {
        print_failover(report, failover);
    }
    audit::print_cluster(audits);
    demo::print_outputs(report, outputs, ok);
}

fn print_failover(report: &SimReport, failover: &Failover) {
    let first = &report.json["cluster"]["failover"]["first_accepted_tap_after_s"];
    println!(
        "failover: {} (leader of shard {}) killed {:.1} s into the window; {} took the lease {:.2} s later; the shard's first accepted tap came {} after the kill",
        failover.killed,
        failover.shard,
        failover.killed_at.as_secs_f64(),
        failover.new_leader,
        failover.new_leader_after.as_secs_f64(),
        first
            .as_f64()
            .map_or("never".to_string(), |s| format!("{s:.2} s"))
    );
}
