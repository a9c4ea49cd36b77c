//! Unit tests of the ledger on a real RocksDB in a temporary directory.

use super::*;
use crate::clock::UnixMillis;

const T: UnixMillis = UnixMillis(1_800_000_000_000);

fn open() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), LedgerConfig::default()).unwrap();
    (dir, ledger)
}

fn request(id: u128, command: Command) -> Request {
    Request {
        id: TxId(id),
        time: T,
        command,
    }
}

fn open_rider(ledger: &Ledger, id: u128, account_id: u64, credit_limit: i64) {
    let command = Command::OpenAccount {
        account_id,
        provider_id: 1,
        credit_limit: Amount(credit_limit),
    };
    assert_eq!(
        ledger.submit(request(id, command)).unwrap().record.outcome,
        Outcome::Accepted
    );
}

fn charge(account_id: u64, amount: i64) -> Command {
    Command::Charge {
        account_id,
        operator_id: 9,
        amount: Amount(amount),
    }
}

fn balance(ledger: &Ledger, account: AccountRef) -> i64 {
    ledger
        .account(account)
        .unwrap()
        .map_or(0, |account| account.balance.0)
}

fn assert_audit_ok(ledger: &Ledger) -> audit::AuditReport {
    let report = audit::audit(ledger.view()).unwrap();
    assert!(report.ok(), "audit failed: {:?}", report.violations);
    assert_eq!(report.balance_sum, 0);
    report
}

#[test]
fn a_charge_moves_money_from_rider_to_operator_and_conserves_it() {
    let (_dir, ledger) = open();
    open_rider(&ledger, 1, 42, 500);
    ledger
        .submit(request(
            2,
            Command::TopUp {
                account_id: 42,
                amount: Amount(1_000),
            },
        ))
        .unwrap();
    let receipt = ledger.submit(request(3, charge(42, 300))).unwrap();
    assert_eq!(receipt.record.outcome, Outcome::Accepted);
    assert_eq!(receipt.record.rider_balance_after, Some(Amount(700)));
    assert!(!receipt.replay);
    assert_eq!(balance(&ledger, AccountRef::Rider(42)), 700);
    assert_eq!(balance(&ledger, AccountRef::OperatorRevenue(9)), 300);
    assert_eq!(balance(&ledger, AccountRef::ProviderClearing(1)), -1_000);
    let report = assert_audit_ok(&ledger);
    assert_eq!(
        (report.accounts, report.transactions, report.postings),
        (3, 3, 4)
    );
}

#[test]
fn a_rider_may_go_negative_down_to_the_credit_limit_and_no_further() {
    let (_dir, ledger) = open();
    open_rider(&ledger, 1, 7, 500);
    assert_eq!(
        ledger
            .submit(request(2, charge(7, 500)))
            .unwrap()
            .record
            .outcome,
        Outcome::Accepted
    );
    let refused = ledger.submit(request(3, charge(7, 1))).unwrap();
    assert_eq!(
        refused.record.outcome,
        Outcome::Refused(Refusal::CreditLimitExceeded)
    );
    assert!(refused.record.postings.is_empty());
    assert_eq!(refused.record.rider_balance_after, Some(Amount(-500)));
    assert_eq!(balance(&ledger, AccountRef::Rider(7)), -500);
    // The refusal is the recorded outcome of id 3: a retry gets it again, even after a top-up.
    ledger
        .submit(request(
            4,
            Command::TopUp {
                account_id: 7,
                amount: Amount(10_000),
            },
        ))
        .unwrap();
    let again = ledger.submit(request(3, charge(7, 1))).unwrap();
    assert!(again.replay);
    assert_eq!(
        again.record.outcome,
        Outcome::Refused(Refusal::CreditLimitExceeded)
    );
    assert_audit_ok(&ledger);
}

#[test]
fn the_same_id_with_the_same_content_is_a_replay_and_writes_nothing() {
    let (_dir, ledger) = open();
    open_rider(&ledger, 1, 5, 1_000);
    let first = ledger.submit(request(2, charge(5, 250))).unwrap();
    let again = ledger.submit(request(2, charge(5, 250))).unwrap();
    assert!(again.replay);
    assert_eq!(again.sequence, first.sequence);
    assert_eq!(again.record, first.record);
    assert_eq!(balance(&ledger, AccountRef::Rider(5)), -250);
    assert_eq!(assert_audit_ok(&ledger).transactions, 2);
    // An operations command is stamped by the server: its retry a minute later is the
    // same request, answered as a replay.
    let top_up = Command::TopUp {
        account_id: 5,
        amount: Amount(100),
    };
    ledger.submit(request(3, top_up)).unwrap();
    let retry = Request {
        time: UnixMillis(T.0 + 60_000),
        ..request(3, top_up)
    };
    assert!(ledger.submit(retry).unwrap().replay);
    assert_eq!(balance(&ledger, AccountRef::Rider(5)), -150);
}

