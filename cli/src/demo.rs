//! `fareway demo`: the main job, end to end, on a temporary data directory. It starts a
//! real engine (RocksDB ledger, gRPC on 127.0.0.1, a settlement key of its own), lets the
//! gate simulator provision the sample city through the admin API and play a rush hour
//! with faults over gRPC, closes and pulls the settlement batches, stops the engine,
//! audits its data directory, and prints a summary with the paths of the report and the
//! settlement files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use fareway::clock::SystemClock;
use fareway::server;
use fareway::server::config::{
    LogFormat, Role, ServerConfig, SettlementSettings, TokenEntry, token_sha256_hex,
};
use gate_sim::{Engine, Mode, Network, Population, Profile, SimConfig};

/// The sample city, built into the binary so that the demo needs no file.
const SAMPLE_CITY: &str = include_str!("../../docs/sample-city.toml");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Riders to provision.
    #[arg(long, default_value_t = 2_000)]
    riders: u64,
    /// Seconds of rush hour.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Offered taps per second at the peak of the rush hour.
    #[arg(long, default_value_t = 3_000.0)]
    rush_peak: f64,
    /// One call per tap instead of streams.
    #[arg(long)]
    unary: bool,
    /// Share of trips replaced by each kind of fault.
    #[arg(long, default_value_t = 0.005)]
    fault_rate: f64,
    /// The seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the engine's data directory here (it must not exist or be empty) instead of
    /// a temporary one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the report and the settlement files go (made if missing; files of an earlier
    /// run with the same names are replaced).
    #[arg(long, default_value = "fareway-demo-output")]
    out: PathBuf,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.riders >= 10 && args.duration > 0.0 && args.rush_peak > 0.0,
        "need at least 10 riders, a positive duration and a positive rush peak"
    );
    anyhow::ensure!(
        (0.0..=0.05).contains(&args.fault_rate),
        "--fault-rate must be 0 to 0.05"
    );
    let temp = tempfile::tempdir().context("making a temporary folder")?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().join("ledger"));
    let used = std::fs::read_dir(&data_dir)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    anyhow::ensure!(
        !used,
        "{} is not empty: the demo needs a new data directory",
        data_dir.display()
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot make folder {}", args.out.display()))?;

    // The engine's files: the sample city, no issuer keys yet (the simulator registers
    // them), a settlement key, and a fresh token per role.
    let fares_file = temp.path().join("fares.toml");
    std::fs::write(&fares_file, SAMPLE_CITY)?;
    let issuer_keys_file = temp.path().join("issuer-keys.toml");
    std::fs::write(&issuer_keys_file, "provider = []\nissuer_key = []\n")?;
    let token = |role: Role| -> anyhow::Result<(TokenEntry, String)> {
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
    };
    let (gate_entry, gate_token) = token(Role::Gate)?;
    let (admin_entry, admin_token) = token(Role::Admin)?;
    let (finance_entry, finance_token) = token(Role::Finance)?;
    let config = ServerConfig {
        data_dir: data_dir.clone(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        fares_file,
        issuer_keys_file,
        backup_dir: temp.path().join("backups"),
        log_format: LogFormat::Human,
        settlement: SettlementSettings {
            key_file: temp.path().join("settlement.key"),
            currency: "EUR".into(),
        },
        token: vec![gate_entry, admin_entry, finance_entry],
        ..ServerConfig::default()
    };
    config.check()?;
    let fares = fareway::fares::FareTable::from_toml(SAMPLE_CITY)?;
    let sim = SimConfig {
        population: Population::standard(args.riders, 2),
        network: Network::of(&fares, 8),
        profile: Profile::Rush {
            peak: args.rush_peak,
        },
        duration_s: args.duration,
        taps_max: 10_000_000,
        mode: if args.unary {
            Mode::Unary
        } else {
            Mode::Streaming
        },
        in_flight_max: 2_048,
        faults: gate_sim::every_fault_at(args.fault_rate),
        seed: args.seed,
        out: args.out.clone(),
        progress: true,
    };
    println!(
        "fareway demo: an engine on 127.0.0.1 with its ledger in {}; {} riders of 2 providers; a {:.0}-second rush hour peaking at {:.0} taps/s ({}), faults at {} of trips each",
        data_dir.display(),
        args.riders,
        args.duration,
        args.rush_peak,
        if args.unary { "unary" } else { "streaming" },
        args.fault_rate
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (mut report, public_key) = runtime.block_on(async {
        let running = server::start(config, Arc::new(SystemClock)).await?;
        let engine = Engine {
            url: format!("http://{}", running.addr),
            gate_token,
            admin_token,
            finance_token,
            metrics_addr: running.metrics_addr.map(|addr| addr.to_string()),
        };
        let report = gate_sim::simulate(&engine, &sim).await;
        let key = async {
            let mut settlement = engine.settlement().await?;
            let key = settlement
                .get_signing_key(fareway_proto::v1::GetSigningKeyRequest {})
                .await?
                .into_inner();
            anyhow::Ok(key.public_key)
        }
        .await;
        running.stop().await?;
        anyhow::Ok((report?, key?))
    })?;

    // The engine has stopped: audit its data directory.
    let ledger = fareway::ledger::Ledger::open(&data_dir, fareway::ledger::LedgerConfig::default())
        .with_context(|| format!("reopening {} for the audit", data_dir.display()))?;
    let audit = fareway::ledger::audit::audit(ledger.db())?;
    drop(ledger);
    report.json["invariants"]["audit"] = serde_json::json!({
        "ok": audit.ok(),
        "accounts": audit.accounts,
        "transactions": audit.transactions,
        "balance_sum": i64::try_from(audit.balance_sum).ok(),
        "violations": audit.violations,
    });
    let ok = report.ok && audit.ok();
    report.json["invariants"]["ok"] = serde_json::json!(ok);
    let report_path = args.out.join("report.json");
    std::fs::write(
        &report_path,
        serde_json::to_string_pretty(&report.json)? + "\n",
    )?;
    let html_path = args.out.join("report.html");
    std::fs::write(
        &html_path,
        gate_sim::html::render(&report.json, &report.run),
    )?;
    let key_path = args.out.join("settlement-public-key.txt");
    std::fs::write(
        &key_path,
        format!("{}\n", fareway::hex::encode(&public_key)),
    )?;

    println!("{}", gate_sim::summary(&report.json));
    super::audit::print_report(&audit);
    println!(
        "report: {} and {}",
        report_path.display(),
        html_path.display()
    );
    if let Some(files) = report.json["invariants"]["settlement"]["files"].as_array() {
        for file in files {
            println!("settlement file: {}", file.as_str().unwrap_or_default());
        }
    }
    println!("settlement public key: {}", key_path.display());
    println!("invariants: {}", if ok { "ok" } else { "FAILED" });
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
