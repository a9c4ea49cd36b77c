//! The running engine: `fareway serve` opens the ledger with the fares, loads the issuer
//! keys, and serves gRPC (gate, admin, settlement, health, reflection) and Prometheus metrics until it
//! is told to stop; a sweeper closes journeys entered and never exited, and forgets the
//! ids of transactions past their retention.
//!
//! Shutdown is graceful: health turns NOT_SERVING, the listener stops accepting, calls in
//! flight finish (up to a grace period), the sweeper stops, and the ledger's writer drains
//! its queue before the process exits. Every answer given was already synced to disk.

pub mod config;
pub mod metrics;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::fares::{FARES_FILE_BYTES_MAX, FareTable};
use crate::gate::Gatekeeper;
use crate::gate::bundle::Bundles;
use crate::grpc;
use crate::ledger::{Ledger, Rules};
use crate::settlement::key::SettlementKey;
use crate::settlement::{Settlement, SettlementBook};
use crate::token::{IssuerRegistry, Verifier};

use self::config::{ServerConfig, TlsSettings};
use self::metrics::Metrics;

/// How many tasks a busy worker of the engine's runtime runs between looks at the queue
/// that other threads wake tasks into: none. The ledger's syncer wakes each tap's task
/// from outside the runtime once the tap's group is durable; by default tokio looks at
/// that queue only every ~200 us of work while a worker has tasks of its own (taps just
/// read, still to verify), so a tap whose answer was ready waited behind taps not yet
/// begun. Answering first cut the tap's time outside the ledger by about a third at half
/// of saturation, at no cost in CPU (docs/PERFORMANCE.md, issue 16, tenth session).
pub const WORKER_WOKEN_TASKS_FIRST_INTERVAL: u32 = 1;

/// The multi-threaded runtime the engine runs on (`fareway serve`, the demos), its
/// threads named `thread_name`.
pub fn runtime(thread_name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(thread_name)
        .global_queue_interval(WORKER_WOKEN_TASKS_FIRST_INTERVAL)
        .build()
}

/// A server that is running: its addresses, and how to stop it.
#[derive(Debug)]
pub struct RunningServer {
    /// The gRPC address (with the real port when the configuration said port 0).
    pub addr: SocketAddr,
    /// The metrics address, if metrics are on.
    pub metrics_addr: Option<SocketAddr>,
    gate: Arc<Gatekeeper>,
    health: tonic_health::server::HealthReporter,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    sweeper: JoinHandle<()>,
    metrics_server: Option<JoinHandle<std::io::Result<()>>>,
    grace: Duration,
}

/// Starts a server as configured, with `clock` as its time. Returns once it listens.
pub async fn start(config: ServerConfig, clock: Arc<dyn Clock>) -> anyhow::Result<RunningServer> {
    start_as(config, clock, Start::First).await
}

/// Which start a server's is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// The first: a new ledger and settlement key are made where none is.
    First,
    /// After a storage failure: the ledger and the settlement key must be there already.
    /// Their absence means the disk holding them is not mounted (or was emptied), and a
    /// new empty ledger or a new key would split the money's history in two.
    Again,
}

async fn start_as(
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    start: Start,
) -> anyhow::Result<RunningServer> {
    refuse_restart_without_key(&config, start)?;
    let budget = descriptor_budget(&config)?;
    let (gate, ledger, verifier) = open_gatekeeper(&config, &clock, start, &budget).await?;
    let metrics = Arc::new(Metrics::new());
    let settlement = open_settlement(&config, &ledger)?;
    let (stop, stopped) = watch::channel(false);
    let mut apis = apis(
        &config,
        &gate,
        verifier,
        clock,
        &metrics,
        stopped.clone(),
        Some(settlement),
    );
    apis.gate = apis.gate.with_bundles(Arc::new(gate_bundles(&config)?));
    let (health, routes) = routes_with_health(apis, &config).await?;
    let (addr, incoming) = listen_guarded(&config, &budget, &metrics).await?;
    let render = {
        let (ledger, metrics) = (Arc::clone(&ledger), Arc::clone(&metrics));
        Arc::new(move || metrics.render(ledger.stats()))
    };
    let metrics_server = serve_metrics(&config, render, stopped.clone()).await?;
    let server = serve_grpc(&config, incoming, routes, &metrics, stopped.clone())?;
    let sweeper = tokio::spawn(sweep(
        Arc::clone(&gate),
        Duration::from_millis(config.taps.journey_sweep_interval_ms),
        stopped,
    ));
    drop(ledger);
    let metrics_addr = metrics_server.as_ref().map(|(addr, _)| *addr);
    tracing::info!(
        %addr,
        metrics = %metrics::describe(metrics_addr),
        data_dir = %config.data_dir.display(),
        "fareway serving"
    );
    Ok(RunningServer {
        addr,
        metrics_addr,
        gate,
        health,
        stop,
        server,
        sweeper,
        metrics_server: metrics_server.map(|(_, task)| task),
        grace: Duration::from_millis(config.limits.shutdown_grace_ms),
    })
}

