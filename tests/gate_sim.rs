//! The gate simulator end to end: a real engine on 127.0.0.1 with the system clock (the
//! simulator's scan times are real times), provisioned by the simulator through the admin
//! API, a short open-loop rush hour with every kind of fault, unary and then streaming,
//! and every invariant checked; then the audit of the data directory.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use fareway::clock::SystemClock;
use fareway::ledger::{Ledger, LedgerConfig, audit};
use fareway::server;
use fareway_tests::server::{ADMIN_TOKEN, FINANCE_TOKEN, GATE_TOKEN, write_config};
use gate_sim::{Engine, Fault, Mode, Network, Population, Profile, SimConfig};

/// An engine on 127.0.0.1 with the system clock and `fares_file`, no issuer keys (the
/// simulator publishes its own), its data in `folder`: the running server, the
/// simulator's view of it, its bundle key, and its data directory.
async fn start_engine(
    folder: &std::path::Path,
    fares_file: &std::path::Path,
) -> (
    server::RunningServer,
    Engine,
    fareway::settlement::key::SettlementKey,
    std::path::PathBuf,
) {
    let empty_keys = folder.join("no-keys.toml");
    std::fs::write(&empty_keys, "provider = []\nissuer_key = []\n").unwrap();
    let config = write_config(folder, |config| {
        config.issuer_keys_file = empty_keys;
        config.fares_file = fares_file.to_path_buf();
    });
    let data_dir = config.data_dir.clone();
    let bundle_key_file = config.bundle.key_file.clone();
    let running = server::start(config, Arc::new(SystemClock)).await.unwrap();
    let (bundle_key, _) =
        fareway::settlement::key::SettlementKey::load_or_create(&bundle_key_file).unwrap();
    let engine = Engine {
        url: format!("http://{}", running.addr),
        more_urls: Vec::new(),
        gate_token: GATE_TOKEN.into(),
        admin_token: ADMIN_TOKEN.into(),
        finance_token: FINANCE_TOKEN.into(),
        metrics_addr: running.metrics_addr.map(|addr| addr.to_string()),
    };
    (running, engine, bundle_key, data_dir)
}

/// A rush hour of 200 riders of 2 providers (5% deny-listed, 5% unable to pay, the good
/// ones with `balance`) on `fares` with 4 gates a station, 5 s peaking at 400 taps/s,
/// every fault at 2%, its results in `out`; in streaming mode a third of the gates lose
/// their link for the middle of the run.
fn rush_hour(
    fares: &fareway::fares::FareTable,
    bundle_key: &fareway::settlement::key::SettlementKey,
    mode: Mode,
    seed: u64,
    balance: gate_sim::Spread,
    out: std::path::PathBuf,
) -> SimConfig {
    SimConfig {
        population: Population {
            riders: 200,
            providers: 2,
            denied_share: 0.05,
            broke_share: 0.05,
            balance_minor: balance,
            credit_limit_minor: gate_sim::Spread {
                low: 500,
                high: 2_000,
            },
        },
        network: Network::of(fares, 4),
        profile: Profile::Rush { peak: 400.0 },
        duration_s: 5.0,
        taps_max: 10_000,
        mode,
        in_flight_max: 512,
        retry_for: std::time::Duration::ZERO,
        faults: gate_sim::every_fault_at(0.02),
        seed,
        out,
        progress: false,
        window_started: None,
        fares: Arc::new(fares.clone()),
        link_loss: (mode == Mode::Streaming).then(|| gate_sim::offline::LinkLoss {
            share: 0.3,
            engine_key: bundle_key.public_key(),
        }),
    }
}

/// Runs the simulator and asserts every invariant held (printing the whole report when
/// not); returns `report.json`.
async fn simulate_ok(engine: &Engine, config: &SimConfig, what: &str) -> serde_json::Value {
    let report = gate_sim::simulate(engine, config).await.unwrap();
    assert!(
        report.ok,
        "{what}: {}",
        serde_json::to_string_pretty(&report.json).unwrap()
    );
    report.json
}

