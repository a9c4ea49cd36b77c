//! Issuer keys and revocations shared by every node of a cluster. The registry (the same
//! TOML as an issuer key file, `docs/configuration.md`) is the value of key `registry` in
//! the replicated bucket `fareway_keys`:
//!
//! - at a node's start the bucket's registry wins over the node's own key file, which is
//!   put there only when the bucket has none (the first node seeds the cluster);
//! - an admin change on any node reads the registry, changes it, and writes it back with
//!   the revision it read (compare and swap), so two changes at once on two nodes cannot
//!   overwrite each other; the changed registry is enforced on that node at once;
//! - every node watches the key and enforces each new registry when the bucket delivers
//!   it (milliseconds on a healthy cluster; `docs/cluster.md` states the bound measured),
//!   and writes it to its own key file so that a restart without NATS knows it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;

use crate::token::keys::{IssuerRegistry, KeyError};
use crate::token::verifier::Verifier;

/// The key holding the registry.
pub const REGISTRY_KEY: &str = "registry";

/// How long a node waits before it watches the registry again after a watch failed.
const WATCH_RETRY: Duration = Duration::from_millis(500);

/// Times a change is made again after another node's change came first.
const CHANGE_TRIES: usize = 5;

/// Why a shared change failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedKeyError {
    /// The change itself is refused (a duplicate key, an unknown provider...).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The bucket could not be read or written.
    #[error("the cluster's key bucket: {0}")]
    Unavailable(String),
}

/// The cluster's registry, as this node reads and changes it.
#[derive(Debug, Clone)]
pub struct SharedKeys {
    bucket: kv::Store,
    /// This node's key file, kept in step with the bucket.
    file: PathBuf,
    /// The bucket revision of the registry enforced here: an older one delivered late
    /// (the watcher trails this node's own change) is not enforced over it.
    enforced: Arc<tokio::sync::Mutex<u64>>,
}

impl SharedKeys {
    /// The shared registry in `bucket`, mirrored into `file`.
    pub fn new(bucket: kv::Store, file: PathBuf) -> SharedKeys {
        SharedKeys {
            bucket,
            file,
            enforced: Arc::default(),
        }
    }

    /// Enforces the cluster's registry on `verifier` (seeding the bucket with the
    /// verifier's own when it has none).
    pub async fn load_or_seed(&self, verifier: &Verifier) -> Result<(), SharedKeyError> {
        let text = encode(&verifier.registry())?;
        match self.bucket.create(REGISTRY_KEY, text.into()).await {
            Ok(revision) => {
                *self.enforced.lock().await = revision;
                return Ok(());
            }
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(err) => return Err(unavailable(err)),
        }
        let (registry, revision) = self.read().await?;
        self.enforce(verifier, registry, revision).await;
        Ok(())
    }

    /// Changes the cluster's registry by `change` and enforces it on `verifier`; returns
    /// what `change` returned.
    pub async fn change<T>(
        &self,
        verifier: &Verifier,
        change: impl Fn(&mut IssuerRegistry) -> Result<T, KeyError>,
    ) -> Result<T, SharedKeyError> {
        for _ in 0..CHANGE_TRIES {
            let (mut registry, revision) = self.read().await?;
            let result = change(&mut registry)?;
            let text = encode(&registry)?;
            match self
                .bucket
                .update(REGISTRY_KEY, text.into(), revision)
                .await
            {
                Ok(written) => {
                    self.enforce(verifier, registry, written).await;
                    return Ok(result);
                }
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(err) => return Err(unavailable(err)),
            }
        }
        Err(SharedKeyError::Unavailable(format!(
            "other nodes changed the keys first {CHANGE_TRIES} times; retry"
        )))
    }

    /// Enforces every registry the bucket holds after the one enforced here, until
    /// `stop`. A watch that fails or ends is made again from the last revision enforced, so
    /// that no change (a revocation above all) is missed for good.
    pub async fn follow(self, verifier: Arc<Verifier>, mut stop: watch::Receiver<bool>) {
        loop {
            let from = *self.enforced.lock().await + 1;
            match self.bucket.watch_from_revision(REGISTRY_KEY, from).await {
                Ok(updates) => self.enforce_updates(&verifier, updates, &mut stop).await,
                Err(err) => {
                    tracing::error!(cause = %err, "cannot watch the cluster's issuer keys; trying again");
                }
            }
            tokio::select! {
                () = super::shard::until_stopped(&mut stop) => return,
                () = tokio::time::sleep(WATCH_RETRY) => {}
            }
        }
    }

    /// Enforces each registry `updates` delivers, until it fails or ends, or `stop`.
    async fn enforce_updates(
        &self,
        verifier: &Verifier,
        mut updates: kv::Watch,
        stop: &mut watch::Receiver<bool>,
    ) {
        loop {
            let update = tokio::select! {
                () = super::shard::until_stopped(stop) => return,
                update = updates.next() => update,
            };
            match update {
                Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                    match decode(&entry.value) {
                        Ok(registry) => self.enforce(verifier, registry, entry.revision).await,
                        Err(err) => {
                            tracing::error!(revision = entry.revision, cause = %err, "the cluster's issuer keys do not parse; this node keeps the ones it has");
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    tracing::warn!(cause = %err, "watching the cluster's issuer keys failed; watching again");
                    return;
                }
                None => {
                    tracing::warn!("the watch of the cluster's issuer keys ended; watching again");
                    return;
                }
            }
        }
    }

    async fn read(&self) -> Result<(IssuerRegistry, u64), SharedKeyError> {
        let entry = self
            .bucket
            .entry(REGISTRY_KEY)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                SharedKeyError::Unavailable("the cluster has no issuer key registry".into())
            })?;
        Ok((decode(&entry.value)?, entry.revision))
    }

    /// Enforces `registry` (the bucket's at `revision`) here and writes it to this node's
    /// key file, unless a newer one is enforced already.
    async fn enforce(&self, verifier: &Verifier, registry: IssuerRegistry, revision: u64) {
        let mut enforced = self.enforced.lock().await;
        if revision <= *enforced {
            return;
        }
        *enforced = revision;
        let text = encode(&registry).unwrap_or_default();
        verifier.set_registry(registry);
        let file = self.file.clone();
        let written =
            tokio::task::spawn_blocking(move || write_key_file(&file, text.as_bytes())).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(file = %self.file.display(), "cannot write the issuer key file; the cluster's keys are enforced all the same");
        }
    }
}

fn write_key_file(file: &Path, text: &[u8]) -> std::io::Result<()> {
    crate::files::write_atomically(file, text, 0o600)
}

fn encode(registry: &IssuerRegistry) -> Result<String, SharedKeyError> {
    toml::to_string(&registry.to_file())
        .map_err(|err| SharedKeyError::Unavailable(format!("cannot encode the registry: {err}")))
}

/// The registry in the bucket's bytes. One that does not parse is the cluster's fault,
/// not the caller's: it is reported as unavailable, never as a bad request.
fn decode(bytes: &[u8]) -> Result<IssuerRegistry, SharedKeyError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| SharedKeyError::Unavailable("the shared registry is not UTF-8".into()))?;
    IssuerRegistry::from_toml(text).map_err(|err| {
        SharedKeyError::Unavailable(format!("the shared registry does not parse: {err}"))
    })
}

fn unavailable(err: impl std::fmt::Display) -> SharedKeyError {
    SharedKeyError::Unavailable(err.to_string())
}
