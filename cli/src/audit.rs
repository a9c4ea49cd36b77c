//! `fareway audit`: check ledger data directories offline.
//!
//! One embedded data directory: its audit (money conserved, every index agrees with the
//! log). Several replicas of a cluster's shards (`docs/cluster.md`): each replica's audit,
//! then the cluster's: money conserved per shard and in total, and the replicas of each
//! shard that applied the same log sequence have the same state digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use fareway::ledger::audit::{AuditReport, audit, state_digest};
use fareway::ledger::replica::{applied_stream_sequence, shard_id};
use fareway::ledger::{LedgerView, ShardId, StoreConfig};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// A ledger's data directory, or a cluster shard replica's (`DATA_DIR/shard-N`); give
    /// the replicas of every shard, from every node, to audit a whole cluster. The engine
    /// must not be running on them.
    #[arg(long = "data-dir", required = true)]
    data_dirs: Vec<PathBuf>,
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let audited = audit_dirs(&args.data_dirs)?;
    if let [only] = audited.replicas.as_slice()
        && only.shard.is_none()
    {
        print_report(&only.report);
    } else {
        print_cluster(&audited);
    }
    Ok(if audited.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One data directory's audit.
#[derive(Debug)]
pub struct ReplicaAudit {
    /// The directory.
    pub dir: PathBuf,
    /// The shard it holds (`None`: an embedded ledger).
    pub shard: Option<ShardId>,
    /// The last log message it applied (cluster replicas).
    pub applied: u64,
    /// Its audit.
    pub report: AuditReport,
    /// Its state digest, in hex.
    pub digest: String,
}

/// The audit of several data directories as one cluster.
#[derive(Debug)]
pub struct ClusterAudit {
    /// Every directory's audit, in the order given.
    pub replicas: Vec<ReplicaAudit>,
    /// What is wrong across replicas: shards that differ, counts that disagree.
    pub problems: Vec<String>,
    /// Shards of the cluster of which no replica was given (a problem when several
    /// directories were given: the audit of a whole cluster needs every shard).
    pub missing_shards: Vec<u32>,
    /// Replicas that applied less of their shard's log than another replica of it
    /// (their states cannot be compared; a stopped cluster's replicas catch up when
    /// their nodes start).
    pub behind: Vec<String>,
    /// The sum over every shard's accounts (each shard counted once, from its replica
    /// furthest along its log).
    pub balance_sum: i128,
}

impl ClusterAudit {
    /// True when every replica's audit passes, money is conserved in total, and the
    /// replicas of each shard agree.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
            && (self.missing_shards.is_empty() || self.replicas.len() == 1)
            && self.balance_sum == 0
            && self.replicas.iter().all(|replica| replica.report.ok())
    }

    /// The replicas by shard (embedded ledgers are not listed).
    pub fn by_shard(&self) -> BTreeMap<u32, Vec<&ReplicaAudit>> {
        let mut shards: BTreeMap<u32, Vec<&ReplicaAudit>> = BTreeMap::new();
        for replica in &self.replicas {
            if let Some(id) = replica.shard {
                shards.entry(id.shard).or_default().push(replica);
            }
        }
        shards
    }
}