/// Stops the engine and audits its data directory: money conserved, every index agreeing.
async fn stop_and_audit(running: server::RunningServer, data_dir: &std::path::Path, what: &str) {
    running.stop().await.unwrap();
    let ledger = Ledger::open(data_dir, LedgerConfig::default()).unwrap();
    let report = audit::audit(ledger.view()).unwrap();
    assert!(report.ok(), "{what}: {:?}", report.violations);
    assert_eq!(report.balance_sum, 0, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_rush_hour_keeps_every_invariant_unary_and_streaming() {
    let folder = tempfile::tempdir().unwrap();
    let sample = fareway_tests::workspace_root().join("docs/sample-city.toml");
    let (running, engine, bundle_key, data_dir) = start_engine(folder.path(), &sample).await;
    let fares =
        fareway::fares::FareTable::from_toml(&std::fs::read_to_string(&sample).unwrap()).unwrap();
    for (mode, seed) in [(Mode::Unary, 11), (Mode::Streaming, 12)] {
        // Every good rider can pay a day's riding (the daily cap, 1,500) from balance and
        // credit together, some only with credit, and more: with exits charged the
        // maximum until their offline entries are uploaded, an entry needs room for that
        // and the shortest trip.
        let balance = gate_sim::Spread {
            low: 2_000,
            high: 60_000,
        };
        let out = folder.path().join(format!("out-{seed}"));
        let config = rush_hour(&fares, &bundle_key, mode, seed, balance, out);
        let json = &simulate_ok(&engine, &config, &format!("{mode:?}")).await;
        assert_eq!(json["taps_not_sent"], 0, "{mode:?}");
        assert_eq!(
            json["population"]["balance_minor"],
            serde_json::json!({"low": 2_000, "high": 60_000, "drawn": "uniformly per rider"})
        );
        assert!(json["taps_total"].as_u64().unwrap() > 500, "{mode:?}");
        for quantile in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                json["latency_us"][quantile].as_u64().unwrap() > 0,
                "{mode:?} {quantile}"
            );
        }
        // The engine's own histogram saw every tap it answered with a decision (a tap
        // refused with a gRPC status is not in it).
        let status_answers: u64 = json["decisions"]
            .as_object()
            .unwrap()
            .iter()
            // Not in it either: a tap an offline gate decided, uploaded later.
            .filter(|(name, _)| name.starts_with("status_") || name.starts_with("offline_"))
            .map(|(_, count)| count.as_u64().unwrap())
            .sum();
        let server = &json["server_latency_us"];
        assert_eq!(
            server["taps"].as_u64().unwrap(),
            json["taps_answered"].as_u64().unwrap() - status_answers,
            "{mode:?}"
        );
        assert!(server["p50"].as_u64().unwrap() <= server["p99"].as_u64().unwrap());
        // The engine's CPU time and its ledger's syncs over the same window.
        assert!(
            json["server_cpu"]["us_per_tap"].as_f64().unwrap() > 0.0,
            "{mode:?}"
        );
        let syncs = &json["ledger_sync_us"];
        assert!(syncs["syncs"].as_u64().unwrap() > 0, "{mode:?}");
        assert!(syncs["p50"].as_u64().unwrap() <= syncs["p999"].as_u64().unwrap());
        // Where a ledger request's time went, stage by stage, and the wait for a core.
        let stages = &json["ledger_stages_us"];
        for stage in ["queue_wait", "decide_write", "sync_wait"] {
            // A bucket bound in microseconds, or "over 5 s" past the last one.
            let bound = |quantile: &str| {
                let value = &stages[stage][quantile];
                value.as_u64().unwrap_or_else(|| {
                    assert_eq!(value, "over 5 s", "{mode:?}: {stages}");
                    u64::MAX
                })
            };
            assert!(bound("p50") <= bound("p99"), "{mode:?}: {stages}");
        }
        assert!(stages["run_delay_us_per_tap"].as_f64().unwrap() >= 0.0);
        // Means, which add up stage by stage: every tap and every request took some time.
        assert!(server["mean"].as_f64().unwrap() > 0.0, "{mode:?}: {server}");
        assert!(stages["decide_write"]["mean"].as_f64().unwrap() > 0.0);
        // A tap's time outside the ledger (its checks, its signature), as reported and
        // as printed. With the link lost, the ledger also served the offline gates'
        // uploads in the window: their requests are not the taps', and no figure is made.
        let outside = &stages["outside_ledger_us_per_tap"];
        let printed = gate_sim::summary(json);
        if mode == Mode::Streaming {
            assert_eq!(outside, &serde_json::Value::Null, "{stages}");
            assert!(
                printed.contains("outside the ledger, per tap: not known"),
                "{printed}"
            );
        } else {
            // Less than a tap's whole mean; not always above zero, since a tap refused
            // with a status after the ledger (an id conflict) has stages but no latency.
            let outside = outside.as_f64().unwrap();
            assert!(
                outside < server["mean"].as_f64().unwrap(),
                "{outside} {server}"
            );
            let line = format!("outside the ledger, per tap: {outside:.0} (");
            assert!(printed.contains(&line), "{printed}");
        }
        // The machine's cores over the window (at least those this process may use): the
        // simulator's own CPU is part of it.
        let machine = &json["machine_cpu"];
        let usable = std::thread::available_parallelism().unwrap().get() as u64;
        assert!(machine["cores"].as_u64().unwrap() >= usable, "{machine}");
        let busy = machine["busy_share"].as_f64().unwrap();
        assert!(busy > 0.0 && busy <= 1.0, "{machine}");
        let steal = machine["steal_share"].as_f64().unwrap();
        assert!((0.0..=1.0 - busy).contains(&steal), "{machine}");
        assert!(machine["simulator_us_per_tap"].as_f64().unwrap() > 0.0);
        // Second by second, the engine's taps beside its syncs: every second's
        // taps are among the window's, and the writer synced in them.
        let seconds = json["engine_by_second"].as_array().unwrap();
        assert!(seconds.len() >= 3, "{mode:?}: {seconds:?}");
        let sum = |field: &str| -> u64 { seconds.iter().map(|s| s[field].as_u64().unwrap()).sum() };
        assert!(sum("taps") > 0 && sum("taps") <= server["taps"].as_u64().unwrap());
        assert!(sum("syncs") > 0 && sum("syncs") <= syncs["syncs"].as_u64().unwrap());
        // Every kind of fault was injected, and each got exactly its expected outcome.
        for fault in Fault::ALL {
            let counts = &json["faults"][fault.name()];
            assert!(
                counts["injected"].as_u64().unwrap() > 0,
                "{mode:?}: no {}",
                fault.name()
            );
            assert_eq!(
                counts["injected"],
                counts["expected_outcome"],
                "{mode:?}: {}",
                fault.name()
            );
        }
        assert!(
            json["decisions"]["accepted"].as_u64().unwrap() > 300,
            "{mode:?}"
        );
        let link_loss = &json["link_loss"];
        if mode == Mode::Streaming {
            // Every tap an offline gate took was uploaded and answered, and each rider's
            // days cost what their taps in scan order cost (in `simulate_ok`).
            let decided = link_loss["taps_decided_offline"].as_u64().unwrap();
            assert!(decided > 50, "{link_loss:#}");
            assert_eq!(link_loss["taps_uploaded"].as_u64().unwrap(), decided);
            assert_eq!(link_loss["taps_left_queued"], 0);
            assert_eq!(json["invariants"]["days_priced_in_scan_order"]["ok"], true);
            // Riders deny-listed while the gates were offline: each ride at an offline
            // reader was let through by its older bundle and charged (counted as the
            // operator's risk), each at an online reader refused `account_denied`.
            let stale = &link_loss["stale_bundle_risk"];
            let in_outage = &json["faults"]["denied_in_outage"];
            let rides = in_outage["injected"].as_u64().unwrap();
            assert!(rides >= 2, "{json:#}");
            assert_eq!(in_outage["expected_outcome"].as_u64().unwrap(), rides);
            assert_eq!(
                stale["rides_let_through"].as_u64().unwrap() * 2,
                rides,
                "{link_loss:#}"
            );
            assert!(stale["fares_minor"].as_i64().unwrap() > 0, "{stale:#}");
            assert!(stale["riders_denied_in_outage"].as_u64().unwrap() >= 1);
        } else {
            assert!(link_loss.is_null());
        }
        let settlement = &json["invariants"]["settlement"];
        assert_eq!(settlement["files"].as_array().unwrap().len(), 2, "{mode:?}");
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(config.out.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(&written, json);
        let html = std::fs::read_to_string(config.out.join("report.html")).unwrap();
        assert!(html.contains("Latency by second"), "{mode:?}");
        assert!(html.contains("Latency histogram"), "{mode:?}");
        assert!(html.contains("longest sync"), "{mode:?}");
        assert_eq!(html.matches("<svg").count(), 2, "two charts");
        assert!(html.contains("<td>duplicate_scan</td>"), "{mode:?}");
    }
    stop_and_audit(running, &data_dir, "sample city").await;
}

/// The simulator runs against each sample network modelled on a real one
/// (`docs/networks/`), with offline gates and every fault: its own scan-order pricing
/// (the same `FareTable::charge` over local service days, peak windows, caps, tiers and
/// the hopper) agrees with what the engine charged every rider, and every invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_network_keeps_every_invariant() {
    for network in ["beijing", "shanghai", "london"] {
        let folder = tempfile::tempdir().unwrap();
        let fares_file =
            fareway_tests::workspace_root().join(format!("docs/networks/{network}.toml"));
        let (running, engine, bundle_key, data_dir) =
            start_engine(folder.path(), &fares_file).await;
        let fares =
            fareway::fares::FareTable::from_toml(&std::fs::read_to_string(&fares_file).unwrap())
                .unwrap();
        // A good rider can pay a day's riding: the daily cap, or on a network without
        // one (Beijing, Shanghai) the simulator's stand-in for it.
        let day = fares
            .daily_cap
            .map_or(gate_sim::plan::UNCAPPED_DAY_MINOR, |cap| cap.0);
        let balance = gate_sim::Spread {
            low: day + 1_000,
            high: day + 60_000,
        };
        let out = folder.path().join("out");
        let config = SimConfig {
            profile: Profile::Rush { peak: 300.0 },
            duration_s: 4.0,
            ..rush_hour(&fares, &bundle_key, Mode::Streaming, 21, balance, out)
        };
        let json = &simulate_ok(&engine, &config, network).await;
        assert_eq!(
            json["invariants"]["days_priced_in_scan_order"]["ok"], true,
            "{network}"
        );
        assert!(
            json["decisions"]["accepted"].as_u64().unwrap() > 200,
            "{network}"
        );
        stop_and_audit(running, &data_dir, network).await;
    }
}
