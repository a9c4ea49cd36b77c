//! Settlement export of one big batch: 10 million bus taps of one provider, closed (one
//! streaming pass that hashes the file) and exported to a file (the pull's streaming
//! pass), with the time, the lines per second, and the process's peak memory.
//!
//! Run: `cargo bench -p fareway-benches --bench settlement_export` (TAPS=10000000 by
//! default; set TAPS to change it, SETTLEMENT_DIR to reuse a directory made earlier).
//! Goal (issue 5): at least 500,000 lines per second, peak memory under 200 MB.
//!
//! The taps go through the ledger's real state machine (sample city fares, real code
//! fingerprints, group commit without syncing each batch, which only makes the set-up
//! faster). The close and the export then run in a fresh process, so that the peak memory
//! measured is theirs and not the set-up's.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use fareway::fares::FareTable;
use fareway::ledger::{Ledger, LedgerConfig, Rules, TapKind, TxId};
use fareway::settlement::key::SettlementKey;
use fareway::settlement::manifest::Manifest;
use fareway::settlement::model::{CloseRequest, Cutoff};
use fareway::settlement::{Settlement, SettlementBook};
use fareway_benches::{NOW, proc_status_kib};

/// Riders tapping; each taps about TAPS / RIDERS times.
const RIDERS: u64 = 1_000_000;

fn rules() -> Rules {
    let text = include_str!("../../docs/sample-city.toml");
    Rules {
        fares: Some(Arc::new(
            FareTable::from_toml(text).unwrap_or_else(|err| panic!("{err}")),
        )),
        code_retry_window_ms: fareway::ledger::CODE_RETRY_WINDOW_MS_DEFAULT,
    }
}

fn main() {
    fareway_benches::made_once_then_measured("SETTLEMENT_DIR", 10_000_000, make_ledger, measure);
}

fn make_ledger(dir: &std::path::Path, taps: u64) {
    let started = Instant::now();
    let ledger = fareway_benches::unsynced_sample_city_ledger(dir);
    let riders = RIDERS.min(taps.max(1));
    fareway_benches::open_riders(&ledger, riders, |_| 1);
    std::thread::scope(|scope| {
        for thread in 0..8u64 {
            let ledger = &ledger;
            scope.spawn(move || {
                for n in (thread..taps).step_by(8) {
                    // A tap a second per rider's turn: spread over the day.
                    let time = NOW.saturating_add((n / riders) * 60_000);
                    let gate_id = (n % 5_000) as u32 + 1;
                    let kind = TapKind::Bus { route: 501 };
                    let request = fareway_benches::tap(n, n % riders, gate_id, time, kind);
                    fareway_benches::submit_waiting(ledger, request);
                    if thread == 0 && n % 1_000_000 == 0 {
                        eprintln!("made about {n} taps");
                    }
                }
            });
        }
    });
    println!(
        "set-up: {riders} riders and {taps} bus taps through the ledger in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Settle the set-up's compactions now, so that they do not run during the measurement.
    // Compaction is maintenance no ledger API offers: the closed directory is opened as a
    // plain database for it.
    drop(ledger);
    let started = Instant::now();
    let db = fareway::ledger::store::open(dir, &fareway::ledger::StoreConfig::default())
        .unwrap_or_else(|err| panic!("{err}"));
    for name in [
        fareway::ledger::store::CF_LOG,
        fareway::ledger::store::CF_PROVIDER_ENTRIES,
    ] {
        let cf = db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("no column family {name}"));
        db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
    }
    println!(
        "set-up: compacted in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn measure(dir: &std::path::Path, taps: u64, scratch: &std::path::Path) {
    let rss_before_kib = proc_status_kib("VmRSS");
    let ledger = Arc::new(
        Ledger::open_with_rules(dir, LedgerConfig::default(), rules())
            .unwrap_or_else(|err| panic!("{err}")),
    );
    let settlement = Settlement::new(
        Arc::clone(&ledger),
        SettlementKey::from_seed([5; 32]),
        "EUR".into(),
    );
    // The same close id on every run: a directory used before answers with its batch,
    // and only the export is measured again.
    let request = CloseRequest {
        id: TxId(1),
        providers: vec![1],
        cutoff: Cutoff::Now,
    };
    let started = Instant::now();
    let closed = settlement
        .close(&request, NOW)
        .unwrap_or_else(|err| panic!("{err}"));
    let close_s = started.elapsed().as_secs_f64();
    let batch = &closed.batches[0].batch;
    let lines = batch.totals.line_count;
    assert!(lines >= taps, "the batch has {lines} lines for {taps} taps");

    let path = scratch.join("export.csv");
    let started = Instant::now();
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(&path).unwrap_or_else(|err| panic!("{err}")));
    settlement
        .export(batch, &mut out)
        .unwrap_or_else(|err| panic!("{err}"));
    out.flush().unwrap_or_else(|err| panic!("{err}"));
    let export_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let manifest =
        Manifest::from_bytes(&settlement.manifest(batch)).unwrap_or_else(|err| panic!("{err}"));
    let file = std::fs::File::open(&path).unwrap_or_else(|err| panic!("{err}"));
    fareway::settlement::verify::verify(
        &manifest,
        std::io::BufReader::new(file),
        &settlement.key().public_key(),
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let verify_s = started.elapsed().as_secs_f64();

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "batch {}: {lines} lines, {:.1} MiB file",
        batch.id,
        batch.file_bytes as f64 / (1 << 20) as f64
    );
    if closed.replay {
        println!("close: made on an earlier run (not measured again)");
    } else {
        println!(
            "close (one pass, hashed): {close_s:.2}s = {:.0} lines/s",
            lines as f64 / close_s
        );
    }
    println!(
        "export to a file (the pull's pass): {export_s:.2}s = {:.0} lines/s",
        lines as f64 / export_s
    );
    println!(
        "offline verify (hash, content, signature): {verify_s:.2}s = {:.0} lines/s",
        lines as f64 / verify_s
    );
    println!(
        "memory: {:.0} MiB resident before opening, peak {:.0} MiB for the whole process",
        mib(rss_before_kib),
        mib(proc_status_kib("VmHWM"))
    );
}
