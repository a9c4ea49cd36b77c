//! The `fareway` command line: argument parsing and one module per subcommand group.
//! Everything here is a thin shell over the library; errors are `anyhow` with context.

mod audit;
mod demo;
mod keys;
mod serve;
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
    /// Run the main job end to end on a temporary data directory and print a report.
    Demo(demo::DemoArgs),
    /// Run the engine: gRPC gate and admin services, health, reflection and metrics.
    Serve(serve::ServeArgs),
}

impl Cli {
    /// Whether to log JSON: the flag, or `log_format = "json"` in the server's
    /// configuration file (read again, with its errors reported, when the server starts).
    pub fn log_json(&self) -> bool {
        self.log_json
            || matches!(&self.command, Command::Serve(args) if args.config_wants_json_logs())
    }

    /// The log level when `RUST_LOG` is not set: a server says what it does; a command
    /// line tool speaks only of trouble.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Serve(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keys(command) => keys::run(command),
        Command::Token(command) => token::run(command),
        Command::Audit(args) => audit::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Serve(args) => serve::run(args),
    }
}

/// Installs the tracing subscriber: only binaries do this, never the library.
pub fn init_tracing(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