/// A restart never makes a new settlement key: a missing key file means its disk is not
/// mounted (or was emptied), and a new key would sign batches no provider expects.
fn refuse_restart_without_key(config: &ServerConfig, start: Start) -> anyhow::Result<()> {
    if start == Start::Again && !config.settlement.key_file.exists() {
        anyhow::bail!(
            "the settlement key file {} is gone, and a restart does not make a new one: is the disk that holds it mounted?",
            config.settlement.key_file.display()
        );
    }
    Ok(())
}

/// How the process's descriptors are shared between the ledger's files and connections,
/// with a warning when the limit cuts the configured connections down.
pub(crate) fn descriptor_budget(
    config: &ServerConfig,
) -> anyhow::Result<transport::DescriptorBudget> {
    let limit = transport::open_files_limit().unwrap_or(u64::MAX);
    let wanted = config.limits.connections_max;
    let budget = transport::DescriptorBudget::share(
        limit,
        crate::ledger::StoreConfig::default().open_files_max,
        wanted,
    )
    .map_err(anyhow::Error::msg)?;
    if budget.connections_max < wanted {
        tracing::warn!(
            open_files_limit = limit,
            connections_max = budget.connections_max,
            configured = wanted,
            ledger_files_max = budget.ledger_files_max,
            "the open-file limit leaves room for fewer connections than limits.connections_max; raise it (ulimit -n)"
        );
    }
    Ok(budget)
}

/// Loads the fares and the issuer keys, opens the ledger (making it only on the first
/// start), and puts the gatekeeper over them.
async fn open_gatekeeper(
    config: &ServerConfig,
    clock: &Arc<dyn Clock>,
    start: Start,
    budget: &transport::DescriptorBudget,
) -> anyhow::Result<(Arc<Gatekeeper>, Arc<Ledger>, Arc<Verifier>)> {
    let (fares, verifier, rules) = load_rules(config)?;
    let mut ledger_config = config.ledger_config();
    ledger_config.store.create = start == Start::First;
    ledger_config.store.open_files_max = budget.ledger_files_max;
    let data_dir = config.data_dir.clone();
    let ledger = tokio::task::spawn_blocking(move || {
        Ledger::open_with_rules(&data_dir, ledger_config, rules)
    })
    .await
    .context("ledger open task failed")??;
    let ledger = Arc::new(ledger);
    let gate = Arc::new(Gatekeeper::new(
        Arc::clone(&verifier),
        Arc::clone(&ledger),
        fares,
        Arc::clone(clock),
        config.scan_time_limits(),
    ));
    Ok((gate, ledger, verifier))
}

/// The fares, the verifier over the issuer keys, and the ledger's rules, as configured.
pub(crate) fn load_rules(
    config: &ServerConfig,
) -> anyhow::Result<(Arc<FareTable>, Arc<Verifier>, Rules)> {
    let fares_text = crate::files::read_bounded(&config.fares_file, FARES_FILE_BYTES_MAX as u64)
        .with_context(|| format!("cannot read fares file {}", config.fares_file.display()))?;
    let fares = Arc::new(
        FareTable::from_toml(&fares_text)
            .with_context(|| format!("fares file {}", config.fares_file.display()))?,
    );
    let registry = IssuerRegistry::load(&config.issuer_keys_file)?;
    let verifier = Arc::new(Verifier::new(config.verifier_config(), registry));
    let rules = Rules {
        fares: Some(Arc::clone(&fares)),
        code_retry_window_ms: config.taps.code_retry_window_ms,
    };
    Ok((fares, verifier, rules))
}

