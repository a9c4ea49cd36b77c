//! Prometheus metrics of a running server, served as text on `/metrics`: taps by decision
//! and reason, tap latency, faults by status, requests shed, work in flight, and the
//! ledger's queue depth and sync timings.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::gate::TapAnswer;
use crate::gate::upload::{UploadAnswer, UploadStatus};
use crate::ledger::{LatencyCounts, LatencySnapshot, WriterStats, latency_bounds_us};

type Labels = [(&'static str, &'static str); 2];

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    taps: Family<Labels, Counter>,
    offline_taps: Family<Labels, Counter>,
    tap_latency_seconds: Histogram,
    faults: Family<[(&'static str, &'static str); 1], Counter>,
    shed: Counter,
    ledger_queue_depth: Gauge,
    ledger_group_commits: Gauge,
    ledger_requests: Gauge,
    ledger_sync_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    ledger_sync_seconds_max: Gauge<f64, std::sync::atomic::AtomicU64>,
    ledger_sync_latency_seconds: CopiedHistogram,
    ledger_stages: LedgerStageMetrics,
    process_cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    process_run_delay_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    connections: ConnectionMetrics,
    /// One warning per [`WARNING_INTERVAL`] about taps that failed.
    tap_fault_warnings: WarningLimiter,
}

/// Where a request's time in the ledger goes, stage by stage (`ledger::WriterStats`).
#[derive(Debug, Default)]
struct LedgerStageMetrics {
    queue_wait: CopiedHistogram,
    decide_write: CopiedHistogram,
    sync_wait: CopiedHistogram,
}

impl LedgerStageMetrics {
    fn register(registry: &mut Registry) -> LedgerStageMetrics {
        let stages = LedgerStageMetrics::default();
        for (name, help, histogram) in [
            (
                "ledger_queue_wait_seconds",
                "Each ledger request's wait in the writer's queue",
                &stages.queue_wait,
            ),
            (
                "ledger_decide_write_seconds",
                "Each ledger request's group commit being decided and written, before its sync",
                &stages.decide_write,
            ),
            (
                "ledger_sync_wait_seconds",
                "Each ledger request's wait from its group commit's write to its answer (the sync, and the rest of the one before when it started during one)",
                &stages.sync_wait,
            ),
        ] {
            registry.register(name, help, histogram.clone());
        }
        stages
    }

    fn set(&self, stats: &WriterStats) {
        self.queue_wait.set(&stats.queue_waits);
        self.decide_write.set(&stats.decide_writes);
        self.sync_wait.set(&stats.sync_waits);
    }
}

/// The listener's counters (`server::transport`).
#[derive(Debug)]
struct ConnectionMetrics {
    open: Gauge,
    refused: Counter,
    accept_failures: Counter,
    /// One warning per [`WARNING_INTERVAL`] about failed accepts, however many fail.
    accept_warnings: WarningLimiter,
    /// One warning per [`WARNING_INTERVAL`] about refused connections.
    refusal_warnings: WarningLimiter,
}

impl ConnectionMetrics {
    fn register(registry: &mut Registry) -> ConnectionMetrics {
        let open = Gauge::default();
        registry.register(
            "connections_open",
            "gRPC connections open now",
            open.clone(),
        );
        let refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because limits.connections_max were open",
            refused.clone(),
        );
        let accept_failures = Counter::default();
        registry.register(
            "accept_failures",
            "Failed accepts on the gRPC listener (the descriptor limit reached)",
            accept_failures.clone(),
        );
        ConnectionMetrics {
            open,
            refused,
            accept_failures,
            accept_warnings: WarningLimiter::default(),
            refusal_warnings: WarningLimiter::default(),
        }
    }
}

/// How often a repeated warning is logged at most: a client that misbehaves on purpose
/// must not be able to flood the log; the metrics count every occurrence.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one warning of a kind through per [`WARNING_INTERVAL`], and counts the ones held
/// back so that the next warning can say how many there were.
#[derive(Debug)]
pub struct WarningLimiter {
    started: std::time::Instant,
    /// Milliseconds after `started` of the last warning let through, plus one (0: none).
    last_ms: std::sync::atomic::AtomicU64,
    held_back: std::sync::atomic::AtomicU64,
}

