//! `fareway cluster init|status --config FILE`: make a cluster, or look at it
//! (`docs/cluster.md`). The file is a node's configuration; its `[cluster]` section says
//! where NATS is and how many shards the cluster has.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use fareway::cluster::{ClusterConfig, manage};
use fareway::server::config::ServerConfig;

/// `fareway cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Make each shard's stream, the lease and replica buckets, and record the shard count
    /// (again with the same count: nothing changes; with another: refused).
    Init {
        /// A node's configuration file, with a `[cluster]` section.
        #[arg(long)]
        config: PathBuf,
    },
    /// Each shard's leader, log sequence, and each replica's applied sequence and lag.
    Status {
        /// A node's configuration file, with a `[cluster]` section.
        #[arg(long)]
        config: PathBuf,
    },
}

/// Runs a `fareway cluster` subcommand.
pub fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    let (path, init) = match command {
        ClusterCommand::Init { config } => (config, true),
        ClusterCommand::Status { config } => (config, false),
    };
    let cluster = ServerConfig::load(&path)?
        .cluster
        .with_context(|| format!("{} has no [cluster] section", path.display()))?;
    cluster.check().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let js = cluster.jetstream().await?;
        if init {
            manage::init(&js, &cluster).await?;
            println!(
                "cluster ready: {} shards, {} replicas",
                cluster.shards, cluster.replicas
            );
        } else {
            print_status(&manage::status(&js, &cluster).await?, &cluster)?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn print_status(shards: &[manage::ShardStatus], cluster: &ClusterConfig) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} shards", cluster.shards)?;
    for shard in shards {
        let leader = shard.leader.as_deref().unwrap_or("none");
        writeln!(
            out,
            "shard {}: leader {leader}, log at {}",
            shard.shard, shard.stream_sequence
        )?;
        for (node, applied) in &shard.replicas {
            let lag = shard.stream_sequence.saturating_sub(*applied);
            writeln!(out, "  replica {node}: applied {applied}, lag {lag}")?;
        }
    }
    Ok(())
}
