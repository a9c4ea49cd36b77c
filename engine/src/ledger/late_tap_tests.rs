//! Unit tests of offline taps (charged past the credit limit, into debt) and of late taps
//! re-pricing the rider's day (`docs/offline.md`), on a real RocksDB with the sample
//! city's fares: Harbour (101) to Airport (104) 700, Harbour to Central (100) 300, bus
//! route 501 200, maximum fare 900, daily cap 1,500, a transfer within 90 minutes saves
//! 100, a journey open 4 hours is closed by the sweeper at the maximum fare.

use proptest::prelude::*;

use super::model::rider_of_postings;
use super::tap_tests::{
    BUS, METRO, MINUTE_MS, RIDER, T, assert_audit_ok, at, balance, entry, exit, open_at,
    sample_rules, setup, submit,
};
use super::*;
use crate::fares::FareTable;

const BUS_501: TapKind = TapKind::Bus { route: 501 };
const RIDER_ACCOUNT: AccountRef = AccountRef::Rider(RIDER);

/// A tap a gate decided alone and let through.
fn offline(kind: TapKind, gate_id: u32, code: u8) -> Command {
    Command::Tap(Tap {
        account_id: RIDER,
        gate_id,
        code: [code; 16],
        kind,
        offline: true,
        concessions: 0,
    })
}

/// The fare corrections a receipt's transaction recorded after itself.
fn corrections(ledger: &Ledger, receipt: &Receipt) -> Vec<(TxId, i64)> {
    (1..=u64::from(receipt.corrections))
        .map(|offset| {
            let record = ledger
                .view()
                .record(receipt.sequence + offset)
                .unwrap()
                .unwrap();
            let Command::Correct {
                corrects, amount, ..
            } = record.request.command
            else {
                panic!("not a correction: {record:?}");
            };
            assert_eq!(record.outcome, Outcome::Accepted);
            (corrects, amount.0)
        })
        .collect()
}

#[test]
fn an_offline_tap_is_charged_past_the_credit_limit_and_the_debt_deny_lists_until_a_top_up() {
    let (_dir, ledger) = setup(100, 0);
    // Online, the rider cannot pay a bus ride of 200.
    let online = submit(&ledger, 10, at(0), super::tap_tests::tap(BUS_501, 3, 10));
    assert_eq!(
        online.record.outcome,
        Outcome::Refused(Refusal::CreditLimitExceeded)
    );
    // A bus reader without its link let the rider on: charged, into debt.
    let ride = submit(&ledger, 11, at(5), offline(BUS_501, 3, 11));
    assert_eq!(ride.record.outcome, Outcome::Accepted);
    assert_eq!(ride.record.rider_charge(), Amount(200));
    assert_eq!(ride.record.rider_balance_after, Some(Amount(-100)));
    assert_eq!(ledger.view().deny_list().unwrap(), vec![RIDER]);
    // A top-up that clears the debt lifts the deny-listing, in the journal too.
    let top_up = Command::TopUp {
        account_id: RIDER,
        amount: Amount(100),
    };
    submit(&ledger, 12, at(10), top_up);
    assert_eq!(ledger.view().deny_list().unwrap(), Vec::<u64>::new());
    let changes = ledger
        .view()
        .deny_journal_between(0, u64::MAX, 10)
        .unwrap()
        .into_iter()
        .map(|(_, account, denied)| (account, denied))
        .collect::<Vec<_>>();
    assert_eq!(changes, vec![(RIDER, true), (RIDER, false)]);
    assert_eq!(balance(&ledger, BUS), 200);
    assert_audit_ok(&ledger);
}

