//! The ledger's state machine: applies requests in order to the stored state, producing
//! each request's receipt and the writes that record it. The result depends on nothing
//! but the requests and the state (no clock, no randomness), so a replica replaying the
//! same ordered log reaches the same state.
//!
//! One [`GroupCommit`] gathers many requests for one atomic, durable RocksDB write. Reads
//! see the database (through the read-only [`LedgerView`]) plus this group commit's own
//! earlier changes (an overlay), so two requests in one group commit behave exactly as if
//! they had been written one after the other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use rocksdb::{ColumnFamily, WriteBatch};

use crate::clock::UnixMillis;
use crate::fares::FareTable;
use crate::money::Amount;

use super::codec;
use super::model::{
    Account, AccountRef, AccountStatus, CodeFingerprint, CodeUse, Command, Journey, Outcome,
    Posting, Receipt, Record, Refusal, Request, Tap, TapKind, Travel, TxId, rider_of_postings,
    settles,
};
use super::store::{
    CF_ACCOUNTS, CF_CODES, CF_DENY, CF_DENY_JOURNAL, CF_IDS, CF_LOG, CF_META, CF_OPEN_JOURNEYS,
    CF_POSTINGS, CF_PROVIDER_ENTRIES, CF_REFUNDS, CF_RIDER_STEPS,
};
use super::travel::{self, Priced, RecordedStep, Step, StepKind};
use super::view::LedgerView;
use super::{LedgerError, Rules};

/// The column families a group commit writes, looked up once.
struct Handles<'a> {
    accounts: &'a ColumnFamily,
    log: &'a ColumnFamily,
    ids: &'a ColumnFamily,
    postings: &'a ColumnFamily,
    refunds: &'a ColumnFamily,
    provider_entries: &'a ColumnFamily,
    meta: &'a ColumnFamily,
    open_journeys: &'a ColumnFamily,
    codes: &'a ColumnFamily,
    deny: &'a ColumnFamily,
    deny_journal: &'a ColumnFamily,
    rider_steps: &'a ColumnFamily,
}

/// Requests applied together, and the writes that will record them.
pub struct GroupCommit<'a> {
    view: &'a LedgerView,
    rules: &'a Rules,
    cfs: Handles<'a>,
    accounts: HashMap<AccountRef, Account>,
    /// Accounts to write: changed, or a rider's travel state changed (stored with it).
    dirty_accounts: HashSet<AccountRef>,
    ids: HashMap<TxId, u64>,
    records: HashMap<u64, Record>,
    refunded: HashMap<TxId, u64>,
    /// Riders' travel states read or changed, by rider: read with the rider's account.
    travel: HashMap<u64, Travel>,
    codes: HashMap<CodeFingerprint, CodeUse>,
    /// Riders' steps written by this group commit, by (rider, time, sequence).
    steps: BTreeMap<(u64, u64, u64), RecordedStep>,
    /// Whether each rider account read from the database was refused at gates then: a
    /// change of it is a `deny` change, journalled for the gates' bundles.
    refused_before: HashMap<u64, bool>,
    first_sequence: u64,
    next_sequence: u64,
    write: WriteBatch,
}

impl std::fmt::Debug for GroupCommit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("first_sequence", &self.first_sequence)
            .field("next_sequence", &self.next_sequence)
            .finish_non_exhaustive()
    }
}

/// A decided request's results, computed before anything is written.
struct Applied {
    outcome: Outcome,
    effects: Effects,
    /// Every account whose state the request changes, with its new state.
    changed: Vec<(AccountRef, Account)>,
    /// Each posting's account balance after it, in posting order.
    balances_after: Vec<Amount>,
    /// The provider that settles it, when it settles.
    settling_provider: Option<u16>,
    /// The rider's balance after it, when it concerns a rider.
    rider_balance_after: Option<Amount>,
    /// The code's first use, when this request is it.
    code_use: Option<(CodeFingerprint, CodeUse)>,
}

