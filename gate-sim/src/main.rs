//! `gate-sim`: plays a rush hour against a running engine over gRPC. See
//! `docs/gate-sim.md`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use gate_sim::{Engine, Mode, Network, Population, Profile, SimConfig, Spread};

/// The Fareway gate simulator.
#[derive(Debug, Parser)]
#[command(name = "gate-sim", version, about)]
struct Args {
    /// The engine's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The engine's metrics listener (`HOST:PORT`): the report then has the engine's own
    /// latency percentiles for this run's taps
    #[arg(long)]
    metrics: Option<String>,
    /// Files holding the gate, admin and finance tokens (needed for a run).
    #[arg(long, required_unless_present = "make_city")]
    gate_token_file: Option<PathBuf>,
    /// See --gate-token-file.
    #[arg(long, required_unless_present = "make_city")]
    admin_token_file: Option<PathBuf>,
    /// See --gate-token-file.
    #[arg(long, required_unless_present = "make_city")]
    finance_token_file: Option<PathBuf>,
    /// The engine's fares file: the stations and routes riders use.
    #[arg(long, default_value = "docs/sample-city.toml")]
    fares: PathBuf,
    /// Riders to provision.
    #[arg(long, default_value_t = 2_000)]
    riders: u64,
    /// Payment providers; riders are shared out among them in turn.
    #[arg(long, default_value_t = 2)]
    providers: u16,
    /// Share of riders on the deny list (their taps are refused: `account_denied`).
    #[arg(long, default_value_t = 0.02)]
    denied_share: f64,
    /// Share of riders with no balance and no credit (refused: `credit_limit_exceeded`).
    #[arg(long, default_value_t = 0.02)]
    broke_share: f64,
    /// A rider's top-up, minor units: LOW..HIGH drawn uniformly per rider, or one amount.
    #[arg(long, default_value = "20000..80000")]
    balance: Spread,
    /// A rider's credit limit, minor units: LOW..HIGH drawn uniformly, or one amount.
    /// The least balance plus the least credit must cover the fares' daily cap.
    #[arg(long, default_value = "0..2000")]
    credit_limit: Spread,
    /// Offered taps per second, constant.
    #[arg(long, conflicts_with = "rush_peak")]
    rate: Option<f64>,
    /// Offered taps per second at the peak of a rush hour that rises and falls.
    #[arg(long)]
    rush_peak: Option<f64>,
    /// Seconds of load.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Most taps.
    #[arg(long, default_value_t = 1_000_000)]
    taps_max: u64,
    /// Streams instead of one call per tap.
    #[arg(long)]
    streaming: bool,
    /// Most taps in flight.
    #[arg(long, default_value_t = 2_048)]
    in_flight_max: usize,
    /// Share of trips replaced by each fault (0 to 0.05).
    #[arg(long, default_value_t = 0.005)]
    fault_rate: f64,
    /// The link-loss fault: the share of gates (0 to 1) that lose their link for the
    /// middle half of the window, decide alone and upload later. Needs --bundle-key.
    #[arg(long, default_value_t = 0.0)]
    link_loss: f64,
    /// The engine's gate bundle public key (64 hex digits, logged by `fareway serve` as
    /// "gate bundle key"): offline gates open bundles with it.
    #[arg(long)]
    bundle_key: Option<String>,
    /// The seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where report.json and the settlement files go.
    #[arg(long, default_value = "gate-sim-output")]
    out: PathBuf,
    /// Make a city instead of a run: write its fares file here (for the engine's
    /// `fares_file`) and stop. Uses --lines, --stations-per-line, --bus-routes and --seed.
    #[arg(long)]
    make_city: Option<PathBuf>,
    /// Metro lines of a made city (all cross at Central).
    #[arg(long, default_value_t = 3)]
    lines: u32,
    /// Stations per line of a made city, besides Central.
    #[arg(long, default_value_t = 8)]
    stations_per_line: u32,
    /// Bus routes of a made city.
    #[arg(long, default_value_t = 4)]
    bus_routes: u32,
    /// Gates per station (entry and exit gates each).
    #[arg(long, default_value_t = 8)]
    gates_per_station: u32,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("gate-sim: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Makes a city or plays a run, as the arguments ask; `Ok(false)` when a run broke an
/// invariant.
fn run(args: Args) -> anyhow::Result<bool> {
    if let Some(path) = &args.make_city {
        make_city(&args, path)?;
        return Ok(true);
    }
    let engine = engine_of(&args)?;
    let config = sim_config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(gate_sim::simulate(&engine, &config))?;
    println!("{}", gate_sim::summary(&report.json));
    println!(
        "report: {} and {}",
        args.out.join("report.json").display(),
        args.out.join("report.html").display()
    );
    Ok(report.ok)
}

/// Writes a made city's fares file to `path`.
fn make_city(args: &Args, path: &Path) -> anyhow::Result<()> {
    let text = gate_sim::city::fares_toml(gate_sim::city::CitySpec {
        lines: args.lines,
        stations_per_line: args.stations_per_line,
        bus_routes: args.bus_routes,
        seed: args.seed,
    })?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "city written to {}: give it to the engine as its fares_file, and to gate-sim as --fares",
        path.display()
    );
    Ok(())
}

/// The engine's address and the three roles' tokens, read from their files.
fn engine_of(args: &Args) -> anyhow::Result<Engine> {
    let read = |path: &Option<PathBuf>, role: &str| {
        let path = path
            .as_ref()
            .with_context(|| format!("a run needs --{role}-token-file"))?;
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_string())
            .with_context(|| format!("cannot read {}", path.display()))
    };
    Ok(Engine {
        url: args.server.clone(),
        more_urls: Vec::new(),
        gate_token: read(&args.gate_token_file, "gate")?,
        admin_token: read(&args.admin_token_file, "admin")?,
        finance_token: read(&args.finance_token_file, "finance")?,
        metrics_addr: args.metrics.clone(),
    })
}

