//! `fareway.v1.SettlementService` for the finance team, and the client side of a pull:
//! [`pull_to_folder`] writes a batch's file and manifest atomically and checks them before
//! it says done. Pulls read whole batches, so at most `limits.settlement_jobs_max` run at
//! once; more are refused with `RESOURCE_EXHAUSTED`. Closes have a slot of their own
//! (they run one at a time anyway), so pulls, however slow their readers, never keep the
//! finance team from closing.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fareway_proto::v1 as pb;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

use crate::clock::{Clock, UnixMillis};
use crate::server::metrics::Metrics;
use crate::settlement::manifest::Manifest;
use crate::settlement::model::{BatchView, CloseRequest, Cutoff, LATEST_TIME, manifest_name};
use crate::settlement::{LIST_BATCHES_MAX, SettlementBook, SettlementError};
use crate::token::format::PUBLIC_KEY_LEN;

use super::convert::{self, invalid, ledger_status};
use super::ending::EndingStream;
use super::gate::admit;

/// Bytes in one chunk of a pulled file.
pub const CHUNK_BYTES: usize = 64 << 10;
/// Chunks a pull may have made ahead of the client: with [`CHUNK_BYTES`], what a slow
/// client can make the server hold.
pub const CHUNKS_AHEAD_MAX: usize = 4;
/// Batches in a list page when the caller does not say.
pub const LIST_BATCHES_DEFAULT: usize = 100;
/// Providers one close may name.
pub const CLOSE_PROVIDERS_MAX: usize = 1_000;

/// The settlement API.
#[derive(Debug, Clone)]
pub struct SettlementApi {
    settlement: Arc<dyn SettlementBook>,
    clock: Arc<dyn Clock>,
    /// Pulls at once.
    pulls: Arc<Semaphore>,
    /// One close at a time, apart from the pulls.
    closes: Arc<Semaphore>,
    /// How long a pull waits for a client that stopped reading before it gives up (and
    /// frees its slot).
    pull_stall_max: Duration,
    metrics: Arc<Metrics>,
}

impl SettlementApi {
    /// The API over `settlement`, running at most `jobs_max` pulls and one close at once.
    pub fn new(
        settlement: Arc<dyn SettlementBook>,
        clock: Arc<dyn Clock>,
        jobs_max: usize,
        pull_stall_max: Duration,
        metrics: Arc<Metrics>,
    ) -> SettlementApi {
        SettlementApi {
            settlement,
            clock,
            pulls: Arc::new(Semaphore::new(jobs_max)),
            closes: Arc::new(Semaphore::new(1)),
            pull_stall_max,
            metrics,
        }
    }

    fn fault(&self, err: &SettlementError) -> Status {
        let status = settlement_status(err);
        if status.code() == tonic::Code::Internal || status.code() == tonic::Code::Unavailable {
            self.metrics.record_fault(err.code());
            tracing::error!(cause = %err, "settlement request failed");
        }
        status
    }
}

/// A settlement error as a status.
pub fn settlement_status(err: &SettlementError) -> Status {
    use tonic::Code;
    let code = match err {
        SettlementError::UnknownBatch(_) | SettlementError::UnknownProvider(_) => Code::NotFound,
        SettlementError::Conflict { .. } => Code::AlreadyExists,
        SettlementError::CutoffAhead { .. } | SettlementError::HashMismatch { .. } => {
            Code::FailedPrecondition
        }
        SettlementError::Ledger(err) => return ledger_status(err),
        SettlementError::Storage(_) | SettlementError::Io(_) | SettlementError::Unavailable(_) => {
            Code::Unavailable
        }
        SettlementError::CutoffUnsupported(_) => Code::InvalidArgument,
        SettlementError::Corrupt(_) => Code::Internal,
    };
    convert::status(code, err.to_string(), err.code())
}

/// `INTERNAL` for a blocking task that panicked or was cancelled.
fn task_failed(what: &str) -> Status {
    convert::status(
        tonic::Code::Internal,
        format!("the {what} task failed"),
        "internal",
    )
}