#[test]
fn the_same_id_with_other_content_is_a_conflict_naming_the_first_field() {
    let (_dir, ledger) = open();
    open_rider(&ledger, 1, 5, 1_000);
    ledger.submit(request(2, charge(5, 250))).unwrap();
    let err = ledger.submit(request(2, charge(5, 260))).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::Conflict {
                field: "amount",
                ..
            }
        ),
        "{err}"
    );
    let err = ledger.submit(request(2, charge(6, 250))).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::Conflict {
                field: "account_id",
                ..
            }
        ),
        "{err}"
    );
    let err = ledger
        .submit(request(
            2,
            Command::TopUp {
                account_id: 5,
                amount: Amount(1),
            },
        ))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Conflict { field: "kind", .. }),
        "{err}"
    );
    let later = Request {
        time: UnixMillis(T.0 + 1),
        ..request(2, charge(5, 250))
    };
    assert!(matches!(
        ledger.submit(later).unwrap_err(),
        LedgerError::Conflict { field: "time", .. }
    ));
    assert_eq!(balance(&ledger, AccountRef::Rider(5)), -250);
    assert_eq!(assert_audit_ok(&ledger).transactions, 2);
}

#[test]
fn a_refund_reverses_a_charge_once() {
    let (_dir, ledger) = open();
    open_rider(&ledger, 1, 5, 1_000);
    ledger.submit(request(2, charge(5, 400))).unwrap();
    let refund = ledger
        .submit(request(3, Command::Refund { original: TxId(2) }))
        .unwrap();
    assert_eq!(refund.record.outcome, Outcome::Accepted);
    assert_eq!(refund.record.rider_balance_after, Some(Amount(0)));
    let twice = ledger
        .submit(request(4, Command::Refund { original: TxId(2) }))
        .unwrap();
    assert_eq!(
        twice.record.outcome,
        Outcome::Refused(Refusal::AlreadyRefunded)
    );
    let unknown = ledger
        .submit(request(5, Command::Refund { original: TxId(99) }))
        .unwrap();
    assert_eq!(
        unknown.record.outcome,
        Outcome::Refused(Refusal::UnknownOriginal)
    );
    let of_open = ledger
        .submit(request(6, Command::Refund { original: TxId(1) }))
        .unwrap();
    assert_eq!(
        of_open.record.outcome,
        Outcome::Refused(Refusal::NotRefundable)
    );
    assert_eq!(balance(&ledger, AccountRef::Rider(5)), 0);
    assert_eq!(balance(&ledger, AccountRef::OperatorRevenue(9)), 0);
    assert_audit_ok(&ledger);
}

#[test]
fn deny_listed_closed_and_unknown_accounts_are_refused() {
    let (_dir, ledger) = open();
    open_rider(&ledger, 1, 5, 1_000);
    let deny = Command::SetStatus {
        account_id: 5,
        status: AccountStatus::Denied,
    };
    ledger.submit(request(2, deny)).unwrap();
    assert_eq!(
        ledger
            .submit(request(3, charge(5, 1)))
            .unwrap()
            .record
            .outcome,
        Outcome::Refused(Refusal::AccountDenied)
    );
    assert_eq!(
        ledger
            .submit(request(4, charge(6, 1)))
            .unwrap()
            .record
            .outcome,
        Outcome::Refused(Refusal::UnknownAccount)
    );
    open_rider(&ledger, 5, 8, 0);
    let close = Command::SetStatus {
        account_id: 8,
        status: AccountStatus::Closed,
    };
    assert_eq!(
        ledger.submit(request(6, close)).unwrap().record.outcome,
        Outcome::Accepted
    );
    assert_eq!(
        ledger
            .submit(request(7, charge(8, 1)))
            .unwrap()
            .record
            .outcome,
        Outcome::Refused(Refusal::AccountClosed)
    );
    let reopen = Command::OpenAccount {
        account_id: 8,
        provider_id: 1,
        credit_limit: Amount(0),
    };
    assert_eq!(
        ledger.submit(request(8, reopen)).unwrap().record.outcome,
        Outcome::Refused(Refusal::AccountExists)
    );
    ledger
        .submit(request(
            9,
            Command::TopUp {
                account_id: 5,
                amount: Amount(10),
            },
        ))
        .unwrap();
    let close_with_money = Command::SetStatus {
        account_id: 5,
        status: AccountStatus::Closed,
    };
    assert_eq!(
        ledger
            .submit(request(10, close_with_money))
            .unwrap()
            .record
            .outcome,
        Outcome::Refused(Refusal::BalanceNotZero)
    );
    let zero_top_up = Command::TopUp {
        account_id: 5,
        amount: Amount(0),
    };
    assert_eq!(
        ledger
            .submit(request(11, zero_top_up))
            .unwrap()
            .record
            .outcome,
        Outcome::Refused(Refusal::InvalidAmount)
    );
    assert_audit_ok(&ledger);
}

