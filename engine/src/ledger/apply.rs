//! The ledger's state machine: applies requests in order to the stored state, producing
//! each request's receipt and the writes that record it. The result depends on nothing
//! but the requests and the state (no clock, no randomness), so a replica replaying the
//! same ordered log reaches the same state.
//!
//! One [`Batch`] gathers many requests for one atomic, synced RocksDB write. Reads see
//! the database plus this batch's own earlier changes (an overlay), so two requests in
//! one batch behave exactly as if they had been written one after the other.

use std::collections::{HashMap, HashSet};

use rocksdb::{ColumnFamily, DB, WriteBatch};

use crate::money::Amount;

use super::LedgerError;
use super::codec;
use super::model::{
    Account, AccountRef, AccountStatus, Command, Outcome, Posting, Receipt, Record, Refusal,
    Request, TxId, rider_of_postings,
};
use super::store::{
    CF_ACCOUNTS, CF_IDS, CF_LOG, CF_META, CF_POSTINGS, CF_PROVIDER_ENTRIES, CF_REFUNDS,
    META_NEXT_SEQUENCE,
};

/// The column families a batch writes, looked up once.
struct Handles<'a> {
    accounts: &'a ColumnFamily,
    log: &'a ColumnFamily,
    ids: &'a ColumnFamily,
    postings: &'a ColumnFamily,
    refunds: &'a ColumnFamily,
    provider_entries: &'a ColumnFamily,
    meta: &'a ColumnFamily,
}

/// Requests applied together, and the writes that will record them.
pub struct Batch<'a> {
    db: &'a DB,
    cfs: Handles<'a>,
    accounts: HashMap<AccountRef, Account>,
    dirty_accounts: HashSet<AccountRef>,
    ids: HashMap<TxId, u64>,
    records: HashMap<u64, Record>,
    refunded: HashMap<TxId, u64>,
    first_sequence: u64,
    next_sequence: u64,
    write: WriteBatch,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("first_sequence", &self.first_sequence)
            .field("next_sequence", &self.next_sequence)
            .finish_non_exhaustive()
    }
}

