//! `fareway.v1.GateService`: unary and streaming taps.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Instant;

use fareway_proto::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::gate::Gatekeeper;
use crate::gate::bundle::{BundleRequestError, Bundles};
use crate::gate::upload::{UPLOAD_TAPS_MAX, UploadStatus};
use crate::server::metrics::Metrics;

use super::convert;
use super::ending::EndingStream;

/// Each connection's share of the requests in flight: a semaphore per peer address,
/// made on its first request and forgotten once no request of it holds one. One client
/// (a gate whose firmware stopped reading, or a hostile one) then holds at most its share,
/// and the other connections' taps are still admitted.
#[derive(Debug)]
pub struct ConnectionShares {
    per_connection: usize,
    shares: std::sync::Mutex<std::collections::HashMap<SocketAddr, Weak<Semaphore>>>,
}

impl ConnectionShares {
    /// Shares of `per_connection` requests each.
    pub fn new(per_connection: usize) -> ConnectionShares {
        ConnectionShares {
            per_connection,
            shares: std::sync::Mutex::default(),
        }
    }

    /// The share of the connection from `peer` (a share of its own for a caller whose
    /// address is unknown, as in-process calls are).
    pub fn of(&self, peer: Option<SocketAddr>) -> Arc<Semaphore> {
        let Some(peer) = peer else {
            return Arc::new(Semaphore::new(self.per_connection));
        };
        let mut shares = self
            .shares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(share) = shares.get(&peer).and_then(Weak::upgrade) {
            return share;
        }
        // Forget the connections that hold nothing any more before adding one, so that
        // the map never holds more than the connections with work in flight.
        shares.retain(|_, share| share.strong_count() > 0);
        let share = Arc::new(Semaphore::new(self.per_connection));
        shares.insert(peer, Arc::downgrade(&share));
        share
    }
}

/// The gate API over the domain's gate service.
#[derive(Debug, Clone)]
pub struct GateApi {
    service: Arc<Gatekeeper>,
    in_flight: Arc<Semaphore>,
    shares: Arc<ConnectionShares>,
    metrics: Arc<Metrics>,
    stream_taps_in_flight_max: usize,
    /// Becomes true when the server stops: open tap streams then end, so that a graceful
    /// stop does not wait for gates that never hang up.
    stopping: watch::Receiver<bool>,
    /// The gate bundles, when the server signs them.
    bundles: Option<Arc<Bundles>>,
}

impl GateApi {
    /// A gate API sharing the server-wide limit on requests in flight, of which each
    /// connection may hold its share.
    pub fn new(
        service: Arc<Gatekeeper>,
        in_flight: Arc<Semaphore>,
        shares: Arc<ConnectionShares>,
        metrics: Arc<Metrics>,
        stream_taps_in_flight_max: usize,
        stopping: watch::Receiver<bool>,
    ) -> GateApi {
        GateApi {
            service,
            in_flight,
            shares,
            metrics,
            stream_taps_in_flight_max,
            stopping,
            bundles: None,
        }
    }

    /// Serves gate bundles signed with `bundles`' key.
    pub fn with_bundles(mut self, bundles: Arc<Bundles>) -> GateApi {
        self.bundles = Some(bundles);
        self
    }

    /// Answers one tap: the response, or the status of a fault.
    async fn answer(&self, request: pb::TapRequest) -> Result<pb::TapResponse, Status> {
        let started = Instant::now();
        let input = convert::tap_input(request).inspect_err(|_| {
            self.metrics.record_fault("invalid_argument");
        })?;
        let span = tracing::debug_span!("tap", gate_id = input.gate_id, tx = %input.id);
        match self.service.tap(input).instrument(span.clone()).await {
            Ok(answer) => {
                self.metrics.record_tap(&answer, started.elapsed());
                span.in_scope(|| {
                    tracing::debug!(
                        accepted = answer.accepted,
                        reason = answer.reason.map_or("", |reason| reason.code()),
                        fare_minor = answer.fare.0,
                        replay = answer.replay,
                        "tap answered"
                    );
                });
                Ok(convert::tap_response(&answer))
            }
            Err(err) => {
                self.metrics.record_fault(err.code());
                // Every failure is counted; the log gets one line per interval, so that a
                // client sending malformed taps on purpose cannot flood it.
                if let Some(held_back) = self.metrics.tap_fault_warnings().allow() {
                    span.in_scope(|| tracing::warn!(cause = %err, held_back, "tap failed"));
                }
                Err(convert::gate_status(&err))
            }
        }
    }

