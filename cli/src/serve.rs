//! `fareway serve --config FILE`: runs the engine until SIGTERM or Ctrl-C.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use fareway::clock::SystemClock;
use fareway::server;
use fareway::server::config::{LogFormat, ServerConfig};

/// Arguments of `fareway serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file (docs/configuration.md); without one, every default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen here instead of the configured address (port 0 picks a free port).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

/// Runs the server. Prints `listening on ADDR` (and `metrics on ADDR`) on standard output
/// once it accepts calls, for scripts and tests that start it on port 0. Logs JSON when
/// `log_json` (the `--log-json` flag) or the configuration says so; a server says what it
/// does (`info`) unless `RUST_LOG` says otherwise.
pub fn run(args: ServeArgs, log_json: bool) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::load(path)?,
        None => ServerConfig::default(),
    };
    crate::init_tracing(log_json || config.log_format == LogFormat::Json, "info");
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    config.claim_ledger_cpus()?;
    let runtime = server::runtime("fareway-server").context("cannot start the async runtime")?;
    if let Some(cluster) = config.cluster.clone() {
        return runtime.block_on(serve_cluster_node(config, cluster));
    }
    runtime.block_on(async move {
        let announce = |running: &server::RunningServer| -> anyhow::Result<()> {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "listening on {}", running.addr)?;
            if let Some(metrics) = running.metrics_addr {
                writeln!(stdout, "metrics on {metrics}")?;
            }
            stdout.flush()?;
            Ok(())
        };
        server::run_until_stopped(
            config,
            Arc::new(SystemClock),
            server::shutdown_signal(),
            announce,
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs a cluster node until SIGTERM or Ctrl-C; prints `listening on ADDR` once it
/// accepts calls.
async fn serve_cluster_node(
    config: ServerConfig,
    cluster: fareway::cluster::ClusterConfig,
) -> anyhow::Result<ExitCode> {
    let node = fareway::cluster::node::start(config, cluster, Arc::new(SystemClock)).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", node.addr)?;
        stdout.flush()?;
    }
    server::shutdown_signal().await;
    node.stop().await?;
    Ok(ExitCode::SUCCESS)
}
