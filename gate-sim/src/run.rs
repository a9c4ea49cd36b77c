//! The timed window: sends the planned taps at their due times (open loop: a slow engine
//! shows up as latency, not as a politely slower client), unary or over streams, with a
//! bound on taps in flight, and records each answer and its latency from the tap's due
//! time (so time spent queued behind a slow engine counts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fareway_proto::v1 as pb;
use hdrhistogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::StreamExt as _;

use crate::client::{Engine, GateClient};
use crate::offline::{LinkLoss, OfflineRun};
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
    /// Decided by its gate alone while its link was down, and uploaded when it was back
    /// (the link-loss fault): whether the gate opened, and the engine's answer.
    Uploaded {
        /// Whether the gate opened.
        opened: bool,
        /// The engine's answer to the upload.
        result: pb::OfflineTapResult,
    },
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
    /// What the gates that lost their link did, when the run had the link-loss fault.
    pub offline: Option<OfflineRun>,
}

/// Taps sent on a stream and not yet answered, by transaction id: plan index, due time,
/// due offset, and the in-flight permit they hold.
type Pending = HashMap<Vec<u8>, (usize, Instant, u64, OwnedSemaphorePermit)>;

/// Connections used for unary calls (HTTP/2 multiplexes each).
const UNARY_CONNECTIONS: usize = 4;
/// Streams in streaming mode.
const STREAMS: usize = 8;

/// Which taps were not sent, so that a repeat of a tap that never reached the engine is
/// not sent either: its expected answer (a replay, `code_reused`, a conflict) assumes the
/// original was seen first.
#[derive(Debug)]
struct Unsent(Vec<bool>);

impl Unsent {
    /// A permit to send tap `index`, or `None` (and the tap counted as not sent) when the
    /// simulator has its limit of taps in flight or the tap repeats one not sent.
    fn admit(
        &mut self,
        index: usize,
        tap: &PlannedTap,
        permits: &Arc<Semaphore>,
    ) -> Option<OwnedSemaphorePermit> {
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

/// Where the players record each tap's answer, shared with the progress ticker: the
/// results in plan order, and the latencies since the ticker last looked.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    results: Arc<Mutex<Vec<Option<TapResult>>>>,
    recent: Arc<Mutex<Histogram<u64>>>,
}

impl Recorder {
    /// A recorder for a plan of `taps` taps.
    fn new(taps: usize) -> Recorder {
        Recorder {
            results: Arc::new(Mutex::new(vec![None; taps])),
            recent: Arc::new(Mutex::new(new_histogram())),
        }
    }

    /// Records tap `index`'s answer, with its latency from its due time until now.
    fn record(&self, index: usize, due: Instant, due_ms: u64, answer: Answer) {
        let latency_us = due.elapsed().as_micros() as u64;
        let _ = lock(&self.recent).record(latency_us.max(1));
        lock(&self.results)[index] = Some(TapResult {
            answer,
            latency_us,
            due_ms,
        });
    }

    /// Records tap `index`'s answer without a latency to measure (an offline tap's
    /// upload comes when the link is back, not in answer to the tap).
    pub(crate) fn record_unmeasured(&self, index: usize, due_ms: u64, answer: Answer) {
        lock(&self.results)[index] = Some(TapResult {
            answer,
            latency_us: 0,
            due_ms,
        });
    }

    /// Waits until tap `index` has its answer.
    async fn answered(&self, index: usize) {
        while lock(&self.results)[index].is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every tap's result in plan order; a tap with none recorded counts as failed.
    fn take_results(&self) -> Vec<TapResult> {
        let results = std::mem::take(&mut *lock(&self.results));
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or(TapResult {
                    answer: Answer::Failed(tonic::Code::Unknown, "no result recorded".into()),
                    latency_us: 0,
                    due_ms: 0,
                })
            })
            .collect()
    }
}

