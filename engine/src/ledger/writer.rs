//! Group commit: one writer thread, fed by a bounded queue, applies every waiting request
//! in one [`Batch`] and makes it durable with one synced write, then answers them all.
//! Many concurrent callers thus share one fsync, and the ledger's state changes in one
//! thread only, in one order (the log's).
//!
//! A caller is answered only after its batch's write-ahead log entry is on disk. When the
//! write fails, every request the batch would have recorded gets the error, and its
//! outcome is unknown: RocksDB may or may not replay the batch from its log after a
//! restart, so the caller retries with the same id and gets either a replay or a fresh
//! answer, never a second charge. The next batch starts again from the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use rocksdb::{DB, WriteOptions};
use tokio::sync::oneshot;

use crate::clock::UnixMillis;

use super::apply::Batch;
use super::model::{Receipt, Request};
use super::prune;
use super::{LedgerError, Rules};

/// A request waiting in the queue, with where to send its answer.
#[derive(Debug)]
pub struct Submission {
    /// The request.
    pub request: Request,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Receipt, LedgerError>>,
}

/// Work for the writer thread, in queue order.
#[derive(Debug)]
pub enum Job {
    /// Apply a request (group-committed with its neighbours).
    Apply(Submission),
    /// Forget the ids of transactions made before a time (see [`prune::prune_ids`]).
    PruneIds {
        /// Ids of transactions whose request time is earlier than this are forgotten.
        before: UnixMillis,
        /// Most records looked at in this job, so that one job never holds the writer long.
        records_max: usize,
        /// Where the count of forgotten ids goes.
        reply: oneshot::Sender<Result<u64, LedgerError>>,
    },
}

/// Counters the writer keeps for metrics and reports.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Requests waiting in the queue now.
    pub queue_depth: AtomicUsize,
    /// Batches written.
    pub batches: AtomicU64,
    /// Requests answered by the writer (not counting fast-path replays).
    pub requests: AtomicU64,
    /// Total time spent in synced writes, in microseconds.
    pub write_time_us: AtomicU64,
    /// The longest synced write, in microseconds.
    pub write_time_us_max: AtomicU64,
    /// Group commits whose write failed. After one, RocksDB refuses every later write
    /// until the database is opened again (`server::run_until_stopped` does that).
    pub write_failures: AtomicU64,
}

/// Runs the writer loop until every sender is gone and the queue is drained.
pub fn run(
    db: Arc<DB>,
    rules: Rules,
    queue: Receiver<Job>,
    sync: bool,
    batch_size_max: usize,
    stats: Arc<WriterStats>,
) {
    let mut write_options = WriteOptions::default();
    write_options.set_sync(sync);
    let mut pending = Vec::with_capacity(batch_size_max);
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            match job {
                Job::PruneIds {
                    before,
                    records_max,
                    reply,
                } => {
                    let _ = reply.send(prune::prune_ids(&db, before, records_max, &write_options));
                }
                Job::Apply(submission) => {
                    pending.push(submission);
                    while pending.len() < batch_size_max {
                        match queue.try_recv() {
                            Ok(Job::Apply(submission)) => {
                                stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                                pending.push(submission);
                            }
                            // Anything else runs after this batch, in queue order.
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                    let answers = commit(&db, &rules, &pending, &write_options, &stats);
                    stats
                        .requests
                        .fetch_add(pending.len() as u64, Ordering::Relaxed);
                    for (submission, answer) in pending.drain(..).zip(answers) {
                        // A caller that gave up waiting has dropped its receiver; its
                        // transaction is still recorded, and a retry with the same id gets
                        // this same receipt.
                        let _ = submission.reply.send(answer);
                    }
                }
            }
        }
    }
}

/// Applies and durably writes one batch; returns one answer per submission, in order.
fn commit(
    db: &DB,
    rules: &Rules,
    pending: &[Submission],
    write_options: &WriteOptions,
    stats: &WriterStats,
) -> Vec<Result<Receipt, LedgerError>> {
    let mut batch = match Batch::new(db, rules) {
        Ok(batch) => batch,
        Err(err) => return pending.iter().map(|_| Err(err.clone())).collect(),
    };
    let answers: Vec<_> = pending
        .iter()
        .map(|submission| batch.apply(&submission.request))
        .collect();
    if batch.is_empty() {
        return answers;
    }
    let first_new_sequence = batch.first_sequence();
    let started = Instant::now();
    let written = db
        .write_opt(batch.into_write(), write_options)
        .map_err(LedgerError::from);
    let elapsed_us = started.elapsed().as_micros() as u64;
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.write_time_us.fetch_add(elapsed_us, Ordering::Relaxed);
    stats
        .write_time_us_max
        .fetch_max(elapsed_us, Ordering::Relaxed);
    match written {
        Ok(()) => answers,
        Err(err) => {
            stats.write_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(cause = %err, requests = pending.len(), "ledger batch write failed");
            answers
                .into_iter()
                .map(|answer| match answer {
                    // A replay of an id recorded in an earlier batch is still true.
                    Ok(receipt) if receipt.sequence < first_new_sequence => Ok(receipt),
                    _ => Err(err.clone()),
                })
                .collect()
        }
    }
}
