//! The `fareway` command: one binary with a subcommand per job, one module per subcommand
//! group. Everything here is a thin shell over the engine library (and, for the demo, the
//! gate simulator's); errors are `anyhow` with context.

mod audit;
mod checkpoint;
mod cluster;
mod cluster_demo;
mod connection;
mod demo;
mod fares;
mod fares_page;
mod keys;
mod serve;
mod settle;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fareway: a transit payment clearing engine.
#[derive(Debug, Parser)]
#[command(name = "fareway", version, about)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text (the level comes from RUST_LOG;
    /// `fareway serve` also takes `log_format` from its configuration file).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Issuer keys of payment providers.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Rider codes: mint one for testing, inspect one, regenerate the test vectors.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Check a ledger data directory offline: money is conserved and every index agrees.
    Audit(audit::AuditArgs),
    /// Ask a running engine for a checkpoint of its ledger (a backup) while taps go on.
    Checkpoint(checkpoint::CheckpointArgs),
    /// Cluster mode: make a cluster's streams and buckets (`init`), or show each shard's
    /// leader and replicas (`status`).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Run the main job end to end on a temporary data directory and print a report.
    Demo(demo::DemoArgs),
    /// Fares: replay the recorded taps under another fares file before changing it.
    #[command(subcommand)]
    Fares(fares::FaresCommand),
    /// Run the engine: gRPC gate, admin and settlement services, health, reflection and
    /// metrics.
    Serve(serve::ServeArgs),
    /// Settlement batches: close, list, pull, ack (against a running engine), verify and
    /// reconcile (offline).
    #[command(subcommand)]
    Settle(settle::SettleCommand),
}

/// Installs logging and runs the parsed command. The server installs its own, once its
/// configuration file (which may ask for JSON) is read.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = match cli.command {
        Command::Serve(args) => return serve::run(args, cli.log_json),
        command => command,
    };
    // A command line tool speaks only of trouble; the demo's engine meets the simulator's
    // faults on purpose, so it speaks only of errors.
    let level = if matches!(command, Command::Demo(_)) {
        "error"
    } else {
        "warn"
    };
    init_tracing(cli.log_json, level);
    match command {
        Command::Keys(command) => keys::run(command),
        Command::Token(command) => token::run(command),
        Command::Audit(args) => audit::run(args),
        Command::Checkpoint(args) => checkpoint::run(args),
        Command::Cluster(command) => cluster::run(command),
        Command::Demo(args) => demo::run(args),
        Command::Fares(command) => fares::run(command),
        Command::Settle(command) => settle::run(command),
        Command::Serve(_) => unreachable!("served above"),
    }
}

fn main() -> ExitCode {
    let args = Cli::parse();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the tracing subscriber: only binaries do this, never the library.
pub fn init_tracing(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only on a terminal: a log written to a file is read by tools and grep.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
