//! Settlement: what the finance team takes to each payment provider. A batch per provider
//! covers every settled ledger entry (charges, fare-charging taps, journey closes,
//! refunds) since the provider's previous batch, each exactly once, in ledger order, up to
//! a cut-off. Its file is a CSV streamed out of the ledger; its manifest carries the
//! file's SHA-256 and the engine's Ed25519 signature. Rules in `docs/settlement.md`.
//!
//! Closing reads a RocksDB snapshot, so taps keep flowing: the ledger's writer never
//! waits for settlement. One close runs at a time; its batches, the providers' new
//! positions and the close id are written in one synced write, so a crash leaves either
//! no batch or complete ones.
//!
//! Settlement reads the ledger through its read-only [`LedgerView`] and writes only its
//! own column family, through [`crate::ledger::SettlementColumn`].
//!
//! This module never sees protobuf types and never reads the wall clock.

pub mod file;
pub mod key;
pub mod model;
pub mod reconcile;

pub use fareway_gate::settlement::{HashingWriter, manifest, pull, verify};

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use rocksdb::{IteratorMode, Snapshot};
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::ledger::codec::{self, settlement_keys as keys};
use crate::ledger::store::{CF_PROVIDER_ENTRIES, CF_SETTLEMENT};
use crate::ledger::{Ledger, LedgerError, LedgerView, SettlementWrite, TxId};

use self::key::SettlementKey;
use self::model::{Batch, BatchView, CloseRequest, Closed, Cutoff};

/// Most batches one list call returns.
pub const LIST_BATCHES_MAX: usize = 1_000;

/// Errors of settlement.
#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    /// No batch with this id.
    #[error("there is no batch {0}")]
    UnknownBatch(u64),
    /// A close names a provider with no settlement entries and no batches.
    #[error("provider {0} has no settlement entries and no batches")]
    UnknownProvider(u16),
    /// The close id was used before with other content.
    #[error("close {id} was already used with a different {field}")]
    Conflict {
        /// The close id.
        id: TxId,
        /// The first field that differs.
        field: &'static str,
    },
    /// The cut-off sequence is past what the ledger has recorded.
    #[error("cut-off sequence {requested} is past the ledger's last sequence {last}")]
    CutoffAhead {
        /// The requested sequence.
        requested: u64,
        /// The ledger's last sequence.
        last: u64,
    },
    /// An acknowledgement names another file than the batch's.
    #[error("the acknowledged file's SHA-256 {given} is not batch {batch}'s ({expected})")]
    HashMismatch {
        /// The batch.
        batch: u64,
        /// The hash given.
        given: String,
        /// The batch's file hash.
        expected: String,
    },
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A read or write of settlement state failed.
    #[error("settlement storage failed: {0}")]
    Storage(#[from] rocksdb::Error),
    /// Writing a file out failed (for a pull, usually the client went away).
    #[error("writing the settlement file failed: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data does not hold together.
    #[error("settlement data is corrupt: {0}")]
    Corrupt(String),
    /// A cut-off this deployment cannot take (a ledger sequence, in a cluster).
    #[error("{0}")]
    CutoffUnsupported(String),
    /// Something settlement needs is out of reach for now (a cluster's log, a shard
    /// replica still catching up): retry.
    #[error("{0}")]
    Unavailable(String),
}

impl SettlementError {
    /// The stable code string.
    pub fn code(&self) -> &'static str {
        match self {
            SettlementError::UnknownBatch(_) => "unknown_batch",
            SettlementError::UnknownProvider(_) => "unknown_provider",
            SettlementError::Conflict { .. } => "id_conflict",
            SettlementError::CutoffAhead { .. } => "cutoff_ahead",
            SettlementError::HashMismatch { .. } => "hash_mismatch",
            SettlementError::Ledger(err) => err.code(),
            SettlementError::Storage(_) => "storage",
            SettlementError::Io(_) => "io",
            SettlementError::Corrupt(_) => "corrupt",
            SettlementError::CutoffUnsupported(_) => "cutoff_unsupported",
            SettlementError::Unavailable(_) => "unavailable",
        }
    }
}

/// Where batches are closed, kept and pulled: an embedded engine's ledger
/// ([`Settlement`]), or a cluster's shards (`cluster::settlement`). The gRPC service and
/// the command line see only this.
pub trait SettlementBook: Send + Sync + std::fmt::Debug {
    /// The key that signs manifests.
    fn key(&self) -> &SettlementKey;

