//! Crash safety of the ledger: a writer process under concurrent load is killed with
//! SIGKILL at random moments, and after each kill the reopened data directory must hold
//! every acknowledged transaction exactly once, nothing half-applied, and pass the audit.
//!
//! Runs 5 cycles; set `FAREWAY_CRASH_CYCLES` for a longer soak and `FAREWAY_CRASH_SEED`
//! to replay a particular run.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use fareway::ledger::audit::audit;
use fareway::ledger::{AccountRef, Ledger, LedgerConfig, Outcome, TxId};
use fareway_tests::{Rng, env_number};

const ACCOUNTS: u64 = 50;
const IDS_PER_CYCLE: u64 = 200_000;
const RETRIES_PER_CYCLE: u64 = 500;

#[test]
fn acknowledged_charges_survive_sigkill_exactly_once() {
    let cycles = env_number("FAREWAY_CRASH_CYCLES", 5);
    let seed = env_number("FAREWAY_CRASH_SEED", 20_261_122);
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("ledger");
    let mut acknowledged: HashMap<u64, u64> = HashMap::new();

    for cycle in 0..cycles {
        let id_start = 1_000_000 * (cycle + 1);
        let retry_start = if cycle == 0 { 0 } else { 1_000_000 * cycle };
        let retry_count = if cycle == 0 { 0 } else { RETRIES_PER_CYCLE };
        let mut child = Process::new(env!("CARGO_BIN_EXE_ledger-crash-writer"))
            .arg(&data_dir)
            .args(
                [ACCOUNTS, id_start, IDS_PER_CYCLE, retry_start, retry_count]
                    .map(|n| n.to_string()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("the crash writer starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next().expect("the writer says READY").unwrap();
        assert_eq!(ready, "READY");
        let reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
        let kill_after_ms = rng.range(100, 1_500);
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        child.kill().expect("SIGKILL the writer");
        child.wait().unwrap();
        let mut acked_this_cycle = 0;
        for line in reader.join().unwrap() {
            let mut fields = line.split_whitespace();
            if fields.next() != Some("ACK") {
                continue;
            }
            // A line cut off by the kill may be partial: only whole lines count.
            let (Some(Ok(id)), Some(Ok(sequence)), None) = (
                fields.next().map(str::parse::<u64>),
                fields.next().map(str::parse::<u64>),
                fields.next(),
            ) else {
                continue;
            };
            if let Some(earlier) = acknowledged.insert(id, sequence) {
                assert_eq!(
                    earlier, sequence,
                    "id {id} was acknowledged at two sequences"
                );
            }
            acked_this_cycle += 1;
        }
        assert!(
            acked_this_cycle > 0,
            "cycle {cycle}: the writer acknowledged nothing in {kill_after_ms} ms"
        );

        let ledger =
            Ledger::open(&data_dir, LedgerConfig::default()).expect("reopens after SIGKILL");
        for (id, sequence) in &acknowledged {
            let (found, record) = ledger
                .transaction(TxId(u128::from(*id)))
                .unwrap()
                .unwrap_or_else(|| {
                    panic!("cycle {cycle} (seed {seed}): acknowledged id {id} is missing")
                });
            assert_eq!(found, *sequence, "id {id} moved");
            assert_eq!(record.outcome, Outcome::Accepted);
        }
        let report = audit(ledger.view()).unwrap();
        assert!(
            report.ok(),
            "cycle {cycle} (seed {seed}): {:?}",
            report.violations
        );
        // Exactly once: the audit proved that each id maps to exactly one record and that
        // the postings are exactly the records'; every record past the account openings
        // is one charge, and at least every acknowledged one is there.
        let charges = report.transactions - ACCOUNTS;
        assert!(charges >= acknowledged.len() as u64);
        let revenue = ledger
            .account(AccountRef::OperatorRevenue(1))
            .unwrap()
            .map_or(0, |account| account.balance.0);
        assert!(revenue >= 7 * charges as i64 && revenue <= 11 * charges as i64);
        eprintln!(
            "cycle {cycle}: killed after {kill_after_ms} ms, {acked_this_cycle} acknowledged, {charges} charges recorded in all"
        );
    }
}