impl Default for WarningLimiter {
    fn default() -> Self {
        WarningLimiter {
            started: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
            held_back: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl WarningLimiter {
    /// `Some(n)` when a warning may be logged now, `n` being how many were held back
    /// since the last one; `None` when this one is held back.
    pub fn allow(&self) -> Option<u64> {
        let now_ms = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= WARNING_INTERVAL.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A histogram whose counts are copied in before each render: the ledger's writer keeps
/// its own with atomics ([`crate::ledger::LatencyCounts`]), and a cluster node sums its
/// shards' before it renders.
#[derive(Debug, Clone, Default)]
struct CopiedHistogram(Arc<Mutex<LatencySnapshot>>);

impl CopiedHistogram {
    fn set(&self, counts: &LatencyCounts) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = counts.snapshot();
    }
}

impl EncodeMetric for CopiedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (sum, count, buckets) = &*held;
        encoder.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// This process's CPU time (user and system, every thread) so far, in seconds: the
/// engine's CPU per tap is its growth over a run divided by the taps answered. Read from
/// `/proc/self/stat` (fields 14 and 15, in the kernel's fixed 100 ticks a second); `None`
/// where there is no such file.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

/// How long this process's threads have waited, runnable, for a core so far, in
/// seconds: the machine's share of a tap's latency when its cores are busy. The sum over
/// `/proc/self/task/*/schedstat` (the second field, nanoseconds; the kernel keeps it with
/// `schedstats` or delay accounting, as Debian's does); a thread that has exited no longer
/// counts. `None` where there are no such files.
fn process_run_delay_seconds() -> Option<f64> {
    let mut waited_ns: u64 = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        // A thread may end between the listing and the read: it no longer counts.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let field = stat.split_whitespace().nth(1);
        waited_ns += field.and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0);
    }
    Some(waited_ns as f64 / 1e9)
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fareway");
        let taps = Family::<Labels, Counter>::default();
        registry.register(
            "taps",
            "Taps answered, by decision and reason",
            taps.clone(),
        );
        let offline_taps = Family::<Labels, Counter>::default();
        registry.register(
            "offline_taps",
            "Uploaded offline taps, by status and reason: a rejected one with a code's reason or a ledger refusal is a lost fare",
            offline_taps.clone(),
        );
        let bounds = latency_bounds_us().into_iter().map(|us| us as f64 / 1e6);
        let tap_latency_seconds = Histogram::new(bounds);
        registry.register(
            "tap_latency_seconds",
            "Server-side time to answer a tap",
            tap_latency_seconds.clone(),
        );
        let faults = Family::default();
        registry.register(
            "faults",
            "Requests that failed with a gRPC status, by error code",
            faults.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "requests_shed",
            "Requests refused at once with RESOURCE_EXHAUSTED because too many were in flight",
            shed.clone(),
        );
        let ledger_queue_depth = Gauge::default();
        registry.register(
            "ledger_queue_depth",
            "Requests waiting for the ledger's writer",
            ledger_queue_depth.clone(),
        );
        let ledger_group_commits = Gauge::default();
        registry.register(
            "ledger_group_commits",
            "Group commits written since start",
            ledger_group_commits.clone(),
        );
        let ledger_requests = Gauge::default();
        registry.register(
            "ledger_requests",
            "Requests the ledger's writer answered since start",
            ledger_requests.clone(),
        );
        let ledger_sync_seconds = Gauge::default();
        registry.register(
            "ledger_sync_seconds",
            "Total time spent in synced ledger writes since start",
            ledger_sync_seconds.clone(),
        );
        let ledger_sync_seconds_max = Gauge::default();
        registry.register(
            "ledger_sync_seconds_max",
            "The longest synced ledger write since start",
            ledger_sync_seconds_max.clone(),
        );
        let ledger_sync_latency_seconds = CopiedHistogram::default();
        registry.register(
            "ledger_sync_latency_seconds",
            "Each synced ledger write's time (the disk's share of a tap's latency)",
            ledger_sync_latency_seconds.clone(),
        );
        let process_cpu_seconds = Gauge::default();
        registry.register(
            "process_cpu_seconds",
            "CPU time of the whole process (user and system) since start",
            process_cpu_seconds.clone(),
        );
        let ledger_stages = LedgerStageMetrics::register(&mut registry);
        let process_run_delay_seconds = Gauge::default();
        registry.register(
            "process_run_delay_seconds",
            "Time the process's threads waited, runnable, for a core since start (threads still running)",
            process_run_delay_seconds.clone(),
        );
        let connections = ConnectionMetrics::register(&mut registry);
        Metrics {
            registry,
            taps,
            offline_taps,
            tap_latency_seconds,
            faults,
            shed,
            ledger_queue_depth,
            ledger_group_commits,
            ledger_requests,
            ledger_sync_seconds,
            ledger_sync_seconds_max,
            ledger_sync_latency_seconds,
            ledger_stages,
            process_cpu_seconds,
            process_run_delay_seconds,
            connections,
            tap_fault_warnings: WarningLimiter::default(),
        }
    }

    /// The gauge of open connections (a connection increments it, and decrements it
    /// when it closes).
    pub fn connections_open(&self) -> Gauge {
        self.connections.open.clone()
    }

    /// The limiter of warnings about failed taps.
    pub fn tap_fault_warnings(&self) -> &WarningLimiter {
        &self.tap_fault_warnings
    }

    /// Counts a connection closed at accept because every slot was taken.
    pub fn record_connection_refused(&self) {
        self.connections.refused.inc();
        if let Some(held_back) = self.connections.refusal_warnings.allow() {
            tracing::warn!(
                held_back,
                "a connection was refused: limits.connections_max are open"
            );
        }
    }

    /// Counts a failed accept (most often the process's descriptor limit).
    pub fn record_accept_failure(&self, err: &std::io::Error) {
        self.connections.accept_failures.inc();
        if let Some(held_back) = self.connections.accept_warnings.allow() {
            tracing::warn!(cause = %err, held_back, "accepting a connection failed");
        }
    }

    /// Counts an answered tap.
    pub fn record_tap(&self, answer: &TapAnswer, elapsed: Duration) {
        let decision = if answer.accepted {
            "accepted"
        } else {
            "rejected"
        };
        let reason = answer.reason.map_or("none", |reason| reason.code());
        self.taps
            .get_or_create(&[("decision", decision), ("reason", reason)])
            .inc();
        self.tap_latency_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts an uploaded offline tap's answer.
    pub fn record_offline_tap(&self, answer: &UploadAnswer) {
        let status = match answer.status {
            UploadStatus::Charged => "charged",
            UploadStatus::Corrected => "corrected",
            UploadStatus::Duplicate => "duplicate",
            UploadStatus::Rejected => "rejected",
            UploadStatus::Retry => "retry",
        };
        let reason = answer.reason.unwrap_or("none");
        self.offline_taps
            .get_or_create(&[("status", status), ("reason", reason)])
            .inc();
    }

    /// Counts a request that failed with a status.
    pub fn record_fault(&self, code: &'static str) {
        self.faults.get_or_create(&[("code", code)]).inc();
    }

    /// Counts a request shed for overload.
    pub fn record_shed(&self) {
        self.shed.inc();
    }

    /// The metrics as Prometheus text, with the ledger's counters read now.
    pub fn render(&self, ledger: &WriterStats) -> String {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.ledger_queue_depth
            .set(gauge(ledger.queue_depth.load(Ordering::Relaxed) as u64));
        self.ledger_group_commits
            .set(gauge(ledger.group_commits.load(Ordering::Relaxed)));
        self.ledger_requests
            .set(gauge(ledger.requests.load(Ordering::Relaxed)));
        self.ledger_sync_seconds
            .set(ledger.write_times.sum_us() as f64 / 1e6);
        self.ledger_sync_seconds_max
            .set(ledger.write_time_us_max.load(Ordering::Relaxed) as f64 / 1e6);
        self.ledger_sync_latency_seconds.set(&ledger.write_times);
        self.ledger_stages.set(ledger);
        if let Some(cpu) = process_cpu_seconds() {
            self.process_cpu_seconds.set(cpu);
        }
        if let Some(waited) = process_run_delay_seconds() {
            self.process_run_delay_seconds.set(waited);
        }
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(cause = %err, "cannot encode metrics");
        }
        text
    }
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = Arc::clone(&render);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(),
                )
            }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The address a metrics listener is bound to, for logs.
