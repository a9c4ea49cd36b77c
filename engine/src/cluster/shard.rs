//! One shard on one node: follow the shard's log as a hot standby, take the lease when
//! it is free, catch up to the log's end, lead until the lease or an append is lost,
//! then follow again. A node restarted, or new, starts by following from its applied
//! sequence, so it leads only once it holds the whole log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::sync::{Semaphore, watch};
use tokio_stream::StreamExt as _;

use crate::ledger::{Ledger, LedgerError, codec};

use super::lease::{self, Held};
use super::log::{self, ShardLog};
use super::names;
use super::router::ShardSlot;

/// What a shard runner needs from its node.
#[derive(Debug, Clone)]
pub struct ShardContext {
    /// This node's id.
    pub node_id: String,
    /// The node's NATS connection.
    pub client: async_nats::Client,
    /// JetStream over it.
    pub js: jetstream::Context,
    /// The lease bucket.
    pub leases: kv::Store,
    /// The bucket where replicas report what they applied.
    pub reports: kv::Store,
    /// How often a leader renews, and a follower looks for a free lease.
    pub renew: Duration,
    /// Most forwarded commands a leader works on at once.
    pub forwarded_in_flight_max: usize,
    /// Shards this node leads now: a node that leads more waits longer before it takes a
    /// free lease, so that leaders spread over the nodes.
    pub leading: Arc<AtomicUsize>,
    /// How the node's shards share out taking leases (see [`Taking`]).
    pub taking: Arc<Taking>,
}

