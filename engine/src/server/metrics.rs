//! Prometheus metrics of a running server, served as text on `/metrics`: taps by decision
//! and reason, tap latency, faults by status, requests shed, work in flight, and the
//! ledger's queue depth and sync timings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::gate::TapAnswer;
use crate::ledger::WriterStats;

type Labels = [(&'static str, &'static str); 2];

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    taps: Family<Labels, Counter>,
    tap_latency_seconds: Histogram,
    faults: Family<[(&'static str, &'static str); 1], Counter>,
    shed: Counter,
    ledger_queue_depth: Gauge,
    ledger_batches: Gauge,
    ledger_requests: Gauge,
    ledger_sync_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    ledger_sync_seconds_max: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The upper bounds of the tap latency histogram's buckets: fine around the 5 ms goal
/// (a bound at exactly 5 ms), coarse in the tail, up to 5 s.
pub const TAP_LATENCY_BUCKETS_SECONDS: [f64; 28] = [
    0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.004,
    0.005, 0.006, 0.008, 0.010, 0.015, 0.020, 0.030, 0.050, 0.075, 0.100, 0.150, 0.200, 0.300,
    0.500, 1.0, 2.0, 5.0,
];

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
        let tap_latency_seconds = Histogram::new(TAP_LATENCY_BUCKETS_SECONDS.iter().copied());
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
        let ledger_batches = Gauge::default();
        registry.register(
            "ledger_batches",
            "Group commits written since start",
            ledger_batches.clone(),
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
        Metrics {
            registry,
            taps,
            tap_latency_seconds,
            faults,
            shed,
            ledger_queue_depth,
            ledger_batches,
            ledger_requests,
            ledger_sync_seconds,
            ledger_sync_seconds_max,
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
        self.ledger_batches
            .set(gauge(ledger.batches.load(Ordering::Relaxed)));
        self.ledger_requests
            .set(gauge(ledger.requests.load(Ordering::Relaxed)));
        self.ledger_sync_seconds
            .set(ledger.write_time_us.load(Ordering::Relaxed) as f64 / 1e6);
        self.ledger_sync_seconds_max
            .set(ledger.write_time_us_max.load(Ordering::Relaxed) as f64 / 1e6);
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
