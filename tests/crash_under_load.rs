//! The engine survives SIGKILL under load. A real `fareway serve` process on a data
//! directory takes taps from gates (the simulator's riders, plan and clients); in each
//! cycle the server is killed at a random moment while taps are in flight and started
//! again on the same directory, and the gates retry every unanswered tap with the same
//! transaction id until it is answered, as real gates do. After every cycle: every tap
//! answered "accepted" is in its rider's statement exactly once with minus its fare, no
//! tap is charged twice, and the audit of the data directory passes. At the end: the
//! journeys the gates saw entered and not exited are exactly the ledger's open journeys,
//! and a settlement batch closed after the run has per-provider totals equal to the fares
//! charged.
//!
//! `FAREWAY_CRASH_CYCLES` sets the number of cycles (3 by default; 50 for the soak:
//! `FAREWAY_CRASH_CYCLES=50 cargo test --release -p fareway-tests --test crash_under_load`).
//! The server's log (at debug level) is kept and checked to hold no secret.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fareway::clock::UnixMillis;
use fareway::ledger::{Ledger, LedgerConfig, audit};
use fareway_proto::v1 as pb;
use fareway_tests::process::{
    Played, ServerProcess, engine_at, plan_phase, play_with_retries, process_config,
    provision_sample_city,
};
use fareway_tests::server::{ADMIN_TOKEN, FINANCE_TOKEN, GATE_TOKEN};
use fareway_tests::{Rng, env_number};
use gate_sim::check;
use gate_sim::plan::PlannedTap;
use gate_sim::run::{Answer, RunResult};

/// Gates sending at once; each rider's taps go through one gate worker, in order.
const GATES: usize = 32;
/// Taps offered per second in a cycle, and for how long (long enough for the plan's
/// metro journeys, whose exits come seconds after their entries).
const RATE: f64 = 800.0;
const CYCLE_S: f64 = 10.0;

fn audit_ok(data_dir: &Path, cycle: u64) {
    let ledger = Ledger::open(data_dir, LedgerConfig::default()).unwrap();
    let report = audit::audit(ledger.view()).unwrap();
    assert!(report.ok(), "cycle {cycle}: {:?}", report.violations);
    assert_eq!(report.balance_sum, 0, "cycle {cycle}: money is conserved");
}

fn accepted(answer: &Answer) -> bool {
    matches!(answer, Answer::Response(response) if response.decision == pb::TapDecision::Accepted as i32)
}

/// Riders whose last accepted metro tap was an entry: their journeys must be open.
fn open_by_the_gates(plan: &[PlannedTap], run: &RunResult) -> BTreeSet<u64> {
    let mut last_metro: BTreeMap<u64, i32> = BTreeMap::new();
    for (tap, result) in plan.iter().zip(&run.results) {
        let direction = tap.request.direction;
        if accepted(&result.answer) && direction != pb::Direction::Bus as i32 {
            last_metro.insert(tap.account_id, direction);
        }
    }
    last_metro
        .into_iter()
        .filter(|(_, direction)| *direction == pb::Direction::Entry as i32)
        .map(|(account_id, _)| account_id)
        .collect()
}

