//! A shard's log: a JetStream stream with one subject, 3 replicas, file storage; one
//! message per group commit (`ledger::codec::encode_log_entry`).
//!
//! Appends are fenced: each names the sequence it expects to follow
//! (`Nats-Expected-Last-Subject-Sequence`), so a leader that lost its lease, whatever it
//! believes, cannot append once another leader has. Each carries a message id unique to
//! the leader's term and position; an append whose answer did not come is sent again
//! with the same id and the same expected sequence, and the server's answer settles it:
//! stored once (a duplicate's acknowledgement names the first), or refused because
//! another message follows. The outcome is never guessed.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream, stream::DirectGetErrorKind};
use tokio::runtime::Handle;

use crate::ledger::{LedgerError, LogAppend, Replica, Request, codec};

use super::names;

/// Times an append whose answer did not come is sent again before its outcome is called
/// unknown.
pub const APPEND_TRIES: usize = 3;

/// Makes shard `shard`'s stream, or checks the one there.
pub async fn ensure_stream(
    js: &jetstream::Context,
    shard: u32,
    replicas: usize,
) -> anyhow::Result<()> {
    let config = stream::Config {
        name: names::stream(shard),
        subjects: vec![names::log_subject(shard)],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        // Retries of an append within this window are recognised by their message id.
        duplicate_window: Duration::from_secs(120),
        // The log is the ledger: nobody deletes from it.
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(|err| {
        anyhow::anyhow!("cannot make or open stream {}: {err}", names::stream(shard))
    })?;
    Ok(())
}

/// The last sequence of shard `shard`'s stream (0 when it is empty).
pub async fn last_sequence(js: &jetstream::Context, shard: u32) -> Result<u64, LedgerError> {
    // Opening the stream reads its state as it is now: one request, not two.
    let stream = js
        .get_stream(names::stream(shard))
        .await
        .map_err(|err| unavailable(shard, "open the stream", err))?;
    Ok(stream.cached_info().state.last_sequence)
}

/// The leader's appends to shard `shard`'s stream, called from the ledger's writer thread.
#[derive(Debug)]
pub struct ShardLog {
    js: jetstream::Context,
    runtime: Handle,
    shard: u32,
    /// Unique to this leader's term: the node and its lease revision.
    term: String,
}

impl ShardLog {
    /// Appends for shard `shard` in the term `term` (node id and lease revision), on
    /// `runtime`.
    pub fn new(js: jetstream::Context, runtime: Handle, shard: u32, term: String) -> ShardLog {
        ShardLog {
            js,
            runtime,
            shard,
            term,
        }
    }

    async fn append_async(&self, after: u64, payload: Vec<u8>) -> Result<u64, LedgerError> {
        let message_id = format!("{}-{after}", self.term);
        let payload = bytes::Bytes::from(payload);
        for attempt in 0..APPEND_TRIES {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(&message_id)
                .expected_last_subject_sequence(after);
            let answer = match self
                .js
                .send_publish(names::log_subject(self.shard), publish)
                .await
            {
                Ok(pending) => pending.await,
                Err(err) => Err(err),
            };
            match answer {
                // A duplicate on the first try means this term already appended after
                // `after` and this replica did not record it: it is behind its log.
                Ok(ack) if ack.duplicate && attempt == 0 => {
                    return Err(LedgerError::Unavailable(format!(
                        "shard {}: the log already holds this leader's message after sequence {after}; this node steps down and replays it",
                        self.shard
                    )));
                }
                Ok(ack) => return Ok(ack.sequence),
                Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                    return Err(LedgerError::Unavailable(format!(
                        "shard {}: another leader appended after sequence {after}; this node steps down",
                        self.shard
                    )));
                }
                Err(err) => {
                    tracing::warn!(shard = self.shard, after, cause = %err, "log append unanswered; sending it again")
                }
            }
        }
        Err(LedgerError::Unavailable(format!(
            "shard {}: the log append after sequence {after} went unanswered {APPEND_TRIES} times; its outcome is settled by replay",
            self.shard
        )))
    }
}

impl LogAppend for ShardLog {
    fn append(&mut self, after: u64, requests: &[Request]) -> Result<u64, LedgerError> {
        let payload = codec::encode_log_entry(requests);
        self.runtime.block_on(self.append_async(after, payload))
    }
}