    /// Closes one batch per provider at the request's cut-off, at time `now`, or returns
    /// the batches an earlier close with the same id made. Blocks while it reads the
    /// entries (from async code, call it in `spawn_blocking`).
    fn close(&self, request: &CloseRequest, now: UnixMillis) -> Result<Closed, SettlementError>;

    /// A batch and its acknowledgement.
    fn batch(&self, id: u64) -> Result<Option<BatchView>, SettlementError>;

    /// Up to `limit` batches (at most [`LIST_BATCHES_MAX`]) with an id greater than
    /// `after_id`, of one provider or all, oldest first.
    fn list(
        &self,
        provider_id: Option<u16>,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<BatchView>, SettlementError>;

    /// Writes the batch's CSV file to `out`, byte for byte as at its close. A file that
    /// comes out different (a damaged ledger) is reported as corrupt once written: the
    /// reader's hash check rejects it too.
    fn export(&self, batch: &Batch, out: &mut dyn Write) -> Result<(), SettlementError>;

    /// Records the provider's receipt of a batch's file, checked by its SHA-256. Once
    /// acknowledged, a batch stays acknowledged at its first time.
    fn acknowledge(
        &self,
        id: u64,
        file_sha256: &str,
        now: UnixMillis,
    ) -> Result<BatchView, SettlementError>;

    /// The batch's manifest file.
    fn manifest(&self, batch: &Batch) -> Vec<u8> {
        batch.manifest().to_bytes()
    }
}

/// Streams the batch's file once from `sources` to learn its totals, length and hash,
/// and signs its manifest with `key`.
pub fn seal(
    batch: &mut Batch,
    sources: &[file::Source<'_>],
    key: &SettlementKey,
) -> Result<(), SettlementError> {
    let mut hashing = HashingWriter::new(std::io::sink());
    batch.totals = file::write_file(sources, batch, &mut hashing)?;
    (batch.file_bytes, batch.file_sha256) = hashing.finish();
    let mut manifest = batch.manifest();
    key.sign_manifest(&mut manifest);
    batch.key_id = manifest.signature.key_id;
    batch.signature = manifest.signature.value;
    Ok(())
}

/// Writes a closed batch's file from `sources` to `out`, and checks it came out as at its
/// close.
pub fn export_checked(
    sources: &[file::Source<'_>],
    batch: &Batch,
    out: &mut dyn Write,
) -> Result<(), SettlementError> {
    let mut hashing = HashingWriter::new(out);
    file::write_file(sources, batch, &mut hashing)?;
    let (bytes, sha256) = hashing.finish();
    if bytes != batch.file_bytes || sha256 != batch.file_sha256 {
        tracing::error!(
            batch = batch.id,
            "a pulled settlement file differs from its close"
        );
        return Err(SettlementError::Corrupt(format!(
            "batch {}'s file came out different from its close ({bytes} bytes, SHA-256 {sha256})",
            batch.id
        )));
    }
    Ok(())
}

/// A close id used again must ask for what it asked the first time (`asked`, `cutoff`):
/// the same providers and cut-off, or a conflict naming the first field that differs.
pub fn check_same_close(
    request: &CloseRequest,
    providers: &[u16],
    asked: &[u16],
    cutoff: Cutoff,
) -> Result<(), SettlementError> {
    let field = if asked != providers {
        "providers"
    } else if cutoff != request.cutoff {
        "cutoff"
    } else {
        return Ok(());
    };
    Err(SettlementError::Conflict {
        id: request.id,
        field,
    })
}

/// An acknowledgement must name the batch's file: its SHA-256 (hex, any case).
pub fn check_receipt(view: &BatchView, file_sha256: &str) -> Result<(), SettlementError> {
    if view.batch.file_sha256.eq_ignore_ascii_case(file_sha256) {
        return Ok(());
    }
    Err(SettlementError::HashMismatch {
        batch: view.batch.id,
        given: file_sha256.to_string(),
        expected: view.batch.file_sha256.clone(),
    })
}

/// A close as stored under its id: what was asked, and what it made.
#[derive(Debug, Serialize, Deserialize)]
struct StoredClose {
    providers: Vec<u16>,
    cutoff: Cutoff,
    batch_ids: Vec<u64>,
}

/// An acknowledgement as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredAck {
    at: UnixMillis,
}

/// A provider's position: where its next batch starts.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    through_sequence: u64,
}

/// Settlement over an open ledger.
#[derive(Debug)]
pub struct Settlement {
    ledger: Arc<Ledger>,
    key: SettlementKey,
    currency: String,
    /// One close at a time: each reads the providers' positions the previous one wrote.
    close_lock: Mutex<()>,
    /// One acknowledgement write at a time (apart from closes, which may take seconds).
    ack_lock: Mutex<()>,
}

impl Settlement {
    /// Settlement over `ledger`, signing with `key`, in `currency` (ISO 4217).
    pub fn new(ledger: Arc<Ledger>, key: SettlementKey, currency: String) -> Settlement {
        Settlement {
            ledger,
            key,
            currency,
            close_lock: Mutex::new(()),
            ack_lock: Mutex::new(()),
        }
    }

