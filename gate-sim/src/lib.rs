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
pub mod plan;
pub mod provision;
pub mod rng;
pub mod run;
pub mod server_metrics;

use std::path::PathBuf;
use std::time::Instant;

use fareway::clock::{Clock as _, SystemClock};
use fareway_proto::v1 as pb;
use serde_json::json;

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
    /// The fault mix.
    pub faults: FaultRates,
    /// The seed.
    pub seed: u64,
    /// Where the report and the settlement files go.
    pub out: PathBuf,
    /// Show a progress bar.
    pub progress: bool,
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
}

/// Every kind of fault at the same share of trips.
pub fn every_fault_at(rate: f64) -> FaultRates {
    Fault::ALL.iter().map(|fault| (*fault, rate)).collect()
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
    let mut riders = provisioned.riders;

    // A run id from the wall clock keeps transaction ids apart across runs on one engine.
    let run_id = SystemClock.now().0;
    let mut settlement = engine.settlement().await?;
    // Everything settled before this run goes into a baseline batch, not this run's.
    settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: ((u128::from(run_id) << 64) | 1).to_be_bytes().to_vec(),
            ..Default::default()
        })
        .await?;

    let minting = Instant::now();
    // The timed window starts once the plan is made (scan times are real times): a second,
    // plus 100 us per code expected (minting one takes well under that here).
    let expected_taps =
        (config.profile.mean_rate() * config.duration_s).min(config.taps_max as f64);
    let lead_ms = 1_000 + (expected_taps * 0.1) as u64;
    let start = SystemClock.now().saturating_add(lead_ms);
    let plan = plan::make_plan(plan::PlanInput {
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
    });
    let minting_s = minting.elapsed().as_secs_f64();
    let wait = start.0.saturating_sub(SystemClock.now().0);
    anyhow::ensure!(
        wait > 0,
        "minting {} codes took longer than the lead time; plan fewer taps",
        plan.len()
    );
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;

    let bar = config.progress.then(|| {
        let bar = indicatif::ProgressBar::new(plan.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} {bar:30} {pos}/{len} taps {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let scrape = || async {
        match &engine.metrics_addr {
            Some(addr) => server_metrics::scrape(addr).await.map(Some),
            None => Ok(None),
        }
    };
    let server_before = scrape().await?;
    let played = run::play(
        engine,
        &plan,
        config.mode,
        config.in_flight_max,
        bar.as_ref(),
    )
    .await?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }

    let server_window = match (server_before, scrape().await?) {
        (Some(before), Some(after)) => Some(server_metrics::Window::between(&before, &after)?),
        _ => None,
    };

    // What came back.
    let mut latency = run::new_histogram();
    let mut decisions: std::collections::BTreeMap<String, u64> = Default::default();
    let mut answered = 0u64;
    for result in &played.results {
        *decisions
            .entry(check::decision_name(&result.answer))
            .or_default() += 1;
        if !matches!(result.answer, run::Answer::NotSent) {
            answered += 1;
            let _ = latency.record(result.latency_us.max(1));
        }
    }
    let faults = check::faults(&plan, &played);
    let valid_not_accepted: Vec<String> = plan
        .iter()
        .enumerate()
        .filter(|(_, tap)| tap.fault.is_none() && tap.expected == plan::Expected::Accepted)
        .filter(|(index, _)| !matches!(played.results[*index].answer, run::Answer::NotSent))
        .filter(|(index, _)| !check::as_expected(&plan, &played, *index))
        .map(|(index, _)| check::decision_name(&played.results[index].answer))
        .collect();
    let faults_ok = faults
        .values()
        .all(|(injected, expected)| injected == expected);
    let charged_once = check::charged_exactly_once(&admin, &plan, &played).await?;
    let settled = check::settlement(
        engine,
        &mut settlement,
        (u128::from(run_id) << 64) | 2,
        &plan,
        &played,
        &config.out.join("settlement"),
    )
    .await?;
    let ok = valid_not_accepted.is_empty()
        && faults_ok
        && charged_once["ok"] == json!(true)
        && settled["ok"] == json!(true);

    let elapsed_s = played.elapsed.as_secs_f64();
    let quantile = |q: f64| latency.value_at_quantile(q);
    let json = json!({
        "taps_total": plan.len(),
        "taps_answered": answered,
        "taps_not_sent": plan.len() as u64 - answered,
        "taps_per_second": answered as f64 / elapsed_s.max(1e-9),
        "duration_s": elapsed_s,
        "mode": format!("{:?}", config.mode).to_lowercase(),
        "offered": match config.profile {
            Profile::Constant { rate } => json!({"profile": "constant", "taps_per_second": rate}),
            Profile::Rush { peak } => json!({"profile": "rush", "peak_taps_per_second": peak}),
        },
        "seed": config.seed,
        "riders": config.population.riders,
        "population": {
            "providers": config.population.providers,
            "denied_share": config.population.denied_share,
            "broke_share": config.population.broke_share,
            "balance_minor": {"low": config.population.balance_minor.low, "high": config.population.balance_minor.high, "drawn": "uniformly per rider"},
            "credit_limit_minor": {"low": config.population.credit_limit_minor.low, "high": config.population.credit_limit_minor.high, "drawn": "uniformly per rider"},
        },
        "codes": format!("minted before the timed window: {} codes in {minting_s:.2} s", plan.len()),
        "provisioning_s": provision_s,
        "latency_us": {
            "measured": "from each tap's due time to its answer, by the simulator (open loop)",
            "p50": quantile(0.5),
            "p90": quantile(0.9),
            "p99": quantile(0.99),
            "p999": quantile(0.999),
            "max": latency.max(),
        },
        "server_latency_us": server_window.as_ref().map_or(serde_json::Value::Null, |window| {
            let quantile = |q: f64| window.quantile_us(q).map_or(json!("over 5 s"), |us| json!(us));
            json!({
                "measured": "by the engine (fareway_tap_latency_seconds, from a tap's arrival to its answer): the upper bound of the bucket holding each quantile",
                "taps": window.count(),
                "p50": quantile(0.5),
                "p90": quantile(0.9),
                "p99": quantile(0.99),
                "p999": quantile(0.999),
                "within_5ms": window.share_within(0.005),
            })
        }),
        "decisions": decisions,
        "faults": faults.iter().map(|(fault, (injected, expected))| {
            (fault.name().to_string(), json!({"injected": injected, "expected_outcome": expected}))
        }).collect::<serde_json::Map<_, _>>(),
        "invariants": {
            "ok": ok,
            "valid_taps_accepted": {
                "ok": valid_not_accepted.is_empty(),
                "not_accepted": valid_not_accepted.len(),
                "first_answers": valid_not_accepted.iter().take(20).collect::<Vec<_>>(),
            },
            "faults_as_expected": {"ok": faults_ok},
            "charged_exactly_once": charged_once,
            "settlement": settled,
            "audit": "not run by gate-sim (it talks gRPC only): run `fareway audit --data-dir DIR` on the engine's data directory",
        },
    });
    std::fs::write(
        config.out.join("report.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    std::fs::write(config.out.join("report.html"), html::render(&json, &played))?;
    Ok(SimReport {
        json,
        ok,
        run: played,
    })
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
    text.push_str(&format!(
        "invariants: valid taps accepted {}, faults as expected {}, charged exactly once {}, settlement {}: {}",
        flag(&invariants["valid_taps_accepted"]),
        flag(&invariants["faults_as_expected"]),
        flag(&invariants["charged_exactly_once"]),
        flag(&invariants["settlement"]),
        if invariants["ok"] == serde_json::json!(true) { "ok" } else { "FAILED" }
    ));
    text
}