/// Checks that each accepted exit names the journey of its rider's last accepted entry
/// (an exit with no open entry is charged as a journey of its own, new); returns how many
/// exits closed an entry's journey.
fn exits_close_their_entries(plan: &[PlannedTap], run: &RunResult) -> usize {
    let mut open: BTreeMap<u64, u64> = BTreeMap::new();
    let mut journeys = BTreeSet::new();
    let mut closed_entries = 0;
    for (tap, result) in plan.iter().zip(&run.results) {
        let Answer::Response(response) = &result.answer else {
            continue;
        };
        if !accepted(&result.answer) {
            continue;
        }
        let rider = tap.account_id;
        if tap.request.direction == pb::Direction::Entry as i32 {
            // An entry while a journey is open charges that one and opens a new one.
            open.insert(rider, response.journey_id);
            assert!(
                journeys.insert(response.journey_id),
                "rider {rider}: an entry reused a journey"
            );
        } else if tap.request.direction == pb::Direction::Exit as i32 {
            match open.remove(&rider) {
                Some(journey) => {
                    assert_eq!(
                        response.journey_id, journey,
                        "rider {rider}: an exit closed another journey than its entry opened"
                    );
                    closed_entries += 1;
                }
                None => assert!(
                    journeys.insert(response.journey_id),
                    "rider {rider}: an exit without an entry reused a journey"
                ),
            }
        }
    }
    closed_entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_nothing_is_lost_or_charged_twice() {
    let cycles = env_number("FAREWAY_CRASH_CYCLES", 3);
    let folder = tempfile::tempdir().unwrap();
    let (config, config_file, log) = process_config(folder.path(), None);
    let start_server = |listen| ServerProcess::start(&config_file, listen, &log);
    let mut server = Some(start_server(SocketAddr::from(([127, 0, 0, 1], 0))));
    let listen = server.as_ref().unwrap().addr;
    let engine = engine_at(listen);
    let (mut provisioned, network) = provision_sample_city(&engine, 300, 11).await;
    let mut settlement = engine.settlement().await.unwrap();
    // Provisioning settles nothing, but a baseline close keeps this run's batch to taps.
    settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: 1u128.to_be_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut rng = Rng::new(0xC0FFEE);

    let mut played = Played::default();
    for cycle in 1..=cycles {
        let (cycle_plan, start) = plan_phase(&mut provisioned, &network, RATE, CYCLE_S, cycle);
        // The kill lands somewhere in the cycle's taps; the gates keep sending, and the
        // server comes back on the same address and data directory.
        let kill_after = Duration::from_millis(rng.range(300, 300 + (CYCLE_S * 1_000.0) as u64));
        let crash = async {
            tokio::time::sleep(kill_after).await;
            let killed = server.take().unwrap();
            tokio::task::block_in_place(|| {
                killed.kill();
                server = Some(start_server(listen));
            });
        };
        let ((run, retried), ()) =
            tokio::join!(play_with_retries(&engine, &cycle_plan, start, GATES), crash);
        let accepted_now = run
            .results
            .iter()
            .filter(|result| accepted(&result.answer))
            .count();
        assert!(
            accepted_now > 100,
            "cycle {cycle}: only {accepted_now} taps accepted"
        );
        // Taps recorded before the kill whose answers were lost come back as replays.
        let replays = run
            .results
            .iter()
            .filter(
                |result| matches!(&result.answer, Answer::Response(response) if response.replay),
            )
            .count();
        played.add(cycle_plan, run);
        played
            .assert_charged_exactly_once(&engine, &format!("cycle {cycle}"))
            .await;

        // Stop (another SIGKILL, now with nothing in flight), audit, start again.
        server.take().unwrap().kill();
        audit_ok(&config.data_dir, cycle);
        server = Some(start_server(listen));
        eprintln!(
            "cycle {cycle}: killed after {kill_after:?}; {} taps so far; this cycle {retried} retried, {accepted_now} accepted, {replays} of them replays after the restart",
            played.plan.len()
        );
    }

    // A settlement batch after the run: per provider, the fares the gates saw charged.
    let run = played.run();
    let plan = &played.plan;
    let mut settlement = engine.settlement().await.unwrap();
    // A retry after a restart may arrive after the rider's next tap: its fare
    // corrections settle too.
    let admin = engine.admin().await.unwrap();
    let (_, statements) = check::charged_exactly_once(&admin, plan, &run)
        .await
        .unwrap();
    let settled = check::settlement(
        &engine,
        &mut settlement,
        2,
        plan,
        &run,
        &statements,
        &folder.path().join("settlement"),
    )
    .await
    .unwrap();
    assert_eq!(settled["ok"], true, "{settled:#}");
    server.take().unwrap().kill();

    // Open journeys survived every crash: exactly the entries the gates saw unexited.
    let ledger = Ledger::open(&config.data_dir, LedgerConfig::default()).unwrap();
    let open: BTreeSet<u64> = ledger
        .open_journeys_before(UnixMillis(u64::MAX), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(account_id, _, _)| account_id)
        .collect();
    assert_eq!(open, open_by_the_gates(plan, &run));
    // Every accepted exit closed the journey its rider's accepted entry opened, also when
    // the server was killed and restarted between the two.
    let exits = exits_close_their_entries(plan, &run);
    eprintln!("{exits} exits closed the journeys their entries opened");
    assert!(exits > 100, "only {exits} exits");
    drop(ledger);

    // The server logged at debug level through every cycle, and never a secret.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("tap answered"), "the log has the taps");
    for secret in [GATE_TOKEN, ADMIN_TOKEN, FINANCE_TOKEN] {
        assert!(!logged.contains(secret), "the log holds a token");
    }
    let settlement_key = std::fs::read_to_string(&config.settlement.key_file).unwrap();
    assert!(
        !logged.contains(settlement_key.trim()),
        "the log holds the settlement key"
    );
}