    fn db(&self) -> &LedgerView {
        self.ledger.view()
    }

    fn source<'a>(&'a self, snapshot: Option<&'a Snapshot<'a>>) -> file::Source<'a> {
        file::Source {
            view: self.db(),
            snapshot,
        }
    }

    /// The batches an earlier close with this id made, or a conflict if it asked for
    /// something else; `None` for a new close id.
    fn earlier_close(
        &self,
        request: &CloseRequest,
        providers: &[u16],
    ) -> Result<Option<Closed>, SettlementError> {
        let db = self.db();
        let Some(bytes) = db.get_cf(db.cf(CF_SETTLEMENT)?, keys::close(request.id.0))? else {
            return Ok(None);
        };
        let stored: StoredClose = decode(&bytes, "close")?;
        check_same_close(request, providers, &stored.providers, stored.cutoff)?;
        let batches = stored
            .batch_ids
            .iter()
            .map(|id| self.batch(*id)?.ok_or(SettlementError::UnknownBatch(*id)))
            .collect::<Result<_, _>>()?;
        Ok(Some(Closed {
            batches,
            replay: true,
        }))
    }

    /// One new batch per provider, in order, each put into `write` with the provider's
    /// new position; the next batch id last.
    fn close_batches(
        &self,
        closing: &Closing<'_, '_>,
        providers: &[u16],
        write: &mut SettlementWrite<'_>,
    ) -> Result<Vec<BatchView>, SettlementError> {
        let db = self.db();
        let mut next_id = match db.get_cf(db.cf(CF_SETTLEMENT)?, keys::NEXT_BATCH_ID)? {
            Some(bytes) => codec::decode_sequence(&bytes, "next batch id")?,
            None => 1,
        };
        let mut batches = Vec::with_capacity(providers.len());
        for provider_id in providers {
            let batch = self.close_batch(closing, *provider_id, next_id)?;
            write.put(keys::batch(batch.id), encode(&batch));
            write.put(
                keys::head(batch.provider_id),
                keys::encode_head(batch.through_sequence, batch.id),
            );
            next_id += 1;
            batches.push(BatchView {
                batch,
                acknowledged_at: None,
            });
        }
        write.put(keys::NEXT_BATCH_ID, codec::encode_sequence(next_id));
        Ok(batches)
    }

    /// A provider's new batch: its range up to the cut-off, its file's totals and hash,
    /// and the manifest's signature.
    fn close_batch(
        &self,
        closing: &Closing<'_, '_>,
        provider_id: u16,
        id: u64,
    ) -> Result<Batch, SettlementError> {
        let db = self.db();
        let after = self.head(provider_id)?.through_sequence;
        let last_sequence = closing.last_sequence;
        let through = match closing.request.cutoff {
            Cutoff::Now => last_sequence.max(after),
            Cutoff::Sequence(sequence) => sequence.max(after),
            Cutoff::Time(time) => time_cutoff(
                db,
                closing.snapshot,
                provider_id,
                after,
                last_sequence,
                time,
            )?,
        };
        let mut batch = Batch {
            id,
            provider_id,
            after_sequence: after,
            through_sequence: through,
            cutoff: closing.request.cutoff,
            created_at: closing.now,
            currency: self.currency.clone(),
            totals: Default::default(),
            file_bytes: 0,
            file_sha256: String::new(),
            key_id: String::new(),
            signature: String::new(),
            close_id: closing.request.id.to_string(),
            shards: Vec::new(),
        };
        seal(
            &mut batch,
            &[self.source(Some(closing.snapshot))],
            &self.key,
        )?;
        Ok(batch)
    }

    /// Providers with settlement entries (up to the snapshot) or earlier batches, in
    /// order. The entries are skipped over one provider at a time: a seek per provider.
    fn known_providers(&self, snapshot: &Snapshot<'_>) -> Result<Vec<u16>, SettlementError> {
        let db = self.db();
        let mut providers = providers_with_entries(db, snapshot)?;
        for item in db.prefix_iterator_cf(db.cf(CF_SETTLEMENT)?, [keys::HEAD]) {
            let (key, _) = item?;
            if key.first() != Some(&keys::HEAD) {
                break;
            }
            if let Some(provider) = keys::head_provider(&key) {
                providers.insert(provider);
            }
        }
        Ok(providers.into_iter().collect())
    }

    fn head(&self, provider_id: u16) -> Result<Head, SettlementError> {
        let db = self.db();
        match db.get_cf(db.cf(CF_SETTLEMENT)?, keys::head(provider_id))? {
            None => Ok(Head::default()),
            Some(bytes) => Ok(Head {
                through_sequence: codec::decode_sequence(
                    bytes.get(..8).unwrap_or_default(),
                    "settlement head",
                )?,
            }),
        }
    }
}