    /// Reads a stream's taps and answers each as soon as it is ready, until the client
    /// ends the stream, the server stops, or the client leaves its answers unread past
    /// [`ANSWER_UNREAD_MAX`]; returns how the stream ends.
    async fn read_stream(
        self,
        mut inbound: Streaming<pb::TapRequest>,
        connection: Arc<Semaphore>,
        answers: mpsc::Sender<Result<pb::TapResponse, Status>>,
    ) -> Result<(), Status> {
        let stream_in_flight = Arc::new(Semaphore::new(self.stream_taps_in_flight_max));
        let mut stopping = self.stopping.clone();
        let (abandon, mut abandoned) = watch::channel(false);
        loop {
            let next = tokio::select! {
                next = inbound.next() => next,
                // The server stops: read no more taps; the stream ends once the taps
                // read are answered (their tasks hold the answer channel).
                _ = stopping.wait_for(|stop| *stop) => None,
                // The client stopped reading its answers: read no more of its taps.
                _ = abandoned.wait_for(|gone| *gone) => None,
            };
            let request = match next {
                Some(Ok(request)) => request,
                // The client went away or broke the protocol: stop reading.
                Some(Err(_)) | None => break,
            };
            let permits =
                admit(&stream_in_flight, &self.metrics, "taps on this stream").and_then(|stream| {
                    let own = admit(&connection, &self.metrics, "requests on this connection")?;
                    let all = admit(&self.in_flight, &self.metrics, "requests")?;
                    Ok([stream, own, all])
                });
            match permits {
                Ok(permits) => self.answer_on_stream(request, permits, &answers, &abandon),
                Err(status) => {
                    let answer = convert::tap_error(request.transaction_id, &status);
                    if answers.send(Ok(answer)).await.is_err() {
                        break;
                    }
                }
            }
        }
        if *abandoned.borrow() {
            return Err(convert::status(
                tonic::Code::ResourceExhausted,
                format!(
                    "this stream's answers went unread for {} ms; its taps are recorded and a retry with the same transaction id gets its answer",
                    ANSWER_UNREAD_MAX.as_millis()
                ),
                "answers_unread",
            ));
        }
        Ok(())
    }

    /// Answers one tap of a stream in a task of its own, holding its permits until its
    /// answer is handed to the stream (or the client is given up on).
    fn answer_on_stream(
        &self,
        request: pb::TapRequest,
        permits: [OwnedSemaphorePermit; 3],
        answers: &mpsc::Sender<Result<pb::TapResponse, Status>>,
        abandon: &watch::Sender<bool>,
    ) {
        let (api, answers, abandon) = (self.clone(), answers.clone(), abandon.clone());
        tokio::spawn(async move {
            let transaction_id = request.transaction_id.clone();
            let answer = match api.answer(request).await {
                Ok(answer) => answer,
                Err(status) => convert::tap_error(transaction_id, &status),
            };
            // A closed receiver means the client left; the tap is recorded anyway, and a
            // retry with the same id gets this answer. A client that leaves its answers
            // unread past the bound gives up the stream: its permits come back here, so it
            // cannot starve the other gates.
            let sent = tokio::time::timeout(ANSWER_UNREAD_MAX, answers.send(Ok(answer)));
            if sent.await.is_err() && !abandon.send_replace(true) {
                api.metrics.record_fault("answers_unread");
                if let Some(held_back) = api.metrics.tap_fault_warnings().allow() {
                    tracing::warn!(
                        unread_ms = ANSWER_UNREAD_MAX.as_millis() as u64,
                        held_back,
                        "a tap stream's answers went unread; the stream is ended"
                    );
                }
            }
            drop(permits);
        });
    }
}

/// How long a tap's answer may wait for its stream's client to read it. A gate reads its
/// answers as they come; one that has not read for this long is broken or hostile, and
/// its stream is ended so that the permits its taps hold go back to the other gates.
pub const ANSWER_UNREAD_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// A permit from a semaphore at once, or `RESOURCE_EXHAUSTED`: excess load is shed, never
/// queued.
pub fn admit(
    semaphore: &Arc<Semaphore>,
    metrics: &Metrics,
    what: &str,
) -> Result<OwnedSemaphorePermit, Status> {
    Arc::clone(semaphore).try_acquire_owned().map_err(|_| {
        metrics.record_shed();
        convert::status(
            tonic::Code::ResourceExhausted,
            format!("too many {what} in flight; retry with the same transaction id"),
            "overloaded",
        )
    })
}

#[tonic::async_trait]
impl pb::gate_service_server::GateService for GateApi {
    async fn tap(
        &self,
        request: Request<pb::TapRequest>,
    ) -> Result<Response<pb::TapResponse>, Status> {
        let connection = self.shares.of(request.remote_addr());
        let _own = admit(&connection, &self.metrics, "requests on this connection")?;
        let _all = admit(&self.in_flight, &self.metrics, "requests")?;
        self.answer(request.into_inner()).await.map(Response::new)
    }

    /// The answers as they are ready, then the stream's end: an error status when the
    /// client left its answers unread past [`ANSWER_UNREAD_MAX`].
    type TapStreamStream = EndingStream<pb::TapResponse>;