/// Audits every directory, then compares the replicas of each shard.
pub fn audit_dirs(dirs: &[PathBuf]) -> anyhow::Result<ClusterAudit> {
    let replicas = dirs
        .iter()
        .map(|dir| audit_dir(dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut audited = ClusterAudit {
        replicas,
        problems: Vec::new(),
        missing_shards: Vec::new(),
        behind: Vec::new(),
        balance_sum: 0,
    };
    compare_replicas(&mut audited);
    Ok(audited)
}

fn audit_dir(dir: &Path) -> anyhow::Result<ReplicaAudit> {
    anyhow::ensure!(
        dir.join("CURRENT").is_file(),
        "{} is not a ledger data directory (it has no RocksDB CURRENT file)",
        dir.display()
    );
    let view = LedgerView::open(dir, &StoreConfig::default())
        .with_context(|| format!("opening {}", dir.display()))?;
    let report = audit(&view).with_context(|| format!("auditing {}", dir.display()))?;
    Ok(ReplicaAudit {
        dir: dir.to_path_buf(),
        shard: shard_id(&view)?,
        applied: applied_stream_sequence(&view)?,
        report,
        digest: fareway::hex::encode(&state_digest(&view)?),
    })
}

/// Sums the shards, and names every disagreement: replicas of one cluster with other
/// shard counts, an embedded ledger among replicas, and replicas of a shard at the same
/// log sequence whose states differ.
fn compare_replicas(audited: &mut ClusterAudit) {
    let counts: std::collections::BTreeSet<u32> = audited
        .replicas
        .iter()
        .filter_map(|replica| replica.shard.map(|id| id.shards))
        .collect();
    if counts.len() > 1 {
        audited.problems.push(format!(
            "the replicas come from clusters of different shard counts: {counts:?}"
        ));
    }
    let embedded = audited
        .replicas
        .iter()
        .filter(|r| r.shard.is_none())
        .count();
    if embedded > 0 && (audited.replicas.len() > 1) {
        audited.problems.push(format!(
            "{embedded} of the directories are not cluster shard replicas; audit an embedded ledger alone"
        ));
    }
    let by_shard = audited.by_shard();
    let mut problems = Vec::new();
    let mut balance_sum = 0;
    let mut behind = Vec::new();
    for (shard, replicas) in &by_shard {
        problems.extend(differing_replicas(*shard, replicas));
        if let Some(furthest) = replicas.iter().max_by_key(|replica| replica.applied) {
            balance_sum += furthest.report.balance_sum;
            behind.extend(
                replicas
                    .iter()
                    .filter(|replica| replica.applied < furthest.applied)
                    .map(|replica| {
                        format!(
                            "{} applied shard {shard}'s log to sequence {}, {} to {}",
                            replica.dir.display(),
                            replica.applied,
                            furthest.dir.display(),
                            furthest.applied
                        )
                    }),
            );
        }
    }
    if embedded > 0 && by_shard.is_empty() {
        balance_sum = audited.replicas.iter().map(|r| r.report.balance_sum).sum();
    }
    let shards = counts.last().copied().unwrap_or(0);
    audited.missing_shards = (0..shards)
        .filter(|shard| !by_shard.contains_key(shard))
        .collect();
    audited.problems.extend(problems);
    audited.behind = behind;
    audited.balance_sum = balance_sum;
}

/// The replicas of `shard` that applied the same log sequence but hold other states.
fn differing_replicas(shard: u32, replicas: &[&ReplicaAudit]) -> Option<String> {
    let mut at_sequence: BTreeMap<u64, Vec<&ReplicaAudit>> = BTreeMap::new();
    for replica in replicas {
        at_sequence
            .entry(replica.applied)
            .or_default()
            .push(replica);
    }
    let differing: Vec<String> = at_sequence
        .iter()
        .filter(|(_, same)| same.windows(2).any(|pair| pair[0].digest != pair[1].digest))
        .map(|(sequence, same)| {
            let states = same
                .iter()
                .map(|replica| format!("{} has {}", replica.dir.display(), replica.digest))
                .collect::<Vec<_>>()
                .join(", ");
            format!("at log sequence {sequence}: {states}")
        })
        .collect();
    (!differing.is_empty()).then(|| {
        format!(
            "shard {shard}: replicas that applied the same log differ: {}",
            differing.join("; ")
        )
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

/// Prints each replica's audit, each shard's, and the cluster's.
pub fn print_cluster(audited: &ClusterAudit) {
    for replica in &audited.replicas {
        let what = replica
            .shard
            .map_or("embedded ledger".to_string(), |id| id.to_string());
        let report = &replica.report;
        println!(
            "{}: {what} at log sequence {}, state digest {}, {} accounts, {} transactions, balances sum to {}, audit {}",
            replica.dir.display(),
            replica.applied,
            &replica.digest[..16],
            report.accounts,
            report.transactions,
            report.balance_sum,
            if report.ok() { "ok" } else { "FAILED" }
        );
        for violation in &report.violations {
            println!("  VIOLATION {violation}");
        }
    }
    for (shard, replicas) in audited.by_shard() {
        let sequences: Vec<u64> = replicas.iter().map(|replica| replica.applied).collect();
        println!(
            "shard {shard}: replicas at log sequences {sequences:?}, audits {}",
            if replicas.iter().all(|replica| replica.report.ok()) {
                "ok"
            } else {
                "FAILED"
            }
        );
    }
    if !audited.missing_shards.is_empty() {
        println!(
            "cluster: {}no replica given of shards {:?}: the total below leaves them out",
            if audited.replicas.len() > 1 {
                "PROBLEM "
            } else {
                ""
            },
            audited.missing_shards
        );
    }
    for behind in &audited.behind {
        println!("cluster: behind: {behind}");
    }
    for problem in &audited.problems {
        println!("cluster: PROBLEM {problem}");
    }
    println!(
        "cluster: balances of every shard sum to {}; {}",
        audited.balance_sum,
        if audited.ok() {
            "ok, money is conserved per shard and in total, and replicas at the same log sequence agree"
        } else {
            "FAILED"
        }
    );
}
