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

use crate::clock::UnixMillis;
use crate::fares::RiderDay;
use crate::money::Amount;

use super::codec;
use super::model::{
    Account, AccountRef, AccountStatus, CodeFingerprint, CodeUse, Command, Journey, OpenJourney,
    Outcome, Posting, Receipt, Record, Refusal, Request, Tap, TapKind, Travel, TxId,
    rider_of_postings, settles,
};
use super::store::{
    CF_ACCOUNTS, CF_CODES, CF_IDS, CF_LOG, CF_META, CF_OPEN_JOURNEYS, CF_POSTINGS,
    CF_PROVIDER_ENTRIES, CF_REFUNDS, CF_TRAVEL, META_NEXT_SEQUENCE,
};
use super::{LedgerError, Rules};

/// One day in milliseconds: service days are UTC days.
const DAY_MS: u64 = 86_400_000;

/// The column families a batch writes, looked up once.
struct Handles<'a> {
    accounts: &'a ColumnFamily,
    log: &'a ColumnFamily,
    ids: &'a ColumnFamily,
    postings: &'a ColumnFamily,
    refunds: &'a ColumnFamily,
    provider_entries: &'a ColumnFamily,
    meta: &'a ColumnFamily,
    travel: &'a ColumnFamily,
    open_journeys: &'a ColumnFamily,
    codes: &'a ColumnFamily,
}