/// Locks a mutex, going on past a panic of another holder (the data are counters and
/// answers, whole at every step).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The timed window's clock and admission, shared by both players: each tap waits for
/// its due time, then is sent under a permit or recorded as not sent.
#[derive(Debug)]
struct TimedWindow {
    start: Instant,
    permits: Arc<Semaphore>,
    unsent: Unsent,
    recorder: Recorder,
}

impl TimedWindow {
    /// Waits until tap `index` is due, then its due instant and a permit to send it;
    /// `None` (and the tap recorded as not sent) when it may not be sent.
    async fn admit_when_due(
        &mut self,
        index: usize,
        tap: &PlannedTap,
    ) -> Option<(Instant, OwnedSemaphorePermit)> {
        let due = self.start + Duration::from_millis(tap.due_ms);
        tokio::time::sleep_until(due.into()).await;
        let Some(permit) = self.unsent.admit(index, tap, &self.permits) else {
            self.recorder
                .record(index, due, tap.due_ms, Answer::NotSent);
            return None;
        };
        Some((due, permit))
    }
}

/// Plays the plan. `in_flight_max` bounds taps sent and not yet answered. With a
/// `retry_for` above zero (unary calls only), a tap left unanswered (`UNAVAILABLE`, or its
/// node unreachable) is sent again with the same transaction id to the next node, as a
/// gate does during a cluster's failover, until answered or `retry_for` has passed.
pub async fn play(
    engine: &Engine,
    plan: &[PlannedTap],
    mode: Mode,
    in_flight_max: usize,
    retry_for: Duration,
    progress: Option<&indicatif::ProgressBar>,
    offline: Option<Offline<'_>>,
) -> anyhow::Result<RunResult> {
    anyhow::ensure!(
        retry_for.is_zero() || mode == Mode::Unary,
        "retrying gates make unary calls"
    );
    let recorder = Recorder::new(plan.len());
    let permits = Arc::new(Semaphore::new(in_flight_max));
    let unsent = Unsent(vec![false; plan.len()]);
    let mut window = TimedWindow {
        start: Instant::now(),
        permits,
        unsent,
        recorder: recorder.clone(),
    };
    let ticker = progress.map(|bar| spawn_ticker(bar.clone(), recorder.clone()));
    let start = window.start;
    let online = async {
        match mode {
            Mode::Unary => play_unary(engine, plan, retry_for, &mut window).await,
            Mode::Streaming => play_streaming(engine, plan, in_flight_max, &mut window).await,
        }
    };
    let offline = async {
        match offline {
            Some(offline) => {
                let played = crate::offline::play(
                    engine,
                    plan,
                    offline.link_loss,
                    start,
                    offline.duration_ms,
                    recorder.clone(),
                    offline.folder,
                );
                played.await.map(Some)
            }
            None => Ok(None),
        }
    };
    let (online, offline) = tokio::join!(online, offline);
    online?;
    let offline = offline?;
    let closed = start.elapsed();
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    let results = recorder.take_results();
    // The window ends with the last answer (as `docs/gate-sim.md` defines the rate), not
    // once the streams have closed.
    let elapsed = last_answer(&results).unwrap_or(closed);
    Ok(RunResult {
        results,
        elapsed,
        offline,
    })
}

/// From the window's start to the last answer (a tap's due offset plus its latency);
/// `None` when no tap was answered.
fn last_answer(results: &[TapResult]) -> Option<Duration> {
    results
        .iter()
        .filter(|result| !matches!(result.answer, Answer::NotSent))
        .map(|result| Duration::from_micros(result.due_ms * 1_000 + result.latency_us))
        .max()
}

/// The link-loss fault of a run: its settings, the window's length, and where the
/// offline gates keep their queues.
#[derive(Debug, Clone, Copy)]
pub struct Offline<'a> {
    /// The fault's settings.
    pub link_loss: LinkLoss,
    /// The timed window's length, in milliseconds.
    pub duration_ms: u64,
    /// The folder of the gates' queue files.
    pub folder: &'a std::path::Path,
}