#[test]
fn an_offline_tap_charges_a_deny_listed_rider_but_not_a_closed_account() {
    let (_dir, ledger) = setup(1_000, 0);
    let deny = Command::SetStatus {
        account_id: RIDER,
        status: AccountStatus::Denied,
    };
    submit(&ledger, 10, at(0), deny);
    let online = submit(&ledger, 11, at(1), super::tap_tests::tap(entry(101), 7, 11));
    assert_eq!(
        online.record.outcome,
        Outcome::Refused(Refusal::AccountDenied)
    );
    // A gate with a stale bundle let the rider in and out: the operator's risk, charged.
    let entered = submit(&ledger, 12, at(2), offline(entry(101), 7, 12));
    assert_eq!(entered.record.outcome, Outcome::Accepted);
    let exited = submit(&ledger, 13, at(30), offline(exit(100), 8, 13));
    assert_eq!(exited.record.rider_charge(), Amount(300));
    assert_eq!(balance(&ledger, RIDER_ACCOUNT), 700);
    // Another rider's account, opened and closed: an offline tap of it is refused (the
    // operator's revenue loss) and moves nothing.
    let open = Command::OpenAccount {
        account_id: 77,
        provider_id: 1,
        credit_limit: Amount(0),
    };
    submit(&ledger, 14, at(31), open);
    let close = Command::SetStatus {
        account_id: 77,
        status: AccountStatus::Closed,
    };
    submit(&ledger, 15, at(32), close);
    let closed = Command::Tap(Tap {
        account_id: 77,
        gate_id: 3,
        code: [16; 16],
        kind: BUS_501,
        offline: true,
        concessions: 0,
    });
    let refused = submit(&ledger, 16, at(33), closed);
    assert_eq!(
        refused.record.outcome,
        Outcome::Refused(Refusal::AccountClosed)
    );
    assert!(refused.record.postings.is_empty());
    assert_audit_ok(&ledger);
}

#[test]
fn a_late_entry_corrects_the_exit_charged_the_maximum_fare_without_it() {
    let (_dir, ledger) = setup(5_000, 0);
    // The exit gate was online: no entry known, the maximum fare.
    let out = submit(&ledger, 10, at(40), super::tap_tests::tap(exit(104), 8, 10));
    assert_eq!(out.record.rider_charge(), Amount(900));
    // The entry gate was offline and uploads its tap afterwards: Harbour to Airport, 700.
    let late = submit(&ledger, 11, at(0), offline(entry(101), 7, 11));
    assert_eq!(late.record.outcome, Outcome::Accepted);
    assert_eq!(late.record.rider_charge(), Amount::ZERO);
    assert_eq!(late.corrections, 1);
    assert_eq!(corrections(&ledger, &late), vec![(TxId(10), 200)]);
    assert_eq!(balance(&ledger, RIDER_ACCOUNT), 5_000 - 700);
    assert_eq!(balance(&ledger, METRO), 700);
    // The journey is closed: no journey is left open for the sweeper to charge again.
    assert_eq!(
        ledger.open_journeys_before(at(10_000), 10).unwrap(),
        Vec::new()
    );
    // The upload retried: the same answer, and nothing corrected twice.
    let again = submit(&ledger, 11, at(0), offline(entry(101), 7, 11));
    assert!(again.replay);
    assert_eq!(again.corrections, 0);
    assert_eq!(balance(&ledger, RIDER_ACCOUNT), 5_000 - 700);
    assert_audit_ok(&ledger);
}

#[test]
fn a_late_exit_gives_back_the_sweepers_maximum_fare() {
    let (_dir, ledger) = setup(5_000, 0);
    let entered = submit(&ledger, 10, at(0), super::tap_tests::tap(entry(101), 7, 10));
    // Four hours on, the sweeper closes the journey at the maximum fare.
    let close = Command::CloseJourney {
        account_id: RIDER,
        journey_id: entered.sequence,
    };
    let closed = submit(&ledger, 11, at(240), close);
    assert_eq!(closed.record.rider_charge(), Amount(900));
    // The exit gate was offline: its tap at 40 minutes arrives now. Harbour to Airport.
    let late = submit(&ledger, 12, at(40), offline(exit(104), 8, 12));
    assert_eq!(late.record.rider_charge(), Amount(700));
    assert_eq!(corrections(&ledger, &late), vec![(TxId(11), 900)]);
    assert_eq!(balance(&ledger, RIDER_ACCOUNT), 5_000 - 700);
    assert_audit_ok(&ledger);
}

