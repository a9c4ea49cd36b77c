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

use async_nats::jetstream::kv;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;

use crate::token::keys::{IssuerRegistry, KeyError};
use crate::token::verifier::Verifier;

/// The key holding the registry.
pub const REGISTRY_KEY: &str = "registry";

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
}

impl SharedKeys {
    /// The shared registry in `bucket`, mirrored into `file`.
    pub fn new(bucket: kv::Store, file: PathBuf) -> SharedKeys {
        SharedKeys { bucket, file }
    }

    /// Enforces the cluster's registry on `verifier` (seeding the bucket with the
    /// verifier's own when it has none); returns the revision it enforced.
    pub async fn load_or_seed(&self, verifier: &Verifier) -> Result<u64, SharedKeyError> {
        let text = encode(&verifier.registry())?;
        match self.bucket.create(REGISTRY_KEY, text.into()).await {
            Ok(revision) => return Ok(revision),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(err) => return Err(unavailable(err)),
        }
        let (registry, revision) = self.read().await?;
        self.enforce(verifier, registry).await;
        Ok(revision)
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
                Ok(_) => {
                    self.enforce(verifier, registry).await;
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

    /// Enforces every registry the bucket holds after revision `after`, until `stop`.
    pub async fn follow(
        self,
        verifier: Arc<Verifier>,
        after: u64,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut updates = match self
            .bucket
            .watch_from_revision(REGISTRY_KEY, after + 1)
            .await
        {
            Ok(updates) => updates,
            Err(err) => {
                tracing::error!(cause = %err, "cannot watch the cluster's issuer keys; this node keeps the ones it has");
                return;
            }
        };
        loop {
            let update = tokio::select! {
                () = super::shard::until_stopped(&mut stop) => return,
                update = updates.next() => update,
            };
            match update {
                Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                    match decode(&entry.value) {
                        Ok(registry) => self.enforce(&verifier, registry).await,
                        Err(err) => {
                            tracing::error!(revision = entry.revision, cause = %err, "the cluster's issuer keys do not parse; this node keeps the ones it has");
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    tracing::warn!(cause = %err, "watching the cluster's issuer keys failed");
                }
                None => return,
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

    /// Enforces `registry` here and writes it to this node's key file.
    async fn enforce(&self, verifier: &Verifier, registry: IssuerRegistry) {
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

fn decode(bytes: &[u8]) -> Result<IssuerRegistry, SharedKeyError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| SharedKeyError::Unavailable("the shared registry is not UTF-8".into()))?;
    Ok(IssuerRegistry::from_toml(text)?)
}

fn unavailable(err: impl std::fmt::Display) -> SharedKeyError {
    SharedKeyError::Unavailable(err.to_string())
}