#[test]
fn balances_never_overflow() {
    let (_dir, ledger) = open();
    open_rider(&ledger, 1, 5, 0);
    let huge = Command::TopUp {
        account_id: 5,
        amount: Amount(i64::MAX),
    };
    assert_eq!(
        ledger.submit(request(2, huge)).unwrap().record.outcome,
        Outcome::Accepted
    );
    let more = Command::TopUp {
        account_id: 5,
        amount: Amount(1),
    };
    assert_eq!(
        ledger.submit(request(3, more)).unwrap().record.outcome,
        Outcome::Refused(Refusal::BalanceOverflow)
    );
    assert_eq!(balance(&ledger, AccountRef::Rider(5)), i64::MAX);
    assert_audit_ok(&ledger);
}

#[test]
fn statements_page_through_an_account_in_order() {
    let (_dir, ledger) = open();
    open_rider(&ledger, 1, 5, 10_000);
    for id in 2..=11 {
        ledger.submit(request(id, charge(5, id as i64))).unwrap();
    }
    let first = ledger.statement(AccountRef::Rider(5), 0, 4).unwrap();
    assert_eq!(
        first.iter().map(|line| line.amount.0).collect::<Vec<_>>(),
        vec![-2, -3, -4, -5]
    );
    let next = ledger
        .statement(AccountRef::Rider(5), first[3].sequence, 100)
        .unwrap();
    assert_eq!(next.len(), 6);
    assert_eq!(
        next.last().unwrap().balance_after,
        Amount(-(2..=11).sum::<i64>())
    );
    assert!(
        ledger
            .statement(AccountRef::Rider(6), 0, 10)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn concurrent_callers_share_group_commits_and_each_id_is_charged_once() {
    let (_dir, ledger) = open();
    for account in 0..8u64 {
        open_rider(&ledger, 1_000 + u128::from(account), account, 1_000_000);
    }
    std::thread::scope(|scope| {
        for thread in 0..16u128 {
            let ledger = &ledger;
            scope.spawn(move || {
                for index in 0..200u128 {
                    // Every thread submits the same ids as its twin: each id must land once.
                    let id = 10_000 + (thread % 8) * 1_000 + index;
                    let account = (thread % 8) as u64;
                    ledger.submit(request(id, charge(account, 3))).unwrap();
                }
            });
        }
    });
    for account in 0..8u64 {
        assert_eq!(balance(&ledger, AccountRef::Rider(account)), -600);
    }
    assert_eq!(balance(&ledger, AccountRef::OperatorRevenue(9)), 8 * 600);
    // Group commit: 16 callers at once share syncs, so there are far fewer syncs than
    // requests that reached the writer.
    let stats = ledger.stats();
    let syncs = stats.write_times.count();
    let requests = stats.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        requests >= 2 * syncs,
        "{requests} requests in {syncs} syncs"
    );
    assert_eq!(assert_audit_ok(&ledger).transactions, 8 + 8 * 200);
}

#[test]
fn a_full_queue_refuses_at_once_with_overloaded() {
    let dir = tempfile::tempdir().unwrap();
    let config = LedgerConfig {
        queue_depth_max: 1,
        group_commit_requests_max: 1,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::open(dir.path(), config).unwrap();
    open_rider(&ledger, 1, 5, 1_000_000);
    let overloaded = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for thread in 0..32u128 {
            let (ledger, overloaded) = (&ledger, &overloaded);
            scope.spawn(move || {
                for index in 0..50u128 {
                    match ledger.submit(request(100 + thread * 100 + index, charge(5, 1))) {
                        Ok(_) => {}
                        Err(LedgerError::Overloaded(1)) => {
                            overloaded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(other) => panic!("unexpected error {other}"),
                    }
                }
            });
        }
    });
    assert!(overloaded.load(std::sync::atomic::Ordering::Relaxed) > 0);
    // Whatever was refused left no trace: the audit still balances.
    assert_audit_ok(&ledger);
}

#[test]
fn everything_survives_a_reopen_and_a_wrong_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ledger = Ledger::open(dir.path(), LedgerConfig::default()).unwrap();
        open_rider(&ledger, 1, 5, 1_000);
        ledger.submit(request(2, charge(5, 10))).unwrap();
    }
    {
        let ledger = Ledger::open(dir.path(), LedgerConfig::default()).unwrap();
        assert_eq!(balance(&ledger, AccountRef::Rider(5)), -10);
        assert!(ledger.submit(request(2, charge(5, 10))).unwrap().replay);
        let receipt = ledger.submit(request(3, charge(5, 10))).unwrap();
        assert_eq!(receipt.sequence, 3);
    }
    {
        // Another build's format, written behind the ledger's back.
        let db = store::open(dir.path(), &StoreConfig::default()).unwrap();
        let meta = db.cf_handle(store::CF_META).unwrap();
        db.put_cf(meta, codec::META_FORMAT_VERSION, 99u32.to_be_bytes())
            .unwrap();
    }
    let err = Ledger::open(dir.path(), LedgerConfig::default()).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::FormatVersion {
                supported: store::FORMAT_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("format version 99"), "{err}");
}

