//! A shard's leader lease: a key in a JetStream key-value bucket whose entries expire
//! (`max_age` = the lease's TTL) unless renewed. Taking a lease is a create, which fails
//! while the key holds a live entry; renewing is an update naming the revision the
//! leader last wrote, which fails once another node took the key. The server's clock
//! decides expiry, so nodes' clocks need not agree.
//!
//! The lease only decides who tries to lead. Safety does not rest on it: the log's
//! fenced appends refuse a deposed leader even before it notices its lease is gone.

use async_nats::jetstream::kv;

use super::names;

/// A lease this node holds: the revision of its last write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The key's revision as this node last wrote it.
    pub revision: u64,
}

/// Takes shard `shard`'s lease for `node_id` if nobody holds it; `None` when another
/// node does.
pub async fn try_take(
    leases: &kv::Store,
    shard: u32,
    node_id: &str,
) -> Result<Option<Held>, kv::CreateError> {
    match leases
        .create(names::lease_key(shard), node_id.to_owned().into())
        .await
    {
        Ok(revision) => Ok(Some(Held { revision })),
        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
        Err(err) => Err(err),
    }
}

/// Renews a held lease; `Err` when it was lost (another node took it, or it expired and
/// the update found another revision) or the renewal went unanswered.
pub async fn renew(
    leases: &kv::Store,
    shard: u32,
    node_id: &str,
    held: Held,
) -> Result<Held, kv::UpdateError> {
    let revision = leases
        .update(
            names::lease_key(shard),
            node_id.to_owned().into(),
            held.revision,
        )
        .await?;
    Ok(Held { revision })
}

/// Gives a held lease up at once (a graceful stop), so another node need not wait for
/// it to expire.
pub async fn release(leases: &kv::Store, shard: u32, held: Held) {
    if let Err(err) = leases
        .delete_expect_revision(names::lease_key(shard), Some(held.revision))
        .await
    {
        tracing::debug!(shard, cause = %err, "lease not released; it expires instead");
    }
}

/// The node that holds shard `shard`'s lease now, if any.
pub async fn holder(leases: &kv::Store, shard: u32) -> Option<String> {
    match leases.get(names::lease_key(shard)).await {
        Ok(Some(value)) => Some(String::from_utf8_lossy(&value).into_owned()),
        _ => None,
    }
}