    async fn tap_stream(
        &self,
        request: Request<Streaming<pb::TapRequest>>,
    ) -> Result<Response<Self::TapStreamStream>, Status> {
        let connection = self.shares.of(request.remote_addr());
        let inbound = request.into_inner();
        let (answers, receiver) = mpsc::channel(self.stream_taps_in_flight_max);
        let (end, ended) = oneshot::channel();
        let api = self.clone();
        tokio::spawn(async move {
            let outcome = api.read_stream(inbound, connection, answers).await;
            let _ = end.send(outcome);
        });
        Ok(Response::new(EndingStream::new(receiver, ended)))
    }

    async fn upload_offline_taps(
        &self,
        request: Request<pb::UploadOfflineTapsRequest>,
    ) -> Result<Response<pb::UploadOfflineTapsResponse>, Status> {
        // One upload holds one request of its connection's share and of the server's:
        // its taps are decided a bounded number at a time (`gate::upload`).
        let connection = self.shares.of(request.remote_addr());
        let _own = admit(&connection, &self.metrics, "requests on this connection")?;
        let _all = admit(&self.in_flight, &self.metrics, "requests")?;
        let request = request.into_inner();
        if request.taps.len() > UPLOAD_TAPS_MAX {
            self.metrics.record_fault("invalid_argument");
            return Err(convert::invalid(
                "taps",
                &format!(
                    "{} taps in one upload; at most {UPLOAD_TAPS_MAX}: send the rest in another",
                    request.taps.len()
                ),
            ));
        }
        let parsed = convert::offline_taps(request);
        let taps = parsed
            .iter()
            .filter_map(|tap| tap.as_ref().ok().cloned())
            .collect();
        let answers = self.service.upload(taps).await.map_err(|err| {
            self.metrics.record_fault(err.code());
            convert::gate_status(&err)
        })?;
        for answer in &answers {
            self.metrics.record_offline_tap(answer);
        }
        let rejected = answers
            .iter()
            .filter(|answer| answer.status == UploadStatus::Rejected)
            .count();
        let malformed = parsed.iter().filter(|tap| tap.is_err()).count();
        tracing::info!(
            taps = parsed.len(),
            rejected,
            malformed,
            "offline taps uploaded"
        );
        // The answers in request order: the domain's for the well-formed taps, in theirs.
        let mut answered = answers.iter().map(convert::offline_tap_result);
        let results = parsed
            .into_iter()
            .map(|tap| match tap {
                Ok(_) => answered.next().unwrap_or_default(),
                Err(malformed) => malformed,
            })
            .collect();
        Ok(Response::new(pb::UploadOfflineTapsResponse { results }))
    }

    async fn get_gate_bundle(
        &self,
        request: Request<pb::GetGateBundleRequest>,
    ) -> Result<Response<pb::GateBundle>, Status> {
        let _all = admit(&self.in_flight, &self.metrics, "requests")?;
        let Some(bundles) = self.bundles.clone() else {
            return Err(Status::unimplemented("this server signs no gate bundles"));
        };
        let request = request.into_inner();
        let service = Arc::clone(&self.service);
        // The deny list is read from RocksDB: not on a runtime thread.
        let answered = tokio::task::spawn_blocking(move || {
            let registry = service.verifier().registry();
            bundles.answer(
                service.commands(),
                &registry,
                request.have_version,
                &request.have_positions,
            )
        })
        .await
        .map_err(|err| Status::internal(format!("bundle task failed: {err}")))?;
        let bundle = answered.map_err(|err| match err {
            // Retryable: another node, or this one once its replicas caught up, may answer.
            BundleRequestError::Future { .. } => convert::status(
                tonic::Code::Unavailable,
                err.to_string(),
                "bundle_from_future",
            ),
            BundleRequestError::Ledger(err) => convert::ledger_status(&err),
        })?;
        Ok(Response::new(pb::GateBundle {
            body: bundle.body,
            signature: bundle.signature.to_vec(),
            version: bundle.version,
            delta: bundle.delta,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_past_the_in_flight_limit_is_shed_at_once_with_resource_exhausted() {
        let metrics = Metrics::new();
        let limit = Arc::new(Semaphore::new(1));
        let held = admit(&limit, &metrics, "requests").unwrap();
        let shed = admit(&limit, &metrics, "requests").unwrap_err();
        assert_eq!(shed.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            shed.metadata().get(convert::ERROR_CODE_METADATA).unwrap(),
            "overloaded"
        );
        let stats = crate::ledger::WriterStats::default();
        assert!(
            metrics
                .render(&stats)
                .contains("fareway_requests_shed_total 1")
        );
        // The permit comes back when the call ends.
        drop(held);
        assert!(admit(&limit, &metrics, "requests").is_ok());
    }
}
