//! `fareway.v1.AdminService`: accounts, top-ups, refunds, the deny list, balances and
//! statements, and issuer keys. Every change is a ledger transaction under the caller's
//! id (so idempotent), except key changes, which are idempotent by their nature
//! (registering a registered key or revoking a revoked one changes nothing) and are
//! written back to the issuer key file.

use std::path::PathBuf;
use std::sync::Arc;

use fareway_proto::v1 as pb;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::clock::Clock;
use crate::cluster::keys::{SharedKeyError, SharedKeys};
use crate::commands::Commands;
use crate::ledger::{
    AccountRef, AccountStatus, Command, LedgerError, Outcome, Receipt, STATEMENT_PAGE_LINES_MAX,
};
use crate::money::Amount;
use crate::server::metrics::Metrics;
use crate::token::Verifier;
use crate::token::format::PUBLIC_KEY_LEN;
use crate::token::{IssuerKey, IssuerRegistry, KeyError, Provider};

use super::convert::{self, invalid, ledger_status};
use super::gate::admit;

/// Lines in a statement page when the caller does not say.
pub const STATEMENT_PAGE_LINES_DEFAULT: usize = 100;

/// The admin API.
#[derive(Debug, Clone)]
pub struct AdminApi {
    commands: Commands,
    verifier: Arc<Verifier>,
    clock: Arc<dyn Clock>,
    issuer_keys_file: PathBuf,
    backup_dir: PathBuf,
    in_flight: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Key changes are written to the file one at a time, in the order they were made.
    key_file_lock: Arc<tokio::sync::Mutex<()>>,
    /// In a cluster, the registry every node shares (the file then mirrors it).
    shared_keys: Option<SharedKeys>,
}

impl AdminApi {
    /// The admin API over the ledger (or the shards' leaders) and the verifier's key
    /// registry.
    pub fn new(
        commands: Commands,
        verifier: Arc<Verifier>,
        clock: Arc<dyn Clock>,
        issuer_keys_file: PathBuf,
        backup_dir: PathBuf,
        in_flight: Arc<Semaphore>,
        metrics: Arc<Metrics>,
    ) -> AdminApi {
        AdminApi {
            commands,
            verifier,
            clock,
            issuer_keys_file,
            backup_dir,
            in_flight,
            metrics,
            key_file_lock: Arc::new(tokio::sync::Mutex::new(())),
            shared_keys: None,
        }
    }

    /// Key changes go to the cluster's shared registry (`cluster::keys`).
    pub fn with_shared_keys(mut self, shared_keys: SharedKeys) -> AdminApi {
        self.shared_keys = Some(shared_keys);
        self
    }

    async fn submit(
        &self,
        transaction_id: &[u8],
        command: Command,
    ) -> Result<Response<pb::AdminReceipt>, Status> {
        let _permit = admit(&self.in_flight, &self.metrics, "requests")?;
        let id = convert::tx_id(transaction_id, "transaction_id")?;
        let request = crate::ledger::Request {
            id,
            time: self.clock.now(),
            command,
        };
        let receipt = self.commands.submit(request).await.map_err(|err| {
            self.metrics.record_fault(err.code());
            tracing::warn!(tx = %id, kind = command.kind(), cause = %err, "admin request failed");
            ledger_status(&err)
        })?;
        tracing::info!(
            tx = %id,
            kind = command.kind(),
            outcome = outcome_code(&receipt),
            replay = receipt.replay,
            "admin request"
        );
        Ok(Response::new(admin_receipt(
            transaction_id.to_vec(),
            &receipt,
        )))
    }

    async fn set_status(
        &self,
        request: pb::AccountRequest,
        status: AccountStatus,
    ) -> Result<Response<pb::AdminReceipt>, Status> {
        let command = Command::SetStatus {
            account_id: request.account_id,
            status,
        };
        self.submit(&request.transaction_id, command).await
    }