/// Applies shard `shard`'s stream to `replica` from its applied sequence until the stream's
/// end as it was when this started, and returns the applied sequence then. A message that
/// does not decode stops it with an error naming the sequence.
///
/// It reads each message by a direct get, which any replica of the stream answers:
/// unlike a consumer, it needs no answer from JetStream's meta group, so a node can catch
/// up (and lead) while the meta group elects a leader after a server was lost.
pub async fn catch_up(
    js: &jetstream::Context,
    shard: u32,
    replica: &Replica,
) -> Result<u64, LedgerError> {
    let stream = js
        .get_stream(names::stream(shard))
        .await
        .map_err(|err| unavailable(shard, "open the stream", err))?;
    let info = stream.cached_info();
    // A stream without a leader is answered by its members, which may be behind: its
    // end would be stale (safe, as the first append is fenced, but a wasted term).
    if info
        .cluster
        .as_ref()
        .is_some_and(|cluster| cluster.leader.is_none())
    {
        return Err(LedgerError::Unavailable(format!(
            "shard {shard}: the log has no leader now"
        )));
    }
    let end = info.state.last_sequence;
    let mut applied = replica.applied_stream_sequence()?;
    while applied < end {
        let sequence = applied + 1;
        let payload = read_at(&stream, shard, sequence).await?;
        apply_payload(shard, replica, sequence, &payload)?;
        applied = sequence;
    }
    Ok(applied)
}

/// Direct gets of one message answered "not found" before it is asked of the stream's
/// leader instead: the log is never deleted from, so the replica that answered is behind.
const DIRECT_TRIES: u32 = 3;

/// The payload of the message at `sequence` (at most the stream's last sequence): by
/// direct get, which any replica answers without the meta group; when replicas that are
/// behind answer "not found", from the stream's leader.
async fn read_at(
    stream: &jetstream::stream::Stream,
    shard: u32,
    sequence: u64,
) -> Result<bytes::Bytes, LedgerError> {
    for _ in 0..DIRECT_TRIES {
        match stream.direct_get(sequence).await {
            Ok(message) => return checked(shard, sequence, message),
            Err(err) if err.kind() == DirectGetErrorKind::NotFound => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(err) => return Err(unavailable(shard, "read the log", err)),
        }
    }
    match stream.get_raw_message(sequence).await {
        Ok(message) => checked(shard, sequence, message),
        Err(err) => Err(unavailable(
            shard,
            &format!("read log message {sequence} from the stream's leader"),
            err,
        )),
    }
}

/// The payload of `message`, once it is the one asked for.
fn checked(
    shard: u32,
    sequence: u64,
    message: jetstream::message::StreamMessage,
) -> Result<bytes::Bytes, LedgerError> {
    if message.sequence != sequence {
        return Err(LedgerError::Unavailable(format!(
            "shard {shard}: asked for log message {sequence}, got {}",
            message.sequence
        )));
    }
    Ok(message.payload)
}

/// A follower's consumer of a shard's log.
pub type Following = jetstream::consumer::pull::Ordered;

/// What a follower's consumer gives: a message, an error, or the end.
pub type Delivered = Result<jetstream::Message, jetstream::consumer::pull::OrderedError>;

/// The stream's messages from `start`, in order, as they come.
pub async fn follow(
    js: &jetstream::Context,
    shard: u32,
    start: u64,
) -> Result<Following, LedgerError> {
    let stream = js
        .get_stream(names::stream(shard))
        .await
        .map_err(|err| unavailable(shard, "open the stream", err))?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|err| unavailable(shard, "follow the stream", err))?;
    consumer
        .messages()
        .await
        .map_err(|err| unavailable(shard, "read the stream", err))
}

/// Applies one message as the follower's stream gave it; returns its sequence.
pub fn apply_message(
    shard: u32,
    replica: &Replica,
    message: Option<Delivered>,
) -> Result<u64, LedgerError> {
    let message = match message {
        Some(Ok(message)) => message,
        Some(Err(err)) => return Err(unavailable(shard, "read the stream", err)),
        None => {
            return Err(LedgerError::Unavailable(format!(
                "shard {shard}: the stream ended"
            )));
        }
    };
    let sequence = message
        .info()
        .map_err(|err| unavailable(shard, "read a message's sequence", err))?
        .stream_sequence;
    apply_payload(shard, replica, sequence, &message.payload)?;
    Ok(sequence)
}

/// Applies the log message at `sequence`. One that does not decode is an error naming
/// its sequence: a replica never skips one.
fn apply_payload(
    shard: u32,
    replica: &Replica,
    sequence: u64,
    payload: &[u8],
) -> Result<(), LedgerError> {
    let requests = codec::decode_log_entry(payload).map_err(|err| {
        LedgerError::Invariant(format!(
            "shard {shard}: log message {sequence} cannot be applied: {err}"
        ))
    })?;
    replica.apply_logged(sequence, &requests)
}

fn unavailable(shard: u32, what: &str, err: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unavailable(format!("shard {shard}: cannot {what}: {err}"))
}