#[test]
fn late_taps_that_reach_the_daily_cap_correct_the_trips_after_them() {
    let (_dir, ledger) = setup(10_000, 0);
    // Online: two long trips in the afternoon, 700 each.
    for (id, start) in [(20u128, 600u64), (22, 720)] {
        submit(
            &ledger,
            id,
            at(start),
            super::tap_tests::tap(entry(101), 7, id as u8),
        );
        let out = submit(
            &ledger,
            id + 1,
            at(start + 50),
            super::tap_tests::tap(exit(104), 8, id as u8 + 1),
        );
        assert_eq!(out.record.rider_charge(), Amount(700));
    }
    // An offline gate's morning entry arrives first. Alone, it is a journey never
    // exited, charged at the next entry (tx 20: 900), which leaves 600 of the cap for
    // the first afternoon exit (tx 21) and nothing for the second (tx 23).
    let late_entry = submit(&ledger, 10, at(0), offline(entry(101), 7, 10));
    assert_eq!(
        corrections(&ledger, &late_entry),
        vec![(TxId(20), -900), (TxId(21), 100), (TxId(23), 700)]
    );
    assert_eq!(balance(&ledger, RIDER_ACCOUNT), 10_000 - 1_500);
    // Its exit arrives: the morning trip is 700, the entry at 20 charges nothing again,
    // the afternoon's trips are 700 and 100 (cap 1,500).
    let late_exit = submit(&ledger, 11, at(50), offline(exit(104), 8, 11));
    assert_eq!(late_exit.record.rider_charge(), Amount(700));
    assert_eq!(
        corrections(&ledger, &late_exit),
        vec![(TxId(20), 900), (TxId(21), -100), (TxId(23), -100)]
    );
    assert_eq!(balance(&ledger, RIDER_ACCOUNT), 10_000 - 1_500);
    // A trip after the cap is free, as it is for taps in order.
    submit(
        &ledger,
        30,
        at(900),
        super::tap_tests::tap(entry(101), 7, 30),
    );
    let capped = submit(
        &ledger,
        31,
        at(950),
        super::tap_tests::tap(exit(104), 8, 31),
    );
    assert_eq!(capped.record.rider_charge(), Amount::ZERO);
    assert_audit_ok(&ledger);
}

#[test]
fn a_refunded_fare_is_not_corrected_again() {
    let (_dir, ledger) = setup(5_000, 0);
    submit(&ledger, 10, at(40), super::tap_tests::tap(exit(104), 8, 10));
    let refund = Command::Refund { original: TxId(10) };
    submit(&ledger, 11, at(41), refund);
    let late = submit(&ledger, 12, at(0), offline(entry(101), 7, 12));
    assert_eq!(late.corrections, 0);
    assert_eq!(balance(&ledger, RIDER_ACCOUNT), 5_000);
    assert_audit_ok(&ledger);
}

#[test]
fn a_refund_of_a_corrected_fare_gives_back_what_the_rider_paid_in_the_end() {
    let (_dir, ledger) = setup(5_000, 0);
    // An exit charged the maximum (900), corrected to 700 by its late entry (+200).
    submit(&ledger, 10, at(40), super::tap_tests::tap(exit(104), 8, 10));
    let late = submit(&ledger, 11, at(0), offline(entry(101), 7, 11));
    assert_eq!(corrections(&ledger, &late), vec![(TxId(10), 200)]);
    // Refunding the exit gives back the 700 the rider paid for it, not its 900.
    let refund = Command::Refund { original: TxId(10) };
    let refunded = submit(&ledger, 12, at(60), refund);
    assert_eq!(refunded.record.outcome, Outcome::Accepted);
    assert_eq!(refunded.record.rider_charge(), Amount(-700));
    assert_eq!(balance(&ledger, RIDER_ACCOUNT), 5_000);
    assert_eq!(balance(&ledger, METRO), 0);
    assert_audit_ok(&ledger);
}

#[test]
fn a_rider_whose_steps_predate_the_steps_column_family_is_priced_as_before() {
    let (dir, ledger) = setup(5_000, 0);
    submit(
        &ledger,
        10,
        at(30),
        super::tap_tests::tap(entry(101), 7, 10),
    );
    drop(ledger);
    {
        // As an upgraded ledger holds it: the entry's step was never recorded.
        let mut options = rocksdb::Options::default();
        options.create_if_missing(false);
        let db = rocksdb::DB::open_cf(&options, dir.path(), store::COLUMN_FAMILIES).unwrap();
        let steps = db.cf_handle(store::CF_RIDER_STEPS).unwrap();
        let keys: Vec<_> = db
            .iterator_cf(steps, rocksdb::IteratorMode::Start)
            .map(|entry| entry.unwrap().0)
            .collect();
        assert_eq!(keys.len(), 1);
        db.delete_cf(steps, &keys[0]).unwrap();
    }
    let ledger = open_at(dir.path());
    // A late bus ride: no history to walk, so it is priced after the stored state, and
    // the open journey stays open for its exit.
    let bus = submit(&ledger, 11, at(20), offline(BUS_501, 3, 11));
    assert_eq!(bus.record.rider_charge(), Amount(200));
    assert_eq!(bus.corrections, 0);
    // Harbour to Airport (700), a transfer 10 minutes after the bus ride (less 100).
    let out = submit(&ledger, 12, at(60), super::tap_tests::tap(exit(104), 8, 12));
    assert_eq!(out.record.rider_charge(), Amount(600));
    assert_audit_ok(&ledger);
}