    /// Changes the key registry and writes it to the key file (temporary file, then
    /// rename), so that a restart sees the change. The registry is changed only if the
    /// file could be written. In a cluster the change goes to the shared registry, which
    /// every node enforces.
    async fn change_keys(
        &self,
        change: impl Fn(&mut IssuerRegistry) -> Result<IssuerKey, KeyError>,
    ) -> Result<IssuerKey, Status> {
        if let Some(shared) = &self.shared_keys {
            return shared
                .change(&self.verifier, change)
                .await
                .map_err(|err| match err {
                    SharedKeyError::Key(err) => key_status(&err),
                    SharedKeyError::Unavailable(message) => Status::unavailable(message),
                });
        }
        let _guard = self.key_file_lock.lock().await;
        let mut next = IssuerRegistry::clone(&self.verifier.registry());
        let key = change(&mut next).map_err(|err| key_status(&err))?;
        let path = self.issuer_keys_file.clone();
        let text = toml::to_string(&next.to_file())
            .map_err(|err| Status::internal(format!("cannot encode the key registry: {err}")))?;
        tokio::task::spawn_blocking(move || {
            crate::files::write_atomically(&path, text.as_bytes(), 0o600)
        })
        .await
        .map_err(|err| Status::internal(format!("key file task failed: {err}")))?
        .map_err(|err| {
            Status::unavailable(format!(
                "cannot write issuer key file {}: {err}",
                self.issuer_keys_file.display()
            ))
        })?;
        self.verifier.set_registry(next);
        Ok(key)
    }
}

fn outcome_code(receipt: &Receipt) -> &'static str {
    match receipt.record.outcome {
        Outcome::Accepted => "accepted",
        Outcome::Refused(refusal) => refusal.code(),
        Outcome::Duplicate { .. } => "duplicate",
    }
}

fn admin_receipt(transaction_id: Vec<u8>, receipt: &Receipt) -> pb::AdminReceipt {
    let accepted = receipt.record.outcome == Outcome::Accepted;
    pb::AdminReceipt {
        transaction_id,
        accepted,
        refusal_code: if accepted {
            String::new()
        } else {
            outcome_code(receipt).to_string()
        },
        sequence: receipt.sequence,
        balance_after_minor: receipt.record.rider_balance_after.map(|amount| amount.0),
        replay: receipt.replay,
    }
}

fn key_status(err: &KeyError) -> Status {
    let code = match err {
        KeyError::UnknownKey { .. } => tonic::Code::NotFound,
        KeyError::Duplicate { .. } => tonic::Code::AlreadyExists,
        _ => tonic::Code::InvalidArgument,
    };
    convert::status(code, err.to_string(), err.code())
}

fn provider_id(value: u32) -> Result<u16, Status> {
    u16::try_from(value)
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| invalid("provider_id", "must be 1 to 65535"))
}

