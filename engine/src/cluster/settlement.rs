//! Settlement in a cluster: one batch per provider joins that provider's entries on every
//! shard, in shard order, at one cut-off taken on every shard's log.
//!
//! The closes and acknowledgements live in their own JetStream stream
//! (`FAREWAY_SETTLEMENT`, one subject, replicated like the shards' logs). A close is one
//! message holding its batches: for each provider and shard the range of that shard's
//! ledger sequences it covers, and the joined file's totals, hash and signature. So a
//! close is all or nothing across the shards, and every node that reads the stream sees
//! the same batches. Closes are appended fenced by the last close's sequence (closes and
//! acknowledgements have a subject each, so acknowledgements never fence a close out), so
//! two nodes closing at once cannot both take the same batch ids or ranges: the second
//! one reads the first's close and tries again.
//!
//! Where a shard's range ends is decided once, by the closing node, from its own replicas
//! (a cut-off at *now* is each shard's log as it was when the close began: the node waits
//! until its replica has applied that much). A shard's ledger sequences are the same on
//! every replica (they come from the same log), so a pull from any node that holds every
//! shard writes the same bytes once its replicas have applied the batch's ranges.
//! `docs/cluster.md` has the design and why it is not a marker in each shard's log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use crate::clock::UnixMillis;
use crate::ledger::Replica;
use crate::settlement::file::Source;
use crate::settlement::key::SettlementKey;
use crate::settlement::model::{
    Batch, BatchView, CloseRequest, Closed, Cutoff, ShardRange, Totals,
};
use crate::settlement::{
    self, LIST_BATCHES_MAX, SettlementBook, SettlementError, export_checked, seal,
};

use super::names;

/// Times a close is computed again after another close came first.
const CLOSE_TRIES: usize = 3;

/// One message of the settlement stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Entry {
    /// A close and the batches it made, one per provider.
    Close {
        /// The close id, lowercase hex.
        id: String,
        /// The providers as asked (sorted, once each; empty: every known provider).
        providers: Vec<u16>,
        cutoff: Cutoff,
        batches: Vec<Batch>,
    },
    /// A provider's receipt of a batch's file.
    Ack { batch_id: u64, at: UnixMillis },
}

/// The stream folded: every close, batch and acknowledgement, and each provider's
/// position on each shard. Small: one batch per provider per close.
#[derive(Debug, Default)]
struct Book {
    /// The last stream sequence folded in.
    folded: u64,
    /// The stream sequence of the last close: the next close is fenced on it.
    last_close: u64,
    closes: HashMap<String, (Vec<u16>, Cutoff, Vec<u64>)>,
    batches: BTreeMap<u64, Batch>,
    acks: HashMap<u64, UnixMillis>,
    /// Where each provider's next batch starts on each shard.
    heads: BTreeMap<u16, Vec<ShardRange>>,
    next_batch_id: u64,
}

impl Book {
    fn fold(&mut self, sequence: u64, entry: Entry) {
        self.folded = sequence;
        match entry {
            Entry::Close {
                id,
                providers,
                cutoff,
                batches,
            } => {
                self.last_close = sequence;
                // Fences keep these out; were one to come, every node skips it alike.
                let stale = batches
                    .iter()
                    .any(|batch| batch.id < self.next_batch_id.max(1));
                if self.closes.contains_key(&id) || stale {
                    tracing::error!(
                        close = id,
                        sequence,
                        "a settlement close repeats an id or a batch id; skipped"
                    );
                    return;
                }
                let ids = batches.iter().map(|batch| batch.id).collect();
                for batch in batches {
                    self.next_batch_id = self.next_batch_id.max(batch.id + 1);
                    self.heads.insert(batch.provider_id, batch.shards.clone());
                    self.batches.insert(batch.id, batch);
                }
                self.closes.entry(id).or_insert((providers, cutoff, ids));
            }
            Entry::Ack { batch_id, at } => {
                if self.batches.contains_key(&batch_id) {
                    self.acks.entry(batch_id).or_insert(at);
                }
            }
        }
    }

    fn view(&self, id: u64) -> Option<BatchView> {
        self.batches.get(&id).map(|batch| BatchView {
            batch: batch.clone(),
            acknowledged_at: self.acks.get(&id).copied(),
        })
    }

    /// What a close starts from: the providers' positions and the next batch id, and
    /// the close it must follow.
    fn positions(&self) -> Positions {
        Positions {
            heads: self.heads.clone(),
            next_batch_id: self.next_batch_id.max(1),
            last_close: self.last_close,
        }
    }

