//! The timed window: sends the planned taps at their due times (open loop: a slow engine
//! shows up as latency, not as a politely slower client), unary or over streams, with a
//! bound on taps in flight, and records each answer and its latency from the tap's due
//! time (so time spent queued behind a slow engine counts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fareway_proto::v1 as pb;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt as _;

use crate::client::{Engine, GateClient};
use crate::plan::PlannedTap;

/// How taps travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One `Tap` call per tap.
    Unary,
    /// Taps on long-lived `TapStream`s, one per group of gates.
    Streaming,
}

/// What became of one planned tap.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Never sent: the simulator already had its limit of taps in flight.
    NotSent,
    /// The engine's answer.
    Response(pb::TapResponse),
    /// The call failed with this status code and message.
    Failed(tonic::Code, String),
}

/// One tap's result.
#[derive(Debug, Clone)]
pub struct TapResult {
    /// The answer.
    pub answer: Answer,
    /// From the tap's due time to its answer, in microseconds.
    pub latency_us: u64,
    /// When it was due, from the start, in milliseconds.
    pub due_ms: u64,
}

/// How the run went.
#[derive(Debug)]
pub struct RunResult {
    /// One per planned tap, in plan order.
    pub results: Vec<TapResult>,
    /// How long the window took, from the first due time to the last answer.
    pub elapsed: Duration,
}

/// Taps sent on a stream and not yet answered, by transaction id: plan index, due time,
/// due offset, and the in-flight permit they hold.
type Pending = HashMap<Vec<u8>, (usize, Instant, u64, tokio::sync::OwnedSemaphorePermit)>;

/// Connections used for unary calls (HTTP/2 multiplexes each).
const UNARY_CONNECTIONS: usize = 4;
/// Streams in streaming mode.
const STREAMS: usize = 8;

/// Which taps were not sent, so that a repeat of a tap that never reached the engine is
/// not sent either: its expected answer (a replay, `code_reused`, a conflict) assumes the
/// original was seen first.
struct Unsent(Vec<bool>);

impl Unsent {
    /// A permit to send tap `index`, or `None` (and the tap counted as not sent) when the
    /// simulator has its limit of taps in flight or the tap repeats one not sent.
    fn admit(
        &mut self,
        index: usize,
        tap: &PlannedTap,
        permits: &Arc<Semaphore>,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let original_unsent = tap.repeats.is_some_and(|original| self.0[original]);
        let permit = if original_unsent {
            None
        } else {
            Arc::clone(permits).try_acquire_owned().ok()
        };
        self.0[index] = permit.is_none();
        permit
    }
}

