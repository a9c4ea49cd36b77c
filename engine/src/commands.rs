//! Where the gate and admin services send ledger commands: the local ledger (embedded
//! mode) or the shard's leader (cluster mode, through [`Router`]).

use std::sync::Arc;

use crate::cluster::router::Router;
use crate::ledger::{Account, AccountRef, Ledger, LedgerError, Receipt, Request, StatementLine};

/// The ledger behind the services.
#[derive(Debug, Clone)]
pub enum Commands {
    /// Embedded: one ledger in this process.
    Local(Arc<Ledger>),
    /// Cluster: shards, each led by one node.
    Cluster(Arc<Router>),
}

impl Commands {
    /// Submits a request and awaits its durable answer.
    pub async fn submit(&self, request: Request) -> Result<Receipt, LedgerError> {
        match self {
            Commands::Local(ledger) => ledger.submit_async(request).await,
            Commands::Cluster(router) => router.submit(request).await,
        }
    }

    /// An account's state. Blocks on a read (from async code, call it in
    /// `spawn_blocking`).
    pub fn account(&self, account: AccountRef) -> Result<Option<Account>, LedgerError> {
        match self {
            Commands::Local(ledger) => ledger.account(account),
            Commands::Cluster(router) => router.account(account),
        }
    }

    /// Waits until what this node reads of `account` includes every command answered
    /// before the call (in cluster mode: until its replica of the account's shard has
    /// applied the shard's log as it is now). Embedded reads always do.
    pub async fn read_barrier(&self, account: AccountRef) -> Result<(), LedgerError> {
        match self {
            Commands::Local(_) => Ok(()),
            Commands::Cluster(router) => router.read_barrier(account).await,
        }
    }

    /// Waits until whatever this node read before the call can no longer be undone by a
    /// crash (embedded mode: until the ledger's log is synced past every write begun;
    /// cluster mode: a replica applies only what the shard's log holds). Blocks.
    pub fn wait_durable(&self) -> Result<(), LedgerError> {
        match self {
            Commands::Local(ledger) => ledger.wait_durable(),
            Commands::Cluster(_) => Ok(()),
        }
    }

    /// A page of an account's statement (in cluster mode, from this node's replica of the
    /// rider's shard). Blocks on reads.
    pub fn statement(
        &self,
        account: AccountRef,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<StatementLine>, LedgerError> {
        match self {
            Commands::Local(ledger) => ledger.statement(account, after_sequence, limit),
            Commands::Cluster(router) => crate::ledger::statement(
                router.replica_of(account)?.view(),
                account,
                after_sequence,
                limit,
            ),
        }
    }

    /// The ledger of embedded mode (`None` in cluster mode).
    pub fn local(&self) -> Option<&Arc<Ledger>> {
        match self {
            Commands::Local(ledger) => Some(ledger),
            Commands::Cluster(_) => None,
        }
    }

    /// Writes a consistent copy of what this node holds into the new folder `path`: the
    /// embedded ledger, or in cluster mode a replica of each shard this node holds as
    /// `path/shard-N` (each with the log sequence it applied, so that a node given it
    /// follows the log from there). Blocks on the copies.
    pub fn checkpoint(&self, path: &std::path::Path) -> Result<(), LedgerError> {
        match self {
            Commands::Local(ledger) => ledger.checkpoint(path),
            Commands::Cluster(router) => {
                // Made under another name and renamed once whole: a folder under the
                // checkpoint's name always holds every replica.
                let mut partial = path.as_os_str().to_owned();
                partial.push(".partial");
                let partial = std::path::PathBuf::from(partial);
                let made = (|| {
                    crate::files::create_private_dir(&partial).map_err(|err| {
                        LedgerError::Unavailable(format!(
                            "cannot make {}: {err}",
                            partial.display()
                        ))
                    })?;
                    for slot in router.held() {
                        let dir = partial.join(crate::cluster::names::replica_dir(slot.shard));
                        slot.replica.view().checkpoint(&dir)?;
                    }
                    std::fs::rename(&partial, path).map_err(|err| {
                        LedgerError::Unavailable(format!(
                            "cannot rename {} to {}: {err}",
                            partial.display(),
                            path.display()
                        ))
                    })
                })();
                if made.is_err() {
                    let _ = std::fs::remove_dir_all(&partial);
                }
                made
            }
        }
    }

    /// The ledgers this process writes now: the one ledger, or the shards it leads. The
    /// journey sweeper closes their journeys.
    pub fn led(&self) -> Vec<Arc<Ledger>> {
        match self {
            Commands::Local(ledger) => vec![Arc::clone(ledger)],
            Commands::Cluster(router) => router.held().filter_map(|slot| slot.leader()).collect(),
        }
    }
}