/// Requests applied together, and the writes that will record them.
pub struct Batch<'a> {
    db: &'a DB,
    rules: &'a Rules,
    cfs: Handles<'a>,
    accounts: HashMap<AccountRef, Account>,
    dirty_accounts: HashSet<AccountRef>,
    ids: HashMap<TxId, u64>,
    records: HashMap<u64, Record>,
    refunded: HashMap<TxId, u64>,
    travel: HashMap<u64, Travel>,
    dirty_travel: HashSet<u64>,
    codes: HashMap<CodeFingerprint, CodeUse>,
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
    pub fn new(db: &'a DB, rules: &'a Rules) -> Result<Batch<'a>, LedgerError> {
        let next_sequence = read_next_sequence(db)?;
        let cfs = Handles {
            accounts: cf(db, CF_ACCOUNTS)?,
            log: cf(db, CF_LOG)?,
            ids: cf(db, CF_IDS)?,
            postings: cf(db, CF_POSTINGS)?,
            refunds: cf(db, CF_REFUNDS)?,
            provider_entries: cf(db, CF_PROVIDER_ENTRIES)?,
            meta: cf(db, CF_META)?,
            travel: cf(db, CF_TRAVEL)?,
            open_journeys: cf(db, CF_OPEN_JOURNEYS)?,
            codes: cf(db, CF_CODES)?,
        };
        Ok(Batch {
            db,
            rules,
            cfs,
            accounts: HashMap::new(),
            dirty_accounts: HashSet::new(),
            ids: HashMap::new(),
            records: HashMap::new(),
            refunded: HashMap::new(),
            travel: HashMap::new(),
            dirty_travel: HashSet::new(),
            codes: HashMap::new(),
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
        for account_id in &self.dirty_travel {
            if let Some(travel) = self.travel.get(account_id) {
                self.write.put_cf(
                    self.cfs.travel,
                    codec::rider_key(*account_id),
                    codec::encode_travel(travel),
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
            return replay(request, sequence, record, |of| self.record_at(of));
        }
        let sequence = self.next_sequence;

        // Phase 1: decide, and compute every state this request will write.
        let (outcome, effects) = match self.decide(request, sequence)? {
            Decided::Accepted(effects) => (Outcome::Accepted, effects),
            Decided::Refused(refusal) => (
                Outcome::Refused(refusal),
                Effects {
                    rider: self.rider_of(request)?,
                    ..Effects::default()
                },
            ),
            Decided::Duplicate { of } => (Outcome::Duplicate { of }, Effects::default()),
        };
        let Effects {
            postings,
            rider,
            travel,
            journey,
            opened_journey,
            closed_journey,
        } = effects;
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
        // A code is used by the first tap that reaches the ledger with it, whatever its
        // outcome; a replay or a duplicate does not move its first use.
        let code_use = match (request.command, outcome) {
            (
                Command::Tap(_),
                Outcome::Refused(Refusal::CodeReused) | Outcome::Duplicate { .. },
            ) => None,
            (Command::Tap(tap), _) => Some((
                tap.code,
                CodeUse {
                    gate_id: tap.gate_id,
                    time: request.time,
                    sequence,
                },
            )),
            _ => None,
        };

        // Phase 2: nothing below can fail; the request's writes go into the batch.
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
        if let Some((account_id, travel)) = travel {
            self.travel.insert(account_id, travel);
            self.dirty_travel.insert(account_id);
        }
        if let Some((entered_at, account_id)) = closed_journey {
            self.write.delete_cf(
                self.cfs.open_journeys,
                codec::open_journey_key(entered_at, account_id),
            );
        }
        if let Some((entered_at, account_id, journey_id)) = opened_journey {
            self.write.put_cf(
                self.cfs.open_journeys,
                codec::open_journey_key(entered_at, account_id),
                codec::encode_sequence(journey_id),
            );
        }
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
            postings,
            rider_balance_after,
            journey,
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
        answer(sequence, record, false, |of| self.record_at(of))
    }

    /// A record of this batch or of the database, by sequence.
    fn record_at(&self, sequence: u64) -> Result<Option<Record>, LedgerError> {
        match self.records.get(&sequence) {
            Some(record) => Ok(Some(record.clone())),
            None => read_record(self.db, sequence),
        }
    }

    /// Decides a request: its effects, or why it is refused, or that it is a duplicate.
    fn decide(&mut self, request: &Request, sequence: u64) -> Result<Decided, LedgerError> {
        let decided = match request.command {
            Command::Tap(tap) => return self.decide_tap(request, tap, sequence),
            Command::CloseJourney {
                account_id,
                journey_id,
            } => self.decide_close_journey(request, account_id, journey_id)?,
            _ => self
                .decide_account_command(request)?
                .map(|(postings, rider)| Effects {
                    postings,
                    rider,
                    ..Effects::default()
                }),
        };
        Ok(match decided {
            Ok(effects) => Decided::Accepted(effects),
            Err(refusal) => Decided::Refused(refusal),
        })
    }

    /// Decides a command on accounts (not a tap): its postings and the rider it concerns,
    /// or why it is refused.
    #[allow(clippy::type_complexity)]
    fn decide_account_command(
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
            Command::Tap(_) | Command::CloseJourney { .. } => {
                return Err(LedgerError::Invariant(
                    "a tap reached the account command path".into(),
                ));
            }
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

    /// Decides a tap: code reuse first (a duplicate gets the original answer), then the
    /// account, then the journey and the fare. `docs/ledger.md` states the rules.
    fn decide_tap(
        &mut self,
        request: &Request,
        tap: Tap,
        sequence: u64,
    ) -> Result<Decided, LedgerError> {
        let Some(fares) = self.rules.fares.clone() else {
            return Err(LedgerError::NoFares);
        };
        if let Some(used) = self.code_use(&tap.code)? {
            let apart_ms = request.time.0.abs_diff(used.time.0);
            return Ok(
                if used.gate_id == tap.gate_id && apart_ms <= self.rules.code_retry_window_ms {
                    Decided::Duplicate { of: used.sequence }
                } else {
                    Decided::Refused(Refusal::CodeReused)
                },
            );
        }
        let refused = |refusal| Ok(Decided::Refused(refusal));
        let rider = AccountRef::Rider(tap.account_id);
        let account = match self.account(rider)? {
            None => return refused(Refusal::UnknownAccount),
            Some(account) if account.status == AccountStatus::Closed => {
                return refused(Refusal::AccountClosed);
            }
            Some(account) => account,
        };
        let (mut travel, day) = self.travel_on(tap.account_id, request.time)?;
        let now = request.time;
        let floor = account
            .credit_limit
            .checked_neg()
            .unwrap_or(Amount(i64::MIN));
        let fits = |fare: Amount| {
            account
                .balance
                .checked_sub(fare)
                .is_some_and(|after| after >= floor)
        };
        let mut effects = Effects {
            rider: Some(tap.account_id),
            ..Effects::default()
        };
        let (operator_id, fare) = match tap.kind {
            TapKind::MetroEntry { station } => {
                if !fares.has_station(station) {
                    return refused(Refusal::UnknownStation);
                }
                if account.status == AccountStatus::Denied {
                    return refused(Refusal::AccountDenied);
                }
                // An entry while a journey is open: that journey never exited, so it is
                // incomplete and charged now, with this entry's transaction.
                let mut fare = Amount::ZERO;
                if let Some(open) = travel.open_journey {
                    fare = fares.charge(fares.max_fare, open.entered_at.0, day.without_transfer());
                    effects.closed_journey = Some((open.entered_at, tap.account_id));
                }
                // The rider may travel if the shortest trip would still fit in the limit.
                let needed = fare.checked_add(fares.shortest_trip_fare());
                if !needed.is_some_and(fits) {
                    return refused(Refusal::CreditLimitExceeded);
                }
                travel.open_journey = Some(OpenJourney {
                    id: sequence,
                    station,
                    entered_at: now,
                });
                effects.opened_journey = Some((now, tap.account_id, sequence));
                effects.journey = Some(Journey {
                    id: sequence,
                    entry_station: Some(station),
                    entered_at: Some(now),
                });
                if effects.closed_journey.is_none() {
                    // Nothing is charged at an entry; only the journey state changes.
                    effects.travel = Some((tap.account_id, travel));
                    return Ok(Decided::Accepted(effects));
                }
                (fares.metro_operator_id, fare)
            }
            TapKind::MetroExit { station } => {
                if !fares.has_station(station) {
                    return refused(Refusal::UnknownStation);
                }
                // The rider is inside: the exit always opens, even for a deny-listed or
                // broke rider, and the fare is charged (ride first, pay later).
                let (base, started_at) = match travel.open_journey.take() {
                    Some(open) => {
                        let duration_ms = now.0.saturating_sub(open.entered_at.0);
                        let base = if duration_ms > fares.incomplete_journey_after_ms {
                            fares.max_fare
                        } else {
                            fares
                                .metro_fare(open.station, station, duration_ms)
                                .unwrap_or(fares.max_fare)
                        };
                        effects.closed_journey = Some((open.entered_at, tap.account_id));
                        effects.journey = Some(Journey {
                            id: open.id,
                            entry_station: Some(open.station),
                            entered_at: Some(open.entered_at),
                        });
                        (base, open.entered_at)
                    }
                    None => {
                        // An exit with no entry is an incomplete journey.
                        effects.journey = Some(Journey {
                            id: sequence,
                            entry_station: None,
                            entered_at: None,
                        });
                        (fares.max_fare, now)
                    }
                };
                let fare = fares.charge(base, started_at.0, day.totals);
                travel.last_trip_started_at = Some(started_at);
                (fares.metro_operator_id, fare)
            }
            TapKind::Bus { route } => {
                let Ok(base) = fares.bus_fare(route) else {
                    return refused(Refusal::UnknownRoute);
                };
                if account.status == AccountStatus::Denied {
                    return refused(Refusal::AccountDenied);
                }
                let fare = fares.charge(base, now.0, day.totals);
                if !fits(fare) {
                    return refused(Refusal::CreditLimitExceeded);
                }
                effects.journey = Some(Journey {
                    id: sequence,
                    entry_station: None,
                    entered_at: None,
                });
                travel.last_trip_started_at = Some(now);
                (fares.bus_operator_id, fare)
            }
        };
        let Some(charged_today) = travel.charged_today.checked_add(fare) else {
            return refused(Refusal::BalanceOverflow);
        };
        if day.counts {
            travel.charged_today = charged_today;
        }
        match self.transfer(rider, AccountRef::OperatorRevenue(operator_id), fare)? {
            Ok(postings) => effects.postings = postings,
            Err(refusal) => return refused(refusal),
        }
        effects.travel = Some((tap.account_id, travel));
        Ok(Decided::Accepted(effects))
    }

    /// Decides the sweeper's close of a journey entered and never exited.
    fn decide_close_journey(
        &mut self,
        request: &Request,
        account_id: u64,
        journey_id: u64,
    ) -> Result<Result<Effects, Refusal>, LedgerError> {
        let Some(fares) = self.rules.fares.clone() else {
            return Err(LedgerError::NoFares);
        };
        let rider = AccountRef::Rider(account_id);
        if self.account(rider)?.is_none() {
            return Ok(Err(Refusal::UnknownAccount));
        }
        let (mut travel, day) = self.travel_on(account_id, request.time)?;
        let open = match travel.open_journey {
            Some(open) if open.id == journey_id => open,
            _ => return Ok(Err(Refusal::JourneyNotOpen)),
        };
        if request.time.0.saturating_sub(open.entered_at.0) < fares.incomplete_journey_after_ms {
            return Ok(Err(Refusal::JourneyNotExpired));
        }
        let fare = fares.charge(fares.max_fare, open.entered_at.0, day.without_transfer());
        let postings = match self.transfer(
            rider,
            AccountRef::OperatorRevenue(fares.metro_operator_id),
            fare,
        )? {
            Ok(postings) => postings,
            Err(refusal) => return Ok(Err(refusal)),
        };
        travel.open_journey = None;
        if day.counts {
            let Some(charged_today) = travel.charged_today.checked_add(fare) else {
                return Ok(Err(Refusal::BalanceOverflow));
            };
            travel.charged_today = charged_today;
        }
        Ok(Ok(Effects {
            postings,
            rider: Some(account_id),
            travel: Some((account_id, travel)),
            journey: Some(Journey {
                id: open.id,
                entry_station: Some(open.station),
                entered_at: Some(open.entered_at),
            }),
            opened_journey: None,
            closed_journey: Some((open.entered_at, account_id)),
        }))
    }

    /// A rider's travel state as of `time`, and that day's totals for pricing. A tap on a
    /// later day than the stored one starts the day's totals afresh; a late tap from an
    /// earlier day (a gate that was offline) is priced with no totals and leaves the
    /// stored day's totals alone.
    fn travel_on(
        &mut self,
        account_id: u64,
        time: UnixMillis,
    ) -> Result<(Travel, TravelDay), LedgerError> {
        let mut travel = match self.travel.get(&account_id) {
            Some(travel) => *travel,
            None => match self
                .db
                .get_pinned_cf(self.cfs.travel, codec::rider_key(account_id))?
            {
                Some(bytes) => codec::decode_travel(&bytes)?,
                None => Travel::default(),
            },
        };
        let day = u32::try_from(time.0 / DAY_MS).unwrap_or(u32::MAX);
        if day > travel.day {
            travel.day = day;
            travel.charged_today = Amount::ZERO;
            travel.last_trip_started_at = None;
        }
        let counts = day == travel.day;
        let totals = if counts {
            RiderDay {
                charged_today: travel.charged_today,
                previous_trip_started_at_ms: travel.last_trip_started_at.map(|at| at.0),
            }
        } else {
            RiderDay::default()
        };
        Ok((travel, TravelDay { totals, counts }))
    }

    /// Where and when a code was first used, if it was.
    fn code_use(&mut self, code: &CodeFingerprint) -> Result<Option<CodeUse>, LedgerError> {
        if let Some(used) = self.codes.get(code) {
            return Ok(Some(*used));
        }
        match self
            .db
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
            | Command::CloseJourney { account_id, .. } => Some(account_id),
            Command::Refund { original } => self
                .find(original)?
                .and_then(|(_, record)| rider_of_postings(&record.postings)),
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
}

/// The verdict on a request.
#[derive(Debug)]
enum Decided {
    Accepted(Effects),
    Refused(Refusal),
    /// The same code at the same gate within the retry window.
    Duplicate {
        of: u64,
    },
}

/// A day's totals for pricing a trip, and whether the trip counts towards them.
#[derive(Debug, Clone, Copy)]
struct TravelDay {
    totals: RiderDay,
    counts: bool,
}

impl TravelDay {
    /// For an incomplete journey's maximum fare: the daily cap applies, a transfer
    /// discount does not.
    fn without_transfer(self) -> RiderDay {
        RiderDay {
            previous_trip_started_at_ms: None,
            ..self.totals
        }
    }
}

/// The receipt for a request whose id is already recorded, or the conflict. A recorded
/// duplicate scan is answered with the original tap's record, found by `original`.
pub fn replay(
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
    })
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