/// Plays the plan. `in_flight_max` bounds taps sent and not yet answered.
pub async fn play(
    engine: &Engine,
    plan: &[PlannedTap],
    mode: Mode,
    in_flight_max: usize,
    progress: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<RunResult> {
    let results: Arc<Mutex<Vec<Option<TapResult>>>> = Arc::new(Mutex::new(vec![None; plan.len()]));
    let recent = Arc::new(Mutex::new(new_histogram()));
    let permits = Arc::new(Semaphore::new(in_flight_max));
    let mut unsent = Unsent(vec![false; plan.len()]);
    let start = Instant::now();
    let record = {
        let results = Arc::clone(&results);
        let recent = Arc::clone(&recent);
        move |index: usize, due: Instant, due_ms: u64, answer: Answer| {
            let latency_us = due.elapsed().as_micros() as u64;
            let _ = recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(latency_us.max(1));
            results
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)[index] = Some(TapResult {
                answer,
                latency_us,
                due_ms,
            });
        }
    };
    let ticker = progress.map(|bar| {
        let bar = bar.clone();
        let recent = Arc::clone(&recent);
        let results = Arc::clone(&results);
        tokio::spawn(async move {
            let mut last_done = 0usize;
            let mut interval = tokio::time::interval(Duration::from_millis(500));
            loop {
                interval.tick().await;
                let done = results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .filter(|result| result.is_some())
                    .count();
                let mut histogram = recent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let p99_ms = histogram.value_at_quantile(0.99) as f64 / 1_000.0;
                histogram.reset();
                drop(histogram);
                bar.set_position(done as u64);
                bar.set_message(format!(
                    "{} taps/s, p99 {p99_ms:.1} ms",
                    (done - last_done) * 2
                ));
                last_done = done;
            }
        })
    });

    match mode {
        Mode::Unary => {
            let mut clients = Vec::with_capacity(UNARY_CONNECTIONS);
            for _ in 0..UNARY_CONNECTIONS {
                clients.push(engine.gate().await?);
            }
            let mut running = tokio::task::JoinSet::new();
            for (index, tap) in plan.iter().enumerate() {
                let due = start + Duration::from_millis(tap.due_ms);
                tokio::time::sleep_until(due.into()).await;
                let Some(permit) = unsent.admit(index, tap, &permits) else {
                    record(index, due, tap.due_ms, Answer::NotSent);
                    continue;
                };
                let mut client: GateClient = clients[index % UNARY_CONNECTIONS].clone();
                let request = tap.request.clone();
                let record = record.clone();
                let due_ms = tap.due_ms;
                running.spawn(async move {
                    record(index, due, due_ms, unary(&mut client, request).await);
                    drop(permit);
                });
                // Reap finished calls so that the set does not grow with the run.
                while running.try_join_next().is_some() {}
            }
            while running.join_next().await.is_some() {}
        }
        Mode::Streaming => {
            // Each stream: a sender of requests and a reader matching answers by id.
            let pending: Arc<Mutex<Pending>> = Arc::new(Mutex::new(HashMap::new()));
            let mut senders = Vec::with_capacity(STREAMS);
            let mut readers = tokio::task::JoinSet::new();
            for _ in 0..STREAMS {
                let mut client = engine.gate().await?;
                let (sender, receiver) = mpsc::channel::<pb::TapRequest>(in_flight_max.max(1));
                let mut answers = client
                    .tap_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
                    .await?
                    .into_inner();
                let pending = Arc::clone(&pending);
                let record = record.clone();
                readers.spawn(async move {
                    while let Some(answer) = answers.next().await {
                        let Ok(response) = answer else { break };
                        let entry = pending
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(&response.transaction_id);
                        if let Some((index, due, due_ms, _permit)) = entry {
                            let answer = match &response.error {
                                Some(error) => Answer::Failed(
                                    tonic::Code::from(error.code),
                                    error.message.clone(),
                                ),
                                None => Answer::Response(response),
                            };
                            record(index, due, due_ms, answer);
                        }
                    }
                });
                senders.push(sender);
            }
            for (index, tap) in plan.iter().enumerate() {
                let due = start + Duration::from_millis(tap.due_ms);
                tokio::time::sleep_until(due.into()).await;
                let Some(permit) = unsent.admit(index, tap, &permits) else {
                    record(index, due, tap.due_ms, Answer::NotSent);
                    continue;
                };
                // A transaction id is on at most one stream at a time: a retry of an id
                // still in flight waits its turn as a fresh unary call would.
                let id = tap.request.transaction_id.clone();
                let clash = pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains_key(&id);
                if clash {
                    let mut client = engine.gate().await?;
                    let answer = unary(&mut client, tap.request.clone()).await;
                    record(index, due, tap.due_ms, answer);
                    drop(permit);
                    continue;
                }
                pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id, (index, due, tap.due_ms, permit));
                let stream = tap.request.gate_id as usize % STREAMS;
                if senders[stream].send(tap.request.clone()).await.is_err() {
                    anyhow::bail!("a tap stream closed early");
                }
            }
            drop(senders);
            while readers.join_next().await.is_some() {}
            // Whatever is still pending got no answer: the stream ended.
            for (_, (index, due, due_ms, _)) in pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .drain()
            {
                record(
                    index,
                    due,
                    due_ms,
                    Answer::Failed(tonic::Code::Unavailable, "no answer on the stream".into()),
                );
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    let results = std::mem::take(
        &mut *results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let results = results
        .into_iter()
        .map(|result| {
            result.unwrap_or(TapResult {
                answer: Answer::Failed(tonic::Code::Unknown, "no result recorded".into()),
                latency_us: 0,
                due_ms: 0,
            })
        })
        .collect();
    Ok(RunResult { results, elapsed })
}

/// One `Tap` call's answer.
async fn unary(client: &mut GateClient, request: pb::TapRequest) -> Answer {
    match client.tap(request).await {
        Ok(response) => Answer::Response(response.into_inner()),
        Err(status) => Answer::Failed(status.code(), status.message().to_string()),
    }
}

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::plan::tests::planned;

    /// A regression: at 8,000 taps/s the simulator sent gate retries of taps it had not
    /// sent, which the engine rightly accepted as new, and the run reported failed faults
    /// and taps charged "the simulator did not see accepted".
    #[test]
    fn a_repeat_of_a_tap_not_sent_is_not_sent_either() {
        let plan = [planned(1, None), planned(1, Some(0)), planned(2, None)];
        let mut unsent = Unsent(vec![false; plan.len()]);
        let busy = Arc::new(Semaphore::new(0));
        assert!(unsent.admit(0, &plan[0], &busy).is_none());
        let free = Arc::new(Semaphore::new(10));
        assert!(
            unsent.admit(1, &plan[1], &free).is_none(),
            "the retry waits for nothing"
        );
        assert!(unsent.admit(2, &plan[2], &free).is_some());
        assert_eq!(unsent.0, vec![true, true, false]);
    }
}
