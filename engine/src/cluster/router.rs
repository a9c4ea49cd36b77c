//! Where a node sends a command: to the shard's ledger when this node leads the shard,
//! otherwise to the shard's leader over NATS request-reply. Only a shard's leader listens
//! on the shard's submit subject, so a request reaches the leader or nobody; nobody is
//! `UNAVAILABLE` ("no leader now"), and the gate retries with the same transaction id.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::RequestErrorKind;

use crate::ledger::{Account, AccountRef, Ledger, LedgerError, Receipt, Replica, Request, codec};

use super::{RouteBy, names, route_by, shard_of};

/// One shard this node holds: its replica, and its ledger while this node leads it.
#[derive(Debug)]
pub struct ShardSlot {
    /// The shard.
    pub shard: u32,
    /// The local replica (followed or led).
    pub replica: Arc<Replica>,
    leader: RwLock<Option<Arc<Ledger>>>,
}

impl ShardSlot {
    /// A slot for a replica this node follows.
    pub fn new(shard: u32, replica: Arc<Replica>) -> ShardSlot {
        ShardSlot {
            shard,
            replica,
            leader: RwLock::new(None),
        }
    }

    /// The shard's ledger, while this node leads it.
    pub fn leader(&self) -> Option<Arc<Ledger>> {
        self.leader.read().ok().and_then(|leader| leader.clone())
    }

    /// Starts (`Some`) or stops (`None`) answering as the shard's leader.
    pub fn set_leader(&self, ledger: Option<Arc<Ledger>>) {
        match self.leader.write() {
            Ok(mut leader) => *leader = ledger,
            Err(poisoned) => *poisoned.into_inner() = ledger,
        }
    }
}

/// Routes commands to shards.
#[derive(Debug)]
pub struct Router {
    shards: u32,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    held: BTreeMap<u32, Arc<ShardSlot>>,
    /// How long a read waits for this node's replica to catch up.
    read_wait_max: Duration,
}

impl Router {
    /// A router over the shards this node holds.
    pub fn new(
        shards: u32,
        client: async_nats::Client,
        held: Vec<Arc<ShardSlot>>,
        read_wait_max: Duration,
    ) -> Router {
        Router {
            shards,
            js: async_nats::jetstream::new(client.clone()),
            client,
            held: held.into_iter().map(|slot| (slot.shard, slot)).collect(),
            read_wait_max,
        }
    }

    /// How many shards the cluster has.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shards this node holds.
    pub fn held(&self) -> impl Iterator<Item = &Arc<ShardSlot>> {
        self.held.values()
    }

    /// Submits a request to its shard's leader and awaits the durable answer.
    pub async fn submit(&self, request: Request) -> Result<Receipt, LedgerError> {
        let shard = self.shard_of_request(&request)?;
        if let Some(ledger) = self.held.get(&shard).and_then(|slot| slot.leader()) {
            return ledger.submit_async(request).await;
        }
        self.forward(shard, &request).await
    }

    /// A rider's or sub-account's state, from this node's replica of its shard (a
    /// follower's may trail the leader by the messages not yet applied).
    pub fn account(&self, account: AccountRef) -> Result<Option<Account>, LedgerError> {
        self.replica_of(account)?.view().account(account)
    }

    /// Waits until this node's replica of the account's shard has applied the shard's log
    /// as it is now, so that a read after it sees every command answered before the call.
    pub async fn read_barrier(&self, account: AccountRef) -> Result<(), LedgerError> {
        let replica = self.replica_of(account)?;
        let AccountRef::Rider(account_id) = account else {
            return Ok(());
        };
        let shard = shard_of(account_id, self.shards);
        let end = super::log::last_sequence(&self.js, shard).await?;
        let caught_up = super::wait_until(self.read_wait_max, || {
            Ok::<_, LedgerError>(replica.applied_stream_sequence()? >= end)
        })
        .await?;
        if !caught_up {
            return Err(LedgerError::Unavailable(format!(
                "this node's replica of shard {shard} has not caught up with its log; retry"
            )));
        }
        Ok(())
    }

    /// This node's replica of a rider account's shard.
    pub fn replica_of(&self, account: AccountRef) -> Result<&Replica, LedgerError> {
        let AccountRef::Rider(account_id) = account else {
            return Err(LedgerError::Unavailable(
                "operator and provider accounts have one sub-account per shard in cluster mode; read them from a shard replica with `fareway audit`".into(),
            ));
        };
        let shard = shard_of(account_id, self.shards);
        let slot = self.held.get(&shard).ok_or_else(|| {
            LedgerError::Unavailable(format!(
                "this node holds no replica of shard {shard}; ask a node that does"
            ))
        })?;
        Ok(&slot.replica)
    }

    /// The shard a request goes to. A refund goes where its charge is: the first shard
    /// this node holds that recorded it.
    fn shard_of_request(&self, request: &Request) -> Result<u32, LedgerError> {
        let original = match route_by(&request.command) {
            RouteBy::Account(account_id) => return Ok(shard_of(account_id, self.shards)),
            RouteBy::Charge(original) => original,
        };
        for slot in self.held.values() {
            if slot.replica.view().transaction(original)?.is_some() {
                return Ok(slot.shard);
            }
        }
        Err(LedgerError::Unavailable(format!(
            "the refunded charge {original} is on no shard this node holds; send the refund to a node that holds the rider's shard"
        )))
    }

    /// Sends a request to shard `shard`'s leader over NATS and awaits its answer.
    async fn forward(&self, shard: u32, request: &Request) -> Result<Receipt, LedgerError> {
        let payload = codec::encode_request(request);
        match self
            .client
            .request(names::submit_subject(shard), payload.into())
            .await
        {
            Ok(answer) => codec::decode_answer(&answer.payload)?,
            Err(err) if err.kind() == RequestErrorKind::NoResponders => Err(
                LedgerError::Unavailable(format!("shard {shard} has no leader now; retry")),
            ),
            Err(err) => Err(LedgerError::Unavailable(format!(
                "shard {shard}'s leader did not answer: {err}; retry with the same id"
            ))),
        }
    }
}