/// A ledger of the sample city that forgets ids after an hour (a server keeps them far
/// longer: this shows what is pruned).
fn with_an_hours_retention(dir: &std::path::Path) -> Ledger {
    let config = LedgerConfig {
        id_retention_ms: 60 * MINUTE_MS,
        ..LedgerConfig::default()
    };
    Ledger::open_with_rules(dir, config, super::tap_tests::sample_rules()).unwrap()
}

#[test]
fn pruning_old_ids_prunes_their_steps_and_keeps_the_recent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = with_an_hours_retention(dir.path());
    let open = Command::OpenAccount {
        account_id: RIDER,
        provider_id: 1,
        credit_limit: Amount(5_000),
    };
    submit(&ledger, 1, T, open);
    submit(&ledger, 10, at(0), super::tap_tests::tap(entry(101), 7, 10));
    submit(&ledger, 11, at(40), super::tap_tests::tap(exit(104), 8, 11));
    submit(&ledger, 12, at(200), offline(BUS_501, 3, 12));
    // A second rider whose one step is as old as the first rider's.
    let other = Command::OpenAccount {
        account_id: RIDER + 1,
        provider_id: 1,
        credit_limit: Amount(5_000),
    };
    submit(&ledger, 2, T, other);
    let bus = Command::Tap(Tap {
        account_id: RIDER + 1,
        gate_id: 3,
        code: [20; 16],
        kind: BUS_501,
        offline: false,
        concessions: 0,
    });
    submit(&ledger, 20, at(10), bus);
    let steps = |ledger: &Ledger| {
        let view = ledger.view();
        let cf = view.cf(store::CF_RIDER_STEPS).unwrap();
        view.iterator_cf(cf, rocksdb::IteratorMode::Start).count()
    };
    assert_eq!(steps(&ledger), 4);
    // At 180 minutes, the first two taps are past the hour's retention; the bus is not.
    // (A server keeps the retention longer than a late tap's age and a day, so that no
    // walk needs a pruned step: this ledger's hour only shows what is pruned.) The second
    // rider's bus is as old, but their newest step: kept, for a late tap's walk to start
    // from.
    while ledger.prune_expired_ids(at(180)).unwrap() > 0 {}
    assert_eq!(steps(&ledger), 2);
    assert_audit_ok(&ledger);
}

/// Regression (the deny journal grew for ever): pruning forgets the deny-list changes of
/// the transactions whose ids it forgets and moves the journal's start past them, so a
/// gate behind it gets a whole bundle; later changes and the deny list itself stay.
#[test]
fn pruning_old_ids_forgets_their_deny_changes_and_moves_the_journal_start() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = with_an_hours_retention(dir.path());
    let open = |account_id| Command::OpenAccount {
        account_id,
        provider_id: 1,
        credit_limit: Amount(0),
    };
    let status = |account_id, status| Command::SetStatus { account_id, status };
    submit(&ledger, 1, T, open(RIDER));
    submit(&ledger, 2, T, open(RIDER + 1));
    submit(&ledger, 3, at(10), status(RIDER, AccountStatus::Denied));
    submit(&ledger, 4, at(20), status(RIDER + 1, AccountStatus::Denied));
    submit(
        &ledger,
        5,
        at(200),
        status(RIDER + 1, AccountStatus::Active),
    );
    let view = ledger.view();
    assert_eq!(view.deny_journal_from().unwrap(), 1);
    assert_eq!(
        view.deny_journal_between(0, 10, 10).unwrap(),
        vec![
            (3, RIDER, true),
            (4, RIDER + 1, true),
            (5, RIDER + 1, false)
        ]
    );
    // At 180 minutes, transactions 1 to 4 are past the hour's retention; 5 is not.
    while ledger.prune_expired_ids(at(180)).unwrap() > 0 {}
    assert_eq!(view.deny_journal_from().unwrap(), 5);
    assert_eq!(
        view.deny_journal_between(0, 10, 10).unwrap(),
        vec![(5, RIDER + 1, false)]
    );
    assert_eq!(view.deny_list().unwrap(), vec![RIDER]);
    assert_audit_ok(&ledger);
}

