//! Ledger throughput: durable fare charges through the group-commit writer with many
//! concurrent callers, the same with syncing off (the cost of durability), and the cost
//! of a replayed id against a new charge.
//!
//! Run: `cargo bench -p fareway-benches --bench ledger`. Goals (issue 3): at least 50,000
//! durable charges per second on 2 cores; a replay costs under a tenth of a new charge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fareway::ledger::Ledger;
use fareway_benches::{CALLERS, charge, ledger_with_riders};

/// `iterations` charges from `CALLERS` async tasks at once on a two-worker runtime (the
/// server's shape); returns the wall time.
fn concurrent_charges(
    runtime: &tokio::runtime::Runtime,
    ledger: &Arc<Ledger>,
    next_id: &Arc<AtomicU64>,
    iterations: u64,
) -> Duration {
    // Exactly `iterations` charges in all, shared out, so that the time per charge is right
    // even when criterion asks for fewer iterations than there are callers.
    let share = |caller: u64| iterations / CALLERS + u64::from(caller < iterations % CALLERS);
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let (ledger, next_id) = (Arc::clone(ledger), Arc::clone(next_id));
                let count = share(caller);
                tokio::spawn(async move {
                    for _ in 0..count {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        ledger
                            .submit_async(charge(id))
                            .await
                            .unwrap_or_else(|err| unreachable!("{err}"));
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap_or_else(|err| unreachable!("{err}"));
        }
    });
    started.elapsed()
}

fn charges(c: &mut Criterion) {
    let mut group = c.benchmark_group("ledger");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15))
        .throughput(Throughput::Elements(1));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap_or_else(|err| unreachable!("{err}"));
    for (name, sync) in [
        ("durable_charges_512_callers", true),
        ("unsynced_charges_512_callers", false),
    ] {
        let (_dir, ledger) = ledger_with_riders(sync);
        let ledger = Arc::new(ledger);
        let next_id = Arc::new(AtomicU64::new(1));
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| concurrent_charges(&runtime, &ledger, &next_id, iterations))
        });
    }

    let (_dir, ledger) = ledger_with_riders(true);
    let next_id = AtomicU64::new(1);
    group.bench_function("durable_charge_1_caller", |b| {
        b.iter(|| ledger.submit(charge(next_id.fetch_add(1, Ordering::Relaxed))))
    });
    let recorded = next_id.load(Ordering::Relaxed) - 1;
    let replayed = AtomicU64::new(0);
    group.bench_function("replayed_id", |b| {
        b.iter(|| {
            let id = 1 + replayed.fetch_add(1, Ordering::Relaxed) % recorded;
            let receipt = ledger
                .submit(charge(id))
                .unwrap_or_else(|err| unreachable!("{err}"));
            assert!(receipt.replay);
        })
    });
    group.finish();
}

criterion_group!(benches, charges);
criterion_main!(benches);
