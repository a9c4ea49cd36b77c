//! `fareway demo`: the main job, end to end, on a temporary data directory. It starts a
//! real engine (RocksDB ledger, gRPC on 127.0.0.1, a settlement key of its own), lets the
//! gate simulator provision the sample city through the admin API and play a rush hour
//! with faults over gRPC, closes and pulls the settlement batches, stops the engine,
//! audits its data directory, and prints a summary with the paths of the report and the
//! settlement files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use fareway::clock::SystemClock;
use fareway::files::write_atomically;
use fareway::ledger::audit::AuditReport;
use fareway::server;
use fareway::server::config::{
    BundleSettings, LogFormat, Role, ServerConfig, SettlementSettings, TokenEntry, token_sha256_hex,
};
use gate_sim::{Engine, Mode, Network, Population, Profile, SimConfig, SimReport};

/// The sample city, built into the binary so that the demo needs no file.
const SAMPLE_CITY: &str = include_str!("../../docs/sample-city.toml");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Riders to provision.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) riders: u64,
    /// Seconds of rush hour.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) duration: f64,
    /// Offered taps per second at the peak of the rush hour (default 3,000; with
    /// `--cluster`, 1,500: on one 2-core machine the cluster's 3 NATS servers and 3 nodes
    /// share the cores).
    #[arg(long)]
    pub(crate) rush_peak: Option<f64>,
    /// One call per tap instead of streams.
    #[arg(long)]
    pub(crate) unary: bool,
    /// Share of trips replaced by each kind of fault.
    #[arg(long, default_value_t = 0.005)]
    pub(crate) fault_rate: f64,
    /// Share of gates that lose their link for the middle half of the rush hour, decide
    /// alone with the engine's signed bundle, and upload their taps when it is back
    /// (`docs/offline.md`); 0 keeps every gate online. Default 0.1; not with `--cluster`.
    #[arg(long)]
    pub(crate) link_loss: Option<f64>,
    /// The seed.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Keep the engine's data directory here (it must not exist or be empty) instead of
    /// a temporary one.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Where the report and the settlement files go (made if missing; files of an earlier
    /// run with the same names are replaced).
    #[arg(long, default_value = "fareway-demo-output")]
    pub(crate) out: PathBuf,
    /// Run a cluster instead: 3 nats-servers and 3 engine nodes on 127.0.0.1, with a
    /// shard's leader killed (SIGKILL) in the middle of the rush hour and started again
    /// (`docs/cluster.md`). Needs `nats-server` (`.ci/setup` installs it).
    #[arg(long)]
    pub(crate) cluster: bool,
    /// With `--cluster`: kill no leader (to measure the cluster's throughput).
    #[arg(long, requires = "cluster")]
    pub(crate) no_failover: bool,
}

impl DemoArgs {
    /// The share of gates that lose their link: 0.1 unless asked (none in a cluster).
    pub(crate) fn link_loss(&self) -> f64 {
        self.link_loss
            .unwrap_or(if self.cluster { 0.0 } else { 0.1 })
    }

    /// The rush hour's peak, taps per second.
    pub(crate) fn rush_peak(&self) -> f64 {
        self.rush_peak
            .unwrap_or(if self.cluster { 1_500.0 } else { 3_000.0 })
    }
}

/// The three roles' token secrets, as the simulator presents them.
pub(crate) struct TokenSecrets {
    pub(crate) gate: String,
    pub(crate) admin: String,
    pub(crate) finance: String,
}

/// Where the demo's own files went.
#[derive(Debug)]
pub(crate) struct Outputs {
    pub(crate) report: PathBuf,
    pub(crate) html: PathBuf,
    pub(crate) public_key: PathBuf,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    if args.cluster {
        return super::cluster_demo::run(&args);
    }
    let temp = tempfile::tempdir().context("making a temporary folder")?;
    let data_dir = new_data_dir(args.data_dir.clone(), temp.path())?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot make folder {}", args.out.display()))?;
    let (config, tokens) = engine_config(temp.path(), &data_dir)?;
    let mut sim = sim_config(&args)?;
    // The gates' copy of the engine's bundle key: made here, before the engine starts and
    // loads it.
    if args.link_loss() > 0.0 {
        let (key, _) =
            fareway::settlement::key::SettlementKey::load_or_create(&config.bundle.key_file)?;
        sim.link_loss = Some(gate_sim::offline::LinkLoss {
            share: args.link_loss(),
            engine_key: key.public_key(),
        });
    }
    print_plan(&args, &data_dir);