/// Regression: a restart after a storage failure opened whatever was at the data
/// directory's path, and made a new empty ledger there when its disk was not mounted.
#[test]
fn an_open_that_must_not_create_refuses_a_directory_without_a_ledger() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path().join("data");
    let mut config = LedgerConfig::default();
    config.store.create = false;
    let err = Ledger::open(&dir, config).unwrap_err();
    assert!(matches!(err, LedgerError::NoLedger { .. }), "{err}");
    assert_eq!(err.code(), "no_ledger");
    assert!(
        err.to_string()
            .contains("is the disk that holds it mounted?"),
        "{err}"
    );
    assert!(!dir.exists(), "nothing was made");
    std::fs::create_dir(&dir).unwrap();
    assert!(matches!(
        Ledger::open(&dir, config).unwrap_err(),
        LedgerError::NoLedger { .. }
    ));
    // A ledger that is there opens as usual.
    {
        let ledger = Ledger::open(&dir, LedgerConfig::default()).unwrap();
        open_rider(&ledger, 1, 5, 1_000);
    }
    let ledger = Ledger::open(&dir, config).unwrap();
    assert!(
        ledger
            .submit(request(
                1,
                Command::OpenAccount {
                    account_id: 5,
                    provider_id: 1,
                    credit_limit: Amount(1_000),
                }
            ))
            .unwrap()
            .replay
    );
}

/// A travel state left in `travel` (storage format 7 keeps them in the riders' accounts)
/// is named by the audit: nothing would read it.
#[test]
fn the_audit_names_a_travel_state_outside_its_riders_account() {
    let (dir, ledger) = open();
    open_rider(&ledger, 1, 5, 1_000);
    drop(ledger);
    {
        let db = store::open(dir.path(), &StoreConfig::default()).unwrap();
        let travel = db.cf_handle(store::CF_TRAVEL).unwrap();
        let state = codec::encode_travel(&Travel {
            latest_step_at: UnixMillis(1),
            ..Travel::default()
        });
        db.put_cf(travel, codec::rider_key(5), state).unwrap();
    }
    let view = LedgerView::open(dir.path(), &StoreConfig::default()).unwrap();
    let report = audit::audit(&view).unwrap();
    assert_eq!(
        report.violations,
        vec![
            "1 travel states outside their riders' accounts (the `travel` column family is empty since storage format 7)"
                .to_string()
        ]
    );
}

#[test]
fn the_audit_names_a_balance_that_disagrees_with_its_postings() {
    let (dir, ledger) = open();
    open_rider(&ledger, 1, 5, 1_000);
    ledger.submit(request(2, charge(5, 10))).unwrap();
    drop(ledger);
    // Tamper with the stored balance behind the ledger's back.
    let tampered = Account {
        status: AccountStatus::Active,
        provider_id: 1,
        credit_limit: Amount(1_000),
        balance: Amount(-11),
    };
    {
        let db = store::open(dir.path(), &StoreConfig::default()).unwrap();
        let accounts = db.cf_handle(store::CF_ACCOUNTS).unwrap();
        db.put_cf(
            accounts,
            codec::account_key(AccountRef::Rider(5)),
            codec::encode_account(&tampered),
        )
        .unwrap();
    }
    let view = LedgerView::open(dir.path(), &StoreConfig::default()).unwrap();
    let report = audit::audit(&view).unwrap();
    assert!(!report.ok());
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("Rider(5): balance -11 but its postings sum to -10")),
        "{:?}",
        report.violations
    );
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("the sum over all accounts is -1")),
        "{:?}",
        report.violations
    );
}