impl SettlementBook for Settlement {
    fn key(&self) -> &SettlementKey {
        &self.key
    }

    /// Closes one batch per provider at the request's cut-off, at time `now`, or returns
    /// the batches an earlier close with the same id made. Blocks while it reads the
    /// entries (from async code, call it in `spawn_blocking`).
    fn close(&self, request: &CloseRequest, now: UnixMillis) -> Result<Closed, SettlementError> {
        let _one_at_a_time = self
            .close_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The same providers in any order, named once or twice, are the same close.
        let mut providers = request.providers.clone();
        providers.sort_unstable();
        providers.dedup();
        if let Some(closed) = self.earlier_close(request, &providers)? {
            return Ok(closed);
        }
        let db = self.db();
        let snapshot = db.snapshot();
        let last_sequence = last_sequence(db, &snapshot)?;
        if let Cutoff::Sequence(requested) = request.cutoff
            && requested > last_sequence
        {
            return Err(SettlementError::CutoffAhead {
                requested,
                last: last_sequence,
            });
        }
        let known = self.known_providers(&snapshot)?;
        if let Some(unknown) = providers.iter().find(|p| known.binary_search(p).is_err()) {
            return Err(SettlementError::UnknownProvider(*unknown));
        }
        let asked = providers.clone();
        if providers.is_empty() {
            providers = known;
        }
        let column = self.ledger.settlement_column();
        let mut write = column.new_write()?;
        let closing = Closing {
            request,
            now,
            snapshot: &snapshot,
            last_sequence,
        };
        let batches = self.close_batches(&closing, &providers, &mut write)?;
        let stored = StoredClose {
            providers: asked,
            cutoff: request.cutoff,
            batch_ids: batches.iter().map(|view| view.batch.id).collect(),
        };
        write.put(keys::close(request.id.0), encode(&stored));
        column.commit(write)?;
        tracing::info!(
            close = %request.id,
            batches = batches.len(),
            cutoff = %request.cutoff.describe(),
            "settlement batches closed"
        );
        Ok(Closed {
            batches,
            replay: false,
        })
    }

    /// A batch and its acknowledgement.
    fn batch(&self, id: u64) -> Result<Option<BatchView>, SettlementError> {
        let db = self.db();
        let cf = db.cf(CF_SETTLEMENT)?;
        let Some(bytes) = db.get_cf(cf, keys::batch(id))? else {
            return Ok(None);
        };
        let batch: Batch = decode(&bytes, "batch")?;
        let acknowledged_at = db
            .get_cf(cf, keys::ack(id))?
            .map(|bytes| decode::<StoredAck>(&bytes, "acknowledgement"))
            .transpose()?
            .map(|ack| ack.at);
        Ok(Some(BatchView {
            batch,
            acknowledged_at,
        }))
    }

