//! `fareway settle`: the finance team's client of the settlement service (close, list,
//! pull, ack), and offline checks of pulled files (verify, reconcile).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use fareway::clock::UnixMillis;
use fareway::grpc::auth::Bearer;
use fareway::settlement::HashingWriter;
use fareway::settlement::model::rfc3339;
use fareway::settlement::pull::pull_to_folder;
use fareway::settlement::reconcile::reconcile;
use fareway::settlement::verify::verify_pulled;
use fareway_proto::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::connection::Connection;

/// Findings of each kind printed by `reconcile` (all are counted).
const FINDINGS_SHOWN_MAX: usize = 50;

/// `fareway settle` subcommands.
#[derive(Debug, Subcommand)]
pub enum SettleCommand {
    /// Close a batch per provider at a cut-off (default: now).
    Close {
        #[command(flatten)]
        connection: Connection,
        /// Close only this provider's batch (repeatable); default every provider.
        #[arg(long = "provider")]
        providers: Vec<u32>,
        /// Stop at entries recorded after this time (RFC 3339, e.g. 2027-01-15T04:00:00Z).
        #[arg(long, conflicts_with = "cutoff_sequence")]
        cutoff_time: Option<String>,
        /// Stop after this ledger sequence.
        #[arg(long)]
        cutoff_sequence: Option<u64>,
        /// The close id (32 hex digits), to retry a close whose answer was lost; a new
        /// one is made and printed when absent.
        #[arg(long)]
        close_id: Option<String>,
    },
    /// List closed batches and their status.
    List {
        #[command(flatten)]
        connection: Connection,
        /// Only this provider's batches.
        #[arg(long)]
        provider: Option<u32>,
        /// Only batches after this id.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Pull a batch's file and manifest into a folder, checked before they are kept.
    Pull {
        #[command(flatten)]
        connection: Connection,
        /// The batch.
        #[arg(long)]
        batch: u64,
        /// The folder to write into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The engine's settlement public key (64 hex digits); default: ask the server.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Acknowledge that the provider received a pulled batch's file.
    Ack {
        #[command(flatten)]
        connection: Connection,
        /// The batch.
        #[arg(long)]
        batch: u64,
        /// The folder the batch was pulled into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Check a pulled file offline against its manifest and the engine's public key.
    Verify {
        /// The CSV file (its manifest is beside it).
        file: PathBuf,
        /// The engine's settlement public key (64 hex digits).
        #[arg(long)]
        public_key: String,
    },
    /// Compare a provider's reply (transaction_id,amount_minor,status) with a pulled batch;
    /// exits 1 on any difference.
    Reconcile {
        /// The batch.
        #[arg(long)]
        batch: u64,
        /// The folder the batch was pulled into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The provider's reply file.
        reply: PathBuf,
    },
}

/// Runs a `fareway settle` subcommand.
pub fn run(command: SettleCommand) -> anyhow::Result<ExitCode> {
    match command {
        SettleCommand::Verify { file, public_key } => {
            let public_key = parse_public_key(&public_key)?;
            let manifest = verify_pulled(&file, &public_key)
                .with_context(|| format!("{} does not check", file.display()))?;
            println!(
                "ok: batch {} of provider {}: {} lines, net {} {}, SHA-256 {}, signed by key {}",
                manifest.batch_id,
                manifest.provider_id,
                manifest.line_count,
                manifest.net_minor,
                manifest.currency,
                manifest.file_sha256,
                manifest.signature.key_id
            );
            Ok(ExitCode::SUCCESS)
        }
        SettleCommand::Reconcile { batch, dir, reply } => run_reconcile(batch, &dir, &reply),
        online => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(run_online(online))
        }
    }
}

type Client =
    pb::settlement_service_client::SettlementServiceClient<InterceptedService<Channel, Bearer>>;

async fn connect(connection: &Connection) -> anyhow::Result<Client> {
    let (channel, bearer) = connection.open().await?;
    Ok(pb::settlement_service_client::SettlementServiceClient::with_interceptor(channel, bearer))
}

async fn run_online(command: SettleCommand) -> anyhow::Result<ExitCode> {
    match command {
        SettleCommand::Close {
            connection,
            providers,
            cutoff_time,
            cutoff_sequence,
            close_id,
        } => {
            let request = pb::CloseBatchesRequest {
                close_id: close_id_or_new(close_id)?.to_vec(),
                providers,
                cutoff_time_ms: cutoff_time_ms(cutoff_time)?,
                cutoff_sequence,
            };
            close(&connection, request).await
        }
        SettleCommand::List {
            connection,
            provider,
            after,
        } => list(&connection, provider, after).await,
        SettleCommand::Pull {
            connection,
            batch,
            out,
            public_key,
        } => pull(&connection, batch, &out, public_key).await,
        SettleCommand::Ack {
            connection,
            batch,
            dir,
        } => ack(&connection, batch, &dir).await,
        SettleCommand::Verify { .. } | SettleCommand::Reconcile { .. } => {
            unreachable!("offline commands run without a connection")
        }
    }
}

/// The close id given with `--close-id`, or a new random one: a retry must give the same
/// id so that the server answers with the batches it already closed.
fn close_id_or_new(close_id: Option<String>) -> anyhow::Result<[u8; 16]> {
    match close_id {
        Some(text) => fareway::hex::decode_array::<16>(&text)
            .map_err(|_| anyhow::anyhow!("--close-id must be 32 hex digits")),
        None => {
            let mut id = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
                .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
            Ok(id)
        }
    }
}

/// `--cutoff-time` as ms since the epoch, if given.
fn cutoff_time_ms(cutoff_time: Option<String>) -> anyhow::Result<Option<u64>> {
    let Some(text) = cutoff_time else {
        return Ok(None);
    };
    let at = humantime::parse_rfc3339_weak(&text)
        .with_context(|| format!("--cutoff-time {text:?} is not an RFC 3339 time"))?;
    Ok(Some(
        at.duration_since(std::time::UNIX_EPOCH)
            .context("--cutoff-time is before 1970")?
            .as_millis() as u64,
    ))
}

/// `settle close`: prints the close id first, so that a close whose answer is lost can be
/// retried, then asks the server to close and prints the batches.
async fn close(
    connection: &Connection,
    request: pb::CloseBatchesRequest,
) -> anyhow::Result<ExitCode> {
    println!(
        "close id {} (give it as --close-id to retry this close)",
        fareway::hex::encode(&request.close_id)
    );
    let mut client = connect(connection).await?;
    let answer = client
        .close_batches(request)
        .await
        .context("close failed")?
        .into_inner();
    if answer.replay {
        println!("this close was already made; its batches:");
    }
    if answer.batches.is_empty() {
        println!("nothing to settle: no provider has settlement entries or batches yet");
        return Ok(ExitCode::SUCCESS);
    }
    print_batches(&answer.batches);
    Ok(ExitCode::SUCCESS)
}

/// `settle list`: reads every page of batches after `after`, then prints them.
async fn list(
    connection: &Connection,
    provider: Option<u32>,
    after: u64,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(connection).await?;
    let mut after_batch_id = after;
    let mut all = Vec::new();
    loop {
        let page = client
            .list_batches(pb::ListBatchesRequest {
                provider_id: provider.unwrap_or(0),
                after_batch_id,
                limit: 0,
            })
            .await
            .context("list failed")?
            .into_inner()
            .batches;
        let Some(last) = page.last() else { break };
        after_batch_id = last.batch_id;
        all.extend(page);
    }
    print_batches(&all);
    Ok(ExitCode::SUCCESS)
}

/// `settle pull`: pulls a batch's file and manifest into `out`, checked against the given
/// public key or else the server's, with a progress bar.
async fn pull(
    connection: &Connection,
    batch: u64,
    out: &Path,
    public_key: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(connection).await?;
    let (public_key, source) = checking_key(&mut client, public_key).await?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot make folder {}", out.display()))?;
    let stream = client
        .pull_batch(pb::PullBatchRequest { batch_id: batch })
        .await
        .with_context(|| format!("cannot pull batch {batch}"))?
        .into_inner();
    let bar = progress_bar();
    let pulled = pull_to_folder(stream, batch, out, &public_key, |received, total| {
        bar.set_length(total);
        bar.set_position(received);
    })
    .await
    .with_context(|| format!("pull of batch {batch} failed"))?;
    bar.finish_and_clear();
    let manifest = &pulled.manifest;
    println!(
        "pulled batch {} of provider {}: {} lines, net {} {}; SHA-256 and signature checked against {} ({})",
        manifest.batch_id,
        manifest.provider_id,
        manifest.line_count,
        manifest.net_minor,
        manifest.currency,
        source,
        manifest.signature.key_id
    );
    println!("{}", pulled.file.display());
    println!("{}", pulled.manifest_file.display());
    Ok(ExitCode::SUCCESS)
}

/// The key a pulled manifest's signature is checked against, and where it came from: the
/// `--public-key` given, or else the server's own settlement key.
async fn checking_key(
    client: &mut Client,
    public_key: Option<String>,
) -> anyhow::Result<([u8; 32], &'static str)> {
    if let Some(text) = public_key {
        return Ok((parse_public_key(&text)?, "the given key"));
    }
    let key = client
        .get_signing_key(pb::GetSigningKeyRequest {})
        .await
        .context("cannot get the server's settlement key")?
        .into_inner();
    let public_key: [u8; 32] = key
        .public_key
        .as_slice()
        .try_into()
        .context("the server's settlement key is not 32 bytes")?;
    Ok((public_key, "the server's settlement key"))
}

/// The pull's progress bar, drawn on standard error, and only when it is a terminal.
fn progress_bar() -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    )
}

