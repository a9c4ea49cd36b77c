//! Taps per second and latency through the whole gate service: in-process (verify, then
//! the durable ledger), over unary gRPC, and over streaming gRPC, on one server started on
//! 127.0.0.1 with the sample city, in the same run. Every tap is a bus tap with a fresh
//! code, durable before it is answered. Codes are minted before each timed window.
//!
//! `cargo bench -p fareway-benches --bench gate_grpc` (`GATE_BENCH_TAPS=N` changes the
//! taps per mode). Latency is measured by the caller (it includes the client's own work,
//! so it is an upper bound of the server's time).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fareway::gate::TapInput;
use fareway::ledger::{TapKind, TxId};
use fareway_benches::{NOW, device, registry_and_issuer};
use fareway_proto::v1 as pb;
use fareway_tests::server::{ADMIN_TOKEN, GATE_TOKEN, T, TestServer, tap, tx};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

const RIDERS: u64 = 2_000;
/// Taps in flight at once, in every mode (as a station's gates have them).
const IN_FLIGHT: usize = 256;
const CHANNELS: usize = 4;
const ROUTE: u32 = 501;

struct Run {
    name: &'static str,
    taps: usize,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Run {
    fn taps_per_second(&self) -> f64 {
        self.taps as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        let q = |quantile| self.latency_us.value_at_quantile(quantile);
        println!(
            "{:<12} {:>7} taps in {:>6.2} s = {:>7.0} taps/s; latency µs p50 {} p90 {} p99 {} p99.9 {} max {}",
            self.name,
            self.taps,
            self.elapsed.as_secs_f64(),
            self.taps_per_second(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            self.latency_us.max()
        );
    }
}

fn main() {
    let taps: usize = std::env::var("GATE_BENCH_TAPS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(40_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        assert_eq!(NOW, T);
        let server = TestServer::start(|config| {
            config.metrics_listen = None;
            config.limits.requests_in_flight_max = IN_FLIGHT * 4;
        })
        .await;
        println!("server on {}; opening {RIDERS} riders", server.addr());
        open_riders(&server).await;
        let (_, issuer) = registry_and_issuer();
        let mut devices: Vec<_> = (0..RIDERS)
            .map(|rider| device(&issuer, rider + 1))
            .collect();
        let mut next_id = 1_000_000u128;
        let mut mint = |count: usize| {
            let started = Instant::now();
            let codes: Vec<Code> = (0..count)
                .map(|index| {
                    next_id += 1;
                    let rider = index % devices.len();
                    (
                        next_id,
                        1 + (index % 500) as u32,
                        devices[rider].code_text(T),
                    )
                })
                .collect();
            eprintln!(
                "minted {count} codes in {:.2} s (before the timed window)",
                started.elapsed().as_secs_f64()
            );
            codes
        };

        let in_process = run_in_process(&server, mint(taps)).await;
        in_process.print();
        let unary = run_unary(&server, mint(taps)).await;
        unary.print();
        let streaming = run_streaming(&server, mint(taps)).await;
        streaming.print();
        println!(
            "streaming / in-process = {:.2}; unary / in-process = {:.2}",
            streaming.taps_per_second() / in_process.taps_per_second(),
            unary.taps_per_second() / in_process.taps_per_second()
        );
        server.stop().await;
    });
}

async fn open_riders(server: &TestServer) {
    let admin = server.admin(Some(ADMIN_TOKEN)).await;
    let limit = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for rider in 1..=RIDERS {
        let mut admin = admin.clone();
        let permit = Arc::clone(&limit).acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let opened = admin
                .open_account(pb::OpenAccountRequest {
                    transaction_id: tx(u128::from(rider)),
                    account_id: rider,
                    provider_id: 1,
                    credit_limit_minor: 1_000_000_000_000,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(opened.accepted);
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn check(answer_accepted: bool, reason: &str) {
    assert!(answer_accepted, "a bench tap was rejected: {reason}");
}

/// A code to tap with: transaction id, gate, code text.
type Code = (u128, u32, String);

/// Taps every code with at most [`IN_FLIGHT`] taps in flight, each by `tap_one`, which
/// answers whether the tap was accepted and why not.
async fn closed_loop<F, Answer>(name: &'static str, codes: Vec<Code>, tap_one: F) -> Run
where
    F: Fn(usize, Code) -> Answer,
    Answer: std::future::Future<Output = (bool, String)> + Send + 'static,
{
    let latency = Arc::new(Mutex::new(histogram()));
    let limit = Arc::new(Semaphore::new(IN_FLIGHT));
    let count = codes.len();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for (index, code) in codes.into_iter().enumerate() {
        let permit = Arc::clone(&limit).acquire_owned().await.unwrap();
        let latency = Arc::clone(&latency);
        let answer = tap_one(index, code);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let (accepted, reason) = answer.await;
            let elapsed = sent.elapsed().as_micros() as u64;
            check(accepted, &reason);
            latency.lock().unwrap().saturating_record(elapsed);
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let latency_us = latency.lock().unwrap().clone();
    Run {
        name,
        taps: count,
        elapsed,
        latency_us,
    }
}

async fn run_in_process(server: &TestServer, codes: Vec<Code>) -> Run {
    let gate = Arc::clone(server.running.as_ref().unwrap().gate());
    closed_loop("in-process", codes, |_, (id, gate_id, code_text)| {
        let gate = Arc::clone(&gate);
        async move {
            let answer = gate
                .tap(TapInput {
                    id: TxId(id),
                    gate_id,
                    kind: TapKind::Bus { route: ROUTE },
                    scan_time: T,
                    code_text,
                })
                .await
                .unwrap();
            let reason = answer.reason.map_or("", |r| r.code()).to_string();
            (answer.accepted, reason)
        }
    })
    .await
}

async fn run_unary(server: &TestServer, codes: Vec<Code>) -> Run {
    let mut clients = Vec::new();
    for _ in 0..CHANNELS {
        clients.push(server.gate(Some(GATE_TOKEN)).await);
    }
    closed_loop("unary", codes, |index, (id, gate_id, code_text)| {
        let mut client = clients[index % CHANNELS].clone();
        async move {
            let answer = client
                .tap(tap(id, gate_id, pb::Direction::Bus, ROUTE, T, code_text))
                .await
                .unwrap()
                .into_inner();
            (
                answer.decision == pb::TapDecision::Accepted as i32,
                answer.reason_code,
            )
        }
    })
    .await
}

async fn run_streaming(server: &TestServer, codes: Vec<Code>) -> Run {
    let count = codes.len();
    let per_stream = IN_FLIGHT / CHANNELS;
    let latency = Arc::new(Mutex::new(histogram()));
    let mut shares: Vec<Vec<Code>> = vec![Vec::new(); CHANNELS];
    for (index, code) in codes.into_iter().enumerate() {
        shares[index % CHANNELS].push(code);
    }
    let mut clients = Vec::new();
    for _ in 0..CHANNELS {
        clients.push(server.gate(Some(GATE_TOKEN)).await);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut client, share) in clients.into_iter().zip(shares) {
        let latency = Arc::clone(&latency);
        tasks.push(tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(per_stream));
            let sent_at: Arc<Mutex<HashMap<Vec<u8>, Instant>>> = Arc::default();
            let (sender, receiver) = tokio::sync::mpsc::channel(per_stream);
            let expected = share.len();
            let feeder = {
                let limit = Arc::clone(&limit);
                let sent_at = Arc::clone(&sent_at);
                tokio::spawn(async move {
                    for (id, gate_id, code_text) in share {
                        limit.acquire().await.unwrap().forget();
                        sent_at.lock().unwrap().insert(tx(id), Instant::now());
                        let request = tap(id, gate_id, pb::Direction::Bus, ROUTE, T, code_text);
                        if sender.send(request).await.is_err() {
                            break;
                        }
                    }
                })
            };
            let mut answers = client
                .tap_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
                .await
                .unwrap()
                .into_inner();
            let mut received = 0;
            while received < expected {
                let answer = answers.message().await.unwrap().unwrap();
                assert!(answer.error.is_none(), "{:?}", answer.error);
                let sent = sent_at
                    .lock()
                    .unwrap()
                    .remove(&answer.transaction_id)
                    .unwrap();
                latency
                    .lock()
                    .unwrap()
                    .saturating_record(sent.elapsed().as_micros() as u64);
                check(
                    answer.decision == pb::TapDecision::Accepted as i32,
                    &answer.reason_code,
                );
                limit.add_permits(1);
                received += 1;
            }
            feeder.await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let latency_us = latency.lock().unwrap().clone();
    Run {
        name: "streaming",
        taps: count,
        elapsed,
        latency_us,
    }
}
