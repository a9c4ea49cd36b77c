//! The gate simulator: provisions a city through the engine's admin API, plays an
//! open-loop rush hour of taps with faults mixed in over gRPC, and checks the engine's
//! answers and invariants afterwards. `docs/gate-sim.md` says how to use it.
//!
//! It talks to the engine over gRPC only; it uses the engine library to mint rider codes
//! (as a provider and a phone would) and to check pulled settlement files.

pub mod check;
pub mod city;
pub mod client;
pub mod html;
pub mod machine;
pub mod offline;
pub mod plan;
pub mod provision;
pub mod reprice;
pub mod rng;
pub mod run;
pub mod server_metrics;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use fareway_gate::clock::{Clock as _, SystemClock, UnixMillis};
use fareway_proto::v1 as pb;
use hdrhistogram::Histogram;
use serde_json::json;

use plan::PlannedTap;

pub use client::Engine;
pub use plan::{Fault, FaultRates, Network, Profile};
pub use provision::{Population, Spread};
pub use run::Mode;

/// A run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The riders.
    pub population: Population,
    /// The metro stations and bus routes the riders use (they must be in the engine's
    /// fares file).
    pub network: Network,
    /// Offered load.
    pub profile: Profile,
    /// How long the timed window lasts, in seconds.
    pub duration_s: f64,
    /// Most taps.
    pub taps_max: u64,
    /// Unary or streaming.
    pub mode: Mode,
    /// Most taps in flight; past it a tap is not sent (and counted).
    pub in_flight_max: usize,
    /// How long a gate goes on sending a tap left unanswered again (same transaction id,
    /// next node); zero never does. Unary calls only.
    pub retry_for: std::time::Duration,
    /// The fault mix.
    pub faults: FaultRates,
    /// The seed.
    pub seed: u64,
    /// Where the report and the settlement files go.
    pub out: PathBuf,
    /// Show a progress bar.
    pub progress: bool,
    /// Told when the timed window starts (a demo that injects a fault into it waits for
    /// this).
    pub window_started: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// The engine's fares file: the simulator prices each rider's taps in scan order by
    /// it, to check the engine's charges whatever order taps arrived in.
    pub fares: std::sync::Arc<fareway_gate::fares::FareTable>,
    /// The link-loss fault: a share of gates decide alone and upload later (`None`: every
    /// gate keeps its link).
    pub link_loss: Option<offline::LinkLoss>,
}

/// The outcome of a run: the report (as written to `report.json`) and whether every
/// invariant held.
#[derive(Debug)]
pub struct SimReport {
    /// `report.json`'s content.
    pub json: serde_json::Value,
    /// Whether every invariant held.
    pub ok: bool,
    /// Every tap's answer and latency (what `report.html` is drawn from).
    pub run: run::RunResult,
    /// The taps played, in the order of `run.results`.
    pub plan: Vec<PlannedTap>,
}

/// Every kind of fault at the same share of trips (a rider deny-listed in an outage only where gates lose their link).
pub fn every_fault_at(rate: f64) -> FaultRates {
    Fault::ALL
        .iter()
        .chain([&Fault::DeniedInOutage])
        .map(|fault| (*fault, rate))
        .collect()
}