impl<'a> GroupCommit<'a> {
    /// An empty group commit on top of the database's current state.
    pub fn new(view: &'a LedgerView, rules: &'a Rules) -> Result<GroupCommit<'a>, LedgerError> {
        let next_sequence = view.next_sequence()?;
        let cfs = Handles {
            accounts: view.cf(CF_ACCOUNTS)?,
            log: view.cf(CF_LOG)?,
            ids: view.cf(CF_IDS)?,
            postings: view.cf(CF_POSTINGS)?,
            refunds: view.cf(CF_REFUNDS)?,
            provider_entries: view.cf(CF_PROVIDER_ENTRIES)?,
            meta: view.cf(CF_META)?,
            open_journeys: view.cf(CF_OPEN_JOURNEYS)?,
            codes: view.cf(CF_CODES)?,
            deny: view.cf(CF_DENY)?,
            deny_journal: view.cf(CF_DENY_JOURNAL)?,
            rider_steps: view.cf(CF_RIDER_STEPS)?,
        };
        Ok(GroupCommit {
            view,
            rules,
            cfs,
            accounts: HashMap::new(),
            dirty_accounts: HashSet::new(),
            ids: HashMap::new(),
            records: HashMap::new(),
            refunded: HashMap::new(),
            travel: HashMap::new(),
            codes: HashMap::new(),
            steps: BTreeMap::new(),
            refused_before: HashMap::new(),
            first_sequence: next_sequence,
            next_sequence,
            write: WriteBatch::default(),
        })
    }

    /// The sequence of the first transaction this group commit records: receipts below it
    /// were made durable by earlier group commits.
    pub fn first_sequence(&self) -> u64 {
        self.first_sequence
    }

    /// Whether nothing new was recorded (every request was a replay or failed).
    pub fn is_empty(&self) -> bool {
        self.next_sequence == self.first_sequence
    }

    /// The atomic write that records the group commit, ending with the new next sequence.
    pub fn into_write(mut self) -> WriteBatch {
        for account_ref in &self.dirty_accounts {
            let Some(account) = self.accounts.get(account_ref) else {
                continue;
            };
            let value = match account_ref {
                AccountRef::Rider(id) => {
                    codec::encode_rider(account, &self.travel.get(id).copied().unwrap_or_default())
                }
                _ => codec::encode_account(account),
            };
            self.write
                .put_cf(self.cfs.accounts, codec::account_key(*account_ref), value);
        }
        self.journal_deny_changes();
        self.write.put_cf(
            self.cfs.meta,
            codec::META_NEXT_SEQUENCE,
            codec::encode_sequence(self.next_sequence),
        );
        self.write
    }

    /// Writes `deny` and its journal for every rider whose refusal at gates changed. The
    /// journal keys them by the group's last transaction sequence, which every replica of
    /// a shard gives the same group (one log message), and a reader sees whole groups.
    fn journal_deny_changes(&mut self) {
        let Some(last_sequence) = self.next_sequence.checked_sub(1) else {
            return;
        };
        let riders = self
            .dirty_accounts
            .iter()
            .filter_map(|account| match account {
                AccountRef::Rider(id) => Some(*id),
                _ => None,
            });
        for id in riders {
            let Some(account) = self.accounts.get(&AccountRef::Rider(id)) else {
                continue;
            };
            let refused = account.refused_at_gates();
            if refused == self.refused_before.get(&id).copied().unwrap_or(false) {
                continue;
            }
            if refused {
                self.write.put_cf(self.cfs.deny, codec::rider_key(id), []);
            } else {
                self.write.delete_cf(self.cfs.deny, codec::rider_key(id));
            }
            self.write.put_cf(
                self.cfs.deny_journal,
                codec::deny_journal_key(last_sequence, id),
                [u8::from(refused)],
            );
        }
    }

    /// Applies one request. A replay returns the recorded receipt; a conflict is an error.
    /// Everything that can fail (reads, checks) happens before the first write goes into
    /// the group commit, so on any error nothing of this request is in it. A late tap's
    /// fare corrections are recorded right after it, as transactions of their own.
    pub fn apply(&mut self, request: &Request) -> Result<Receipt, LedgerError> {
        if let Some((sequence, record)) = self.find(request.id)? {
            return replay(request, sequence, record, |of| self.record_at(of));
        }
        let sequence = self.next_sequence;
        let (record, corrections) = self.apply_new(request, sequence)?;
        let count = corrections.len();
        for correction in corrections {
            // Its accounts were read when the tap was decided, so this reads nothing and
            // cannot fail half-way (`Effects::corrections`).
            self.apply_new(&correction, self.next_sequence)?;
        }
        let mut receipt = answer(sequence, record, false, |of| self.record_at(of))?;
        receipt.corrections = u32::try_from(count).unwrap_or(u32::MAX);
        Ok(receipt)
    }

    /// Decides and records a request that is not recorded yet; returns its record and the
    /// fare corrections to record after it.
    fn apply_new(
        &mut self,
        request: &Request,
        sequence: u64,
    ) -> Result<(Record, Vec<Request>), LedgerError> {
        // Phase 1: decide, and compute every state this request will write.
        let (outcome, mut effects) = self.decide_outcome(request, sequence)?;
        let corrections = std::mem::take(&mut effects.corrections);
        let (mut changed, balances_after) = self.post(&effects.postings)?;
        let mut settling_provider = None;
        if outcome == Outcome::Accepted {
            if let Some(status_change) = self.account_change(request)? {
                changed.push(status_change);
            }
            settling_provider = self.settling_provider(request, &effects.postings)?;
        }
        let rider_balance_after = self.rider_balance_after(effects.rider, &changed)?;
        let applied = Applied {
            code_use: code_use(request, outcome, sequence),
            outcome,
            effects,
            changed,
            balances_after,
            settling_provider,
            rider_balance_after,
        };
        // Phase 2: nothing below can fail; the request's writes go into the group commit.
        let record = self.record(request, sequence, applied);
        Ok((record, corrections))
    }

    /// The request's outcome and the effects it will write.
    fn decide_outcome(
        &mut self,
        request: &Request,
        sequence: u64,
    ) -> Result<(Outcome, Effects), LedgerError> {
        Ok(match self.decide(request, sequence)? {
            Decided::Accepted(effects) => (Outcome::Accepted, *effects),
            Decided::Refused(refusal) => (
                Outcome::Refused(refusal),
                Effects {
                    rider: self.rider_of(request)?,
                    ..Effects::default()
                },
            ),
            Decided::Duplicate { of } => (Outcome::Duplicate { of }, Effects::default()),
        })
    }

    /// The accounts the postings change, with their new states, and each posting's
    /// balance after it.
    #[allow(clippy::type_complexity)]
    fn post(
        &mut self,
        postings: &[Posting],
    ) -> Result<(Vec<(AccountRef, Account)>, Vec<Amount>), LedgerError> {
        let mut changed: Vec<(AccountRef, Account)> = Vec::with_capacity(postings.len() + 1);
        let mut balances_after = Vec::with_capacity(postings.len());
        for posting in postings {
            let known = changed
                .iter()
                .position(|(account, _)| *account == posting.account);
            let mut account = match known {
                Some(index) => changed[index].1,
                None => self
                    .account(posting.account)?
                    .unwrap_or(system_account(posting.account)),
            };
            account.balance = account
                .balance
                .checked_add(posting.amount)
                .ok_or_else(|| LedgerError::Invariant("balance overflow after checks".into()))?;
            balances_after.push(account.balance);
            match known {
                Some(index) => changed[index].1 = account,
                None => changed.push((posting.account, account)),
            }
        }
        Ok((changed, balances_after))
    }

    /// The rider's balance after the request, when it concerns a rider.
    fn rider_balance_after(
        &mut self,
        rider: Option<u64>,
        changed: &[(AccountRef, Account)],
    ) -> Result<Option<Amount>, LedgerError> {
        let Some(id) = rider else {
            return Ok(None);
        };
        let rider = AccountRef::Rider(id);
        match changed.iter().find(|(account, _)| *account == rider) {
            Some((_, account)) => Ok(Some(account.balance)),
            None => Ok(self.account(rider)?.map(|account| account.balance)),
        }
    }

    /// Puts every write of a decided request into the group commit and remembers its
    /// states for the requests after it. Returns its record. Cannot fail.
    fn record(&mut self, request: &Request, sequence: u64, applied: Applied) -> Record {
        let Applied {
            outcome,
            effects,
            changed,
            balances_after,
            settling_provider,
            rider_balance_after,
            code_use,
        } = applied;
        self.next_sequence += 1;
        for (account_ref, account) in changed {
            // Written once per group commit in `into_write`: a busy account (an operator's
            // revenue) changes with nearly every request, and one put of its final state
            // suffices.
            self.accounts.insert(account_ref, account);
            self.dirty_accounts.insert(account_ref);
        }
        self.write_postings(sequence, &effects.postings, balances_after);
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
                codec::refund_key(original),
                codec::encode_sequence(sequence),
            );
            self.refunded.insert(original, sequence);
        }
        self.write_travel(&effects);
        self.write_steps(&effects.steps);
        if let Some((code, used)) = code_use {
            self.write.put_cf(
                self.cfs.codes,
                codec::code_key(&code),
                codec::encode_code_use(&used),
            );
            self.codes.insert(code, used);
        }
        let record = Record {
            request: *request,
            outcome,
            postings: effects.postings,
            rider_balance_after,
            journey: effects.journey,
        };
        self.write_log(sequence, &record);
        record
    }

    /// The postings' index entries, each with its balance after.
    fn write_postings(&mut self, sequence: u64, postings: &[Posting], balances_after: Vec<Amount>) {
        for (posting, balance_after) in postings.iter().zip(balances_after) {
            self.write.put_cf(
                self.cfs.postings,
                codec::posting_key(posting.account, sequence),
                codec::encode_posting(posting.amount, balance_after),
            );
        }
    }

    /// The rider's new travel state and the open-journey index changes.
    fn write_travel(&mut self, effects: &Effects) {
        if let Some((account_id, travel)) = effects.travel {
            self.travel.insert(account_id, travel);
            self.dirty_accounts.insert(AccountRef::Rider(account_id));
        }
        if let Some((entered_at, account_id)) = effects.closed_journey {
            self.write.delete_cf(
                self.cfs.open_journeys,
                codec::open_journey_key(entered_at, account_id),
            );
        }
        if let Some((entered_at, account_id, journey_id)) = effects.opened_journey {
            self.write.put_cf(
                self.cfs.open_journeys,
                codec::open_journey_key(entered_at, account_id),
                codec::encode_sequence(journey_id),
            );
        }
    }

    /// A rider's steps, new or walked again.
    fn write_steps(&mut self, steps: &[(u64, RecordedStep)]) {
        for (account_id, recorded) in steps {
            let step = recorded.step;
            self.write.put_cf(
                self.cfs.rider_steps,
                codec::rider_step_key(*account_id, step.time, step.sequence),
                codec::encode_rider_step(recorded),
            );
            self.steps
                .insert((*account_id, step.time.0, step.sequence), *recorded);
        }
    }

    /// The record in the log and its id in the idempotency index.
    fn write_log(&mut self, sequence: u64, record: &Record) {
        self.write.put_cf(
            self.cfs.log,
            codec::log_key(sequence),
            codec::encode_record(record),
        );
        self.write.put_cf(
            self.cfs.ids,
            codec::id_key(record.request.id),
            codec::encode_sequence(sequence),
        );
        self.ids.insert(record.request.id, sequence);
        self.records.insert(sequence, record.clone());
    }

    /// A record of this group commit or of the database, by sequence.
    fn record_at(&self, sequence: u64) -> Result<Option<Record>, LedgerError> {
        match self.records.get(&sequence) {
            Some(record) => Ok(Some(record.clone())),
            None => self.view.record(sequence),
        }
    }

    /// Decides a request: its effects, or why it is refused, or that it is a duplicate.
    fn decide(&mut self, request: &Request, sequence: u64) -> Result<Decided, LedgerError> {
        let decided = match request.command {
            Command::Tap(tap) => return self.decide_tap(request, tap, sequence),
            Command::CloseJourney {
                account_id,
                journey_id,
            } => return self.decide_close_journey(request, account_id, journey_id, sequence),
            // The record is the whole of it: nothing moves.
            Command::LostFare { .. } => Ok(Effects::default()),
            _ => self
                .decide_account_command(request)?
                .map(|(postings, rider)| Effects {
                    postings,
                    rider,
                    ..Effects::default()
                }),
        };
        Ok(match decided {
            Ok(effects) => Decided::Accepted(Box::new(effects)),
            Err(refusal) => Decided::Refused(refusal),
        })
    }

    /// Decides a command on accounts (not a tap): its postings and the rider it concerns,
    /// or why it is refused.
    fn decide_account_command(
        &mut self,
        request: &Request,
    ) -> Result<AccountDecision, LedgerError> {
        match request.command {
            Command::OpenAccount {
                account_id,
                credit_limit,
                ..
            } => self.decide_open_account(account_id, credit_limit),
            Command::SetStatus { account_id, status } => self.decide_set_status(account_id, status),
            Command::TopUp { account_id, amount } => self.decide_top_up(account_id, amount),
            Command::Charge {
                account_id,
                operator_id,
                amount,
            } => self.decide_charge(account_id, operator_id, amount),
            Command::Refund { original } => self.decide_refund(original),
            Command::Adjust {
                account_id,
                operator_id,
                amount,
            }
            | Command::Correct {
                account_id,
                operator_id,
                amount,
                ..
            } => self.decide_adjust(account_id, operator_id, amount),
            Command::Tap(_) | Command::CloseJourney { .. } | Command::LostFare { .. } => Err(
                LedgerError::Invariant("a tap reached the account command path".into()),
            ),
        }
    }

    fn decide_open_account(
        &mut self,
        account_id: u64,
        credit_limit: Amount,
    ) -> Result<AccountDecision, LedgerError> {
        Ok(if credit_limit.0 < 0 {
            Err(Refusal::InvalidAmount)
        } else if self.account(AccountRef::Rider(account_id))?.is_some() {
            Err(Refusal::AccountExists)
        } else {
            Ok((Vec::new(), Some(account_id)))
        })
    }

    fn decide_set_status(
        &mut self,
        account_id: u64,
        status: AccountStatus,
    ) -> Result<AccountDecision, LedgerError> {
        Ok(match self.account(AccountRef::Rider(account_id))? {
            None => Err(Refusal::UnknownAccount),
            Some(account) if account.status == AccountStatus::Closed => Err(Refusal::AccountClosed),
            Some(account) if status == AccountStatus::Closed && account.balance != Amount::ZERO => {
                Err(Refusal::BalanceNotZero)
            }
            Some(_) => Ok((Vec::new(), Some(account_id))),
        })
    }

    fn decide_top_up(
        &mut self,
        account_id: u64,
        amount: Amount,
    ) -> Result<AccountDecision, LedgerError> {
        let rider = AccountRef::Rider(account_id);
        Ok(match self.account(rider)? {
            _ if amount.0 <= 0 => Err(Refusal::InvalidAmount),
            None => Err(Refusal::UnknownAccount),
            Some(account) if account.status == AccountStatus::Closed => Err(Refusal::AccountClosed),
            Some(account) => self
                .transfer(
                    AccountRef::ProviderClearing(account.provider_id),
                    rider,
                    amount,
                )?
                .map(|postings| (postings, Some(account_id))),
        })
    }

    fn decide_charge(
        &mut self,
        account_id: u64,
        operator_id: u16,
        amount: Amount,
    ) -> Result<AccountDecision, LedgerError> {
        let rider = AccountRef::Rider(account_id);
        let account = match self.account(rider)? {
            _ if amount.0 < 0 => return Ok(Err(Refusal::InvalidAmount)),
            None => return Ok(Err(Refusal::UnknownAccount)),
            Some(account) if account.status == AccountStatus::Closed => {
                return Ok(Err(Refusal::AccountClosed));
            }
            Some(account) if account.status == AccountStatus::Denied => {
                return Ok(Err(Refusal::AccountDenied));
            }
            Some(account) => account,
        };
        Ok(match account.balance.checked_sub(amount) {
            None => Err(Refusal::BalanceOverflow),
            Some(after) if after < credit_floor(&account) => Err(Refusal::CreditLimitExceeded),
            Some(_) => self
                .transfer(rider, AccountRef::OperatorRevenue(operator_id), amount)?
                .map(|postings| (postings, Some(account_id))),
        })
    }

    fn decide_adjust(
        &mut self,
        account_id: u64,
        operator_id: u16,
        amount: Amount,
    ) -> Result<AccountDecision, LedgerError> {
        let rider = AccountRef::Rider(account_id);
        Ok(match self.account(rider)? {
            _ if amount.0 == 0 || amount.0 == i64::MIN => Err(Refusal::InvalidAmount),
            None => Err(Refusal::UnknownAccount),
            Some(account) if account.status == AccountStatus::Closed => Err(Refusal::AccountClosed),
            Some(_) => self
                .transfer(AccountRef::OperatorRevenue(operator_id), rider, amount)?
                .map(|postings| (postings, Some(account_id))),
        })
    }

    fn decide_refund(&mut self, original: TxId) -> Result<AccountDecision, LedgerError> {
        let Some((sequence, record)) = self.find(original)? else {
            return Ok(Err(Refusal::UnknownOriginal));
        };
        // Charges and the taps and journey closes that charged a fare can be refunded.
        let charged = matches!(
            record.request.command,
            Command::Charge { .. } | Command::Tap(_) | Command::CloseJourney { .. }
        );
        let Some(account_id) = rider_of_postings(&record.postings) else {
            return Ok(Err(Refusal::NotRefundable));
        };
        if !charged || record.outcome != Outcome::Accepted {
            return Ok(Err(Refusal::NotRefundable));
        }
        if self.refund_of(original)?.is_some() {
            return Ok(Err(Refusal::AlreadyRefunded));
        }
        // An id index that points past the log's end is a damaged database, not a bug
        // here: refused as corruption, in every build.
        if sequence >= self.next_sequence {
            return Err(LedgerError::Corrupt {
                what: "idempotency entry",
                problem: "points past the log's end",
            });
        }
        match self.account(AccountRef::Rider(account_id))? {
            Some(account) if account.status == AccountStatus::Closed => {
                return Ok(Err(Refusal::AccountClosed));
            }
            None => return Ok(Err(Refusal::UnknownAccount)),
            Some(_) => {}
        }
        // What the rider paid for it in the end: a fare corrected after a late tap is
        // refunded net of its corrections, which moved money of their own.
        let paid = self.paid_for(account_id, sequence, &record)?;
        let mut postings = Vec::with_capacity(record.postings.len());
        for posting in &record.postings {
            let back = match posting.account {
                AccountRef::Rider(_) => Some(paid),
                _ => paid.checked_neg(),
            };
            let Some(amount) = back else {
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

    /// What the rider paid for a recorded charge: its fare, less the corrections of it
    /// (a tap's or journey close's step holds that net amount).
    fn paid_for(
        &mut self,
        rider: u64,
        sequence: u64,
        record: &Record,
    ) -> Result<Amount, LedgerError> {
        if !matches!(
            record.request.command,
            Command::Tap(_) | Command::CloseJourney { .. }
        ) {
            return Ok(record.rider_charge());
        }
        let time = record.request.time;
        if let Some(step) = self.steps.get(&(rider, time.0, sequence)) {
            return Ok(step.charged);
        }
        let key = codec::rider_step_key(rider, time, sequence);
        match self.view.get_pinned_cf(self.cfs.rider_steps, key)? {
            Some(value) => Ok(codec::decode_rider_step(&key, &value)?.1.charged),
            // A step recorded before steps were kept: its fare was never corrected.
            None => Ok(record.rider_charge()),
        }
    }

    /// Decides a tap: code reuse first (a duplicate gets the original answer), then the
    /// account, then the journey and the fare. `docs/ledger.md` states the rules.
    fn decide_tap(
        &mut self,
        request: &Request,
        tap: Tap,
        sequence: u64,
    ) -> Result<Decided, LedgerError> {
        let fares = self.fares()?;
        if let Some(used) = self.code_use(&tap.code)? {
            return Ok(self.reused_code(request, tap, used));
        }
        let account = match self.account(AccountRef::Rider(tap.account_id))? {
            None => return Ok(Decided::Refused(Refusal::UnknownAccount)),
            Some(account) if account.status == AccountStatus::Closed => {
                return Ok(Decided::Refused(Refusal::AccountClosed));
            }
            Some(account) => account,
        };
        let step = Step {
            time: request.time,
            sequence,
            kind: StepKind::Tap(tap.kind),
            concessions: tap.concessions,
        };
        let taken = match self.take_step(&fares, tap.account_id, step)? {
            Ok(taken) => taken,
            Err(refusal) => return Ok(Decided::Refused(refusal)),
        };
        // A gate that decided alone let the rider through: the operator carried the risk,
        // and the fare is charged whatever the account's state (it may go into debt).
        if !tap.offline
            && let Some(refusal) = online_refusal(&fares, &account, tap.kind, taken.priced.fare)
        {
            return Ok(Decided::Refused(refusal));
        }
        self.charge_step(tap.account_id, taken)
    }

    /// A code seen before: the same gate within the retry window is the gate scanning
    /// twice (the original answer); anything else is a replay.
    fn reused_code(&self, request: &Request, tap: Tap, used: CodeUse) -> Decided {
        let apart_ms = request.time.0.abs_diff(used.time.0);
        if used.gate_id == tap.gate_id && apart_ms <= self.rules.code_retry_window_ms {
            Decided::Duplicate { of: used.sequence }
        } else {
            Decided::Refused(Refusal::CodeReused)
        }
    }

    /// Decides the sweeper's close of a journey entered and never exited.
    fn decide_close_journey(
        &mut self,
        request: &Request,
        account_id: u64,
        journey_id: u64,
        sequence: u64,
    ) -> Result<Decided, LedgerError> {
        let fares = self.fares()?;
        if self.account(AccountRef::Rider(account_id))?.is_none() {
            return Ok(Decided::Refused(Refusal::UnknownAccount));
        }
        let open = match self.stored_travel(account_id)?.open_journey {
            Some(open) if open.id == journey_id => open,
            _ => return Ok(Decided::Refused(Refusal::JourneyNotOpen)),
        };
        if request.time.0.saturating_sub(open.entered_at.0) < fares.incomplete_journey_after_ms {
            return Ok(Decided::Refused(Refusal::JourneyNotExpired));
        }
        let step = Step {
            time: request.time,
            sequence,
            kind: StepKind::Close { journey_id },
            concessions: 0,
        };
        match self.take_step(&fares, account_id, step)? {
            Ok(taken) => self.charge_step(account_id, taken),
            Err(refusal) => Ok(Decided::Refused(refusal)),
        }
    }

    /// The fares file, which taps and journey closes need.
    fn fares(&self) -> Result<Arc<FareTable>, LedgerError> {
        self.rules.fares.clone().ok_or(LedgerError::NoFares)
    }

    /// Prices a rider's step: after the stored travel state when it is the rider's latest,
    /// else by walking again every step of its service day and after
    /// ([`GroupCommit::walk_again`]).
    fn take_step(
        &mut self,
        fares: &FareTable,
        rider: u64,
        step: Step,
    ) -> Result<Result<Taken, Refusal>, LedgerError> {
        let before = self.stored_travel(rider)?;
        if step.time < before.latest_step_at && self.has_history(rider, &before)? {
            return self.walk_again(fares, rider, before, step);
        }
        let mut after = before;
        let priced = match travel::price(fares, &mut after, &step) {
            Ok(priced) => priced,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let recorded = recorded_step(step, &priced, &after);
        Ok(Ok(Taken {
            priced,
            before,
            after,
            steps: vec![recorded],
            corrections: Vec::new(),
        }))
    }

    /// A late step: walks again the rider's steps from the start of its service day to
    /// the latest, with it in its place by scan time, starting from the travel state
    /// after the rider's last step before that day (its open journey, and its week's and
    /// month's totals). Every earlier step whose fare comes out different gets a
    /// correction of the difference, unless it was refunded (a refund already settled
    /// what it charged).
    fn walk_again(
        &mut self,
        fares: &FareTable,
        rider: u64,
        before: Travel,
        step: Step,
    ) -> Result<Result<Taken, Refusal>, LedgerError> {
        let day_start = fares.day_start(step.time);
        let start = self
            .last_step_before(rider, day_start)?
            .map_or_else(Travel::default, |last| Travel {
                totals: last.totals_after,
                open_journey: last.open_after,
                latest_step_at: UnixMillis::default(),
            });
        let recorded = self.rider_steps_from(rider, day_start)?;
        let at = recorded
            .partition_point(|old| (old.step.time, old.step.sequence) < (step.time, step.sequence));
        let mut steps: Vec<Step> = recorded.iter().map(|old| old.step).collect();
        steps.insert(at, step);
        let (walked, after) = travel::walk(fares, start, &steps);
        let (priced, after_step) = walked[at];
        let priced = match priced {
            Ok(priced) => priced,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let mut taken = Taken {
            priced,
            before,
            after,
            steps: vec![recorded_step(step, &priced, &after_step)],
            corrections: Vec::new(),
        };
        let others = walked[..at].iter().chain(&walked[at + 1..]);
        for (old, (priced, after_step)) in recorded.iter().zip(others) {
            self.compare(rider, &step, old, (priced.ok(), after_step), &mut taken)?;
        }
        Ok(Ok(taken))
    }

    /// Compares a step walked again with what it charged: a correction when its fare
    /// changed, and its stored entry rewritten when anything changed.
    fn compare(
        &mut self,
        rider: u64,
        cause: &Step,
        old: &RecordedStep,
        (priced, after): (Option<Priced>, &Travel),
        taken: &mut Taken,
    ) -> Result<(), LedgerError> {
        let mut new = RecordedStep {
            open_after: after.open_journey,
            totals_after: after.totals,
            ..*old
        };
        // A step that no longer prices (a station since removed) keeps its charge.
        let fare = priced.map_or(old.charged, |priced| priced.fare);
        if fare != old.charged
            && let Some(correction) = self.correction(rider, cause, old, fare)?
        {
            taken.corrections.push(correction);
            new.charged = fare;
        }
        if new != *old {
            taken.steps.push(new);
        }
        Ok(())
    }

    /// The correction of a step's fare from what it charged to `fare`, caused by the late
    /// step `cause`, unless the step's transaction was refunded. Reads everything
    /// recording it will need (the corrected transaction, the operator's account), so
    /// that recording it cannot fail.
    fn correction(
        &mut self,
        rider: u64,
        cause: &Step,
        old: &RecordedStep,
        fare: Amount,
    ) -> Result<Option<Request>, LedgerError> {
        let corrected = self
            .record_at(old.step.sequence)?
            .ok_or(LedgerError::Corrupt {
                what: "rider step",
                problem: "names a transaction the log does not hold",
            })?;
        if self.refund_of(corrected.request.id)?.is_some() {
            return Ok(None);
        }
        let amount = old
            .charged
            .checked_sub(fare)
            .ok_or_else(|| LedgerError::Invariant("fare correction out of range".into()))?;
        // The operator's account in the overlay even before its first posting, so that
        // recording the correction reads nothing.
        let operator = AccountRef::OperatorRevenue(old.operator_id);
        if self.account(operator)?.is_none() {
            self.accounts.insert(operator, system_account(operator));
        }
        Ok(Some(Request {
            id: correction_id(corrected.request.id, cause.sequence),
            // The corrected fare's time: a correction belongs to the same service day.
            time: corrected.request.time,
            command: Command::Correct {
                account_id: rider,
                operator_id: old.operator_id,
                corrects: corrected.request.id,
                amount,
            },
        }))
    }

    /// Charges a priced step: its postings, the rider's travel state, the journey index,
    /// the rider's steps, and the corrections to record after it.
    fn charge_step(&mut self, rider: u64, taken: Taken) -> Result<Decided, LedgerError> {
        let Taken {
            priced,
            before,
            after,
            steps,
            corrections,
        } = taken;
        let mut postings = Vec::new();
        if priced.charges {
            let from = AccountRef::Rider(rider);
            let to = AccountRef::OperatorRevenue(priced.operator_id);
            match self.transfer(from, to, priced.fare)? {
                Ok(moved) => postings = moved,
                Err(refusal) => return Ok(Decided::Refused(refusal)),
            }
        }
        let (old_open, new_open) = (before.open_journey, after.open_journey);
        Ok(Decided::Accepted(Box::new(Effects {
            postings,
            rider: Some(rider),
            travel: Some((rider, after)),
            journey: priced.journey,
            opened_journey: new_open
                .filter(|open| old_open != Some(*open))
                .map(|open| (open.entered_at, rider, open.id)),
            closed_journey: old_open
                .filter(|open| new_open != Some(*open))
                .map(|open| (open.entered_at, rider)),
            steps: steps.into_iter().map(|step| (rider, step)).collect(),
            corrections,
        })))
    }

    /// A rider's travel state: this group commit's, else the one stored with the rider's
    /// account (none for a rider without an account).
    fn stored_travel(&mut self, account_id: u64) -> Result<Travel, LedgerError> {
        if !self.travel.contains_key(&account_id) {
            // Reading the account reads its travel state too.
            self.account(AccountRef::Rider(account_id))?;
        }
        Ok(self.travel.get(&account_id).copied().unwrap_or_default())
    }

    /// Whether the rider's steps are recorded up to their latest: not so for a rider
    /// whose latest step was taken before the ledger kept steps (storage format 5). A
    /// late step of such a rider is priced after the stored state, as before.
    fn has_history(&mut self, rider: u64, travel: &Travel) -> Result<bool, LedgerError> {
        let last = self.last_step_before(rider, UnixMillis(u64::MAX))?;
        Ok(last.is_some_and(|last| last.step.time == travel.latest_step_at))
    }

    /// The rider's last step before `time` (all of them for `u64::MAX`): the stored one
    /// or this group commit's, whichever is later.
    fn last_step_before(
        &mut self,
        rider: u64,
        time: UnixMillis,
    ) -> Result<Option<RecordedStep>, LedgerError> {
        let key = codec::rider_step_key(rider, time, 0);
        let stored = self
            .view
            .iterator_cf(
                self.cfs.rider_steps,
                rocksdb::IteratorMode::From(&key, rocksdb::Direction::Reverse),
            )
            .next()
            .transpose()?
            .map(|(key, value)| codec::decode_rider_step(&key, &value))
            .transpose()?
            .filter(|(account_id, _)| *account_id == rider)
            .map(|(_, recorded)| recorded);
        let pending = self
            .steps
            .range((rider, 0, 0)..(rider, time.0, 0))
            .next_back()
            .map(|(_, recorded)| *recorded);
        let order = |recorded: &RecordedStep| (recorded.step.time, recorded.step.sequence);
        Ok(match (stored, pending) {
            (Some(stored), Some(pending)) => Some(if order(&pending) >= order(&stored) {
                pending
            } else {
                stored
            }),
            (stored, pending) => stored.or(pending),
        })
    }

    /// A rider's steps from `time` on, in scan order: the stored ones, with this group
    /// commit's on top.
    fn rider_steps_from(
        &mut self,
        rider: u64,
        time: UnixMillis,
    ) -> Result<Vec<RecordedStep>, LedgerError> {
        let mut steps = BTreeMap::new();
        let key = codec::rider_step_key(rider, time, 0);
        let stored = self.view.iterator_cf(
            self.cfs.rider_steps,
            rocksdb::IteratorMode::From(&key, rocksdb::Direction::Forward),
        );
        for entry in stored {
            let (key, value) = entry?;
            let (account_id, recorded) = codec::decode_rider_step(&key, &value)?;
            if account_id != rider {
                break;
            }
            steps.insert((recorded.step.time.0, recorded.step.sequence), recorded);
        }
        for (&(_, time, sequence), recorded) in self
            .steps
            .range((rider, time.0, 0)..=(rider, u64::MAX, u64::MAX))
        {
            steps.insert((time, sequence), *recorded);
        }
        Ok(steps.into_values().collect())
    }

    /// Where and when a code was first used, if it was.
    fn code_use(&mut self, code: &CodeFingerprint) -> Result<Option<CodeUse>, LedgerError> {
        if let Some(used) = self.codes.get(code) {
            return Ok(Some(*used));
        }
        match self
            .view
            .get_pinned_cf(self.cfs.codes, codec::code_key(code))?
        {
            Some(bytes) => Ok(Some(codec::decode_code_use(&bytes)?)),
            None => Ok(None),
        }
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
        if !settles(&request.command, Outcome::Accepted, postings) {
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
            | Command::Adjust { account_id, .. }
            | Command::Tap(Tap { account_id, .. })
            | Command::CloseJourney { account_id, .. }
            | Command::Correct { account_id, .. } => Some(account_id),
            Command::Refund { original } => self
                .find(original)?
                .and_then(|(_, record)| rider_of_postings(&record.postings)),
            Command::LostFare { .. } => None,
        };
        match rider {
            Some(id) if self.account(AccountRef::Rider(id))?.is_some() => Ok(Some(id)),
            _ => Ok(None),
        }
    }

    /// An account: this group commit's, else the stored one. A rider's stored travel state
    /// comes with it (one key).
    fn account(&mut self, account: AccountRef) -> Result<Option<Account>, LedgerError> {
        if let Some(found) = self.accounts.get(&account) {
            return Ok(Some(*found));
        }
        let found = match account {
            AccountRef::Rider(id) => self.view.rider(id)?.map(|(found, travel)| {
                self.travel.entry(id).or_insert(travel);
                self.refused_before.insert(id, found.refused_at_gates());
                found
            }),
            _ => self.view.account(account)?,
        };
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
                .ok_or_else(|| LedgerError::Invariant("group commit record missing".into()))?;
            return Ok(Some((*sequence, record)));
        }
        self.view.transaction(id)
    }

    fn refund_of(&mut self, original: TxId) -> Result<Option<u64>, LedgerError> {
        if let Some(sequence) = self.refunded.get(&original) {
            return Ok(Some(*sequence));
        }
        match self
            .view
            .get_pinned_cf(self.cfs.refunds, codec::refund_key(original))?
        {
            Some(bytes) => Ok(Some(codec::decode_sequence(&bytes, "refund entry")?)),
            None => Ok(None),
        }
    }
}

/// What a request will change, decided before anything is written.
#[derive(Debug, Default)]
struct Effects {
    postings: Vec<Posting>,
    /// The rider the request concerns (for the balance after).
    rider: Option<u64>,
    /// A rider's new travel state.
    travel: Option<(u64, Travel)>,
    /// The journey a tap belongs to.
    journey: Option<Journey>,
    /// An open-journey index entry to add: (entry time, rider, journey id).
    opened_journey: Option<(UnixMillis, u64, u64)>,
    /// An open-journey index entry to remove: (entry time, rider).
    closed_journey: Option<(UnixMillis, u64)>,
    /// The rider's steps to write: a tap's or close's own, and any walked again.
    steps: Vec<(u64, RecordedStep)>,
    /// Fare corrections to record right after the request (a late step's). Every
    /// account they move money between was read while deciding the request.
    corrections: Vec<Request>,
}

/// The verdict on a request.
#[derive(Debug)]
enum Decided {
    Accepted(Box<Effects>),
    Refused(Refusal),
    /// The same code at the same gate within the retry window.
    Duplicate {
        of: u64,
    },
}

/// A command on accounts decided: its postings and the rider it concerns, or why it is
/// refused.
type AccountDecision = Result<(Vec<Posting>, Option<u64>), Refusal>;

/// A step priced: the rider's travel state before and after it, the rider's steps to
/// write (it, and any walked again), and the fare corrections to record after it.
struct Taken {
    priced: Priced,
    before: Travel,
    after: Travel,
    steps: Vec<RecordedStep>,
    corrections: Vec<Request>,
}

/// Why an online tap is refused though it prices: a deny-listed rider, or one who cannot
/// pay within the credit limit (at an entry, the fare it charges plus the shortest trip).
/// An exit always opens: the rider is inside (ride first, pay later).
fn online_refusal(
    fares: &FareTable,
    account: &Account,
    kind: TapKind,
    fare: Amount,
) -> Option<Refusal> {
    let needed = match kind {
        TapKind::MetroExit { .. } => return None,
        TapKind::MetroEntry { .. } => fare.checked_add(fares.shortest_trip_fare()),
        TapKind::Bus { .. } => Some(fare),
    };
    if account.status == AccountStatus::Denied {
        return Some(Refusal::AccountDenied);
    }
    let fits = needed
        .and_then(|needed| account.balance.checked_sub(needed))
        .is_some_and(|after| after >= credit_floor(account));
    (!fits).then_some(Refusal::CreditLimitExceeded)
}

/// A step as the rider's history records it, priced, with the travel state after it.
fn recorded_step(step: Step, priced: &Priced, after: &Travel) -> RecordedStep {
    RecordedStep {
        step,
        operator_id: priced.operator_id,
        charged: priced.fare,
        open_after: after.open_journey,
        totals_after: after.totals,
    }
}

/// The transaction id of a fare correction: derived from the corrected transaction and
/// the late step that caused it, so that every replica (and a replay of the log) records
/// the same correction under the same id.
fn correction_id(corrected: TxId, cause_sequence: u64) -> TxId {
    let mut input = Vec::with_capacity(48);
    input.extend_from_slice(b"fareway/fare-correction/v1");
    input.extend_from_slice(&corrected.0.to_be_bytes());
    input.extend_from_slice(&cause_sequence.to_be_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.as_ref()[..16]);
    TxId(u128::from_be_bytes(id))
}

/// The lowest balance an account may reach: minus its credit limit.
fn credit_floor(account: &Account) -> Amount {
    account
        .credit_limit
        .checked_neg()
        .unwrap_or(Amount(i64::MIN))
}

/// The code use a request records: a code is used by the first tap that reaches the
/// ledger with it, whatever its outcome; a replay or a duplicate does not move its first
/// use.
fn code_use(
    request: &Request,
    outcome: Outcome,
    sequence: u64,
) -> Option<(CodeFingerprint, CodeUse)> {
    match (request.command, outcome) {
        (Command::Tap(_), Outcome::Refused(Refusal::CodeReused) | Outcome::Duplicate { .. }) => {
            None
        }
        (Command::Tap(tap), _) => Some((
            tap.code,
            CodeUse {
                gate_id: tap.gate_id,
                time: request.time,
                sequence,
            },
        )),
        _ => None,
    }
}

/// The receipt for a request whose id is already recorded, or the conflict. A recorded
/// duplicate scan is answered with the original tap's record, found by `original`.
fn replay(
    request: &Request,
    sequence: u64,
    record: Record,
    original: impl FnOnce(u64) -> Result<Option<Record>, LedgerError>,
) -> Result<Receipt, LedgerError> {
    if let Some(field) = record.request.first_difference(request) {
        return Err(LedgerError::Conflict {
            id: request.id,
            field,
        });
    }
    answer(sequence, record, true, original)
}

/// The answer a recorded transaction gives: itself, or for a duplicate scan the original
/// tap (as a replay).
fn answer(
    sequence: u64,
    record: Record,
    replay: bool,
    original: impl FnOnce(u64) -> Result<Option<Record>, LedgerError>,
) -> Result<Receipt, LedgerError> {
    let Outcome::Duplicate { of } = record.outcome else {
        return Ok(Receipt {
            sequence,
            record,
            replay,
            corrections: 0,
        });
    };
    let record = original(of)?.ok_or(LedgerError::Corrupt {
        what: "duplicate tap",
        problem: "points at a missing record",
    })?;
    Ok(Receipt {
        sequence: of,
        record,
        replay: true,
        corrections: 0,
    })
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