/// One tap of a generated history: minutes after `T`, and what.
#[derive(Debug, Clone, Copy)]
struct HistoryTap {
    minute: u64,
    kind: TapKind,
    offline: bool,
}

fn history_tap() -> impl Strategy<Value = HistoryTap> {
    // Two service days; stations of the sample city and its one bus route.
    let kind = prop_oneof![
        prop::sample::select(vec![100u32, 101, 104, 201]).prop_map(entry),
        prop::sample::select(vec![100u32, 101, 104, 201]).prop_map(exit),
        Just(BUS_501),
    ];
    (0u64..2 * 24 * 60, kind, any::<bool>()).prop_map(|(minute, kind, offline)| HistoryTap {
        minute,
        kind,
        offline,
    })
}

/// What the rider paid per service day (taps, closes and corrections, each on the day of
/// the fare it belongs to), and the rider's balance.
fn charges_per_day(ledger: &Ledger, fares: &FareTable) -> (Vec<(u32, i64)>, i64) {
    let mut days = std::collections::BTreeMap::new();
    let next = ledger.view().next_sequence().unwrap();
    for sequence in 1..next {
        let record = ledger.view().record(sequence).unwrap().unwrap();
        if rider_of_postings(&record.postings) == Some(RIDER)
            && !matches!(record.request.command, Command::TopUp { .. })
        {
            let day = fares.periods(record.request.time).day;
            *days.entry(day).or_insert(0) += record.rider_charge().0;
        }
    }
    // A day whose charges were corrected back to nothing is a day of nothing.
    let days = days.into_iter().filter(|(_, total)| *total != 0).collect();
    (days, balance(ledger, RIDER_ACCOUNT))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever order a rider's online and offline taps arrive in, each day costs what it
    /// costs with the taps in scan order, and money is conserved. (The rider can pay, so
    /// no online tap is refused.)
    #[test]
    fn late_taps_in_any_order_charge_each_day_what_scan_order_charges(
        mut taps in prop::collection::vec(history_tap(), 1..14),
        order_seed in any::<u64>(),
    ) {
        taps.sort_by_key(|tap| tap.minute);
        taps.dedup_by_key(|tap| tap.minute);
        let mut arrival: Vec<usize> = (0..taps.len()).collect();
        shuffle(&mut arrival, order_seed);
        let in_order = tempfile::tempdir().unwrap();
        let shuffled = tempfile::tempdir().unwrap();
        let results: Vec<_> = [(in_order.path(), (0..taps.len()).collect::<Vec<_>>()), (shuffled.path(), arrival)]
            .into_iter()
            .map(|(dir, order)| {
                let ledger = open_at(dir);
                let open = Command::OpenAccount { account_id: RIDER, provider_id: 1, credit_limit: Amount(0) };
                submit(&ledger, 1, T, open);
                let top_up = Command::TopUp { account_id: RIDER, amount: Amount(1_000_000) };
                submit(&ledger, 2, T, top_up);
                for index in order {
                    let tap = taps[index];
                    let id = 100 + index as u128;
                    let command = Command::Tap(Tap {
                        account_id: RIDER,
                        gate_id: 7,
                        code: [index as u8 + 1; 16],
                        kind: tap.kind,
                        offline: tap.offline,
                        concessions: 0,
                    });
                    let time = T.saturating_add(tap.minute * MINUTE_MS);
                    prop_assert_eq!(submit(&ledger, id, time, command).record.outcome, Outcome::Accepted);
                }
                let report = audit::audit(ledger.view()).unwrap();
                prop_assert!(report.ok(), "audit failed: {:?}", report.violations);
                prop_assert_eq!(report.balance_sum, 0);
                Ok(charges_per_day(&ledger, sample_rules().fares.as_deref().unwrap()))
            })
            .collect::<Result<_, TestCaseError>>()?;
        prop_assert_eq!(&results[0], &results[1], "taps {:?}", taps);
    }
}

/// A Fisher-Yates shuffle driven by a small xorshift generator, so that a failing case's
/// seed reproduces its order.
fn shuffle(items: &mut [usize], seed: u64) {
    let mut state = seed | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}