/// Runs the simulation against `engine`.
pub async fn simulate(engine: &Engine, config: &SimConfig) -> anyhow::Result<SimReport> {
    config
        .population
        .check(config.network.daily_cap_minor)
        .map_err(|err| anyhow::anyhow!("the riders: {err}"))?;
    std::fs::create_dir_all(&config.out)?;
    let admin = engine.admin().await?;
    let started = Instant::now();
    let provisioned = provision::provision(&admin, config.population, config.seed).await?;
    let provision_s = started.elapsed().as_secs_f64();

    // A run id from the wall clock keeps transaction ids apart across runs on one engine.
    let run_id = SystemClock.now().0;
    let mut settlement = engine.settlement().await?;
    close_baseline_batches(&mut settlement, run_id).await?;

    let minted = mint_plan(config, provisioned, run_id);
    wait_for_window(minted.start, minted.plan.len()).await?;
    if let Some(started) = &config.window_started {
        started.notify_one();
    }
    let plan = minted.plan;
    let (played, server_window, machine) = play_window(engine, config, &plan).await?;

    let tally = Tally::of(&plan, &played);
    let (charged_once, statements) = check::charged_exactly_once(&admin, &plan, &played).await?;
    let scan_order = check::scan_order_prices(&config.fares, &plan, &played, &statements);
    let debts = check::debts(engine, config.link_loss, &plan, &played).await?;
    let settled = check::settlement(
        engine,
        &mut settlement,
        (u128::from(run_id) << 64) | 2,
        &plan,
        &played,
        &statements,
        &config.out.join("settlement"),
    )
    .await?;
    let measured = Measured {
        config,
        taps_total: plan.len(),
        elapsed_s: played.elapsed.as_secs_f64(),
        provision_s,
        minting_s: minted.minting_s,
        window_start: minted.start,
        server_window,
        machine,
        tally,
        charged_once,
        scan_order,
        debts,
        settled,
        offline: played.offline.clone(),
    };
    let (json, ok) = (measured.report(), measured.ok());
    write_report(&config.out, &json, &played)?;
    Ok(SimReport {
        json,
        ok,
        run: played,
        plan,
    })
}