/// Settlement over the ledger, with its signing key.
fn open_settlement(config: &ServerConfig, ledger: &Arc<Ledger>) -> anyhow::Result<Arc<Settlement>> {
    Ok(Arc::new(Settlement::new(
        Arc::clone(ledger),
        settlement_key(config)?,
        config.settlement.currency.clone(),
    )))
}

/// The key that signs settlement manifests, made on the first start if there is none.
pub(crate) fn settlement_key(config: &ServerConfig) -> anyhow::Result<SettlementKey> {
    let (settlement_key, key_created) = SettlementKey::load_or_create(&config.settlement.key_file)?;
    if key_created {
        tracing::warn!(
            key_file = %config.settlement.key_file.display(),
            key_id = %settlement_key.key_id(),
            "made a new settlement signing key: give providers its public key"
        );
    }
    Ok(settlement_key)
}

/// The signer of gate bundles: the bundle key (made on first start, its public key logged
/// for the gates' configuration) and the settings gates decide by.
pub(crate) fn gate_bundles(config: &ServerConfig) -> anyhow::Result<Bundles> {
    let (key, created) = SettlementKey::load_or_create(&config.bundle.key_file)?;
    let public_key = crate::hex::encode(&key.public_key());
    if created {
        tracing::warn!(key_file = %config.bundle.key_file.display(), public_key, "made a new gate bundle key: configure the gates with its public key");
    } else {
        tracing::info!(key_file = %config.bundle.key_file.display(), public_key, "gate bundle key");
    }
    let settings = fareway_gate::bundle::Settings {
        code_validity_ms: config.verifier.code_validity_ms,
        clock_skew_ms: config.verifier.clock_skew_ms,
    };
    Ok(Bundles::new(key, settings))
}

/// The gate and admin APIs every server answers (embedded, or a cluster node, whose admin
/// commands go where its gatekeeper's do), and settlement where it is served.
pub(crate) fn apis(
    config: &ServerConfig,
    gate: &Arc<Gatekeeper>,
    verifier: Arc<Verifier>,
    clock: Arc<dyn Clock>,
    metrics: &Arc<Metrics>,
    stopped: watch::Receiver<bool>,
    settlement: Option<Arc<dyn SettlementBook>>,
) -> Apis {
    let in_flight = Arc::new(Semaphore::new(config.limits.requests_in_flight_max));
    Apis {
        gate: grpc::gate::GateApi::new(
            Arc::clone(gate),
            Arc::clone(&in_flight),
            Arc::new(grpc::gate::ConnectionShares::new(
                config.limits.connection_requests_in_flight_max,
            )),
            Arc::clone(metrics),
            config.limits.stream_taps_in_flight_max,
            stopped,
        ),
        admin: grpc::admin::AdminApi::new(
            gate.commands().clone(),
            verifier,
            Arc::clone(&clock),
            config.issuer_keys_file.clone(),
            config.backup_dir.clone(),
            in_flight,
            Arc::clone(metrics),
        ),
        settlement: settlement.map(|settlement| {
            grpc::settlement::SettlementApi::new(
                settlement,
                clock,
                config.limits.settlement_jobs_max,
                Duration::from_millis(config.limits.pull_stall_ms),
                Arc::clone(metrics),
            )
        }),
    }
}

/// Listens for gRPC where configured, behind the connection guard; returns the address
/// (with the real port when the configuration said port 0).
pub(crate) async fn listen_guarded(
    config: &ServerConfig,
    budget: &transport::DescriptorBudget,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(SocketAddr, transport::GuardedIncoming)> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let incoming = transport::GuardedIncoming::new(
        listener,
        budget.connections_max,
        Duration::from_millis(config.limits.handshake_timeout_ms),
        Arc::clone(metrics),
    );
    Ok((addr, incoming))
}