/// A close request as the domain's input.
pub fn close_request(request: &pb::CloseBatchesRequest) -> Result<CloseRequest, Status> {
    let id = convert::tx_id(&request.close_id, "close_id")?;
    if request.providers.len() > CLOSE_PROVIDERS_MAX {
        return Err(invalid(
            "providers",
            &format!("at most {CLOSE_PROVIDERS_MAX} in one close"),
        ));
    }
    let mut providers = Vec::with_capacity(request.providers.len());
    for provider in &request.providers {
        match u16::try_from(*provider) {
            Ok(provider) if provider > 0 => providers.push(provider),
            _ => {
                return Err(invalid(
                    "providers",
                    &format!("{provider} is not 1 to 65535"),
                ));
            }
        }
    }
    let cutoff = match (request.cutoff_time_ms, request.cutoff_sequence) {
        (None, None) => Cutoff::Now,
        (Some(time), None) if time > LATEST_TIME.0 => {
            return Err(invalid(
                "cutoff_time_ms",
                "must be before the year 10000 (RFC 3339 cannot write it)",
            ));
        }
        (Some(time), None) => Cutoff::Time(UnixMillis(time)),
        (None, Some(sequence)) => Cutoff::Sequence(sequence),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "cutoff_sequence",
                "give a cut-off time or a cut-off sequence, not both",
            ));
        }
    };
    Ok(CloseRequest {
        id,
        providers,
        cutoff,
    })
}

/// A batch as a message.
pub fn batch_message(view: &BatchView) -> pb::Batch {
    let batch = &view.batch;
    let status = if view.acknowledged_at.is_some() {
        pb::BatchStatus::Acknowledged
    } else {
        pb::BatchStatus::Closed
    };
    pb::Batch {
        batch_id: batch.id,
        provider_id: u32::from(batch.provider_id),
        after_sequence: batch.after_sequence,
        through_sequence: batch.through_sequence,
        cutoff: batch.cutoff.describe(),
        created_at_ms: batch.created_at.0,
        line_count: batch.totals.line_count,
        charge_count: batch.totals.charge_count,
        refund_count: batch.totals.refund_count,
        total_charged_minor: batch.totals.total_charged.minor(),
        total_refunded_minor: batch.totals.total_refunded.minor(),
        net_minor: batch.totals.net().minor(),
        currency: batch.currency.clone(),
        file_name: crate::settlement::model::file_name(batch.provider_id, batch.id),
        file_bytes: batch.file_bytes,
        file_sha256: crate::hex::decode_32(&batch.file_sha256)
            .map(Vec::from)
            .unwrap_or_default(),
        status: status.into(),
        acknowledged_at_ms: view.acknowledged_at.map_or(0, |at| at.0),
    }
}

/// Hands a pulled file to the gRPC stream in chunks, waiting while the client is
/// [`CHUNKS_AHEAD_MAX`] chunks behind. A client that went away, or that read nothing for
/// `stall_max`, ends the export.
struct ChunkWriter {
    stall_max: Duration,
    chunk: Vec<u8>,
    sender: mpsc::Sender<Result<pb::BatchChunk, Status>>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_BYTES));
        let chunk = pb::BatchChunk {
            part: Some(pb::batch_chunk::Part::FileData(data)),
        };
        let mut chunk = Ok(chunk);
        let started = Instant::now();
        loop {
            match self.sender.try_send(chunk) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the client went away",
                    ));
                }
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if started.elapsed() > self.stall_max {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client stopped reading",
                        ));
                    }
                    chunk = back;
                    // A blocking thread of its own: a short sleep costs no async worker.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_BYTES - self.chunk.len();
        let taken = buf.len().min(room);
        self.chunk.extend_from_slice(&buf[..taken]);
        if self.chunk.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a pull's export ended, as the status its stream ends with.
fn pull_outcome(
    batch_id: u64,
    exported: Result<(), SettlementError>,
    metrics: &Metrics,
) -> Result<(), Status> {
    match exported {
        Ok(()) => Ok(()),
        Err(SettlementError::Io(err))
            if matches!(
                err.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::TimedOut
            ) =>
        {
            tracing::warn!(batch = batch_id, cause = %err, "a settlement pull ended early");
            Err(convert::status(
                tonic::Code::DeadlineExceeded,
                format!("the pull of batch {batch_id} ended before the whole file was sent: {err}"),
                "client_stalled",
            ))
        }
        Err(err) => {
            metrics.record_fault(err.code());
            tracing::error!(batch = batch_id, cause = %err, "a settlement pull failed");
            Err(settlement_status(&err))
        }
    }
}