/// `settle ack`: acknowledges a pulled batch with the SHA-256 of the file as it is on
/// disk, so that the server records what the provider actually received.
async fn ack(connection: &Connection, batch: u64, dir: &Path) -> anyhow::Result<ExitCode> {
    let file = pulled_file(dir, batch)?;
    let sha256 = sha256_of_file(&file)?;
    let mut client = connect(connection).await?;
    let acknowledged = client
        .acknowledge_batch(pb::AcknowledgeBatchRequest {
            batch_id: batch,
            file_sha256: fareway::hex::decode_32(&sha256)
                .map(Vec::from)
                .unwrap_or_default(),
        })
        .await
        .context("acknowledge failed")?
        .into_inner();
    println!(
        "batch {} acknowledged at {}",
        acknowledged.batch_id,
        rfc3339(UnixMillis(acknowledged.acknowledged_at_ms))
    );
    Ok(ExitCode::SUCCESS)
}

/// The SHA-256 of a file's content, as hex digits.
fn sha256_of_file(file: &Path) -> anyhow::Result<String> {
    let mut hashing = HashingWriter::new(std::io::sink());
    let mut reader =
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    std::io::copy(&mut reader, &mut hashing)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let (_, sha256) = hashing.finish();
    Ok(sha256)
}

fn parse_public_key(text: &str) -> anyhow::Result<[u8; 32]> {
    fareway::hex::decode_32(text.trim())
        .map_err(|_| anyhow::anyhow!("the public key must be 64 hex digits"))
}