mod conservation {
    //! Random sequences of requests, including retries of earlier ids, keep money
    //! conserved, and every id's outcome stays what it first was.

    use super::*;
    use proptest::prelude::*;

    fn command() -> impl Strategy<Value = Command> {
        let account = 1u64..6;
        prop_oneof![
            (account.clone(), 0i64..2_000).prop_map(|(account_id, limit)| Command::OpenAccount {
                account_id,
                provider_id: (account_id % 2) as u16 + 1,
                credit_limit: Amount(limit)
            }),
            (account.clone(), -5i64..5_000).prop_map(|(account_id, amount)| Command::TopUp {
                account_id,
                amount: Amount(amount)
            }),
            (account.clone(), 0u16..3, -5i64..3_000).prop_map(
                |(account_id, operator_id, amount)| Command::Charge {
                    account_id,
                    operator_id,
                    amount: Amount(amount)
                }
            ),
            (0u128..40).prop_map(|original| Command::Refund {
                original: TxId(original)
            }),
            (account.clone(), 0u16..3, -1_000i64..1_000).prop_map(
                |(account_id, operator_id, amount)| Command::Adjust {
                    account_id,
                    operator_id,
                    amount: Amount(amount)
                }
            ),
            (account, 0u8..3).prop_map(|(account_id, status)| Command::SetStatus {
                account_id,
                status: [
                    AccountStatus::Active,
                    AccountStatus::Denied,
                    AccountStatus::Closed
                ][usize::from(status)]
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::proptest_cases(24), ..ProptestConfig::default() })]

        #[test]
        fn random_requests_conserve_money_and_keep_outcomes(
            commands in proptest::collection::vec((0u128..40, command()), 1..120)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let config = LedgerConfig { sync_writes: false, ..LedgerConfig::default() };
            let ledger = Ledger::open(dir.path(), config).unwrap();
            let mut first_answers: std::collections::HashMap<u128, (Request, Receipt)> = Default::default();
            for (id, command) in commands {
                let request = request(id, command);
                match (ledger.submit(request), first_answers.get(&id)) {
                    (Ok(receipt), None) => {
                        prop_assert!(!receipt.replay);
                        first_answers.insert(id, (request, receipt));
                    }
                    (Ok(receipt), Some((first, first_receipt))) => {
                        prop_assert_eq!(first.command, request.command);
                        prop_assert!(receipt.replay);
                        prop_assert_eq!(&receipt.record, &first_receipt.record);
                    }
                    (Err(LedgerError::Conflict { .. }), Some((first, _))) => prop_assert_ne!(first.command, request.command),
                    (other, _) => prop_assert!(false, "unexpected answer {:?}", other),
                }
            }
            let report = audit::audit(ledger.view()).unwrap();
            prop_assert!(report.ok(), "{:?}", report.violations);
            prop_assert_eq!(report.transactions, first_answers.len() as u64);
        }
    }
}

#[test]
fn ids_older_than_the_retention_are_forgotten_and_the_audit_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LedgerConfig {
        id_retention_ms: 1_000,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::open(dir.path(), config).unwrap();
    open_rider(&ledger, 1, 5, 1_000);
    let at = |id: u128, time: u64| Request {
        id: TxId(id),
        time: UnixMillis(time),
        command: charge(5, 10),
    };
    ledger.submit(at(2, T.0)).unwrap();
    ledger.submit(at(3, T.0 + 5_000)).unwrap();
    // At T + 2s, ids 1 and 2 (made at T) are past the 1s retention; id 3 is not.
    assert_eq!(
        ledger.prune_expired_ids(UnixMillis(T.0 + 2_000)).unwrap(),
        2
    );
    assert_eq!(
        ledger.prune_expired_ids(UnixMillis(T.0 + 2_000)).unwrap(),
        0
    );
    assert!(ledger.transaction(TxId(2)).unwrap().is_none());
    assert!(ledger.submit(at(3, T.0 + 5_000)).unwrap().replay);
    assert_audit_ok(&ledger);
    // A forgotten id used again is new: documented, and the audit accepts the reuse.
    let reused = ledger.submit(at(2, T.0)).unwrap();
    assert!(!reused.replay);
    assert_eq!(balance(&ledger, AccountRef::Rider(5)), -30);
    let report = assert_audit_ok(&ledger);
    assert_eq!(report.transactions, 4);
}