pub fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_string(), |addr| addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_let_through_once_per_interval_with_the_count_held_back() {
        let limiter = WarningLimiter::default();
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        // As if the interval had passed since the last warning let through.
        limiter.last_ms.store(1, Ordering::Relaxed);
        let later = limiter.started - WARNING_INTERVAL;
        let limiter = WarningLimiter {
            started: later,
            ..limiter
        };
        assert_eq!(limiter.allow(), Some(2));
        assert_eq!(limiter.allow(), None);
    }

    /// The bounds are fine (each at most 18% above the one before, 5 ms among them), and
    /// the ledger's syncs, the stages of its requests and the process's CPU time
    /// and wait for a core reach `/metrics`.
    #[test]
    fn sync_times_and_cpu_time_are_rendered_with_fine_buckets() {
        let bounds = latency_bounds_us();
        assert_eq!((bounds[0], *bounds.last().unwrap()), (10, 5_000_000));
        assert!(bounds.contains(&5_000));
        assert!(
            bounds
                .windows(2)
                .all(|pair| pair[1] > pair[0] && pair[1] * 100 <= pair[0] * 118),
            "{bounds:?}"
        );
        let stats = WriterStats::default();
        for us in [150, 170, 171, 40_000, 9_000_000] {
            stats.write_times.record(us);
        }
        stats.queue_waits.record_many(40, 3);
        stats.decide_writes.record(900);
        stats.sync_waits.record_many(230, 2);
        let text = Metrics::new().render(&stats);
        for line in [
            "fareway_ledger_queue_wait_seconds_count 3",
            "fareway_ledger_queue_wait_seconds_sum 0.00012",
            "fareway_ledger_queue_wait_seconds_bucket{le=\"0.00004\"} 3",
            "fareway_ledger_decide_write_seconds_bucket{le=\"0.0008\"} 0",
            "fareway_ledger_decide_write_seconds_bucket{le=\"0.0009\"} 1",
            "fareway_ledger_sync_wait_seconds_bucket{le=\"0.00023\"} 2",
            "fareway_ledger_sync_latency_seconds_count 5",
            "fareway_ledger_sync_latency_seconds_sum 9.040491",
            "fareway_ledger_sync_latency_seconds_bucket{le=\"0.00015\"} 1",
            "fareway_ledger_sync_latency_seconds_bucket{le=\"0.00017\"} 2",
            "fareway_ledger_sync_latency_seconds_bucket{le=\"0.0002\"} 3",
            "fareway_ledger_sync_latency_seconds_bucket{le=\"5.0\"} 4",
            "fareway_ledger_sync_latency_seconds_bucket{le=\"+Inf\"} 5",
        ] {
            assert!(text.lines().any(|got| got == line), "{line} not in\n{text}");
        }
        for gauge in [
            "fareway_process_cpu_seconds ",
            "fareway_process_run_delay_seconds ",
        ] {
            let value = text
                .lines()
                .find_map(|line| line.strip_prefix(gauge))
                .map(|value| value.parse::<f64>().unwrap());
            assert!(
                value.is_some_and(|seconds| seconds >= 0.0),
                "{gauge}: {text}"
            );
        }
    }
}