/// The services a server answers, before routing (no settlement in cluster mode yet).
pub(crate) struct Apis {
    pub(crate) gate: grpc::gate::GateApi,
    pub(crate) admin: grpc::admin::AdminApi,
    pub(crate) settlement: Option<grpc::settlement::SettlementApi>,
}

/// Every service's route, with the health service saying each serves.
pub(crate) async fn routes_with_health(
    apis: Apis,
    config: &ServerConfig,
) -> anyhow::Result<(tonic_health::server::HealthReporter, tonic::service::Routes)> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<fareway_proto::v1::gate_service_server::GateServiceServer<grpc::gate::GateApi>>()
        .await;
    health
        .set_serving::<fareway_proto::v1::admin_service_server::AdminServiceServer<grpc::admin::AdminApi>>()
        .await;
    if apis.settlement.is_some() {
        health
            .set_serving::<fareway_proto::v1::settlement_service_server::SettlementServiceServer<
                grpc::settlement::SettlementApi,
            >>()
            .await;
    }
    let authenticator = grpc::auth::Authenticator::new(&config.token);
    let routes = grpc::routes(
        apis.gate,
        apis.admin,
        apis.settlement,
        &authenticator,
        health_service,
    )
    .context("cannot build server reflection")?;
    Ok((health, routes))
}

/// Completes when the server is told to stop (or the sender is dropped).
pub(crate) async fn wait_for_stop(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// The Prometheus endpoint, when configured, answering with what `render` makes: its
/// address and its task.
pub(crate) async fn serve_metrics(
    config: &ServerConfig,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<Option<(SocketAddr, JoinHandle<std::io::Result<()>>)>> {
    let Some(metrics_listen) = config.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(metrics_listen)
        .await
        .with_context(|| format!("cannot listen for metrics on {metrics_listen}"))?;
    let metrics_addr = listener.local_addr()?;
    let task = tokio::spawn(metrics::serve(listener, render, wait_for_stop(stopped)));
    Ok(Some((metrics_addr, task)))
}

/// How often the server pings a connection that has been quiet, and how long it waits
/// for the answer before closing it: a gate that vanished (power cut, cable pulled) frees
/// its connection's slot within a minute.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest header block a request may send: a token and a few names.
pub const HEADER_LIST_BYTES_MAX: u32 = 16 << 10;

/// The gRPC server on the guarded listener (with TLS when configured), until told to stop.
pub(crate) fn serve_grpc(
    config: &ServerConfig,
    incoming: transport::GuardedIncoming,
    routes: tonic::service::Routes,
    metrics: &Arc<Metrics>,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<Result<(), tonic::transport::Error>>> {
    let mut builder = tonic::transport::Server::builder()
        .timeout(Duration::from_millis(config.limits.request_timeout_ms))
        .max_concurrent_streams(config.limits.streams_per_connection_max)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(HEADER_LIST_BYTES_MAX)
        .layer(grpc::refusals::CountRefusals::new(Arc::clone(metrics)));
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls_config(tls)?)
            .context("the TLS configuration is not usable")?;
    }
    Ok(tokio::spawn(
        builder
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, wait_for_stop(stopped)),
    ))
}

