//! `fareway.v1.SettlementService` for the finance team (the client side of a pull is
//! `fareway_gate::settlement::pull`). Pulls read whole batches, so at most `limits.settlement_jobs_max` run at
//! once; more are refused with `RESOURCE_EXHAUSTED`. Closes have a slot of their own
//! (they run one at a time anyway), so pulls, however slow their readers, never keep the
//! finance team from closing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fareway_proto::v1 as pb;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::clock::{Clock, UnixMillis};
use crate::server::metrics::Metrics;
use crate::settlement::model::{BatchView, CloseRequest, Cutoff, LATEST_TIME};
use crate::settlement::{LIST_BATCHES_MAX, SettlementBook, SettlementError};

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
