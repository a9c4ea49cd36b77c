//! Crash safety of settlement: a process closing batches while other threads charge is
//! killed with SIGKILL at random moments, most of them in the middle of a close. After
//! each kill every batch in the data directory is whole (its file re-exports to the stored
//! length and hash and verifies against its signed manifest), every batch the process
//! reported closed is there, each provider's batches follow on without gap or overlap,
//! and the audit passes. At the end one more close covers the rest, and every settlement
//! entry of the ledger is in exactly one batch.
//!
//! Runs 4 cycles; set `FAREWAY_SETTLEMENT_CRASH_CYCLES` for a longer soak and
//! `FAREWAY_CRASH_SEED` to replay a particular run.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead as _, BufReader};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fareway::ledger::audit::audit;
use fareway::ledger::{Ledger, LedgerConfig, TxId};
use fareway::settlement::file::for_each_entry;
use fareway::settlement::key::SettlementKey;
use fareway::settlement::manifest::Manifest;
use fareway::settlement::model::{CloseRequest, Cutoff};
use fareway::settlement::verify::verify;
use fareway::settlement::{Settlement, SettlementBook};
use fareway_tests::{Rng, env_number};

const CHARGES_PER_CYCLE: u64 = 160_000;

fn open(dir: &std::path::Path) -> (Arc<Ledger>, Settlement) {
    let ledger = Arc::new(Ledger::open(dir, LedgerConfig::default()).unwrap());
    let settlement = Settlement::new(
        Arc::clone(&ledger),
        SettlementKey::from_seed([9; 32]),
        "EUR".into(),
    );
    (ledger, settlement)
}

/// Every batch, page by page.
fn all_batches(settlement: &Settlement) -> Vec<fareway::settlement::model::BatchView> {
    let mut all: Vec<fareway::settlement::model::BatchView> = Vec::new();
    loop {
        let after = all.last().map_or(0, |view| view.batch.id);
        let page = settlement.list(None, after, 1_000).unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

#[test]
fn a_close_killed_midway_leaves_no_batch_or_a_whole_one() {
    let cycles = env_number("FAREWAY_SETTLEMENT_CRASH_CYCLES", 4);
    let seed = env_number("FAREWAY_CRASH_SEED", 20_261_122);
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("ledger");
    let public_key = SettlementKey::from_seed([9; 32]).public_key();
    let mut reported: HashMap<u64, String> = HashMap::new();
    let mut killed_mid_close = 0;

    for cycle in 0..cycles {
        let mut child = Process::new(env!("CARGO_BIN_EXE_settlement-crash-closer"))
            .arg(&data_dir)
            .args(
                [
                    1_000_000 * (cycle + 1),
                    CHARGES_PER_CYCLE,
                    1_000 * (cycle + 1),
                ]
                .map(|n| n.to_string()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("the crash closer starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "READY");
        let reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(rng.range(20, 400)));
        child.kill().expect("SIGKILL the closer");
        child.wait().unwrap();
        let mut closing = false;
        for line in reader.join().unwrap() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["CLOSING", _] => closing = true,
                // A line cut off by the kill may be partial: only whole lines count.
                ["CLOSED", id, sha] if sha.len() == 64 => {
                    closing = false;
                    reported.insert(id.parse().unwrap(), sha.to_string());
                }
                _ => {}
            }
        }
        killed_mid_close += u32::from(closing);

        let (ledger, settlement) = open(&data_dir);
        let batches = all_batches(&settlement);
        let stored: HashSet<u64> = batches.iter().map(|view| view.batch.id).collect();
        for (id, sha) in &reported {
            assert!(
                stored.contains(id),
                "cycle {cycle}: reported batch {id} is missing"
            );
            let batch = &batches
                .iter()
                .find(|view| view.batch.id == *id)
                .unwrap()
                .batch;
            assert_eq!(&batch.file_sha256, sha, "cycle {cycle}: batch {id}");
        }
        let mut position: BTreeMap<u16, u64> = BTreeMap::new();
        for view in &batches {
            let batch = &view.batch;
            let after = position
                .insert(batch.provider_id, batch.through_sequence)
                .unwrap_or(0);
            assert_eq!(
                batch.after_sequence, after,
                "cycle {cycle}: batch {} gap",
                batch.id
            );
            let mut file = Vec::new();
            settlement.export(batch, &mut file).unwrap();
            let manifest = Manifest::from_bytes(&settlement.manifest(batch)).unwrap();
            verify(&manifest, file.as_slice(), &public_key).unwrap();
        }
        let report = audit(ledger.view()).unwrap();
        assert!(report.ok(), "cycle {cycle}: {:?}", report.violations);
    }
    println!("{killed_mid_close} of {cycles} kills landed in the middle of a close");
    assert!(
        killed_mid_close > 0,
        "no kill landed in the middle of a close; the test proved nothing"
    );

    // One more close takes the rest: every settlement entry is in exactly one batch.
    let (ledger, settlement) = open(&data_dir);
    let last = CloseRequest {
        id: TxId(1),
        providers: Vec::new(),
        cutoff: Cutoff::Now,
    };
    settlement
        .close(&last, fareway::clock::UnixMillis(1))
        .unwrap();
    let mut in_batches: HashMap<u16, Vec<u64>> = HashMap::new();
    for view in all_batches(&settlement) {
        let batch = &view.batch;
        let sequences = in_batches.entry(batch.provider_id).or_default();
        for_each_entry(
            ledger.view(),
            None,
            batch.provider_id,
            batch.after_sequence,
            batch.through_sequence,
            |sequence, _| {
                sequences.push(sequence);
                Ok(true)
            },
        )
        .unwrap();
    }
    let mut entries: HashMap<u16, Vec<u64>> = HashMap::new();
    for provider in 1..=3u16 {
        for_each_entry(
            ledger.view(),
            None,
            provider,
            0,
            u64::MAX - 1,
            |sequence, _| {
                entries.entry(provider).or_default().push(sequence);
                Ok(true)
            },
        )
        .unwrap();
    }
    assert!(entries.values().map(Vec::len).sum::<usize>() > 50_000);
    assert_eq!(in_batches, entries);
}