    /// Up to `limit` batches (at most [`LIST_BATCHES_MAX`]) with an id greater than
    /// `after_id`, of one provider or all, oldest first.
    fn list(
        &self,
        provider_id: Option<u16>,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<BatchView>, SettlementError> {
        let limit = limit.min(LIST_BATCHES_MAX);
        let db = self.db();
        let cf = db.cf(CF_SETTLEMENT)?;
        let start = keys::batch(after_id.saturating_add(1));
        let mut found = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::From(&start, rocksdb::Direction::Forward)) {
            let (key, _) = item?;
            if key.first() != Some(&keys::BATCH) || found.len() >= limit {
                break;
            }
            let id = codec::decode_sequence(&key[1..], "batch key")?;
            let view = self.batch(id)?.ok_or(SettlementError::UnknownBatch(id))?;
            if provider_id.is_none_or(|provider| provider == view.batch.provider_id) {
                found.push(view);
            }
        }
        Ok(found)
    }

    fn export(&self, batch: &Batch, out: &mut dyn Write) -> Result<(), SettlementError> {
        export_checked(&[self.source(None)], batch, out)
    }

    /// Records the provider's receipt of a batch's file, checked by its SHA-256. Once
    /// acknowledged, a batch stays acknowledged at its first time.
    fn acknowledge(
        &self,
        id: u64,
        file_sha256: &str,
        now: UnixMillis,
    ) -> Result<BatchView, SettlementError> {
        let view = self.batch(id)?.ok_or(SettlementError::UnknownBatch(id))?;
        check_receipt(&view, file_sha256)?;
        if view.acknowledged_at.is_some() {
            return Ok(view);
        }
        let _one_at_a_time = self.ack_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let db = self.db();
        if db.get_cf(db.cf(CF_SETTLEMENT)?, keys::ack(id))?.is_none() {
            let column = self.ledger.settlement_column();
            let mut write = column.new_write()?;
            write.put(keys::ack(id), encode(&StoredAck { at: now }));
            column.commit(write)?;
        }
        self.batch(id)?.ok_or(SettlementError::UnknownBatch(id))
    }
}

/// What one close works from: its request, its time, and the ledger as of its start.
struct Closing<'a, 'db> {
    request: &'a CloseRequest,
    now: UnixMillis,
    snapshot: &'a Snapshot<'db>,
    /// The ledger's last recorded sequence in the snapshot.
    last_sequence: u64,
}

/// Providers with settlement entries in the ledger as of `snapshot`. The entries are
/// skipped over one provider at a time: a seek per provider.
pub fn providers_with_entries(
    db: &LedgerView,
    snapshot: &Snapshot<'_>,
) -> Result<BTreeSet<u16>, SettlementError> {
    let mut providers = BTreeSet::new();
    let entries = db.cf(CF_PROVIDER_ENTRIES)?;
    let mut options = rocksdb::ReadOptions::default();
    options.set_snapshot(snapshot);
    let mut iterator = db.raw_iterator_cf_opt(entries, options);
    iterator.seek_to_first();
    while let Some(key) = iterator.key() {
        let (provider, _) = codec::decode_provider_entry_key(key)?;
        providers.insert(provider);
        match codec::next_provider_entries(provider) {
            Some(next) => iterator.seek(next),
            None => break,
        }
    }
    iterator.status()?;
    Ok(providers)
}

/// The ledger's last recorded sequence as of `snapshot`.
pub fn last_sequence(db: &LedgerView, snapshot: &Snapshot<'_>) -> Result<u64, SettlementError> {
    let next = snapshot
        .get_cf(
            db.cf(crate::ledger::store::CF_META)?,
            codec::META_NEXT_SEQUENCE,
        )?
        .map(|bytes| codec::decode_sequence(&bytes, "next sequence"))
        .transpose()?
        .unwrap_or(1);
    Ok(next.saturating_sub(1))
}

/// The last sequence a time cut-off takes for a provider: its entries after `after`, in
/// ledger order, up to the first one recorded after `cutoff` (exclusive).
pub fn time_cutoff(
    db: &LedgerView,
    snapshot: &Snapshot<'_>,
    provider_id: u16,
    after: u64,
    last_sequence: u64,
    cutoff: UnixMillis,
) -> Result<u64, SettlementError> {
    let mut through = last_sequence.max(after);
    file::for_each_entry(
        db,
        Some(snapshot),
        provider_id,
        after,
        last_sequence,
        |sequence, record| {
            if record.request.time > cutoff {
                through = sequence - 1;
                return Ok(false);
            }
            Ok(true)
        },
    )?;
    Ok(through)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of numbers and strings always serialise.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, SettlementError> {
    serde_json::from_slice(bytes)
        .map_err(|err| SettlementError::Corrupt(format!("stored {what} does not parse: {err}")))
}

#[cfg(test)]
mod tests;