#[tonic::async_trait]
impl pb::settlement_service_server::SettlementService for SettlementApi {
    async fn close_batches(
        &self,
        request: Request<pb::CloseBatchesRequest>,
    ) -> Result<Response<pb::CloseBatchesResponse>, Status> {
        let close = close_request(request.get_ref())?;
        let permit = admit(&self.closes, &self.metrics, "settlement closes")?;
        let settlement = Arc::clone(&self.settlement);
        let now = self.clock.now();
        let closed = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            settlement.close(&close, now)
        })
        .await
        .map_err(|_| task_failed("close"))?
        .map_err(|err| self.fault(&err))?;
        Ok(Response::new(pb::CloseBatchesResponse {
            batches: closed.batches.iter().map(batch_message).collect(),
            replay: closed.replay,
        }))
    }

    async fn list_batches(
        &self,
        request: Request<pb::ListBatchesRequest>,
    ) -> Result<Response<pb::ListBatchesResponse>, Status> {
        let request = request.into_inner();
        let provider = match request.provider_id {
            0 => None,
            id => Some(u16::try_from(id).map_err(|_| invalid("provider_id", "is not 0 to 65535"))?),
        };
        let limit = match request.limit {
            0 => LIST_BATCHES_DEFAULT,
            limit => (limit as usize).min(LIST_BATCHES_MAX),
        };
        let settlement = Arc::clone(&self.settlement);
        let batches = tokio::task::spawn_blocking(move || {
            settlement.list(provider, request.after_batch_id, limit)
        })
        .await
        .map_err(|_| task_failed("list"))?
        .map_err(|err| self.fault(&err))?;
        Ok(Response::new(pb::ListBatchesResponse {
            batches: batches.iter().map(batch_message).collect(),
        }))
    }

    /// The chunks as the export makes them, then its end: OK only when the export says
    /// the whole file was sent (a stalled reader, a failed read or an export that died
    /// ends with an error status).
    type PullBatchStream = EndingStream<pb::BatchChunk>;

    async fn pull_batch(
        &self,
        request: Request<pb::PullBatchRequest>,
    ) -> Result<Response<Self::PullBatchStream>, Status> {
        let batch_id = request.into_inner().batch_id;
        let permit = admit(&self.pulls, &self.metrics, "settlement pulls")?;
        let settlement = Arc::clone(&self.settlement);
        let view = {
            let settlement = Arc::clone(&settlement);
            tokio::task::spawn_blocking(move || settlement.batch(batch_id))
                .await
                .map_err(|_| task_failed("pull"))?
                .map_err(|err| self.fault(&err))?
                .ok_or_else(|| settlement_status(&SettlementError::UnknownBatch(batch_id)))?
        };
        let (sender, receiver) = mpsc::channel(CHUNKS_AHEAD_MAX);
        let manifest = pb::BatchChunk {
            part: Some(pb::batch_chunk::Part::Manifest(
                settlement.manifest(&view.batch),
            )),
        };
        sender
            .send(Ok(manifest))
            .await
            .map_err(|_| Status::cancelled("the client went away"))?;
        let metrics = Arc::clone(&self.metrics);
        let stall_max = self.pull_stall_max;
        let (outcome, ended) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut chunks = ChunkWriter {
                stall_max,
                chunk: Vec::with_capacity(CHUNK_BYTES),
                sender,
            };
            let exported = settlement
                .export(&view.batch, &mut chunks)
                .and_then(|()| chunks.send().map_err(SettlementError::Io));
            // The end goes on its own channel: a data channel full of unread chunks never
            // keeps it from the client, so a pull cut short can never end OK.
            let _ = outcome.send(pull_outcome(batch_id, exported, &metrics));
        });
        Ok(Response::new(EndingStream::new(receiver, ended)))
    }

    async fn acknowledge_batch(
        &self,
        request: Request<pb::AcknowledgeBatchRequest>,
    ) -> Result<Response<pb::Batch>, Status> {
        let request = request.into_inner();
        let sha256: [u8; 32] = request
            .file_sha256
            .as_slice()
            .try_into()
            .map_err(|_| invalid("file_sha256", "must be exactly 32 bytes"))?;
        let settlement = Arc::clone(&self.settlement);
        let now = self.clock.now();
        let view = tokio::task::spawn_blocking(move || {
            settlement.acknowledge(request.batch_id, &crate::hex::encode(&sha256), now)
        })
        .await
        .map_err(|_| task_failed("acknowledge"))?
        .map_err(|err| self.fault(&err))?;
        Ok(Response::new(batch_message(&view)))
    }

    async fn get_signing_key(
        &self,
        _request: Request<pb::GetSigningKeyRequest>,
    ) -> Result<Response<pb::SigningKey>, Status> {
        let key = self.settlement.key();
        Ok(Response::new(pb::SigningKey {
            algorithm: crate::settlement::key::ALGORITHM.into(),
            key_id: key.key_id(),
            public_key: key.public_key().to_vec(),
        }))
    }
}