    let runtime = server::runtime("fareway-demo").context("cannot start the async runtime")?;
    let (mut report, public_key) = runtime.block_on(run_engine(config, tokens, &sim))?;

    // The engine has stopped: audit its data directory.
    let audit = audit_data_dir(&data_dir)?;
    let ok = record_audit(&mut report, &audit);
    let outputs = write_outputs(&args.out, &report, &public_key)?;
    print_summary(&report, &audit, &outputs, ok);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Refuses arguments the demo cannot run with.
pub(crate) fn check_args(args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.riders >= 10 && args.duration > 0.0 && args.rush_peak() > 0.0,
        "need at least 10 riders, a positive duration and a positive rush peak"
    );
    anyhow::ensure!(
        (0.0..=0.05).contains(&args.fault_rate),
        "--fault-rate must be 0 to 0.05"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.link_loss()),
        "--link-loss must be 0 to 1"
    );
    anyhow::ensure!(
        !(args.cluster && args.link_loss.is_some_and(|share| share > 0.0)),
        "--link-loss is not run with --cluster yet: the embedded demo shows offline gates"
    );
    Ok(())
}

/// The engine's data directory: the one asked for, or `ledger` in the temporary folder. It
/// must not hold anything yet, so that the audit sees this run only.
fn new_data_dir(asked: Option<PathBuf>, temp: &Path) -> anyhow::Result<PathBuf> {
    let data_dir = asked.unwrap_or_else(|| temp.join("ledger"));
    let used = std::fs::read_dir(&data_dir)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    anyhow::ensure!(
        !used,
        "{} is not empty: the demo needs a new data directory",
        data_dir.display()
    );
    Ok(data_dir)
}

/// Writes the engine's files into `folder` and returns its checked configuration and the
/// secrets of the tokens it accepts.
pub(crate) fn engine_config(
    folder: &Path,
    data_dir: &Path,
) -> anyhow::Result<(ServerConfig, TokenSecrets)> {
    // The engine's files: the sample city, no issuer keys yet (the simulator registers
    // them), a settlement key, and a fresh token per role.
    let fares_file = folder.join("fares.toml");
    std::fs::write(&fares_file, SAMPLE_CITY)?;
    let issuer_keys_file = folder.join("issuer-keys.toml");
    std::fs::write(&issuer_keys_file, "provider = []\nissuer_key = []\n")?;
    let (gate_entry, gate) = new_token(Role::Gate)?;
    let (admin_entry, admin) = new_token(Role::Admin)?;
    let (finance_entry, finance) = new_token(Role::Finance)?;
    let config = ServerConfig {
        data_dir: data_dir.to_path_buf(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        fares_file,
        issuer_keys_file,
        backup_dir: folder.join("backups"),
        log_format: LogFormat::Human,
        settlement: SettlementSettings {
            key_file: folder.join("settlement.key"),
            currency: "EUR".into(),
        },
        bundle: BundleSettings {
            key_file: folder.join("bundle.key"),
        },
        token: vec![gate_entry, admin_entry, finance_entry],
        ..ServerConfig::default()
    };
    config.check()?;
    Ok((
        config,
        TokenSecrets {
            gate,
            admin,
            finance,
        },
    ))
}

/// A new random token for `role`: the configuration's entry (which holds only its hash)
/// and the secret.
fn new_token(role: Role) -> anyhow::Result<(TokenEntry, String)> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    let secret = fareway::hex::encode(&bytes);
    let entry = TokenEntry {
        role,
        sha256: token_sha256_hex(&secret),
        name: format!("demo {}", role.name()),
    };
    Ok((entry, secret))
}

/// The simulator's run: the sample city's riders in a rush hour, as the arguments ask.
pub(crate) fn sim_config(args: &DemoArgs) -> anyhow::Result<SimConfig> {
    let fares = fareway::fares::FareTable::from_toml(SAMPLE_CITY)?;
    Ok(SimConfig {
        population: Population::standard(args.riders, 2),
        network: Network::of(&fares, 8),
        profile: Profile::Rush {
            peak: args.rush_peak(),
        },
        duration_s: args.duration,
        taps_max: 10_000_000,
        mode: if args.unary {
            Mode::Unary
        } else {
            Mode::Streaming
        },
        in_flight_max: 2_048,
        retry_for: std::time::Duration::ZERO,
        faults: gate_sim::every_fault_at(args.fault_rate),
        seed: args.seed,
        out: args.out.clone(),
        progress: true,
        window_started: None,
        fares: std::sync::Arc::new(fares.clone()),
        link_loss: None,
    })
}