    /// The batches an earlier close with this id made, or a conflict if it asked for
    /// something else; `None` for a new close id.
    fn earlier_close(
        &self,
        request: &CloseRequest,
        providers: &[u16],
    ) -> Result<Option<Closed>, SettlementError> {
        let Some((asked, cutoff, ids)) = self.closes.get(&request.id.to_string()) else {
            return Ok(None);
        };
        settlement::check_same_close(request, providers, asked, *cutoff)?;
        let batches = ids
            .iter()
            .map(|id| self.view(*id).ok_or(SettlementError::UnknownBatch(*id)))
            .collect::<Result<_, _>>()?;
        Ok(Some(Closed {
            batches,
            replay: true,
        }))
    }
}

/// A copy of the book's positions, so that a close seals its files without holding the
/// book (the fence on `last_close` keeps the copy honest).
#[derive(Debug)]
struct Positions {
    heads: BTreeMap<u16, Vec<ShardRange>>,
    next_batch_id: u64,
    last_close: u64,
}

impl Positions {
    /// Where provider `provider`'s next batch starts on `shard`.
    fn after(&self, provider: u16, shard: u32) -> u64 {
        self.heads
            .get(&provider)
            .and_then(|ranges| ranges.iter().find(|range| range.shard == shard))
            .map_or(0, |range| range.through_sequence)
    }
}

/// Settlement over a cluster's shards, as one node serves it.
#[derive(Debug)]
pub struct ClusterSettlement {
    js: jetstream::Context,
    runtime: Handle,
    key: SettlementKey,
    currency: String,
    shards: u32,
    /// This node's replicas, by shard.
    replicas: BTreeMap<u32, Arc<Replica>>,
    /// How long a close or pull waits for a replica to apply what it needs.
    catch_up_max: Duration,
    book: Mutex<Book>,
}