/// How a node takes free leases so that leaders spread over the nodes of a cluster whose
/// nodes start one after another: a node takes no lease in its first lease TTL (the
/// others started meanwhile look too), and at most one per renewal interval (so that
/// one node does not take every free lease at the same tick).
#[derive(Debug)]
pub struct Taking {
    started: tokio::time::Instant,
    join_period: Duration,
    last: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Taking {
    /// For a node starting now, with the cluster's lease TTL.
    pub fn new(lease_ttl: Duration) -> Taking {
        Taking {
            started: tokio::time::Instant::now(),
            join_period: lease_ttl,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Whether this node may take a lease now (and, if so, it counts as taken now).
    fn may_take(&self, renew: Duration) -> bool {
        if self.started.elapsed() < self.join_period {
            return false;
        }
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < renew) {
            return false;
        }
        *last = Some(tokio::time::Instant::now());
        true
    }
}

/// Why a node stopped leading a shard.
#[derive(Debug)]
enum StepDown {
    /// Told to stop: the lease is released.
    Stop,
    /// The lease was lost or an append failed.
    Deposed(String),
}

/// Runs shard `slot` on this node until `stop` turns true.
pub async fn run(context: ShardContext, slot: Arc<ShardSlot>, mut stop: watch::Receiver<bool>) {
    loop {
        let held = match follow_until_lease(&context, &slot, &mut stop).await {
            Ok(Some(held)) => held,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(shard = slot.shard, cause = %err, "following the shard's log failed; trying again");
                if sleep_or_stop(context.renew, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        match lead(&context, &slot, held, &mut stop).await {
            Ok(StepDown::Stop) => return,
            Ok(StepDown::Deposed(why)) => {
                tracing::warn!(shard = slot.shard, why, "stepped down as leader; following")
            }
            Err(err) => {
                tracing::warn!(shard = slot.shard, cause = %err, "could not lead; following")
            }
        }
    }
}

/// Applies the log as it comes, and every renewal interval tries to take the lease.
/// Returns the lease once taken, or `None` when told to stop.
///
/// The log comes through a consumer, which JetStream's meta group makes. When it cannot
/// (its leader was lost with a server, and the others elect one), or the consumer fails,
/// the follower catches up by direct gets on the next tick and asks for a consumer again;
/// taking a free lease never waits for the meta group.
async fn follow_until_lease(
    context: &ShardContext,
    slot: &ShardSlot,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Held>, LedgerError> {
    let mut consumer: Option<log::Following> = None;
    let mut starting = Some(start_following(context, slot));
    let mut ticks = tokio::time::interval(context.renew);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalled = Stalled::default();
    // When this node will try to take a lease it saw free: a node that leads fewer shards
    // tries first. The log goes on being applied meanwhile.
    let mut take_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = until_stopped(stop) => return Ok(None),
            started = until_done(&mut starting) => {
                starting = None;
                match started {
                    Ok(started) => consumer = Some(started),
                    Err(err) => tracing::warn!(shard = slot.shard, cause = %err, "cannot follow the log by a consumer; reading it directly"),
                }
            }
            message = next_message(&mut consumer) => {
                match log::apply_message(slot.shard, &slot.replica, message) {
                    Ok(_) => {}
                    Err(LedgerError::Unavailable(why)) => {
                        tracing::warn!(shard = slot.shard, why, "the log's consumer failed; reading the log directly");
                        consumer = None;
                    }
                    Err(err) => return Err(err),
                }
            }
            _ = ticks.tick() => {
                if consumer.is_some() && stalled.check(context, slot).await? {
                    tracing::warn!(shard = slot.shard, "the log's consumer delivers nothing while the log grows; reading the log directly");
                    consumer = None;
                }
                if consumer.is_none() && starting.is_none() {
                    catch_up_for(context, slot, context.renew / 2).await?;
                    starting = Some(start_following(context, slot));
                }
                if take_at.is_none() && lease_is_free(context, slot.shard).await {
                    let leading = context.leading.load(Ordering::Relaxed) as u32;
                    take_at = Some(tokio::time::Instant::now() + context.renew / 5 * leading);
                }
            }
            () = until(take_at) => {
                take_at = None;
                if !context.taking.may_take(context.renew) {
                    continue;
                }
                match lease::try_take(&context.leases, slot.shard, &context.node_id).await {
                    Ok(Some(held)) => return Ok(Some(held)),
                    Ok(None) => {}
                    Err(err) => tracing::debug!(shard = slot.shard, cause = %err, "lease not taken"),
                }
            }
        }
    }
}

/// Catches up by direct gets for at most `budget` (the follower's loop must go on
/// answering its stop and its lease); what was applied stays applied. Fails only when
/// the replica cannot go on (a message that does not decode).
async fn catch_up_for(
    context: &ShardContext,
    slot: &ShardSlot,
    budget: Duration,
) -> Result<(), LedgerError> {
    let caught_up = log::catch_up(&context.js, slot.shard, &slot.replica);
    match tokio::time::timeout(budget, caught_up).await {
        Ok(Err(LedgerError::Unavailable(why))) => {
            tracing::debug!(shard = slot.shard, why, "direct catch-up stopped");
            Ok(())
        }
        Ok(Err(err)) => Err(err),
        Ok(Ok(_)) | Err(_) => Ok(()),
    }
}

/// Whether shard `shard`'s lease is free; a lease bucket that does not answer within a
/// renewal interval counts as held.
async fn lease_is_free(context: &ShardContext, shard: u32) -> bool {
    let holder = tokio::time::timeout(context.renew, lease::holder(&context.leases, shard));
    matches!(holder.await, Ok(None))
}

/// Notices a consumer that delivers nothing while the log grows: async-nats's ordered
/// consumer makes itself again after a fault, and while JetStream's meta group has no
/// leader it cannot, and waits without an error.
#[derive(Debug, Default)]
struct Stalled {
    applied: u64,
    idle_ticks: u32,
}

impl Stalled {
    /// Ticks without progress before the log's end is asked.
    const IDLE_TICKS: u32 = 3;

    /// Whether the consumer has applied nothing for a few ticks while the log holds
    /// more than this replica applied.
    async fn check(
        &mut self,
        context: &ShardContext,
        slot: &ShardSlot,
    ) -> Result<bool, LedgerError> {
        let applied = slot.replica.applied_stream_sequence()?;
        if applied != self.applied {
            *self = Stalled {
                applied,
                idle_ticks: 0,
            };
            return Ok(false);
        }
        self.idle_ticks += 1;
        if self.idle_ticks < Self::IDLE_TICKS {
            return Ok(false);
        }
        self.idle_ticks = 0;
        let end = tokio::time::timeout(context.renew, log::last_sequence(&context.js, slot.shard));
        Ok(matches!(end.await, Ok(Ok(end)) if end > applied))
    }
}

/// A consumer being made, as a future the follower polls beside its other work.
type Starting<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<log::Following, LedgerError>> + Send + 'a>>;

/// Asks for a consumer of the shard's log from the replica's next message.
fn start_following<'a>(context: &'a ShardContext, slot: &'a ShardSlot) -> Starting<'a> {
    Box::pin(async move {
        let start = slot.replica.applied_stream_sequence()? + 1;
        tracing::info!(shard = slot.shard, start, "following the log");
        log::follow(&context.js, slot.shard, start).await
    })
}

/// The consumer being made, once it is (never, when none is).
async fn until_done(starting: &mut Option<Starting<'_>>) -> Result<log::Following, LedgerError> {
    match starting {
        Some(starting) => starting.await,
        None => std::future::pending().await,
    }
}

/// The consumer's next message (never, without a consumer).
async fn next_message(consumer: &mut Option<log::Following>) -> Option<log::Delivered> {
    match consumer {
        Some(consumer) => consumer.next().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or for ever when there is none.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Catches up to the log's end, then leads until told to stop or deposed.
async fn lead(
    context: &ShardContext,
    slot: &Arc<ShardSlot>,
    mut held: Held,
    stop: &mut watch::Receiver<bool>,
) -> Result<StepDown, LedgerError> {
    let caught_up_to = match log::catch_up(&context.js, slot.shard, &slot.replica).await {
        Ok(caught_up_to) => caught_up_to,
        Err(err) => {
            // Another node may be able to: the lease is not kept through its TTL.
            lease::release(&context.leases, slot.shard, held).await;
            return Err(err);
        }
    };
    let term = format!("{}-{}", context.node_id, held.revision);
    let shard_log = ShardLog::new(
        context.js.clone(),
        tokio::runtime::Handle::current(),
        slot.shard,
        term,
    );
    let ledger = Arc::new(slot.replica.lead(Box::new(shard_log))?);
    slot.set_leader(Some(Arc::clone(&ledger)));
    context.leading.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        shard = slot.shard,
        node = context.node_id,
        applied = caught_up_to,
        "leading the shard"
    );
    let serving = tokio::spawn(serve_forwarded(context.clone(), Arc::clone(slot)));
    let outcome = hold(context, slot.shard, &ledger, &mut held, stop).await;
    serving.abort();
    slot.set_leader(None);
    context.leading.fetch_sub(1, Ordering::Relaxed);
    if matches!(outcome, StepDown::Stop) {
        lease::release(&context.leases, slot.shard, held).await;
    }
    close_ledger(ledger).await;
    Ok(outcome)
}

/// Renews the lease and watches the writer until told to stop or deposed.
async fn hold(
    context: &ShardContext,
    shard: u32,
    ledger: &Ledger,
    held: &mut Held,
    stop: &mut watch::Receiver<bool>,
) -> StepDown {
    let mut ticks = tokio::time::interval(context.renew);
    ticks.tick().await;
    loop {
        tokio::select! {
            () = until_stopped(stop) => return StepDown::Stop,
            _ = ticks.tick() => {}
        }
        if ledger
            .stats()
            .write_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            return StepDown::Deposed("a log append failed".into());
        }
        match lease::renew(&context.leases, shard, &context.node_id, *held).await {
            Ok(renewed) => *held = renewed,
            Err(err) => return StepDown::Deposed(format!("the lease was not renewed: {err}")),
        }
    }
}

/// Waits for every caller of a ledger that stopped leading to let go, then shuts its
/// writer down, so that following never writes beside it.
async fn close_ledger(mut ledger: Arc<Ledger>) {
    loop {
        match Arc::try_unwrap(ledger) {
            Ok(mut ledger) => {
                let _ = tokio::task::spawn_blocking(move || ledger.shutdown()).await;
                return;
            }
            Err(still_shared) => {
                ledger = still_shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Answers commands other nodes forward to this shard's leader, while it leads.
async fn serve_forwarded(context: ShardContext, slot: Arc<ShardSlot>) {
    let subject = names::submit_subject(slot.shard);
    let mut requests = match context
        .client
        .queue_subscribe(subject.clone(), "leader".into())
        .await
    {
        Ok(requests) => requests,
        Err(err) => {
            tracing::error!(shard = slot.shard, cause = %err, "cannot take forwarded commands");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(context.forwarded_in_flight_max));
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        let answer_to = context.client.clone();
        let slot = Arc::clone(&slot);
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            let busy = Err(LedgerError::Overloaded(context.forwarded_in_flight_max));
            let _ = answer_to
                .publish(reply, codec::encode_answer(&busy).into())
                .await;
            continue;
        };
        tokio::spawn(async move {
            let answer = answer_forwarded(&slot, &message.payload).await;
            let _ = answer_to
                .publish(reply, codec::encode_answer(&answer).into())
                .await;
            drop(permit);
        });
    }
}

/// The answer to one forwarded command.
async fn answer_forwarded(
    slot: &ShardSlot,
    payload: &[u8],
) -> Result<crate::ledger::Receipt, LedgerError> {
    let request = codec::decode_request(payload)?;
    let ledger = slot.leader().ok_or_else(|| {
        LedgerError::Unavailable(format!(
            "this node no longer leads shard {}; retry",
            slot.shard
        ))
    })?;
    ledger.submit_async(request).await
}

/// Sleeps, or returns true at once when told to stop.
async fn sleep_or_stop(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = until_stopped(stop) => true,
        () = tokio::time::sleep(duration) => false,
    }
}

/// Completes once `stop` turns true (or its sender is gone).
pub async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
