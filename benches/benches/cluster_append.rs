//! What the cluster's log append costs against NATS itself: on one 3-server JetStream
//! cluster started on 127.0.0.1 (`sync_interval: always`, file storage, 3 replicas), the
//! leader's fenced append (`cluster::log::ShardLog`: expected last subject sequence and a
//! message id, awaited for the quorum's acknowledgement, called from a blocking thread as
//! the ledger's writer calls it) against a bare JetStream publish of the same bytes to a
//! stream of the same settings, taken in turns so that both see the same machine.
//!
//! `cargo bench -p fareway-benches --bench cluster_append` (needs `nats-server`, which
//! `.ci/setup` installs; `CLUSTER_APPEND_ROUNDS=N` changes the appends per size).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use fareway::clock::UnixMillis;
use fareway::cluster::ClusterConfig;
use fareway::cluster::local::LocalNats;
use fareway::cluster::log::{self, ShardLog};
use fareway::ledger::{Command, LogAppend, Request, Tap, TapKind, TxId, codec};
use hdrhistogram::Histogram;

/// Requests per log message measured: one tap alone, and group commits of busy moments.
const GROUP_SIZES: [usize; 3] = [1, 64, 512];

fn taps(count: usize, round: usize) -> Vec<Request> {
    (0..count)
        .map(|index| {
            let id = (round * 1_000 + index) as u128;
            Request {
                id: TxId(id),
                time: UnixMillis(1_800_000_000_000 + id as u64),
                command: Command::Tap(Tap {
                    account_id: 1_000 + index as u64,
                    gate_id: 7,
                    code: id.to_be_bytes(),
                    kind: TapKind::Bus { route: 501 },
                    offline: false,
                    concessions: 0,
                }),
            }
        })
        .collect()
}

fn quantiles(histogram: &Histogram<u64>) -> String {
    let q = |quantile| histogram.value_at_quantile(quantile) as f64 / 1_000.0;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        q(0.5),
        q(0.99),
        histogram.max() as f64 / 1_000.0
    )
}

fn main() {
    let rounds: usize = std::env::var("CLUSTER_APPEND_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_000);
    let folder = tempfile::tempdir().unwrap();
    let nats = LocalNats::start(3, folder.path()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = ClusterConfig {
        node_id: "bench".into(),
        nats_urls: nats.urls(),
        nats_user: Some(nats.node_credentials().user.clone()),
        nats_password: Some(nats.node_credentials().password.clone()),
        ..ClusterConfig::default()
    };
    let js = runtime.block_on(ready(&config));
    println!(
        "cluster_append: 3 nats-servers on 127.0.0.1, {rounds} appends per size, taken in turns with bare publishes"
    );
    for (shard, size) in (0..).zip(GROUP_SIZES) {
        let (appended, published, bytes) = runtime.block_on(measure(&js, shard, size, rounds));
        let ratio =
            appended.value_at_quantile(0.5) as f64 / published.value_at_quantile(0.5).max(1) as f64;
        println!(
            "{size:>4} requests ({bytes} bytes): fenced append {}; bare publish {}; append/publish at p50 {ratio:.2}",
            quantiles(&appended),
            quantiles(&published)
        );
    }
}

/// JetStream once the servers have elected their leader.
async fn ready(config: &ClusterConfig) -> jetstream::Context {
    let started = Instant::now();
    loop {
        if let Ok(js) = config.jetstream().await
            && js.get_or_create_stream(bare_stream()).await.is_ok()
        {
            return js;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "NATS did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A stream with the shard logs' settings, without fencing.
fn bare_stream() -> stream::Config {
    stream::Config {
        name: "BARE".into(),
        subjects: vec!["bare".into()],
        storage: stream::StorageType::File,
        num_replicas: 3,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// `rounds` appends of `size` requests to shard `shard`'s log, each followed by a bare
/// publish of the same bytes: both latency histograms (µs) and the message size.
async fn measure(
    js: &jetstream::Context,
    shard: u32,
    size: usize,
    rounds: usize,
) -> (Histogram<u64>, Histogram<u64>, usize) {
    log::ensure_stream(js, shard, 3).await.unwrap();
    let mut appended = Histogram::<u64>::new(3).unwrap();
    let mut published = Histogram::<u64>::new(3).unwrap();
    let mut shard_log = ShardLog::new(
        js.clone(),
        tokio::runtime::Handle::current(),
        shard,
        format!("bench-{shard}"),
    );
    let mut bytes = 0;
    for round in 0..rounds {
        let requests = taps(size, round);
        let payload = codec::encode_log_entry(&requests);
        bytes = payload.len();
        let (log_back, took) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            shard_log.append(round as u64, &requests).unwrap();
            (shard_log, started.elapsed())
        })
        .await
        .unwrap();
        shard_log = log_back;
        appended.record(took.as_micros() as u64).unwrap();
        let started = Instant::now();
        js.publish("bare", payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
        published
            .record(started.elapsed().as_micros() as u64)
            .unwrap();
    }
    (appended, published, bytes)
}
