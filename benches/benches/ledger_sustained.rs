//! Sustained durable charges over time: 512 async callers (the server's shape) charge
//! for SECS seconds (default 40) and the rate is printed every second, so that a
//! slowdown as the ledger grows shows up (criterion's averages hide it).
//!
//! KIND=taps makes them metro taps under the sample city's fares instead: each caller
//! takes its own riders through one trip a service day (an entry, then an exit that is
//! charged), so that the ledger's writer does a tap's whole work (the code, the rider's
//! travel state, the journey index, the rider's steps) without gRPC or signatures.
//!
//! Run: `cargo bench -p fareway-benches --bench ledger_sustained` (SYNC=0 turns syncing
//! off, SECS=N sets the duration, KIND=taps taps).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fareway::clock::UnixMillis;
use fareway::ledger::{Outcome, Request, TapKind};
use fareway_benches::{
    CALLERS, NOW, RIDERS, asked_for_list, charge, env_u64, ledger_with_riders,
    ledger_with_riders_under, sample_city_rules, tap,
};

/// Riders each caller of KIND=taps takes through their trips, by turns.
const RIDERS_PER_CALLER: u64 = RIDERS / CALLERS;

/// The `k`-th tap of caller `caller` (id `id`): its riders' entries and exits by turns, one
/// trip a rider a service day, ten minutes from Harbour to University (400, under the
/// daily cap of 1,500), riders a minute apart.
fn trip_tap(id: u64, caller: u64, k: u64) -> Request {
    let (trip, exit) = (k / 2, k % 2 == 1);
    let turn = trip % RIDERS_PER_CALLER;
    let day = trip / RIDERS_PER_CALLER;
    let rider = caller + CALLERS * turn;
    let time = UnixMillis(NOW.0 + day * 86_400_000 + turn * 60_000 + u64::from(exit) * 600_000);
    let kind = if exit {
        TapKind::MetroExit { station: 103 }
    } else {
        TapKind::MetroEntry { station: 101 }
    };
    tap(id, rider, 1, time, kind)
}

fn main() {
    if asked_for_list() {
        return;
    }
    let sync = std::env::var("SYNC")
        .map(|value| value != "0")
        .unwrap_or(true);
    let secs = env_u64("SECS", 40);
    let taps = std::env::var("KIND").is_ok_and(|kind| kind == "taps");
    let (_dir, ledger) = if taps {
        ledger_with_riders_under(sync, sample_city_rules())
    } else {
        ledger_with_riders(sync)
    };
    let what = if taps { "taps" } else { "charges" };
    let ledger = Arc::new(ledger);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("{err}"));
    let next_id = Arc::new(AtomicU64::new(1));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    println!("ledger_sustained: {what}, durable={sync}, {CALLERS} callers, {secs} s");
    runtime.block_on(async {
        for caller in 0..CALLERS {
            let (ledger, next_id, done) = (Arc::clone(&ledger), Arc::clone(&next_id), Arc::clone(&done));
            tokio::spawn(async move {
                let mut k = 0;
                while started.elapsed() < Duration::from_secs(secs) {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let request = if taps { trip_tap(id, caller, k) } else { charge(id) };
                    let receipt =
                        ledger.submit_async(request).await.unwrap_or_else(|err| panic!("{err}"));
                    assert_eq!(receipt.record.outcome, Outcome::Accepted);
                    done.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                }
            });
        }
        let (mut last_done, mut last_batches, mut last_syncs, mut last_sync_us) = (0, 0, 0, 0);
        for _ in 0..secs {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let stats = ledger.stats();
            let now_done = done.load(Ordering::Relaxed);
            let batches = stats.group_commits.load(Ordering::Relaxed);
            let (syncs, sync_us) = (stats.write_times.count(), stats.write_times.sum_us());
            println!(
                "{now_done:>8} {what} in all, {:>7} in the last second, {:>5} group commits, {:>5} syncs, mean sync {:>6} us",
                now_done - last_done,
                batches - last_batches,
                syncs - last_syncs,
                (sync_us - last_sync_us) / (syncs - last_syncs).max(1)
            );
            (last_done, last_batches, last_syncs, last_sync_us) = (now_done, batches, syncs, sync_us);
        }
    });
    let total = done.load(Ordering::Relaxed);
    println!(
        "ledger_sustained: {total} {what} in {secs} s = {:.0}/s",
        total as f64 / secs as f64
    );
}