/// Every half second, moves the progress bar to the taps answered and shows the rate
/// and p99 latency since the last tick.
fn spawn_ticker(bar: indicatif::ProgressBar, recorder: Recorder) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_done = 0usize;
        let mut interval = tokio::time::interval(Duration::from_millis(500));
        loop {
            interval.tick().await;
            let done = lock(&recorder.results)
                .iter()
                .filter(|result| result.is_some())
                .count();
            let mut histogram = lock(&recorder.recent);
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
}

/// One `Tap` call per tap, spread over a few connections (at least one per node).
async fn play_unary(
    engine: &Engine,
    plan: &[PlannedTap],
    retry_for: Duration,
    window: &mut TimedWindow,
) -> anyhow::Result<()> {
    let connections = UNARY_CONNECTIONS.max(engine.nodes());
    let mut clients = Vec::with_capacity(connections);
    for node in 0..connections {
        clients.push(engine.gate_on(node).await?);
    }
    let clients = Arc::new(clients);
    let mut running = tokio::task::JoinSet::new();
    for (index, tap) in plan.iter().enumerate().filter(|(_, tap)| !tap.offline) {
        let Some((due, permit)) = window.admit_when_due(index, tap).await else {
            continue;
        };
        let clients = Arc::clone(&clients);
        let request = tap.request.clone();
        let recorder = window.recorder.clone();
        let due_ms = tap.due_ms;
        let original = tap.repeats;
        let nodes = engine.nodes();
        running.spawn(async move {
            // A repeat's expected answer assumes its original was decided first: while a
            // gate still resends the original, the repeat waits (and the wait counts in
            // its latency).
            if let Some(original) = original {
                recorder.answered(original).await;
            }
            let to = Connections {
                clients: clients.as_slice(),
                nodes,
            };
            let answer = unary_with_retries(to, index, request, retry_for).await;
            recorder.record(index, due, due_ms, answer);
            drop(permit);
        });
        // Reap finished calls so that the set does not grow with the run.
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    Ok(())
}

/// Taps on long-lived streams, one per group of gates; a tap whose id is still in flight
/// goes as a unary call.
async fn play_streaming(
    engine: &Engine,
    plan: &[PlannedTap],
    in_flight_max: usize,
    window: &mut TimedWindow,
) -> anyhow::Result<()> {
    let pending: Arc<Mutex<Pending>> = Arc::new(Mutex::new(HashMap::new()));
    let (senders, mut readers) =
        open_streams(engine, in_flight_max, &pending, &window.recorder).await?;
    for (index, tap) in plan.iter().enumerate().filter(|(_, tap)| !tap.offline) {
        let Some((due, permit)) = window.admit_when_due(index, tap).await else {
            continue;
        };
        // A transaction id is on at most one stream at a time: a retry of an id still in
        // flight waits its turn as a fresh unary call would.
        let id = tap.request.transaction_id.clone();
        let clash = lock(&pending).contains_key(&id);
        if clash {
            let mut client = engine.gate().await?;
            let answer = unary(&mut client, tap.request.clone()).await;
            window.recorder.record(index, due, tap.due_ms, answer);
            drop(permit);
            continue;
        }
        lock(&pending).insert(id, (index, due, tap.due_ms, permit));
        let stream = tap.request.gate_id as usize % STREAMS;
        if senders[stream].send(tap.request.clone()).await.is_err() {
            anyhow::bail!("a tap stream closed early");
        }
    }
    drop(senders);
    while readers.join_next().await.is_some() {}
    // Whatever is still pending got no answer: the stream ended.
    for (_, (index, due, due_ms, _)) in lock(&pending).drain() {
        window.recorder.record(
            index,
            due,
            due_ms,
            Answer::Failed(tonic::Code::Unavailable, "no answer on the stream".into()),
        );
    }
    Ok(())
}

/// Opens the streams: for each, a sender of requests, and a reader task that matches
/// answers to pending taps by id.
async fn open_streams(
    engine: &Engine,
    in_flight_max: usize,
    pending: &Arc<Mutex<Pending>>,
    recorder: &Recorder,
) -> anyhow::Result<(Vec<mpsc::Sender<pb::TapRequest>>, tokio::task::JoinSet<()>)> {
    let mut senders = Vec::with_capacity(STREAMS);
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        let mut client = engine.gate().await?;
        let (sender, receiver) = mpsc::channel::<pb::TapRequest>(in_flight_max.max(1));
        let answers = client
            .tap_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await?
            .into_inner();
        readers.spawn(read_answers(answers, Arc::clone(pending), recorder.clone()));
        senders.push(sender);
    }
    Ok((senders, readers))
}