/// Why a pull to a folder failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The server answered with an error.
    #[error("the server refused or failed: {0}")]
    Status(#[from] Status),
    /// The stream does not start with a manifest, or the manifest is not valid.
    #[error("the server's answer is not a settlement batch: {0}")]
    Protocol(String),
    /// Writing the files failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not check against its manifest and the key.
    #[error("the pulled file does not check, so it was not kept: {0}")]
    Verify(#[from] crate::settlement::verify::VerifyError),
}

/// Where a pull put a batch.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The CSV file.
    pub file: PathBuf,
    /// The manifest beside it.
    pub manifest_file: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
}

/// Writes a pulled batch into `folder`: each file under a temporary name, synced, checked
/// (length, SHA-256, content, and the manifest's signature by `public_key`), then renamed
/// into place, so that the folder never holds a partial or unchecked file under a
/// batch's name. `progress(received, total)` is called after each chunk, in bytes.
///
/// The manifest is renamed into place before the CSV file: a CSV file under a batch's name
/// always has its manifest beside it. Temporary files are removed when the pull fails.
pub async fn pull_to_folder(
    stream: tonic::Streaming<pb::BatchChunk>,
    batch_id: u64,
    folder: &Path,
    public_key: &[u8; PUBLIC_KEY_LEN],
    progress: impl FnMut(u64, u64),
) -> Result<Pulled, PullError> {
    let mut partials = Vec::new();
    let pulled = pull_into(
        stream,
        batch_id,
        folder,
        public_key,
        progress,
        &mut partials,
    )
    .await;
    if pulled.is_err() {
        for partial in partials {
            let _ = std::fs::remove_file(partial);
        }
    }
    pulled
}

async fn pull_into(
    mut stream: tonic::Streaming<pb::BatchChunk>,
    batch_id: u64,
    folder: &Path,
    public_key: &[u8; PUBLIC_KEY_LEN],
    mut progress: impl FnMut(u64, u64),
    partials: &mut Vec<PathBuf>,
) -> Result<Pulled, PullError> {
    let protocol = |message: &str| PullError::Protocol(message.to_string());
    let manifest_bytes = match stream.next().await.transpose()? {
        Some(pb::BatchChunk {
            part: Some(pb::batch_chunk::Part::Manifest(bytes)),
        }) => bytes,
        _ => return Err(protocol("the first message is not the manifest")),
    };
    let manifest = Manifest::from_bytes(&manifest_bytes)
        .map_err(|err| PullError::Protocol(format!("the manifest does not parse: {err}")))?;
    // The name comes from the server: it must be the requested batch's, which is also a
    // plain file name (no folders).
    let expected_name = crate::settlement::model::file_name(manifest.provider_id, batch_id);
    if manifest.batch_id != batch_id || manifest.file_name != expected_name {
        return Err(PullError::Protocol(format!(
            "asked for batch {batch_id}, got a manifest for batch {} named {:?}",
            manifest.batch_id, manifest.file_name
        )));
    }
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| PullError::Io { path, source }
    };
    let file = folder.join(&manifest.file_name);
    let manifest_file = folder.join(manifest_name(&manifest.file_name));
    let partial_file = folder.join(format!(".{}.partial", manifest.file_name));
    let partial_manifest = folder.join(format!(".{}.partial", manifest_name(&manifest.file_name)));

    partials.extend([partial_file.clone(), partial_manifest.clone()]);
    let mut out = std::fs::File::create(&partial_file).map_err(io(&partial_file))?;
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await.transpose()? {
        let Some(pb::batch_chunk::Part::FileData(data)) = chunk.part else {
            return Err(protocol("a second manifest in the stream"));
        };
        received += data.len() as u64;
        if received > manifest.file_bytes {
            return Err(protocol("the file is longer than its manifest says"));
        }
        out.write_all(&data).map_err(io(&partial_file))?;
        progress(received, manifest.file_bytes);
    }
    out.sync_all().map_err(io(&partial_file))?;
    drop(out);
    let written = std::fs::File::open(&partial_file).map_err(io(&partial_file))?;
    crate::settlement::verify::verify(&manifest, std::io::BufReader::new(written), public_key)?;
    std::fs::write(&partial_manifest, manifest.to_bytes()).map_err(io(&partial_manifest))?;
    std::fs::File::open(&partial_manifest)
        .and_then(|file| file.sync_all())
        .map_err(io(&partial_manifest))?;
    std::fs::rename(&partial_manifest, &manifest_file).map_err(io(&manifest_file))?;
    std::fs::rename(&partial_file, &file).map_err(io(&file))?;
    std::fs::File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(io(folder))?;
    Ok(Pulled {
        file,
        manifest_file,
        manifest,
    })
}
