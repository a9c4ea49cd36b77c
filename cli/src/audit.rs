//! `fareway audit`: check a ledger data directory offline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use fareway::ledger::audit::{AuditReport, audit};
use fareway::ledger::{LedgerView, StoreConfig};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The ledger's data directory. The engine must not be running on it.
    #[arg(long)]
    data_dir: PathBuf,
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.data_dir.join("CURRENT").is_file(),
        "{} is not a ledger data directory (it has no RocksDB CURRENT file)",
        args.data_dir.display()
    );
    let view = LedgerView::open(&args.data_dir, &StoreConfig::default())
        .with_context(|| format!("opening {}", args.data_dir.display()))?;
    let report = audit(&view).with_context(|| format!("auditing {}", args.data_dir.display()))?;
    print_report(&report);
    // A cluster shard's replica: where it is in its shard's log, and its state's digest,
    // which every replica of the shard at the same sequence shares.
    let applied = fareway::ledger::replica::applied_stream_sequence(&view)?;
    if applied > 0 {
        let digest = fareway::ledger::audit::state_digest(&view)?;
        println!(
            "audit: shard replica at log sequence {applied}, state digest {}",
            fareway::hex::encode(&digest)
        );
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints an audit report as the CLI and the demo show it.
pub fn print_report(report: &AuditReport) {
    println!(
        "audit: {} accounts, {} transactions ({} accepted), {} postings, sum over all accounts {}",
        report.accounts, report.transactions, report.accepted, report.postings, report.balance_sum
    );
    if report.ok() {
        println!("audit: ok, money is conserved and every index agrees with the log");
    } else {
        for violation in &report.violations {
            println!("audit: VIOLATION {violation}");
        }
        println!("audit: FAILED with {} violations", report.violation_count);
    }
}