/// Records each answer on a stream against its pending tap, until the stream ends or
/// fails.
async fn read_answers(
    mut answers: tonic::Streaming<pb::TapResponse>,
    pending: Arc<Mutex<Pending>>,
    recorder: Recorder,
) {
    while let Some(answer) = answers.next().await {
        let Ok(response) = answer else { break };
        let entry = lock(&pending).remove(&response.transaction_id);
        if let Some((index, due, due_ms, _permit)) = entry {
            let answer = match &response.error {
                Some(error) => Answer::Failed(tonic::Code::from(error.code), error.message.clone()),
                None => Answer::Response(response),
            };
            recorder.record(index, due, due_ms, answer);
        }
    }
}

/// Pause between a tap's tries.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How long a retrying gate waits for one try's answer (a node that stopped answering
/// keeps its connection open).
const TRY_MAX: Duration = Duration::from_secs(2);

/// The unary connections, connection `c` to node `c % nodes`.
#[derive(Clone, Copy)]
struct Connections<'a> {
    clients: &'a [GateClient],
    nodes: usize,
}

impl Connections<'_> {
    /// The connection after `connection` that goes to another node (when there is one).
    fn next(&self, connection: usize) -> usize {
        let count = self.clients.len();
        let mut next = (connection + 1) % count;
        while self.nodes > 1 && next % self.nodes == connection % self.nodes {
            next = (next + 1) % count;
        }
        next
    }
}

/// A `Tap` call on connection `first` (counting round them); with `retry_for` above
/// zero, each try waits at most [`TRY_MAX`], and a tap left unanswered is sent again on a
/// connection to another node until `retry_for` has passed.
async fn unary_with_retries(
    to: Connections<'_>,
    first: usize,
    request: pb::TapRequest,
    retry_for: Duration,
) -> Answer {
    let started = Instant::now();
    let mut connection = first % to.clients.len();
    loop {
        let mut client = to.clients[connection].clone();
        let answer = if retry_for.is_zero() {
            unary(&mut client, request.clone()).await
        } else {
            tokio::time::timeout(TRY_MAX, unary(&mut client, request.clone()))
                .await
                .unwrap_or_else(|_| {
                    Answer::Failed(tonic::Code::Unavailable, "no answer in time".into())
                })
        };
        let unanswered = matches!(
            &answer,
            Answer::Failed(tonic::Code::Unavailable | tonic::Code::Unknown, _)
        );
        if !unanswered || started.elapsed() + RETRY_PAUSE > retry_for {
            return answer;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        connection = to.next(connection);
    }
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

    /// The window is a tap's due offset plus its latency, the latest of the answered
    /// ones; taps not sent do not count.
    #[test]
    fn the_window_ends_with_the_last_answer() {
        let result = |answer, due_ms, latency_us| TapResult {
            answer,
            latency_us,
            due_ms,
        };
        let results = [
            result(
                Answer::Failed(tonic::Code::Unavailable, String::new()),
                10,
                2_500,
            ),
            result(Answer::NotSent, 19_999, 0),
            result(
                Answer::Failed(tonic::Code::Internal, String::new()),
                19_000,
                115_000,
            ),
            result(
                Answer::Failed(tonic::Code::Unavailable, String::new()),
                19_100,
                100,
            ),
        ];
        assert_eq!(
            last_answer(&results),
            Some(Duration::from_micros(19_115_000))
        );
        assert_eq!(last_answer(&results[1..2]), None);
    }
}
