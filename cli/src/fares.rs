//! `fareway fares replay`: what a fares file would have charged the recorded taps of a
//! period, against what they were charged (`docs/fares.md`, "The fare-change replay").
//! It reads the ledger as a RocksDB secondary instance, so the engine may be running on
//! it, and writes nothing there.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fareway::fares::{FARES_FILE_BYTES_MAX, FareTable, day_of_date};
use fareway::fares_replay::{self, ReplayPeriod};
use fareway::ledger::replica::shard_id;
use fareway::ledger::{LedgerView, ShardId, StoreConfig};

#[derive(Debug, Subcommand)]
pub enum FaresCommand {
    /// Re-price the recorded taps of a period under another fares file, and report
    /// revenue then and now per day, line or route, provider and rider group, and the
    /// riders who would pay more or less. Writes nothing to the ledger.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The ledger's data directory (the engine may be running on it); for a cluster, one
    /// replica of every shard (`DATA_DIR/shard-N`), `--data-dir` again for each.
    #[arg(long = "data-dir", required = true)]
    data_dirs: Vec<PathBuf>,
    /// The fares file to price the taps with.
    #[arg(long)]
    fares: PathBuf,
    /// The first service day to count, YYYY-MM-DD (the new fares file's days).
    #[arg(long)]
    from: Option<String>,
    /// The last service day to count, YYYY-MM-DD.
    #[arg(long)]
    to: Option<String>,
    /// Where to write report.json and report.html.
    #[arg(long, default_value = "fares-replay")]
    out: PathBuf,
    /// How many of the riders with the largest changes to list.
    #[arg(long, default_value_t = 20)]
    largest: usize,
}

pub fn run(command: FaresCommand) -> anyhow::Result<ExitCode> {
    match command {
        FaresCommand::Replay(args) => replay(args),
    }
}

fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let period = ReplayPeriod {
        from_day: service_day("--from", args.from.as_deref())?,
        to_day: service_day("--to", args.to.as_deref())?,
        largest: args.largest,
    };
    if let (Some(from), Some(to)) = (period.from_day, period.to_day) {
        anyhow::ensure!(from <= to, "--from must not be after --to");
    }
    let text = fareway::files::read_bounded(&args.fares, FARES_FILE_BYTES_MAX as u64)
        .with_context(|| format!("cannot read fares file {}", args.fares.display()))?;
    let fares = FareTable::from_toml(&text)
        .with_context(|| format!("fares file {}", args.fares.display()))?;
    let scratch = tempfile::tempdir().context("cannot make a scratch folder")?;
    let views = open_shards(&args.data_dirs, scratch.path())?;
    let views: Vec<&LedgerView> = views.iter().collect();
    let replay = fares_replay::replay_shards(&views, &fares, period, |steps| {
        eprintln!("replayed {steps} steps");
    })
    .context("replaying the recorded taps")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot make {}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&replay).context("encoding the report")?;
    let json_path = args.out.join("report.json");
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let html_path = args.out.join("report.html");
    let html = crate::fares_page::render(&replay, &args.fares.display().to_string());
    std::fs::write(&html_path, html)
        .with_context(|| format!("cannot write {}", html_path.display()))?;
    print!("{}", fares_replay::render_table(&replay));
    println!(
        "\nwrote {} and {}",
        json_path.display(),
        html_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Opens each data directory as a secondary instance (its log in its own scratch
/// folder), refusing two of the same shard (or two embedded ledgers): their riders would
/// be counted twice.
fn open_shards(dirs: &[PathBuf], scratch: &Path) -> anyhow::Result<Vec<LedgerView>> {
    let mut views = Vec::new();
    let mut shards: Vec<(Option<ShardId>, &PathBuf)> = Vec::new();
    for (index, dir) in dirs.iter().enumerate() {
        let view = LedgerView::open_secondary(
            dir,
            &scratch.join(index.to_string()),
            &StoreConfig::default(),
        )
        .with_context(|| format!("opening {}", dir.display()))?;
        let shard = shard_id(&view).with_context(|| format!("reading {}", dir.display()))?;
        if let Some((_, other)) = shards.iter().find(|(known, _)| *known == shard) {
            anyhow::bail!(
                "{} and {} hold the same ledger or shard: give one replica of each shard",
                other.display(),
                dir.display()
            );
        }
        shards.push((shard, dir));
        views.push(view);
    }
    Ok(views)
}

/// A `YYYY-MM-DD` argument as a service day number.
fn service_day(flag: &str, date: Option<&str>) -> anyhow::Result<Option<u32>> {
    date.map(|text| {
        day_of_date(text)
            .with_context(|| format!("{flag} {text:?} is not a date YYYY-MM-DD from 1970"))
    })
    .transpose()
}
