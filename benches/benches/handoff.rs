//! The machine's own cost of a hand-off between threads, which a tap makes three times
//! (a tokio worker to the ledger's writer, the writer to the syncer, the syncer back to a
//! tokio worker): one thread sends the time on a channel every GAP_US microseconds
//! (default 600, about the writer's group interval at 12,500 taps/s) to another parked
//! on it, which records how long after the send it ran. Prints p50, p90, p99 and p99.9.
//! Run it alone, or beside a load (`benches/scripts/cpu_per_tap.sh`) to measure the
//! machine under that load in the same run.
//!
//! Run: `cargo bench -p fareway-benches --bench handoff` (SECS=N, default 15; GAP_US=N).

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use fareway_benches::{asked_for_list, env_u64};

fn main() {
    if asked_for_list() {
        return;
    }
    let (secs, gap_us) = (env_u64("SECS", 15), env_u64("GAP_US", 600));
    let (sender, receiver) = mpsc::sync_channel::<Instant>(1);
    let parked = thread::spawn(move || {
        let mut waits_ns = Vec::new();
        while let Ok(sent) = receiver.recv() {
            waits_ns.push(sent.elapsed().as_nanos() as u64);
        }
        waits_ns
    });
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        thread::sleep(Duration::from_micros(gap_us));
        sender
            .send(Instant::now())
            .unwrap_or_else(|err| panic!("{err}"));
    }
    drop(sender);
    let mut waits_ns = parked
        .join()
        .unwrap_or_else(|_| panic!("the parked thread panicked"));
    if waits_ns.is_empty() {
        println!("handoff: no hand-offs in {secs} s");
        return;
    }
    waits_ns.sort_unstable();
    let pick = |q: f64| waits_ns[((waits_ns.len() - 1) as f64 * q) as usize] as f64 / 1_000.0;
    println!(
        "handoff: {} hand-offs every {gap_us} us for {secs} s; the woken thread ran after p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
        waits_ns.len(),
        pick(0.5),
        pick(0.9),
        pick(0.99),
        pick(0.999)
    );
}