/// The deny list of the gates' bundles: every rider refused at gates (deny-listed,
/// closed), and a journal entry for each change, written with the change and keyed by the
/// last transaction sequence of its group commit (which every replica of a shard gives
/// the same group) and the account.
#[test]
fn the_deny_list_and_its_journal_follow_account_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let shard = ShardId {
        shard: 0,
        shards: 1,
    };
    let replica =
        Replica::open(dir.path(), shard, LedgerConfig::default(), Rules::default()).unwrap();
    let open = |account_id| Command::OpenAccount {
        account_id,
        provider_id: 1,
        credit_limit: Amount(0),
    };
    let status = |account_id, status| Command::SetStatus { account_id, status };
    replica
        .apply_logged(
            1,
            &[
                request(1, open(30)),
                request(2, open(10)),
                request(3, open(20)),
            ],
        )
        .unwrap();
    let view = replica.view();
    assert_eq!(view.deny_list().unwrap(), Vec::<u64>::new());
    assert_eq!(view.deny_journal_from().unwrap(), 1);

    let group = [
        request(4, status(30, AccountStatus::Denied)),
        request(5, status(10, AccountStatus::Closed)),
        request(6, status(20, AccountStatus::Denied)),
    ];
    replica.apply_logged(2, &group).unwrap();
    // Denied again: no change, no entry. Reinstated: lifted.
    replica
        .apply_logged(3, &[request(7, status(20, AccountStatus::Denied))])
        .unwrap();
    replica
        .apply_logged(4, &[request(8, status(30, AccountStatus::Active))])
        .unwrap();
    // Transactions 1-3 opened the accounts; the group of 4-6 changed three riders (keyed
    // by its last sequence, 6, in account order); 7 changed nothing; 8 lifted one.
    assert_eq!(view.deny_list().unwrap(), vec![10, 20]);
    assert_eq!(
        view.deny_journal_between(0, 8, 100).unwrap(),
        vec![(6, 10, true), (6, 20, true), (6, 30, true), (8, 30, false)]
    );
    assert_eq!(
        view.deny_journal_between(6, 8, 100).unwrap(),
        vec![(8, 30, false)]
    );
    assert_eq!(
        view.deny_journal_between(0, 7, 2).unwrap(),
        vec![(6, 10, true), (6, 20, true)]
    );
    assert_eq!(view.deny_journal_between(6, 7, 100).unwrap(), vec![]);
    let report = audit::audit(view).unwrap();
    assert!(report.ok(), "{:?}", report.violations);
}

/// A version 3 data directory (before the deny list) is upgraded in place: its deny list
/// is filled from the accounts, with an empty journal.
#[test]
fn a_version_3_data_directory_gets_its_deny_list_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ledger = Ledger::open(dir.path(), LedgerConfig::default()).unwrap();
        open_rider(&ledger, 1, 5, 0);
        open_rider(&ledger, 2, 6, 0);
        let deny = Command::SetStatus {
            account_id: 6,
            status: AccountStatus::Denied,
        };
        ledger.submit(request(3, deny)).unwrap();
    }
    {
        // Make it look like version 3: no deny column families, version 3.
        let mut options = rocksdb::Options::default();
        options.create_if_missing(false);
        let mut db = rocksdb::DB::open_cf(&options, dir.path(), store::COLUMN_FAMILIES).unwrap();
        db.drop_cf(store::CF_DENY).unwrap();
        db.drop_cf(store::CF_DENY_JOURNAL).unwrap();
        let meta = db.cf_handle(store::CF_META).unwrap();
        db.put_cf(meta, codec::META_FORMAT_VERSION, 3u32.to_be_bytes())
            .unwrap();
    }
    let ledger = Ledger::open(dir.path(), LedgerConfig::default()).unwrap();
    assert_eq!(ledger.view().deny_list().unwrap(), vec![6]);
    assert_eq!(
        ledger.view().deny_journal_between(0, 10, 10).unwrap(),
        vec![]
    );
    // The journal holds the changes from the upgrade on: a gate behind gets it whole.
    assert_eq!(ledger.view().deny_journal_from().unwrap(), 4);
    assert_audit_ok(&ledger);
}