/// Says what the demo is about to do.
fn print_plan(args: &DemoArgs, data_dir: &Path) {
    println!(
        "fareway demo: an engine on 127.0.0.1 with its ledger in {}; {} riders of 2 providers; a {:.0}-second rush hour peaking at {:.0} taps/s ({}), faults at {} of trips each",
        data_dir.display(),
        args.riders,
        args.duration,
        args.rush_peak(),
        if args.unary { "unary" } else { "streaming" },
        args.fault_rate
    );
}

/// Starts the engine, plays the simulation against it, asks for its settlement public key,
/// and stops it (also when the simulation failed): the report and the key.
async fn run_engine(
    config: ServerConfig,
    tokens: TokenSecrets,
    sim: &SimConfig,
) -> anyhow::Result<(SimReport, Vec<u8>)> {
    let running = server::start(config, Arc::new(SystemClock)).await?;
    let engine = Engine {
        url: format!("http://{}", running.addr),
        more_urls: Vec::new(),
        gate_token: tokens.gate,
        admin_token: tokens.admin,
        finance_token: tokens.finance,
        metrics_addr: running.metrics_addr.map(|addr| addr.to_string()),
    };
    let report = gate_sim::simulate(&engine, sim).await;
    let key = settlement_public_key(&engine).await;
    running.stop().await?;
    Ok((report?, key?))
}

/// The running engine's settlement public key, which checks its settlement files.
pub(crate) async fn settlement_public_key(engine: &Engine) -> anyhow::Result<Vec<u8>> {
    let mut settlement = engine.settlement().await?;
    let key = settlement
        .get_signing_key(fareway_proto::v1::GetSigningKeyRequest {})
        .await?
        .into_inner();
    Ok(key.public_key)
}

/// Audits the stopped engine's data directory; the ledger is closed again on return.
fn audit_data_dir(data_dir: &Path) -> anyhow::Result<AuditReport> {
    let ledger = fareway::ledger::Ledger::open(data_dir, fareway::ledger::LedgerConfig::default())
        .with_context(|| format!("reopening {} for the audit", data_dir.display()))?;
    let audit = fareway::ledger::audit::audit(ledger.view())?;
    drop(ledger);
    Ok(audit)
}

/// Adds the audit to the report's invariants. Returns whether the run's invariants and the
/// audit both hold.
pub(crate) fn record_audit(report: &mut SimReport, audit: &AuditReport) -> bool {
    report.json["invariants"]["audit"] = serde_json::json!({
        "ok": audit.ok(),
        "accounts": audit.accounts,
        "transactions": audit.transactions,
        "balance_sum": i64::try_from(audit.balance_sum).ok(),
        "violations": audit.violations,
    });
    let ok = report.ok && audit.ok();
    report.json["invariants"]["ok"] = serde_json::json!(ok);
    ok
}

/// Writes the report (JSON and HTML) and the settlement public key into `out`, each whole
/// (readable by all, 0644): a file of an earlier run is replaced, never left half written.
pub(crate) fn write_outputs(
    out: &Path,
    report: &SimReport,
    public_key: &[u8],
) -> anyhow::Result<Outputs> {
    let outputs = Outputs {
        report: out.join("report.json"),
        html: out.join("report.html"),
        public_key: out.join("settlement-public-key.txt"),
    };
    let json = serde_json::to_string_pretty(&report.json)? + "\n";
    write_atomically(&outputs.report, json.as_bytes(), 0o644)?;
    let html = gate_sim::html::render(&report.json, &report.run);
    write_atomically(&outputs.html, html.as_bytes(), 0o644)?;
    let key = format!("{}\n", fareway::hex::encode(public_key));
    write_atomically(&outputs.public_key, key.as_bytes(), 0o644)?;
    Ok(outputs)
}

/// Prints the run's summary, the audit, and where the files are.
pub(crate) fn print_summary(report: &SimReport, audit: &AuditReport, outputs: &Outputs, ok: bool) {
    println!("{}", gate_sim::summary(&report.json));
    super::audit::print_report(audit);
    print_outputs(report, outputs, ok);
}

/// Prints where the report, the settlement files and the key are, and the verdict.
pub(crate) fn print_outputs(report: &SimReport, outputs: &Outputs, ok: bool) {
    println!(
        "report: {} and {}",
        outputs.report.display(),
        outputs.html.display()
    );
    if let Some(files) = report.json["invariants"]["settlement"]["files"].as_array() {
        for file in files {
            println!("settlement file: {}", file.as_str().unwrap_or_default());
        }
    }
    println!("settlement public key: {}", outputs.public_key.display());
    println!("invariants: {}", if ok { "ok" } else { "FAILED" });
}