impl<'a> Batch<'a> {
    /// An empty batch on top of the database's current state.
    pub fn new(db: &'a DB) -> Result<Batch<'a>, LedgerError> {
        let next_sequence = read_next_sequence(db)?;
        let cfs = Handles {
            accounts: cf(db, CF_ACCOUNTS)?,
            log: cf(db, CF_LOG)?,
            ids: cf(db, CF_IDS)?,
            postings: cf(db, CF_POSTINGS)?,
            refunds: cf(db, CF_REFUNDS)?,
            provider_entries: cf(db, CF_PROVIDER_ENTRIES)?,
            meta: cf(db, CF_META)?,
        };
        Ok(Batch {
            db,
            cfs,
            accounts: HashMap::new(),
            dirty_accounts: HashSet::new(),
            ids: HashMap::new(),
            records: HashMap::new(),
            refunded: HashMap::new(),
            first_sequence: next_sequence,
            next_sequence,
            write: WriteBatch::default(),
        })
    }

    /// The sequence of the first transaction this batch records: receipts below it were
    /// made durable by earlier batches.
    pub fn first_sequence(&self) -> u64 {
        self.first_sequence
    }

    /// Whether nothing new was recorded (every request was a replay or failed).
    pub fn is_empty(&self) -> bool {
        self.next_sequence == self.first_sequence
    }

    /// The atomic write that records the batch, ending with the new next sequence.
    pub fn into_write(mut self) -> WriteBatch {
        for account_ref in &self.dirty_accounts {
            if let Some(account) = self.accounts.get(account_ref) {
                self.write.put_cf(
                    self.cfs.accounts,
                    codec::account_key(*account_ref),
                    codec::encode_account(account),
                );
            }
        }
        self.write.put_cf(
            self.cfs.meta,
            META_NEXT_SEQUENCE,
            self.next_sequence.to_be_bytes(),
        );
        self.write
    }

    /// Applies one request. A replay returns the recorded receipt; a conflict is an error.
    /// Everything that can fail (reads, checks) happens before the first write goes into
    /// the batch, so on any error nothing of this request is in the batch.
    pub fn apply(&mut self, request: &Request) -> Result<Receipt, LedgerError> {
        if let Some((sequence, record)) = self.find(request.id)? {
            return replay(request, sequence, record);
        }

        // Phase 1: decide, and compute every state this request will write.
        let (outcome, postings, rider) = match self.decide(request)? {
            Ok((postings, rider)) => (Outcome::Accepted, postings, rider),
            Err(refusal) => (
                Outcome::Refused(refusal),
                Vec::new(),
                self.rider_of(request)?,
            ),
        };
        let sum = postings
            .iter()
            .try_fold(Amount::ZERO, |sum, posting| sum.checked_add(posting.amount));
        if sum != Some(Amount::ZERO) {
            return Err(LedgerError::Invariant(format!(
                "postings of {} do not sum to zero",
                request.id
            )));
        }
        let mut changed: Vec<(AccountRef, Account)> = Vec::with_capacity(postings.len() + 1);
        let mut balances_after = Vec::with_capacity(postings.len());
        for posting in &postings {
            let mut account = match changed
                .iter()
                .find(|(account, _)| *account == posting.account)
            {
                Some((_, account)) => *account,
                None => self
                    .account(posting.account)?
                    .unwrap_or(system_account(posting.account)),
            };
            account.balance = account
                .balance
                .checked_add(posting.amount)
                .ok_or_else(|| LedgerError::Invariant("balance overflow after checks".into()))?;
            balances_after.push(account.balance);
            match changed
                .iter_mut()
                .find(|(account_ref, _)| *account_ref == posting.account)
            {
                Some(entry) => entry.1 = account,
                None => changed.push((posting.account, account)),
            }
        }
        let mut settling_provider = None;
        if outcome == Outcome::Accepted {
            if let Some(status_change) = self.account_change(request)? {
                changed.push(status_change);
            }
            settling_provider = self.settling_provider(request, &postings)?;
        }
        let rider_balance_after = match rider {
            Some(id) => match changed
                .iter()
                .find(|(account, _)| *account == AccountRef::Rider(id))
            {
                Some((_, account)) => Some(account.balance),
                None => self
                    .account(AccountRef::Rider(id))?
                    .map(|account| account.balance),
            },
            None => None,
        };

        // Phase 2: nothing below can fail; the request's writes go into the batch.
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        for (account_ref, account) in changed {
            // Written once per batch in `into_write`: a busy account (an operator's revenue)
            // changes with nearly every request, and one put of its final state suffices.
            self.accounts.insert(account_ref, account);
            self.dirty_accounts.insert(account_ref);
        }
        for (posting, balance_after) in postings.iter().zip(balances_after) {
            self.write.put_cf(
                self.cfs.postings,
                codec::posting_key(posting.account, sequence),
                codec::encode_posting(posting.amount, balance_after),
            );
        }
        if let Some(provider_id) = settling_provider {
            self.write.put_cf(
                self.cfs.provider_entries,
                codec::provider_entry_key(provider_id, sequence),
                [],
            );
        }
        if let (Outcome::Accepted, Command::Refund { original }) = (outcome, request.command) {
            self.write.put_cf(
                self.cfs.refunds,
                original.0.to_be_bytes(),
                codec::encode_sequence(sequence),
            );
            self.refunded.insert(original, sequence);
        }
        let record = Record {
            request: *request,
            outcome,
            postings,
            rider_balance_after,
        };
        self.write.put_cf(
            self.cfs.log,
            sequence.to_be_bytes(),
            codec::encode_record(&record),
        );
        self.write.put_cf(
            self.cfs.ids,
            request.id.0.to_be_bytes(),
            codec::encode_sequence(sequence),
        );
        self.ids.insert(request.id, sequence);
        self.records.insert(sequence, record.clone());
        Ok(Receipt {
            sequence,
            record,
            replay: false,
        })
    }

    /// Decides a request: its postings and the rider it concerns, or why it is refused.
    #[allow(clippy::type_complexity)]
    fn decide(
        &mut self,
        request: &Request,
    ) -> Result<Result<(Vec<Posting>, Option<u64>), Refusal>, LedgerError> {
        let rider = |id| AccountRef::Rider(id);
        Ok(match request.command {
            Command::OpenAccount {
                account_id,
                credit_limit,
                ..
            } => {
                if credit_limit.0 < 0 {
                    Err(Refusal::InvalidAmount)
                } else if self.account(rider(account_id))?.is_some() {
                    Err(Refusal::AccountExists)
                } else {
                    Ok((Vec::new(), Some(account_id)))
                }
            }
            Command::SetStatus { account_id, status } => match self.account(rider(account_id))? {
                None => Err(Refusal::UnknownAccount),
                Some(account) if account.status == AccountStatus::Closed => {
                    Err(Refusal::AccountClosed)
                }
                Some(account)
                    if status == AccountStatus::Closed && account.balance != Amount::ZERO =>
                {
                    Err(Refusal::BalanceNotZero)
                }
                Some(_) => Ok((Vec::new(), Some(account_id))),
            },
            Command::TopUp { account_id, amount } => match self.account(rider(account_id))? {
                _ if amount.0 <= 0 => Err(Refusal::InvalidAmount),
                None => Err(Refusal::UnknownAccount),
                Some(account) if account.status == AccountStatus::Closed => {
                    Err(Refusal::AccountClosed)
                }
                Some(account) => self
                    .transfer(
                        AccountRef::ProviderClearing(account.provider_id),
                        rider(account_id),
                        amount,
                    )?
                    .map(|postings| (postings, Some(account_id))),
            },
            Command::Charge {
                account_id,
                operator_id,
                amount,
            } => match self.account(rider(account_id))? {
                _ if amount.0 < 0 => Err(Refusal::InvalidAmount),
                None => Err(Refusal::UnknownAccount),
                Some(account) if account.status == AccountStatus::Closed => {
                    Err(Refusal::AccountClosed)
                }
                Some(account) if account.status == AccountStatus::Denied => {
                    Err(Refusal::AccountDenied)
                }
                Some(account) => {
                    let floor = account
                        .credit_limit
                        .checked_neg()
                        .unwrap_or(Amount(i64::MIN));
                    match account.balance.checked_sub(amount) {
                        None => Err(Refusal::BalanceOverflow),
                        Some(after) if after < floor => Err(Refusal::CreditLimitExceeded),
                        Some(_) => self
                            .transfer(
                                rider(account_id),
                                AccountRef::OperatorRevenue(operator_id),
                                amount,
                            )?
                            .map(|postings| (postings, Some(account_id))),
                    }
                }
            },
            Command::Refund { original } => self.decide_refund(original)?,
            Command::Adjust {
                account_id,
                operator_id,
                amount,
            } => match self.account(rider(account_id))? {
                _ if amount.0 == 0 || amount.0 == i64::MIN => Err(Refusal::InvalidAmount),
                None => Err(Refusal::UnknownAccount),
                Some(account) if account.status == AccountStatus::Closed => {
                    Err(Refusal::AccountClosed)
                }
                Some(_) => self
                    .transfer(
                        AccountRef::OperatorRevenue(operator_id),
                        rider(account_id),
                        amount,
                    )?
                    .map(|postings| (postings, Some(account_id))),
            },
        })
    }

    #[allow(clippy::type_complexity)]
    fn decide_refund(
        &mut self,
        original: TxId,
    ) -> Result<Result<(Vec<Posting>, Option<u64>), Refusal>, LedgerError> {
        let Some((sequence, record)) = self.find(original)? else {
            return Ok(Err(Refusal::UnknownOriginal));
        };
        let Command::Charge { account_id, .. } = record.request.command else {
            return Ok(Err(Refusal::NotRefundable));
        };
        if record.outcome != Outcome::Accepted {
            return Ok(Err(Refusal::NotRefundable));
        }
        if self.refund_of(original)?.is_some() {
            return Ok(Err(Refusal::AlreadyRefunded));
        }
        debug_assert!(sequence < self.next_sequence);
        match self.account(AccountRef::Rider(account_id))? {
            Some(account) if account.status == AccountStatus::Closed => {
                return Ok(Err(Refusal::AccountClosed));
            }
            None => return Ok(Err(Refusal::UnknownAccount)),
            Some(_) => {}
        }
        let mut postings = Vec::with_capacity(record.postings.len());
        for posting in &record.postings {
            let Some(amount) = posting.amount.checked_neg() else {
                return Ok(Err(Refusal::BalanceOverflow));
            };
            let balance = self
                .account(posting.account)?
                .unwrap_or(system_account(posting.account))
                .balance;
            if balance.checked_add(amount).is_none() {
                return Ok(Err(Refusal::BalanceOverflow));
            }
            postings.push(Posting {
                account: posting.account,
                amount,
            });
        }
        Ok(Ok((postings, Some(account_id))))
    }

    /// Two postings moving `amount` from `from` to `to`, unless a balance would overflow.
    fn transfer(
        &mut self,
        from: AccountRef,
        to: AccountRef,
        amount: Amount,
    ) -> Result<Result<Vec<Posting>, Refusal>, LedgerError> {
        let Some(negative) = amount.checked_neg() else {
            return Ok(Err(Refusal::InvalidAmount));
        };
        for (account, change) in [(from, negative), (to, amount)] {
            let balance = self
                .account(account)?
                .unwrap_or(system_account(account))
                .balance;
            if balance.checked_add(change).is_none() {
                return Ok(Err(Refusal::BalanceOverflow));
            }
        }
        Ok(Ok(vec![
            Posting {
                account: from,
                amount: negative,
            },
            Posting {
                account: to,
                amount,
            },
        ]))
    }

    /// The account state an opening or a status change writes (not a posting).
    fn account_change(
        &mut self,
        request: &Request,
    ) -> Result<Option<(AccountRef, Account)>, LedgerError> {
        Ok(match request.command {
            Command::OpenAccount {
                account_id,
                provider_id,
                credit_limit,
            } => Some((
                AccountRef::Rider(account_id),
                Account {
                    status: AccountStatus::Active,
                    provider_id,
                    credit_limit,
                    balance: Amount::ZERO,
                },
            )),
            Command::SetStatus { account_id, status } => {
                let account_ref = AccountRef::Rider(account_id);
                let current = self.account(account_ref)?.ok_or_else(|| {
                    LedgerError::Invariant("status change of a missing account".into())
                })?;
                Some((account_ref, Account { status, ..current }))
            }
            _ => None,
        })
    }

    /// The provider that settles an accepted charge or refund: the rider's provider.
    fn settling_provider(
        &mut self,
        request: &Request,
        postings: &[Posting],
    ) -> Result<Option<u16>, LedgerError> {
        if !matches!(
            request.command,
            Command::Charge { .. } | Command::Refund { .. }
        ) {
            return Ok(None);
        }
        match rider_of_postings(postings) {
            Some(id) => Ok(self
                .account(AccountRef::Rider(id))?
                .map(|account| account.provider_id)),
            None => Ok(None),
        }
    }

    /// The rider a request concerns, when that rider's account exists.
    fn rider_of(&mut self, request: &Request) -> Result<Option<u64>, LedgerError> {
        let rider = match request.command {
            Command::OpenAccount { account_id, .. }
            | Command::SetStatus { account_id, .. }
            | Command::TopUp { account_id, .. }
            | Command::Charge { account_id, .. }
            | Command::Adjust { account_id, .. } => Some(account_id),
            Command::Refund { original } => match self.find(original)? {
                Some((
                    _,
                    Record {
                        request:
                            Request {
                                command: Command::Charge { account_id, .. },
                                ..
                            },
                        ..
                    },
                )) => Some(account_id),
                _ => None,
            },
        };
        match rider {
            Some(id) if self.account(AccountRef::Rider(id))?.is_some() => Ok(Some(id)),
            _ => Ok(None),
        }
    }

    fn account(&mut self, account: AccountRef) -> Result<Option<Account>, LedgerError> {
        if let Some(found) = self.accounts.get(&account) {
            return Ok(Some(*found));
        }
        let found = read_account(self.db, account)?;
        if let Some(found) = found {
            self.accounts.insert(account, found);
        }
        Ok(found)
    }

    fn find(&mut self, id: TxId) -> Result<Option<(u64, Record)>, LedgerError> {
        if let Some(sequence) = self.ids.get(&id) {
            let record = self
                .records
                .get(sequence)
                .cloned()
                .ok_or_else(|| LedgerError::Invariant("batch record missing".into()))?;
            return Ok(Some((*sequence, record)));
        }
        find_record(self.db, id)
    }

    fn refund_of(&mut self, original: TxId) -> Result<Option<u64>, LedgerError> {
        if let Some(sequence) = self.refunded.get(&original) {
            return Ok(Some(*sequence));
        }
        match self
            .db
            .get_pinned_cf(cf(self.db, CF_REFUNDS)?, original.0.to_be_bytes())?
        {
            Some(bytes) => Ok(Some(codec::decode_sequence(&bytes, "refund entry")?)),
            None => Ok(None),
        }
    }
}

/// The receipt for a request whose id is already recorded, or the conflict.
pub fn replay(request: &Request, sequence: u64, record: Record) -> Result<Receipt, LedgerError> {
    match record.request.first_difference(request) {
        Some(field) => Err(LedgerError::Conflict {
            id: request.id,
            field,
        }),
        None => Ok(Receipt {
            sequence,
            record,
            replay: true,
        }),
    }
}

/// The recorded transaction with this id, if any.
pub fn find_record(db: &DB, id: TxId) -> Result<Option<(u64, Record)>, LedgerError> {
    let Some(bytes) = db.get_pinned_cf(cf(db, CF_IDS)?, id.0.to_be_bytes())? else {
        return Ok(None);
    };
    let sequence = codec::decode_sequence(&bytes, "idempotency entry")?;
    let record = read_record(db, sequence)?.ok_or(LedgerError::Corrupt {
        what: "idempotency entry",
        problem: "points at a missing record",
    })?;
    Ok(Some((sequence, record)))
}

/// The record at a log sequence.
pub fn read_record(db: &DB, sequence: u64) -> Result<Option<Record>, LedgerError> {
    match db.get_pinned_cf(cf(db, CF_LOG)?, sequence.to_be_bytes())? {
        Some(bytes) => Ok(Some(codec::decode_record(&bytes)?)),
        None => Ok(None),
    }
}

/// An account's stored state.
pub fn read_account(db: &DB, account: AccountRef) -> Result<Option<Account>, LedgerError> {
    match db.get_pinned_cf(cf(db, CF_ACCOUNTS)?, codec::account_key(account))? {
        Some(bytes) => Ok(Some(codec::decode_account(&bytes)?)),
        None => Ok(None),
    }
}

/// The next log sequence to assign.
pub fn read_next_sequence(db: &DB) -> Result<u64, LedgerError> {
    let bytes = db
        .get_pinned_cf(cf(db, CF_META)?, META_NEXT_SEQUENCE)?
        .ok_or(LedgerError::Corrupt {
            what: "meta",
            problem: "next_sequence is missing",
        })?;
    codec::decode_sequence(&bytes, "next_sequence")
}

/// A column family handle that the open step guarantees exists.
pub fn cf<'d>(db: &'d DB, name: &'static str) -> Result<&'d rocksdb::ColumnFamily, LedgerError> {
    db.cf_handle(name)
        .ok_or(LedgerError::MissingColumnFamily(name))
}

/// The state of an operator or provider account before its first posting. Riders have no
/// default: they must be opened.
fn system_account(account: AccountRef) -> Account {
    let provider_id = match account {
        AccountRef::ProviderClearing(id) => id,
        _ => 0,
    };
    Account {
        status: AccountStatus::Active,
        provider_id,
        credit_limit: Amount::ZERO,
        balance: Amount::ZERO,
    }
}