/// Closes everything settled before this run into a baseline batch, so that this run's
/// batches hold this run's taps alone.
async fn close_baseline_batches(
    settlement: &mut client::SettlementClient,
    run_id: u64,
) -> anyhow::Result<()> {
    settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: ((u128::from(run_id) << 64) | 1).to_be_bytes().to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// The plan, minted before the timed window, and when that window starts.
#[derive(Debug)]
struct Minted {
    plan: Vec<PlannedTap>,
    /// The wall-clock start of the timed window.
    start: UnixMillis,
    /// How long minting the plan's codes took.
    minting_s: f64,
}

/// Makes the plan (minting every code) for a timed window that starts once it is made
/// (scan times are real times).
fn mint_plan(config: &SimConfig, provisioned: provision::Provisioned, run_id: u64) -> Minted {
    let mut riders = provisioned.riders;
    let minting = Instant::now();
    // The timed window starts once the plan is made (scan times are real times): a second,
    // plus 100 us per code expected (minting one takes well under that here).
    let expected_taps =
        (config.profile.mean_rate() * config.duration_s).min(config.taps_max as f64);
    let lead_ms = 1_000 + (expected_taps * 0.1) as u64;
    let start = SystemClock.now().saturating_add(lead_ms);
    if config.link_loss.is_some() {
        offline::deny_some_in_outage(&mut riders);
    }
    let mut plan = plan::make_plan(plan::PlanInput {
        riders: &mut riders,
        network: &config.network,
        profile: config.profile,
        duration_s: config.duration_s,
        taps_max: config.taps_max,
        faults: &config.faults,
        seed: config.seed,
        start,
        unknown_issuer: &provisioned.unknown_issuer,
        revoked_issuer: &provisioned.revoked_issuer,
        first_id: u128::from(run_id) << 64 | 1_000,
        link_loss_share: config.link_loss.map_or(0.0, |link_loss| link_loss.share),
    });
    if let Some(link_loss) = config.link_loss {
        let duration_ms = (config.duration_s * 1_000.0) as u64;
        offline::mark_offline(&mut plan, link_loss.share, config.seed, duration_ms);
    }
    Minted {
        plan,
        start,
        minting_s: minting.elapsed().as_secs_f64(),
    }
}

/// Sleeps until the timed window starts; an error when minting `taps` codes took longer
/// than the lead time.
async fn wait_for_window(start: UnixMillis, taps: usize) -> anyhow::Result<()> {
    let wait = start.0.saturating_sub(SystemClock.now().0);
    anyhow::ensure!(
        wait > 0,
        "minting {taps} codes took longer than the lead time; plan fewer taps"
    );
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    Ok(())
}

/// Plays the plan in the timed window (with a progress bar when asked), and the engine's
/// own latency histogram over it when its metrics address is known, and the machine's
/// CPU over it.
async fn play_window(
    engine: &Engine,
    config: &SimConfig,
    plan: &[PlannedTap],
) -> anyhow::Result<(
    run::RunResult,
    Option<server_metrics::ServerWindow>,
    Option<machine::MachineWindow>,
)> {
    let bar = config.progress.then(|| progress_bar(plan.len()));
    let server_before = scrape_server(engine).await?;
    let machine_before = machine::sample();
    let (stop_sampling, stopped) = tokio::sync::oneshot::channel();
    let sampler = engine
        .metrics_addr
        .clone()
        .map(|addr| tokio::spawn(server_metrics::by_second(addr, stopped)));
    let queues = config.out.join("offline-queues");
    let offline = config.link_loss.map(|link_loss| run::Offline {
        link_loss,
        duration_ms: (config.duration_s * 1_000.0) as u64,
        folder: &queues,
    });
    let played = run::play(
        engine,
        plan,
        config.mode,
        config.in_flight_max,
        config.retry_for,
        bar.as_ref(),
        offline,
    )
    .await?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let machine_after = machine::sample();
    let _ = stop_sampling.send(());
    let by_second = match sampler {
        Some(sampler) => sampler.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let server_window = match (server_before, scrape_server(engine).await?) {
        (Some(before), Some(after)) => Some(server_metrics::ServerWindow {
            by_second,
            ..server_metrics::ServerWindow::between(&before, &after)?
        }),
        _ => None,
    };
    let machine = machine_before
        .zip(machine_after)
        .and_then(|(before, after)| machine::MachineWindow::between(&before, &after));
    Ok((played, server_window, machine))
}

/// A progress bar over the plan's taps.
fn progress_bar(taps: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(taps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} {bar:30} {pos}/{len} taps {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The engine's tap latency histogram, or `None` when its metrics address is unknown.
async fn scrape_server(engine: &Engine) -> anyhow::Result<Option<server_metrics::Scrape>> {
    match &engine.metrics_addr {
        Some(addr) => server_metrics::scrape(addr).await.map(Some),
        None => Ok(None),
    }
}

/// What came back: the answers by decision, the latency of those answered, each fault's
/// outcomes, and the answers of valid taps that were not accepted.
#[derive(Debug)]
struct Tally {
    latency: Histogram<u64>,
    decisions: BTreeMap<String, u64>,
    answered: u64,
    /// Per fault: injected, and answered as expected.
    faults: BTreeMap<Fault, (u64, u64)>,
    valid_not_accepted: Vec<String>,
}

impl Tally {
    /// Counts a played plan's answers.
    fn of(plan: &[PlannedTap], played: &run::RunResult) -> Tally {
        let mut latency = run::new_histogram();
        let mut decisions: BTreeMap<String, u64> = Default::default();
        let mut answered = 0u64;
        for result in &played.results {
            *decisions
                .entry(check::decision_name(&result.answer))
                .or_default() += 1;
            match result.answer {
                run::Answer::NotSent => {}
                // Answered when its gate's link came back: no latency of a tap.
                run::Answer::Uploaded { .. } => answered += 1,
                _ => {
                    answered += 1;
                    let _ = latency.record(result.latency_us.max(1));
                }
            }
        }
        let valid_not_accepted: Vec<String> = plan
            .iter()
            .enumerate()
            .filter(|(_, tap)| tap.fault.is_none() && tap.expected == plan::Expected::Accepted)
            .filter(|(index, _)| !matches!(played.results[*index].answer, run::Answer::NotSent))
            .filter(|(index, _)| !check::as_expected(plan, played, *index))
            .map(|(index, _)| check::decision_name(&played.results[index].answer))
            .collect();
        Tally {
            latency,
            decisions,
            answered,
            faults: check::faults(plan, played),
            valid_not_accepted,
        }
    }

    /// Whether every injected fault got the expected outcome.
    fn faults_ok(&self) -> bool {
        self.faults
            .values()
            .all(|(injected, expected)| injected == expected)
    }
}

/// Everything measured in a run, from which `report.json` is written.
#[derive(Debug)]
struct Measured<'a> {
    config: &'a SimConfig,
    taps_total: usize,
    /// How long the timed window took.
    elapsed_s: f64,
    provision_s: f64,
    minting_s: f64,
    /// When the timed window started (the first tap's earliest due time).
    window_start: UnixMillis,
    server_window: Option<server_metrics::ServerWindow>,
    /// The machine's CPU over the window (null off Linux).
    machine: Option<machine::MachineWindow>,
    tally: Tally,
    /// [`check::charged_exactly_once`]'s finding.
    charged_once: serde_json::Value,
    /// [`check::scan_order_prices`]'s finding.
    scan_order: serde_json::Value,
    /// [`check::debts`]'s finding (null without link loss).
    debts: serde_json::Value,
    /// [`check::settlement`]'s finding.
    settled: serde_json::Value,
    /// What the gates that lost their link did.
    offline: Option<offline::OfflineRun>,
}

impl Measured<'_> {
    /// Whether every invariant held.
    fn ok(&self) -> bool {
        self.tally.valid_not_accepted.is_empty()
            && self.tally.faults_ok()
            && self.charged_once["ok"] == json!(true)
            && self.scan_order["ok"] == json!(true)
            && (self.debts.is_null() || self.debts["ok"] == json!(true))
            && self.settled["ok"] == json!(true)
    }

    /// `report.json`'s content.
    fn report(&self) -> serde_json::Value {
        let (config, tally) = (self.config, &self.tally);
        let taps_total = self.taps_total;
        let elapsed_s = self.elapsed_s;
        json!({
            "taps_total": taps_total,
            "taps_answered": tally.answered,
            "taps_not_sent": taps_total as u64 - tally.answered,
            "taps_per_second": tally.answered as f64 / elapsed_s.max(1e-9),
            "duration_s": elapsed_s,
            "window_start_unix_ms": self.window_start.0,
            "mode": format!("{:?}", config.mode).to_lowercase(),
            "offered": config.profile.to_json(),
            "seed": config.seed,
            "riders": config.population.riders,
            "population": population_json(&config.population),
            "codes": format!("minted before the timed window: {taps_total} codes in {:.2} s", self.minting_s),
            "provisioning_s": self.provision_s,
            "latency_us": latency_json(&tally.latency),
            "server_latency_us": server_latency_json(self.server_window.as_ref().map(|window| &window.taps)),
            "ledger_sync_us": sync_json(self.server_window.as_ref()),
            "server_cpu": cpu_json(self.server_window.as_ref(), tally.answered),
            "ledger_stages_us": stages_json(self.server_window.as_ref(), tally.answered),
            "engine_by_second": by_second_json(self.server_window.as_ref()),
            "machine_cpu": machine_json(self.machine.as_ref(), tally.answered, elapsed_s),
            "decisions": tally.decisions,
            "link_loss": link_loss_json(self.config, self.offline.as_ref(), tally.answered, elapsed_s),
            "faults": tally.faults.iter().map(|(fault, (injected, expected))| {
                (fault.name().to_string(), json!({"injected": injected, "expected_outcome": expected}))
            }).collect::<serde_json::Map<_, _>>(),
            "invariants": {
                "ok": self.ok(),
                "valid_taps_accepted": {
                    "ok": tally.valid_not_accepted.is_empty(),
                    "not_accepted": tally.valid_not_accepted.len(),
                    "first_answers": tally.valid_not_accepted.iter().take(20).collect::<Vec<_>>(),
                },
                "faults_as_expected": {"ok": tally.faults_ok()},
                "charged_exactly_once": self.charged_once,
                "days_priced_in_scan_order": self.scan_order,
                "debts_deny_listed_and_lifted": self.debts,
                "settlement": self.settled,
                "audit": "not run by gate-sim (it talks gRPC only): run `fareway audit --data-dir DIR` on the engine's data directory",
            },
        })
    }
}

/// The report's `link_loss` object: what the offline gates did, and their upload's rate
/// beside the online taps' (null without the fault).
fn link_loss_json(
    config: &SimConfig,
    offline: Option<&offline::OfflineRun>,
    answered: u64,
    elapsed_s: f64,
) -> serde_json::Value {
    let (Some(link_loss), Some(offline)) = (config.link_loss, offline) else {
        return serde_json::Value::Null;
    };
    let online = answered.saturating_sub(offline.uploaded as u64);
    json!({
        "gates_share": link_loss.share,
        "outage": "the middle half of the timed window",
        "gates_offline": offline.gates,
        "taps_decided_offline": offline.decided,
        "gates_opened": offline.opened,
        "taps_uploaded": offline.uploaded,
        "taps_left_queued": offline.left_queued,
        "upload_s": offline.upload_s,
        "upload_taps_per_second": offline.uploaded as f64 / offline.upload_s.max(1e-9),
        "online_taps_per_second": online as f64 / elapsed_s.max(1e-9),
        "stale_bundle_risk": {
            "what": "riders deny-listed while the gates were offline, let through by a gate's older bundle and charged at upload: the operator's expected risk, not an error",
            "riders_denied_in_outage": offline.denied_in_outage,
            "rides_let_through": offline.stale_bundle_rides,
            "fares_minor": offline.stale_bundle_fares_minor,
        },
    })
}

/// The report's `population` object.
fn population_json(population: &Population) -> serde_json::Value {
    json!({
        "providers": population.providers,
        "denied_share": population.denied_share,
        "broke_share": population.broke_share,
        "balance_minor": {"low": population.balance_minor.low, "high": population.balance_minor.high, "drawn": "uniformly per rider"},
        "credit_limit_minor": {"low": population.credit_limit_minor.low, "high": population.credit_limit_minor.high, "drawn": "uniformly per rider"},
    })
}

/// The report's `latency_us` object: as the simulator measured it.
fn latency_json(latency: &Histogram<u64>) -> serde_json::Value {
    let quantile = |q: f64| latency.value_at_quantile(q);
    json!({
        "measured": "from each tap's due time to its answer, by the simulator (open loop)",
        "p50": quantile(0.5),
        "p90": quantile(0.9),
        "p99": quantile(0.99),
        "p999": quantile(0.999),
        "max": latency.max(),
    })
}

/// The report's `server_latency_us` object: as the engine measured it, or null when it
/// was not scraped.
fn server_latency_json(window: Option<&server_metrics::Window>) -> serde_json::Value {
    window.map_or(serde_json::Value::Null, |window| {
        let quantile = |q: f64| quantile_json(window, q);
        json!({
            "measured": "by the engine (fareway_tap_latency_seconds, from a tap's arrival to its answer): the upper bound of the bucket holding each quantile, and the exact mean",
            "taps": window.count(),
            "p50": quantile(0.5),
            "p90": quantile(0.9),
            "p99": quantile(0.99),
            "p999": quantile(0.999),
            "within_5ms": window.share_within(0.005),
            "mean": window.mean_us(),
        })
    })
}

/// Quantile `q` of an engine histogram's window as the report writes it: the upper bound
/// of its bucket in microseconds, "over 5 s" past the last bound, or null when the window
/// is empty.
fn quantile_json(window: &server_metrics::Window, q: f64) -> serde_json::Value {
    if window.count() == 0 {
        return serde_json::Value::Null;
    }
    window
        .quantile_us(q)
        .map_or(json!("over 5 s"), |us| json!(us))
}

/// The report's `ledger_sync_us` object: the engine's syncs of its ledger's log in the
/// window, or null when the engine does not serve them.
fn sync_json(window: Option<&server_metrics::ServerWindow>) -> serde_json::Value {
    let Some(syncs) = window.and_then(|window| window.syncs.as_ref()) else {
        return serde_json::Value::Null;
    };
    let quantile = |q: f64| quantile_json(syncs, q);
    json!({
        "measured": "by the engine (fareway_ledger_sync_latency_seconds, each sync of the ledger's log, covering every group commit written before it): the upper bound of the bucket holding each quantile",
        "syncs": syncs.count(),
        "p50": quantile(0.5),
        "p99": quantile(0.99),
        "p999": quantile(0.999),
        "max": quantile(1.0),
    })
}

/// The report's `engine_by_second` list: per second of the run, the engine's taps and
/// their p99 beside its syncs and the longest of them (null without metrics).
fn by_second_json(window: Option<&server_metrics::ServerWindow>) -> serde_json::Value {
    let Some(window) = window else {
        return serde_json::Value::Null;
    };
    let bound = |us: Option<u64>| us.map_or(json!(null), |us| json!(us));
    window
        .by_second
        .iter()
        .map(|second| {
            json!({
                "second": second.second,
                "taps": second.taps,
                "tap_p99_us": bound(second.tap_p99_us),
                "syncs": second.syncs,
                "sync_longest_us": bound(second.sync_longest_us),
            })
        })
        .collect()
}

/// The report's `server_cpu` object: the engine process's CPU time in the window, per
/// tap answered, or null when the engine does not serve it.
fn cpu_json(window: Option<&server_metrics::ServerWindow>, answered: u64) -> serde_json::Value {
    let Some(cpu_s) = window.and_then(|window| window.cpu_seconds) else {
        return serde_json::Value::Null;
    };
    json!({
        "measured": "the engine process's CPU time (user and system, fareway_process_cpu_seconds) from before the window to after it, over the taps answered; under `fareway demo` the simulator runs in that process, and its CPU counts too",
        "cpu_s": cpu_s,
        "us_per_tap": cpu_s * 1e6 / (answered.max(1) as f64),
    })
}

/// The report's `machine_cpu` object: how busy every core of the machine was over the
/// window and the simulator's own share, or null where `/proc` cannot say.
fn machine_json(
    window: Option<&machine::MachineWindow>,
    answered: u64,
    elapsed_s: f64,
) -> serde_json::Value {
    let Some(window) = window else {
        return serde_json::Value::Null;
    };
    json!({
        "measured": "from /proc/stat (every core's busy ticks, every process; steal_share: the ticks a virtual core wanted and the hypervisor gave elsewhere) and /proc/self/stat (the simulator's own user and system time) before and after the window",
        "cores": window.cores,
        "busy_share": window.busy_share,
        "steal_share": window.steal_share,
        "simulator_cores": window.simulator_cpu_seconds / elapsed_s.max(1e-9),
        "simulator_us_per_tap": window.simulator_cpu_seconds * 1e6 / answered.max(1) as f64,
    })
}

/// The report's `ledger_stages_us` object: where a request's time in the engine's ledger
/// went, stage by stage, and the engine's threads' wait for a core per tap answered (the
/// machine's share when its cores are busy), or null when the engine does not serve them.
fn stages_json(window: Option<&server_metrics::ServerWindow>, answered: u64) -> serde_json::Value {
    let Some(stages) = window.and_then(|window| window.stages.as_ref()) else {
        return serde_json::Value::Null;
    };
    let mut json = json!({
        "measured": "by the engine, per ledger request (fareway_ledger_queue_wait_seconds, fareway_ledger_decide_write_seconds, fareway_ledger_sync_wait_seconds): the upper bound of the bucket holding each quantile, and the exact mean per request; outside_ledger_us_per_tap: a tap's mean time outside the ledger (its checks, its signature, its task waking for its answer), the sum of the engine's tap latencies less every ledger stage's sum, over the taps the engine answered (a tap refused before the ledger counts whole; one refused with a gRPC status after it, an id conflict, has stages but no latency, and makes the figure slightly low), or null when a stage counted more requests than taps (the ledger also served an offline gate's upload or top-ups); run_delay_us_per_tap: the growth of fareway_process_run_delay_seconds (the engine's threads runnable but waiting for a core) over the taps answered",
    });
    for ((name, _), stage) in server_metrics::LEDGER_STAGES.iter().zip(stages) {
        json[*name] = json!({
            "p50": quantile_json(stage, 0.5),
            "p90": quantile_json(stage, 0.9),
            "p99": quantile_json(stage, 0.99),
            "mean": stage.mean_us(),
        });
    }
    json["outside_ledger_us_per_tap"] =
        json!(window.and_then(server_metrics::ServerWindow::outside_ledger_us_per_tap));
    json["run_delay_us_per_tap"] = window
        .and_then(|window| window.run_delay_seconds)
        .map_or(json!(null), |waited| {
            json!(waited * 1e6 / answered.max(1) as f64)
        });
    json
}

/// Writes `report.json` and `report.html` into `out`.
fn write_report(
    out: &std::path::Path,
    json: &serde_json::Value,
    played: &run::RunResult,
) -> anyhow::Result<()> {
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(json)? + "\n",
    )?;
    std::fs::write(out.join("report.html"), html::render(json, played))?;
    Ok(())
}

/// A short text summary of a report, for people.
pub fn summary(report: &serde_json::Value) -> String {
    let mut text = String::new();
    let latency = &report["latency_us"];
    text.push_str(&format!(
        "taps: {} planned, {} answered, {} not sent; {:.0} taps/s over {:.1} s ({})\n",
        report["taps_total"],
        report["taps_answered"],
        report["taps_not_sent"],
        report["taps_per_second"].as_f64().unwrap_or(0.0),
        report["duration_s"].as_f64().unwrap_or(0.0),
        report["mode"].as_str().unwrap_or("")
    ));
    text.push_str(&format!(
        "latency (due to answer): p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us\n",
        latency["p50"], latency["p90"], latency["p99"], latency["p999"], latency["max"]
    ));
    let server = &report["server_latency_us"];
    if !server.is_null() {
        text.push_str(&format!(
            "latency (engine, bucket bounds): p50 <= {} us, p90 <= {} us, p99 <= {} us, p99.9 <= {} us; {:.2}% within 5 ms\n",
            server["p50"], server["p90"], server["p99"], server["p999"],
            server["within_5ms"].as_f64().unwrap_or(0.0) * 100.0
        ));
    }
    let (syncs, cpu) = (&report["ledger_sync_us"], &report["server_cpu"]);
    if !syncs.is_null() && !cpu.is_null() {
        text.push_str(&format!(
            "engine process: {:.0} us of CPU per tap (with the simulator's when they share the process, as in `fareway demo`); {} syncs of the ledger's log, p50 <= {} us, p99 <= {} us, p99.9 <= {} us, longest <= {} us\n",
            cpu["us_per_tap"].as_f64().unwrap_or(0.0),
            syncs["syncs"], syncs["p50"], syncs["p99"], syncs["p999"], syncs["max"]
        ));
    }
    let stages = &report["ledger_stages_us"];
    if !stages.is_null() {
        text.push_str(&format!(
            "engine ledger, per request (p50 bucket bounds): queue <= {} us, decide and write <= {} us, sync wait <= {} us; threads waited {:.0} us per tap for a core\n",
            stages["queue_wait"]["p50"], stages["decide_write"]["p50"], stages["sync_wait"]["p50"],
            stages["run_delay_us_per_tap"].as_f64().unwrap_or(0.0)
        ));
        let mean = |value: &serde_json::Value| value["mean"].as_f64();
        let ledger = ["queue_wait", "decide_write", "sync_wait"].map(|stage| mean(&stages[stage]));
        if let (Some(tap), [Some(queue), Some(decide), Some(sync)]) = (mean(server), ledger) {
            let outside = stages["outside_ledger_us_per_tap"].as_f64().map_or_else(
                || "not known (the ledger also served requests that are not taps)".to_string(),
                |outside| format!("{outside:.0}"),
            );
            text.push_str(&format!(
                "engine latency, mean {tap:.0} us; per ledger request: queue {queue:.0}, decide and write {decide:.0}, sync wait {sync:.0}; outside the ledger, per tap: {outside} (checks, the signature, waking the tap's task)\n"
            ));
        }
    }
    let machine = &report["machine_cpu"];
    if !machine.is_null() {
        text.push_str(&format!(
            "machine: {} cores, {:.0}% busy over the window (every process), {:.0}% taken by the hypervisor; the simulator used {:.2} of a core, {:.0} us per tap\n",
            machine["cores"],
            machine["busy_share"].as_f64().unwrap_or(0.0) * 100.0,
            machine["steal_share"].as_f64().unwrap_or(0.0) * 100.0,
            machine["simulator_cores"].as_f64().unwrap_or(0.0),
            machine["simulator_us_per_tap"].as_f64().unwrap_or(0.0)
        ));
    }
    text.push_str("decisions:");
    if let Some(decisions) = report["decisions"].as_object() {
        for (name, count) in decisions {
            text.push_str(&format!(" {name} {count};"));
        }
    }
    text.push('\n');
    text.push_str("faults (injected/as expected):");
    if let Some(faults) = report["faults"].as_object() {
        for (name, counts) in faults {
            text.push_str(&format!(
                " {name} {}/{};",
                counts["injected"], counts["expected_outcome"]
            ));
        }
    }
    text.push('\n');
    let invariants = &report["invariants"];
    let flag = |value: &serde_json::Value| {
        if value["ok"] == serde_json::json!(true) {
            "ok"
        } else {
            "FAILED"
        }
    };
    let link_loss = &report["link_loss"];
    if !link_loss.is_null() {
        text.push_str(&format!(
            "link loss: {} gates offline decided {} taps alone (opened {}); uploaded {} at {:.0} taps/s ({:.0} online taps/s over the window), {} left queued; fare corrections {} minor units; {} riders let through into debt, deny-listed and lifted by a top-up: {}; expected risk: {} rides of riders deny-listed in the outage let through by older bundles ({} minor units)\n",
            link_loss["gates_offline"],
            link_loss["taps_decided_offline"],
            link_loss["gates_opened"],
            link_loss["taps_uploaded"],
            link_loss["upload_taps_per_second"].as_f64().unwrap_or(0.0),
            link_loss["online_taps_per_second"].as_f64().unwrap_or(0.0),
            link_loss["taps_left_queued"],
            invariants["days_priced_in_scan_order"]["fare_corrections_minor"],
            invariants["debts_deny_listed_and_lifted"]["riders_in_debt"],
            flag(&invariants["debts_deny_listed_and_lifted"]),
            link_loss["stale_bundle_risk"]["rides_let_through"],
            link_loss["stale_bundle_risk"]["fares_minor"],
        ));
    }
    text.push_str(&format!(
        "invariants: valid taps accepted {}, faults as expected {}, charged exactly once {}, days priced in scan order {}, settlement {}: {}",
        flag(&invariants["valid_taps_accepted"]),
        flag(&invariants["faults_as_expected"]),
        flag(&invariants["charged_exactly_once"]),
        flag(&invariants["days_priced_in_scan_order"]),
        flag(&invariants["settlement"]),
        if invariants["ok"] == serde_json::json!(true) { "ok" } else { "FAILED" }
    ));
    text
}