/// The run the arguments describe, on the network of their fares file.
fn sim_config(args: &Args) -> anyhow::Result<SimConfig> {
    anyhow::ensure!(
        (0.0..=0.05).contains(&args.fault_rate),
        "--fault-rate must be 0 to 0.05"
    );
    let fares_text = std::fs::read_to_string(&args.fares)
        .with_context(|| format!("cannot read fares file {}", args.fares.display()))?;
    let fares = fareway_gate::fares::FareTable::from_toml(&fares_text)
        .with_context(|| format!("fares file {}", args.fares.display()))?;
    Ok(SimConfig {
        population: Population {
            riders: args.riders,
            providers: args.providers,
            denied_share: args.denied_share,
            broke_share: args.broke_share,
            balance_minor: args.balance,
            credit_limit_minor: args.credit_limit,
        },
        network: Network::of(&fares, args.gates_per_station),
        profile: match (args.rate, args.rush_peak) {
            (Some(rate), _) => Profile::Constant { rate },
            (None, Some(peak)) => Profile::Rush { peak },
            (None, None) => Profile::Rush { peak: 2_000.0 },
        },
        duration_s: args.duration,
        taps_max: args.taps_max,
        mode: if args.streaming {
            Mode::Streaming
        } else {
            Mode::Unary
        },
        in_flight_max: args.in_flight_max,
        retry_for: std::time::Duration::ZERO,
        faults: gate_sim::every_fault_at(args.fault_rate),
        seed: args.seed,
        out: args.out.clone(),
        progress: true,
        window_started: None,
        link_loss: link_loss(args)?,
        fares: std::sync::Arc::new(fares),
    })
}

/// The link-loss fault the arguments ask for, if any.
fn link_loss(args: &Args) -> anyhow::Result<Option<gate_sim::offline::LinkLoss>> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.link_loss),
        "--link-loss must be 0 to 1"
    );
    if args.link_loss == 0.0 {
        return Ok(None);
    }
    let key = args
        .bundle_key
        .as_deref()
        .context("--link-loss needs --bundle-key (the engine logs it as \"gate bundle key\")")?;
    let engine_key = fareway_gate::hex::decode_32(key)
        .map_err(|err| anyhow::anyhow!("--bundle-key must be 64 hex digits: {err:?}"))?;
    Ok(Some(gate_sim::offline::LinkLoss {
        share: args.link_loss,
        engine_key,
    }))
}