/// The batch's CSV file in `dir`, found by its id (the name also holds the provider).
fn pulled_file(dir: &Path, batch: u64) -> anyhow::Result<PathBuf> {
    let suffix = format!("-b{batch:08}.csv");
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("fareway-settlement-") && name.ends_with(&suffix) {
            return Ok(entry.path());
        }
    }
    bail!(
        "batch {batch} is not in {}: pull it first with `fareway settle pull --batch {batch}`",
        dir.display()
    )
}

fn run_reconcile(batch: u64, dir: &Path, reply: &Path) -> anyhow::Result<ExitCode> {
    let file = pulled_file(dir, batch)?;
    let batch_file =
        std::fs::File::open(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let reply_file =
        std::fs::File::open(reply).with_context(|| format!("cannot read {}", reply.display()))?;
    let report = reconcile(
        std::io::BufReader::new(batch_file),
        std::io::BufReader::new(reply_file),
    )?;
    println!("batch {batch}: {} lines matched", report.matched);
    for (id, amount) in report.missing.iter().take(FINDINGS_SHOWN_MAX) {
        println!("missing from the reply: {id} amount {amount}");
    }
    for (line, id, amount) in report.extra.iter().take(FINDINGS_SHOWN_MAX) {
        println!("reply line {line}: {id} amount {amount} is not in the batch");
    }
    for mismatch in report.mismatched.iter().take(FINDINGS_SHOWN_MAX) {
        println!(
            "reply line {}: {} is {} {} in the reply but {} in the batch",
            mismatch.reply_line,
            mismatch.transaction_id,
            mismatch.status,
            mismatch.reply_amount,
            mismatch.batch_amount
        );
    }
    for (line, problem) in report.bad_lines.iter().take(FINDINGS_SHOWN_MAX) {
        println!("reply line {line}: {problem}");
    }
    println!(
        "missing {}, extra {}, mismatched {}, bad lines {}; batch net {}, reply settled {}, difference {}",
        report.missing.len(),
        report.extra.len(),
        report.mismatched.len(),
        report.bad_lines.len(),
        report.batch_net,
        report.reply_settled,
        report.reply_settled.saturating_sub(report.batch_net)
    );
    if report.is_clean() {
        println!("reconciled: the reply agrees with the batch");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("NOT reconciled");
        Ok(ExitCode::FAILURE)
    }
}

fn print_batches(batches: &[pb::Batch]) {
    println!(
        "{:>8} {:>8} {:>12} {:>12} {:>8} {:>12} {:>12} {:>12}  status",
        "batch", "provider", "after", "through", "lines", "charged", "refunded", "net"
    );
    for batch in batches {
        let status = match pb::BatchStatus::try_from(batch.status) {
            Ok(pb::BatchStatus::Acknowledged) => "acknowledged",
            Ok(pb::BatchStatus::Closed) => "closed",
            _ => "unknown",
        };
        println!(
            "{:>8} {:>8} {:>12} {:>12} {:>8} {:>12} {:>12} {:>12}  {status}",
            batch.batch_id,
            batch.provider_id,
            batch.after_sequence,
            batch.through_sequence,
            batch.line_count,
            batch.total_charged_minor,
            batch.total_refunded_minor,
            batch.net_minor
        );
    }
}
