//! The fare-change replay's rate and memory (`docs/PERFORMANCE.md`, "The fare-change
//! replay"): a ledger of `TAPS` taps (default 1,000,000: 100,000 riders of ten taps each,
//! metro journeys and bus rides through the ledger's own state machine) is made once,
//! then a fresh process replays it under a dearer fares file, reading it as a secondary
//! instance as `fareway fares replay` does, and prints steps per second and its peak
//! resident memory.
//!
//! `cargo bench -p fareway-benches --bench fares_replay` (TAPS=... to change the size).

use std::path::Path;
use std::time::Instant;

use fareway::fares::FareTable;
use fareway::fares_replay::{ReplayPeriod, replay};
use fareway::ledger::{LedgerView, StoreConfig, TapKind};
use fareway_benches::{NOW, proc_status_kib};

const TAPS_PER_RIDER: u64 = 10;
const SAMPLE: &str = include_str!("../../docs/sample-city.toml");

fn main() {
    fareway_benches::made_once_then_measured("REPLAY_DIR", 1_000_000, make_ledger, measure);
}

fn fares(text: &str) -> FareTable {
    FareTable::from_toml(text).unwrap_or_else(|err| panic!("{err}"))
}

/// The rider's `k`th tap: an entry at Harbour, an exit at Airport (700), a Ring bus
/// (200), over and over, 40 minutes apart.
fn kth_tap(k: u64) -> TapKind {
    match k % 3 {
        0 => TapKind::MetroEntry { station: 101 },
        1 => TapKind::MetroExit { station: 104 },
        _ => TapKind::Bus { route: 501 },
    }
}

fn make_ledger(dir: &Path, taps: u64) {
    let started = Instant::now();
    let ledger = fareway_benches::unsynced_sample_city_ledger(dir);
    let riders = (taps / TAPS_PER_RIDER).max(1);
    fareway_benches::open_riders(&ledger, riders, |account_id| 1 + (account_id % 3) as u16);
    // Each thread takes whole riders, so that a rider's taps come in scan order.
    std::thread::scope(|scope| {
        for thread in 0..8u64 {
            let ledger = &ledger;
            scope.spawn(move || {
                for k in 0..TAPS_PER_RIDER {
                    for account_id in (thread..riders).step_by(8) {
                        let n = k * riders + account_id;
                        let time = NOW.saturating_add(k * 40 * 60_000);
                        let request = fareway_benches::tap(n, account_id, 1, time, kth_tap(k));
                        fareway_benches::submit_waiting(ledger, request);
                    }
                }
            });
        }
    });
    println!(
        "set-up: {riders} riders and {} taps through the ledger in {:.1}s",
        riders * TAPS_PER_RIDER,
        started.elapsed().as_secs_f64()
    );
}

fn measure(dir: &Path, _taps: u64, scratch: &Path) {
    // A dearer bus and a higher daily cap, so that the change is not capped away.
    let dearer = SAMPLE
        .replace(
            "name = \"Ring\"\nfare_minor = 200",
            "name = \"Ring\"\nfare_minor = 300",
        )
        .replace("daily_cap_minor = 1500", "daily_cap_minor = 3000");
    let fares = fares(&dearer);
    let rss_before_kib = proc_status_kib("VmRSS");
    let started = Instant::now();
    let view = LedgerView::open_secondary(dir, &scratch.join("secondary"), &StoreConfig::default())
        .unwrap_or_else(|err| panic!("{err}"));
    let period = ReplayPeriod {
        from_day: None,
        to_day: None,
        largest: 20,
    };
    let result = replay(&view, &fares, period, |steps| {
        if steps.is_multiple_of(1_000_000) {
            eprintln!("replayed {steps} steps");
        }
    })
    .unwrap_or_else(|err| panic!("{err}"));
    let seconds = started.elapsed().as_secs_f64();
    let steps = result.steps_read;
    println!(
        "fares replay: {steps} steps of {} riders in {seconds:.2}s: {:.0} steps/s; revenue then {} now {}",
        result.riders.riders,
        steps as f64 / seconds,
        result.total.then_minor,
        result.total.now_minor
    );
    println!(
        "fares replay memory: peak resident {} MiB (before opening {} MiB)",
        proc_status_kib("VmHWM") / 1024,
        rss_before_kib / 1024
    );
}