/// A checkpoint's folder name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with a dot
/// (so never `..` or a hidden folder, and never a path).
fn checkpoint_name(name: &str) -> Result<&str, Status> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(invalid(
            "name",
            "must be 1 to 64 of A-Z a-z 0-9 . _ - and not start with a dot",
        ));
    }
    Ok(name)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Status::internal(format!("read task failed: {err}")))?
        .map_err(|err| ledger_status(&err))
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn create_checkpoint(
        &self,
        request: Request<pb::CreateCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        let _permit = admit(&self.in_flight, &self.metrics, "requests")?;
        let name = checkpoint_name(&request.get_ref().name)?;
        // Owner-only, as the data directory: a checkpoint is every rider's history.
        crate::files::create_private_dir(&self.backup_dir).map_err(|err| {
            Status::unavailable(format!(
                "cannot create the backup folder {}: {err}",
                self.backup_dir.display()
            ))
        })?;
        let path = self.backup_dir.join(name);
        if path.exists() {
            return Err(Status::already_exists(format!(
                "checkpoint {} exists; choose another name",
                path.display()
            )));
        }
        let commands = self.commands.clone();
        let target = path.clone();
        blocking(move || commands.checkpoint(&target)).await?;
        tracing::info!(path = %path.display(), "checkpoint created");
        Ok(Response::new(pb::Checkpoint {
            path: path.display().to_string(),
        }))
    }

    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::AdminReceipt>, Status> {
        let request = request.into_inner();
        if request.credit_limit_minor < 0 {
            return Err(invalid("credit_limit_minor", "must not be negative"));
        }
        let command = Command::OpenAccount {
            account_id: request.account_id,
            provider_id: provider_id(request.provider_id)?,
            credit_limit: Amount(request.credit_limit_minor),
        };
        self.submit(&request.transaction_id, command).await
    }

    async fn close_account(
        &self,
        request: Request<pb::AccountRequest>,
    ) -> Result<Response<pb::AdminReceipt>, Status> {
        self.set_status(request.into_inner(), AccountStatus::Closed)
            .await
    }

    async fn top_up(
        &self,
        request: Request<pb::TopUpRequest>,
    ) -> Result<Response<pb::AdminReceipt>, Status> {
        let request = request.into_inner();
        if request.amount_minor <= 0 {
            return Err(invalid("amount_minor", "must be more than zero"));
        }
        let command = Command::TopUp {
            account_id: request.account_id,
            amount: Amount(request.amount_minor),
        };
        self.submit(&request.transaction_id, command).await
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::AdminReceipt>, Status> {
        let request = request.into_inner();
        let original = convert::tx_id(&request.original_transaction_id, "original_transaction_id")?;
        self.submit(&request.transaction_id, Command::Refund { original })
            .await
    }

    async fn add_deny_list_entry(
        &self,
        request: Request<pb::AccountRequest>,
    ) -> Result<Response<pb::AdminReceipt>, Status> {
        self.set_status(request.into_inner(), AccountStatus::Denied)
            .await
    }

    async fn remove_deny_list_entry(
        &self,
        request: Request<pb::AccountRequest>,
    ) -> Result<Response<pb::AdminReceipt>, Status> {
        self.set_status(request.into_inner(), AccountStatus::Active)
            .await
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let _permit = admit(&self.in_flight, &self.metrics, "requests")?;
        let account_id = request.into_inner().account_id;
        self.commands
            .read_barrier(AccountRef::Rider(account_id))
            .await
            .map_err(|err| ledger_status(&err))?;
        let commands = self.commands.clone();
        let account = blocking(move || commands.account(AccountRef::Rider(account_id)))
            .await?
            .ok_or_else(|| Status::not_found(format!("no account {account_id}")))?;
        let status = match account.status {
            AccountStatus::Active => pb::AccountStatus::Active,
            AccountStatus::Denied => pb::AccountStatus::Denied,
            AccountStatus::Closed => pb::AccountStatus::Closed,
        };
        Ok(Response::new(pb::Balance {
            account_id,
            provider_id: u32::from(account.provider_id),
            status: status as i32,
            balance_minor: account.balance.0,
            credit_limit_minor: account.credit_limit.0,
        }))
    }

    async fn get_statement(
        &self,
        request: Request<pb::GetStatementRequest>,
    ) -> Result<Response<pb::Statement>, Status> {
        let _permit = admit(&self.in_flight, &self.metrics, "requests")?;
        let request = request.into_inner();
        let limit = match request.limit as usize {
            0 => STATEMENT_PAGE_LINES_DEFAULT,
            limit if limit > STATEMENT_PAGE_LINES_MAX => {
                return Err(invalid("limit", "must be at most 1000"));
            }
            limit => limit,
        };
        let account_id = request.account_id;
        let after = request.after_sequence;
        self.commands
            .read_barrier(AccountRef::Rider(account_id))
            .await
            .map_err(|err| ledger_status(&err))?;
        let commands = self.commands.clone();
        let (exists, lines) = blocking(move || {
            let account = AccountRef::Rider(account_id);
            Ok((
                commands.account(account)?.is_some(),
                commands.statement(account, after, limit)?,
            ))
        })
        .await?;
        if !exists {
            return Err(Status::not_found(format!("no account {account_id}")));
        }
        let next_after_sequence = if lines.len() == limit {
            lines.last().map_or(0, |line| line.sequence)
        } else {
            0
        };
        let lines = lines
            .into_iter()
            .map(|line| pb::StatementLine {
                sequence: line.sequence,
                transaction_id: line.record.request.id.0.to_be_bytes().to_vec(),
                kind: line.record.request.command.kind().to_string(),
                time_ms: line.record.request.time.0,
                amount_minor: line.amount.0,
                balance_after_minor: line.balance_after.0,
                journey_id: line.record.journey.map_or(0, |journey| journey.id),
            })
            .collect();
        Ok(Response::new(pb::Statement {
            account_id,
            lines,
            next_after_sequence,
        }))
    }

    async fn register_issuer_key(
        &self,
        request: Request<pb::RegisterIssuerKeyRequest>,
    ) -> Result<Response<pb::IssuerKeyResponse>, Status> {
        let request = request.into_inner();
        convert::tx_id(&request.transaction_id, "transaction_id")?;
        let provider_id = provider_id(request.provider_id)?;
        let public_key: [u8; PUBLIC_KEY_LEN] = request
            .public_key
            .as_slice()
            .try_into()
            .map_err(|_| invalid("public_key", "must be 32 bytes (an Ed25519 public key)"))?;
        let name = request.provider_name;
        let key = self
            .change_keys(move |registry| {
                match registry.provider(provider_id) {
                    Some(known) if !name.is_empty() && known.name != name => {
                        return Err(KeyError::Duplicate {
                            what: format!("provider id {provider_id} (named {})", known.name),
                        });
                    }
                    Some(_) => {}
                    None => registry.add_provider(Provider {
                        id: provider_id,
                        name: name.clone(),
                    })?,
                }
                let key = IssuerKey::new(provider_id, public_key);
                match registry.key(provider_id, key.key_id) {
                    // The same key again: nothing to change.
                    Some(existing) if existing.public_key == public_key => Ok(existing.clone()),
                    _ => {
                        registry.add_key(key.clone())?;
                        Ok(key)
                    }
                }
            })
            .await?;
        tracing::info!(provider_id, key_id = key.key_id, "issuer key registered");
        Ok(Response::new(pb::IssuerKeyResponse {
            provider_id: u32::from(key.provider_id),
            key_id: key.key_id,
            revoked: key.revoked_at.is_some(),
        }))
    }

    async fn revoke_issuer_key(
        &self,
        request: Request<pb::RevokeIssuerKeyRequest>,
    ) -> Result<Response<pb::IssuerKeyResponse>, Status> {
        let request = request.into_inner();
        convert::tx_id(&request.transaction_id, "transaction_id")?;
        let provider_id = provider_id(request.provider_id)?;
        let key_id = request.key_id;
        // Codes scanned from now on are refused; a tap scanned before it and uploaded
        // later by an offline gate is judged by the key as it was then.
        let now = self.clock.now();
        let key = self
            .change_keys(move |registry| {
                registry.revoke(provider_id, key_id, now)?;
                registry
                    .key(provider_id, key_id)
                    .cloned()
                    .ok_or(KeyError::UnknownKey {
                        provider_id,
                        key_id,
                    })
            })
            .await?;
        tracing::info!(provider_id, key_id, "issuer key revoked");
        Ok(Response::new(pb::IssuerKeyResponse {
            provider_id: u32::from(key.provider_id),
            key_id: key.key_id,
            revoked: key.revoked_at.is_some(),
        }))
    }
}
