//! Sustained durable charges over time: 512 async callers (the server's shape) charge
//! for SECS seconds (default 40) and the rate is printed every second, so that a
//! slowdown as the ledger grows shows up (criterion's averages hide it).
//!
//! Run: `cargo bench -p fareway-benches --bench ledger_sustained` (SYNC=0 turns syncing
//! off, SECS=N sets the duration).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fareway_benches::{CALLERS, charge, ledger_with_riders};

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        // `cargo bench -- --list` asks every bench for its list: this one has no cases.
        return;
    }
    let sync = std::env::var("SYNC")
        .map(|value| value != "0")
        .unwrap_or(true);
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(40);
    let (_dir, ledger) = ledger_with_riders(sync);
    let ledger = Arc::new(ledger);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("{err}"));
    let next_id = Arc::new(AtomicU64::new(1));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    println!("ledger_sustained: durable={sync}, {CALLERS} callers, {secs} s");
    runtime.block_on(async {
        for _ in 0..CALLERS {
            let (ledger, next_id, done) = (Arc::clone(&ledger), Arc::clone(&next_id), Arc::clone(&done));
            tokio::spawn(async move {
                while started.elapsed() < Duration::from_secs(secs) {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    ledger.submit_async(charge(id)).await.unwrap_or_else(|err| panic!("{err}"));
                    done.fetch_add(1, Ordering::Relaxed);
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
                "{now_done:>8} charges in all, {:>7} in the last second, {:>5} group commits, {:>5} syncs, mean sync {:>6} us",
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
        "ledger_sustained: {total} charges in {secs} s = {:.0}/s",
        total as f64 / secs as f64
    );
}