/// How often the engine tries to start again after a storage failure.
pub const RESTART_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the engine until `shutdown` completes; `started` is told once it first listens.
///
/// When a ledger write fails (the disk full or read-only, an I/O error), RocksDB refuses
/// every later write until the database is opened again. So the engine stops (the taps
/// of the failed group commit, and any during the stop, are answered `UNAVAILABLE`; gates
/// fall back to their offline rules and retry with the same ids) and starts again on the
/// same data directory and addresses every [`RESTART_INTERVAL`] until it can: as soon as
/// space or write access is back, it serves again. RocksDB's log recovery keeps every
/// write that was answered and drops a torn one that was not. A restart never makes a
/// new ledger or settlement key: a data directory that is not there (its disk not
/// mounted again yet) is waited for like a full disk.
pub async fn run_until_stopped(
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl std::future::Future<Output = ()>,
    started: impl FnOnce(&RunningServer) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut running = start(config.clone(), Arc::clone(&clock)).await?;
    started(&running)?;
    // A restart listens where the first start did (port 0 picked a port then).
    let config = ServerConfig {
        listen: running.addr,
        metrics_listen: running.metrics_addr,
        ..config
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutdown requested");
                return running.stop().await;
            }
            () = running.storage_failed() => {}
        }
        tracing::error!(
            "a ledger write failed: stopping, then opening the data directory again until it works"
        );
        if let Err(err) = running.stop().await {
            tracing::warn!(cause = %format!("{err:#}"), "stopping after a storage failure");
        }
        running = loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(RESTART_INTERVAL) => {}
            }
            match start_as(config.clone(), Arc::clone(&clock), Start::Again).await {
                Ok(running) => {
                    tracing::info!(addr = %running.addr, "serving again after a storage failure");
                    break running;
                }
                Err(err) => tracing::warn!(
                    cause = %format!("{err:#}"),
                    "cannot start again yet; retrying"
                ),
            }
        };
    }
}

impl RunningServer {
    /// Completes once a ledger write has failed (polled every 100 ms).
    pub async fn storage_failed(&self) {
        let Some(ledger) = self.gate.commands().local() else {
            return std::future::pending().await;
        };
        let stats = ledger.stats();
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        while stats
            .write_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            ticks.tick().await;
        }
    }

    /// The gate service (for in-process checks and benchmarks).
    pub fn gate(&self) -> &Arc<Gatekeeper> {
        &self.gate
    }

    /// Stops gracefully: see the module documentation.
    pub async fn stop(self) -> anyhow::Result<()> {
        let RunningServer {
            gate,
            health,
            stop,
            server,
            sweeper,
            metrics_server,
            grace,
            ..
        } = self;
        health
            .set_not_serving::<fareway_proto::v1::gate_service_server::GateServiceServer<grpc::gate::GateApi>>()
            .await;
        let _ = stop.send(true);
        let server_result = match tokio::time::timeout(grace, server).await {
            Ok(joined) => joined
                .context("server task failed")?
                .context("gRPC server failed"),
            Err(_) => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "calls still in flight after the grace period; stopping anyway"
                );
                Ok(())
            }
        };
        let _ = sweeper.await;
        if let Some(task) = metrics_server {
            let _ = tokio::time::timeout(grace, task).await;
        }
        // The ledger closes when its last holder goes: its writer drains the queue first.
        let Some(ledger) = gate.commands().local().cloned() else {
            return server_result;
        };
        drop(gate);
        match Arc::try_unwrap(ledger) {
            Ok(mut ledger) => tokio::task::spawn_blocking(move || ledger.shutdown())
                .await
                .context("ledger shutdown task failed")?,
            Err(_) => {
                tracing::warn!("the ledger is still in use; it closes when the last call ends")
            }
        }
        tracing::info!("fareway stopped");
        server_result
    }
}

/// The listener's TLS set-up from the configured PEM files.
fn tls_config(tls: &TlsSettings) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .with_context(|| format!("cannot read the TLS {what} {}", path.display()))
    };
    let identity = tonic::transport::Identity::from_pem(
        read(&tls.cert_file, "certificate")?,
        read(&tls.key_file, "key")?,
    );
    let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(
            ca,
            "client CA certificate",
        )?));
    }
    Ok(config)
}

/// Every interval, closes journeys entered and never exited and forgets the ids of
/// transactions older than the retention, until told to stop.
pub(crate) async fn sweep(
    gate: Arc<Gatekeeper>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        match gate.sweep_journeys().await {
            Ok(0) => {}
            Ok(closed) => tracing::info!(closed, "closed journeys with no exit"),
            Err(err) => tracing::warn!(cause = %err, "journey sweep failed; it runs again"),
        }
        match gate.forget_expired_ids().await {
            Ok(0) => {}
            Ok(forgotten) => tracing::info!(forgotten, "forgot ids past their retention"),
            Err(err) => tracing::warn!(cause = %err, "forgetting old ids failed; it runs again"),
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::warn!(cause = %err, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