/// Makes the settlement stream, or checks the one there.
pub async fn ensure_stream(js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    let config = stream::Config {
        name: names::SETTLEMENT_STREAM.into(),
        subjects: vec![
            names::SETTLEMENT_CLOSE_SUBJECT.into(),
            names::SETTLEMENT_ACK_SUBJECT.into(),
        ],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        deny_delete: true,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(|err| {
        anyhow::anyhow!(
            "cannot make or open stream {}: {err}",
            names::SETTLEMENT_STREAM
        )
    })?;
    Ok(())
}

impl ClusterSettlement {
    /// Settlement over the shards whose replicas this node holds, signing with `key`.
    pub fn new(
        js: jetstream::Context,
        key: SettlementKey,
        currency: String,
        shards: u32,
        replicas: BTreeMap<u32, Arc<Replica>>,
        catch_up_max: Duration,
    ) -> ClusterSettlement {
        ClusterSettlement {
            js,
            runtime: Handle::current(),
            key,
            currency,
            shards,
            replicas,
            catch_up_max,
            book: Mutex::new(Book::default()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Folds in the stream's messages this node has not read yet.
    async fn refresh(&self) -> Result<(), SettlementError> {
        let mut stream = self
            .js
            .get_stream(names::SETTLEMENT_STREAM)
            .await
            .map_err(|err| unreachable_log("open", err))?;
        let last = stream
            .info()
            .await
            .map_err(|err| unreachable_log("read the state of", err))?
            .state
            .last_sequence;
        let mut next = self.book().folded + 1;
        while next <= last {
            let message = stream
                .get_raw_message(next)
                .await
                .map_err(|err| unreachable_log("read", err))?;
            let entry: Entry = serde_json::from_slice(&message.payload).map_err(|err| {
                SettlementError::Corrupt(format!(
                    "settlement log message {next} does not parse: {err}"
                ))
            })?;
            let mut book = self.book();
            if book.folded < next {
                book.fold(next, entry);
            }
            next = book.folded + 1;
        }
        Ok(())
    }

    /// Every shard's replica, or which one this node lacks.
    fn every_replica(&self) -> Result<Vec<&Replica>, SettlementError> {
        (0..self.shards)
            .map(|shard| {
                self.replicas.get(&shard).map(|replica| &**replica).ok_or_else(|| {
                    SettlementError::Unavailable(format!(
                        "this node holds no replica of shard {shard}; settlement is served by nodes that hold every shard"
                    ))
                })
            })
            .collect()
    }

    /// Waits until `done(replica)` holds, at most the catch-up bound.
    async fn wait_for(
        &self,
        shard: u32,
        replica: &Replica,
        what: &str,
        done: impl Fn(&Replica) -> Result<bool, SettlementError>,
    ) -> Result<(), SettlementError> {
        if super::wait_until(self.catch_up_max, || done(replica)).await? {
            return Ok(());
        }
        Err(SettlementError::Unavailable(format!(
            "this node's replica of shard {shard} has not applied {what} within {} ms; retry",
            self.catch_up_max.as_millis()
        )))
    }

    /// One try at a close: computes its batches from the book as read, and appends them
    /// fenced by the stream's last sequence. `Ok(None)` when another message came first.
    async fn try_close(
        &self,
        request: &CloseRequest,
        providers: &[u16],
        now: UnixMillis,
    ) -> Result<Option<Closed>, SettlementError> {
        self.refresh().await?;
        if let Some(closed) = self.book().earlier_close(request, providers)? {
            return Ok(Some(closed));
        }
        if let Cutoff::Sequence(_) = request.cutoff {
            return Err(SettlementError::CutoffUnsupported(
                "a sequence cut-off names a position in one ledger; a cluster has one ledger per shard: close at now or at a time".into(),
            ));
        }
        let replicas = self.every_replica()?;
        for (shard, replica) in (0..).zip(&replicas) {
            let cut = super::log::last_sequence(&self.js, shard).await?;
            self.wait_for(
                shard,
                replica,
                &format!("its log through {cut}"),
                |replica| Ok(replica.applied_stream_sequence()? >= cut),
            )
            .await?;
        }
        let snapshots: Vec<_> = replicas.iter().map(|r| r.view().snapshot()).collect();
        let sources: Vec<Source<'_>> = replicas
            .iter()
            .zip(&snapshots)
            .map(|(replica, snapshot)| Source {
                view: replica.view(),
                snapshot: Some(snapshot),
            })
            .collect();
        let positions = self.book().positions();
        let batches = self.close_batches(&positions, request, providers, &sources, now)?;
        let entry = Entry::Close {
            id: request.id.to_string(),
            providers: providers.to_vec(),
            cutoff: request.cutoff,
            batches,
        };
        let subject = names::SETTLEMENT_CLOSE_SUBJECT;
        let fence = Some(positions.last_close);
        if !self
            .append(&entry, subject, &request.id.to_string(), fence)
            .await?
        {
            return Ok(None);
        }
        self.refresh().await?;
        let closed = self.book().earlier_close(request, providers)?;
        Ok(closed.map(|closed| Closed {
            replay: false,
            ..closed
        }))
    }

    /// One new batch per provider (every known one when none is named), numbered on from
    /// the book's next id, each sealed over every shard's range.
    fn close_batches(
        &self,
        positions: &Positions,
        request: &CloseRequest,
        providers: &[u16],
        sources: &[Source<'_>],
        now: UnixMillis,
    ) -> Result<Vec<Batch>, SettlementError> {
        let mut known: BTreeSet<u16> = positions.heads.keys().copied().collect();
        for source in sources {
            if let Some(snapshot) = source.snapshot {
                known.extend(settlement::providers_with_entries(source.view, snapshot)?);
            }
        }
        if let Some(unknown) = providers.iter().find(|p| !known.contains(p)) {
            return Err(SettlementError::UnknownProvider(*unknown));
        }
        let providers: Vec<u16> = if providers.is_empty() {
            known.into_iter().collect()
        } else {
            providers.to_vec()
        };
        let mut batches = Vec::with_capacity(providers.len());
        for (id, provider_id) in (positions.next_batch_id..).zip(providers) {
            let shards = (0..)
                .zip(sources)
                .map(|(shard, source)| {
                    shard_range(positions, request.cutoff, provider_id, shard, source)
                })
                .collect::<Result<_, _>>()?;
            let mut batch = Batch {
                id,
                provider_id,
                after_sequence: 0,
                through_sequence: 0,
                cutoff: request.cutoff,
                created_at: now,
                currency: self.currency.clone(),
                totals: Totals::default(),
                file_bytes: 0,
                file_sha256: String::new(),
                key_id: String::new(),
                signature: String::new(),
                close_id: request.id.to_string(),
                shards,
            };
            seal(&mut batch, sources, &self.key)?;
            batches.push(batch);
        }
        Ok(batches)
    }

    /// Appends `entry` to `subject`, when `after` is given only if that subject's last
    /// message is still at stream sequence `after`; false if another came first. A retry
    /// of the same append (same message id) is recognised by the server.
    async fn append(
        &self,
        entry: &Entry,
        subject: &'static str,
        message_id: &str,
        after: Option<u64>,
    ) -> Result<bool, SettlementError> {
        let payload = serde_json::to_vec(entry).map_err(|err| {
            SettlementError::Corrupt(format!("cannot encode a settlement entry: {err}"))
        })?;
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(message_id);
        if let Some(after) = after {
            publish = publish.expected_last_subject_sequence(after);
        }
        let answer = match self.js.send_publish(subject, publish).await {
            Ok(pending) => pending.await,
            Err(err) => Err(err),
        };
        match answer {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(err) => Err(unreachable_log("append to", err)),
        }
    }

    /// Runs `work` on the node's runtime from a blocking thread (the gRPC service calls
    /// settlement from `spawn_blocking`).
    fn block_on<T>(&self, work: impl Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }
}

/// Provider `provider`'s range on `shard` for a close at `cutoff`.
fn shard_range(
    positions: &Positions,
    cutoff: Cutoff,
    provider: u16,
    shard: u32,
    source: &Source<'_>,
) -> Result<ShardRange, SettlementError> {
    let after = positions.after(provider, shard);
    let snapshot = source.snapshot.ok_or_else(|| {
        SettlementError::Corrupt("a close reads its shards through snapshots".into())
    })?;
    let last = settlement::last_sequence(source.view, snapshot)?;
    let through = match cutoff {
        Cutoff::Time(time) => {
            settlement::time_cutoff(source.view, snapshot, provider, after, last, time)?
        }
        Cutoff::Now | Cutoff::Sequence(_) => last.max(after),
    };
    Ok(ShardRange {
        shard,
        after_sequence: after,
        through_sequence: through,
    })
}

fn unreachable_log(what: &str, err: impl std::fmt::Display) -> SettlementError {
    SettlementError::Unavailable(format!(
        "cannot {what} the settlement log ({}): {err}; retry",
        names::SETTLEMENT_STREAM
    ))
}

impl SettlementBook for ClusterSettlement {
    fn key(&self) -> &SettlementKey {
        &self.key
    }

    fn close(&self, request: &CloseRequest, now: UnixMillis) -> Result<Closed, SettlementError> {
        let mut providers = request.providers.clone();
        providers.sort_unstable();
        providers.dedup();
        for _ in 0..CLOSE_TRIES {
            if let Some(closed) = self.block_on(self.try_close(request, &providers, now))? {
                tracing::info!(close = %request.id, batches = closed.batches.len(), replay = closed.replay, "cluster settlement batches closed");
                return Ok(closed);
            }
        }
        Err(SettlementError::Unavailable(format!(
            "other closes came first {CLOSE_TRIES} times; retry close {}",
            request.id
        )))
    }

    fn batch(&self, id: u64) -> Result<Option<BatchView>, SettlementError> {
        self.block_on(self.refresh())?;
        Ok(self.book().view(id))
    }

    fn list(
        &self,
        provider_id: Option<u16>,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<BatchView>, SettlementError> {
        self.block_on(self.refresh())?;
        let book = self.book();
        Ok(book
            .batches
            .range(after_id.saturating_add(1)..)
            .filter(|(_, batch)| provider_id.is_none_or(|p| p == batch.provider_id))
            .take(limit.min(LIST_BATCHES_MAX))
            .filter_map(|(id, _)| book.view(*id))
            .collect())
    }

    fn export(&self, batch: &Batch, out: &mut dyn Write) -> Result<(), SettlementError> {
        let replicas = self.every_replica()?;
        for (range, replica) in batch.shards.iter().zip(&replicas) {
            let through = range.through_sequence;
            self.block_on(self.wait_for(
                range.shard,
                replica,
                &format!("ledger sequence {through}"),
                |replica| Ok(replica.view().next_sequence()? > through),
            ))?;
        }
        let sources: Vec<Source<'_>> = replicas
            .iter()
            .map(|replica| Source {
                view: replica.view(),
                snapshot: None,
            })
            .collect();
        export_checked(&sources, batch, out)
    }

    fn acknowledge(
        &self,
        id: u64,
        file_sha256: &str,
        now: UnixMillis,
    ) -> Result<BatchView, SettlementError> {
        let view = self.batch(id)?.ok_or(SettlementError::UnknownBatch(id))?;
        settlement::check_receipt(&view, file_sha256)?;
        if view.acknowledged_at.is_some() {
            return Ok(view);
        }
        let entry = Entry::Ack {
            batch_id: id,
            at: now,
        };
        self.block_on(async {
            let subject = names::SETTLEMENT_ACK_SUBJECT;
            self.append(&entry, subject, &format!("ack-{id}"), None)
                .await?;
            self.refresh().await
        })?;
        self.book()
            .view(id)
            .ok_or(SettlementError::UnknownBatch(id))
    }
}
