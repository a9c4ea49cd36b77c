//! Unit tests of taps and journeys in the ledger's state machine, on a real RocksDB with
//! the sample city's fares (`docs/sample-city.toml`): Harbour (101) to Airport (104) is
//! 31 km (700), Harbour to Central (100) 4.8 km (300); bus route 501 costs 200; the
//! maximum fare is 900, the daily cap 1,500, a transfer within 90 minutes saves 100.

use std::sync::Arc;

use super::*;
use crate::clock::UnixMillis;
use crate::fares::FareTable;

/// 08:00 UTC on a service day.
pub(super) const T: UnixMillis = UnixMillis(1_800_000_000_000);
pub(super) const MINUTE_MS: u64 = 60_000;
pub(super) const RIDER: u64 = 42;
pub(super) const METRO: AccountRef = AccountRef::OperatorRevenue(1);
pub(super) const BUS: AccountRef = AccountRef::OperatorRevenue(2);

pub(super) fn sample_rules() -> Rules {
    let text = include_str!("../../../docs/sample-city.toml");
    Rules {
        fares: Some(Arc::new(FareTable::from_toml(text).unwrap())),
        code_retry_window_ms: CODE_RETRY_WINDOW_MS_DEFAULT,
    }
}

pub(super) fn open_at(dir: &std::path::Path) -> Ledger {
    Ledger::open_with_rules(dir, LedgerConfig::default(), sample_rules()).unwrap()
}

/// A ledger with rider 42 (provider 1) topped up with `balance` and a credit limit.
pub(super) fn setup(balance: i64, credit_limit: i64) -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_at(dir.path());
    let open = Command::OpenAccount {
        account_id: RIDER,
        provider_id: 1,
        credit_limit: Amount(credit_limit),
    };
    submit(&ledger, 1, T, open);
    if balance > 0 {
        let top_up = Command::TopUp {
            account_id: RIDER,
            amount: Amount(balance),
        };
        submit(&ledger, 2, T, top_up);
    }
    (dir, ledger)
}

pub(super) fn submit(ledger: &Ledger, id: u128, time: UnixMillis, command: Command) -> Receipt {
    ledger
        .submit(Request {
            id: TxId(id),
            time,
            command,
        })
        .unwrap()
}

/// A tap with a code made from the id, so that each id has its own code.
pub(super) fn tap(kind: TapKind, gate_id: u32, code: u8) -> Command {
    Command::Tap(Tap {
        account_id: RIDER,
        gate_id,
        code: [code; 16],
        kind,
        offline: false,
        concessions: 0,
    })
}

pub(super) fn entry(station: u32) -> TapKind {
    TapKind::MetroEntry { station }
}

pub(super) fn exit(station: u32) -> TapKind {
    TapKind::MetroExit { station }
}

pub(super) fn balance(ledger: &Ledger, account: AccountRef) -> i64 {
    ledger.account(account).unwrap().map_or(0, |a| a.balance.0)
}

pub(super) fn assert_audit_ok(ledger: &Ledger) {
    let report = audit::audit(ledger.view()).unwrap();
    assert!(report.ok(), "audit failed: {:?}", report.violations);
    assert_eq!(report.balance_sum, 0);
}

pub(super) fn at(minutes: u64) -> UnixMillis {
    T.saturating_add(minutes * MINUTE_MS)
}

#[test]
fn a_metro_journey_is_free_at_entry_and_priced_by_distance_at_exit() {
    let (_dir, ledger) = setup(2_000, 0);
    let entered = submit(&ledger, 10, at(0), tap(entry(101), 7, 10));
    assert_eq!(entered.record.outcome, Outcome::Accepted);
    assert_eq!(entered.record.rider_charge(), Amount::ZERO);
    assert!(entered.record.postings.is_empty());
    assert_eq!(entered.record.rider_balance_after, Some(Amount(2_000)));
    let journey = entered.record.journey.unwrap();
    assert_eq!(journey.id, entered.sequence);
    assert_eq!(journey.entry_station, Some(101));

    let exited = submit(&ledger, 11, at(40), tap(exit(104), 8, 11));
    assert_eq!(exited.record.outcome, Outcome::Accepted);
    assert_eq!(exited.record.rider_charge(), Amount(700));
    assert_eq!(exited.record.rider_balance_after, Some(Amount(1_300)));
    assert_eq!(exited.record.journey, Some(journey));
    assert_eq!(balance(&ledger, AccountRef::Rider(RIDER)), 1_300);
    assert_eq!(balance(&ledger, METRO), 700);
    assert_audit_ok(&ledger);
}

#[test]
fn a_bus_tap_charges_the_route_and_a_transfer_within_the_window_is_discounted() {
    let (_dir, ledger) = setup(2_000, 0);
    let bus = submit(&ledger, 10, at(0), tap(TapKind::Bus { route: 501 }, 3, 10));
    assert_eq!(bus.record.rider_charge(), Amount(200));
    assert_eq!(bus.record.journey.unwrap().id, bus.sequence);
    // Metro 30 minutes later: a transfer, 300 - 100.
    submit(&ledger, 11, at(30), tap(entry(101), 7, 11));
    let exited = submit(&ledger, 12, at(45), tap(exit(100), 8, 12));
    assert_eq!(exited.record.rider_charge(), Amount(200));
    // A bus three hours later is no transfer.
    let late = submit(
        &ledger,
        13,
        at(200),
        tap(TapKind::Bus { route: 501 }, 3, 13),
    );
    assert_eq!(late.record.rider_charge(), Amount(200));
    assert_eq!(balance(&ledger, AccountRef::Rider(RIDER)), 1_400);
    assert_eq!(balance(&ledger, BUS), 400);
    assert_eq!(balance(&ledger, METRO), 200);
    assert_audit_ok(&ledger);
}

#[test]
fn the_daily_cap_limits_a_day_and_the_next_day_starts_afresh() {
    let (_dir, ledger) = setup(10_000, 0);
    // Three long trips, each 700, more than 90 minutes apart: 700 + 700 + 100 (cap 1,500).
    let mut charged = Vec::new();
    for trip in 0..3u64 {
        let id = 10 + u128::from(trip) * 2;
        let start = trip * 120;
        submit(&ledger, id, at(start), tap(entry(101), 7, id as u8));
        let out = submit(
            &ledger,
            id + 1,
            at(start + 50),
            tap(exit(104), 8, id as u8 + 1),
        );
        charged.push(out.record.rider_charge().0);
    }
    assert_eq!(charged, vec![700, 700, 100]);
    // Capped: a fourth trip is free, and still recorded.
    submit(&ledger, 20, at(400), tap(entry(101), 7, 20));
    let free = submit(&ledger, 21, at(450), tap(exit(104), 8, 21));
    assert_eq!(free.record.outcome, Outcome::Accepted);
    assert_eq!(free.record.rider_charge(), Amount::ZERO);
    // The next day (24 hours later) the cap starts again.
    submit(&ledger, 22, at(24 * 60), tap(entry(101), 7, 22));
    let next_day = submit(&ledger, 23, at(24 * 60 + 50), tap(exit(104), 8, 23));
    assert_eq!(next_day.record.rider_charge(), Amount(700));
    assert_eq!(balance(&ledger, AccountRef::Rider(RIDER)), 10_000 - 2_200);
    assert_audit_ok(&ledger);
}

#[test]
fn an_exit_with_no_entry_and_an_entry_with_no_exit_cost_the_maximum_fare() {
    let (_dir, ledger) = setup(5_000, 0);
    let orphan_exit = submit(&ledger, 10, at(0), tap(exit(104), 8, 10));
    assert_eq!(orphan_exit.record.rider_charge(), Amount(900));
    assert_eq!(
        orphan_exit.record.journey.unwrap(),
        Journey {
            id: orphan_exit.sequence,
            entry_station: None,
            entered_at: None,
        }
    );
    // Next day: an entry, then another entry without an exit: the first journey is
    // charged the maximum fare with the second entry, which opens a new journey.
    let day2 = 24 * 60;
    let first = submit(&ledger, 11, at(day2), tap(entry(101), 7, 11));
    let second = submit(&ledger, 12, at(day2 + 30), tap(entry(201), 9, 12));
    assert_eq!(second.record.rider_charge(), Amount(900));
    assert_eq!(second.record.journey.unwrap().id, second.sequence);
    assert_ne!(first.sequence, second.sequence);
    // The second journey ends normally: Old Town to Central is 3 km (300). An incomplete
    // journey's charge starts no trip, so there is no transfer discount.
    let out = submit(&ledger, 13, at(day2 + 50), tap(exit(100), 8, 13));
    assert_eq!(out.record.rider_charge(), Amount(300));
    assert_eq!(
        balance(&ledger, AccountRef::Rider(RIDER)),
        5_000 - 900 - 900 - 300
    );
    assert_audit_ok(&ledger);
}

#[test]
fn leaving_where_you_entered_is_free_within_five_minutes_and_the_first_band_after() {
    let (_dir, ledger) = setup(5_000, 0);
    submit(&ledger, 10, at(0), tap(entry(100), 7, 10));
    let quick = submit(&ledger, 11, at(4), tap(exit(100), 8, 11));
    assert_eq!(quick.record.rider_charge(), Amount::ZERO);
    submit(&ledger, 12, at(200), tap(entry(100), 7, 12));
    let slow = submit(&ledger, 13, at(210), tap(exit(100), 8, 13));
    assert_eq!(slow.record.rider_charge(), Amount(300));
}

#[test]
fn the_same_code_at_the_same_gate_is_a_retry_and_anywhere_else_a_replay() {
    let (_dir, ledger) = setup(2_000, 0);
    let first = submit(&ledger, 10, at(0), tap(TapKind::Bus { route: 501 }, 3, 99));
    assert_eq!(first.record.rider_charge(), Amount(200));
    // The gate scanned the same code again under a new id: the original answer.
    let again = submit(&ledger, 11, at(0), tap(TapKind::Bus { route: 501 }, 3, 99));
    assert!(again.replay);
    assert_eq!(again.sequence, first.sequence);
    assert_eq!(again.record, first.record);
    // Asking again with that second id gives the same answer too.
    let again_by_id = submit(&ledger, 11, at(0), tap(TapKind::Bus { route: 501 }, 3, 99));
    assert_eq!(again_by_id.record, first.record);
    // The same code at another gate is a replay.
    let elsewhere = submit(&ledger, 12, at(0), tap(TapKind::Bus { route: 501 }, 4, 99));
    assert_eq!(
        elsewhere.record.outcome,
        Outcome::Refused(Refusal::CodeReused)
    );
    // The same gate after the retry window: a replay too.
    let late = submit(&ledger, 13, at(2), tap(TapKind::Bus { route: 501 }, 3, 99));
    assert_eq!(late.record.outcome, Outcome::Refused(Refusal::CodeReused));
    assert_eq!(balance(&ledger, AccountRef::Rider(RIDER)), 1_800);
    assert_audit_ok(&ledger);
}

#[test]
fn a_tap_id_reused_with_other_content_is_a_conflict_naming_the_field() {
    let (_dir, ledger) = setup(2_000, 0);
    submit(&ledger, 10, at(0), tap(entry(101), 7, 10));
    let other_gate = Request {
        id: TxId(10),
        time: at(0),
        command: tap(entry(101), 8, 10),
    };
    match ledger.submit(other_gate) {
        Err(LedgerError::Conflict { field, .. }) => assert_eq!(field, "gate_id"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let other_direction = Request {
        id: TxId(10),
        time: at(0),
        command: tap(exit(101), 7, 10),
    };
    match ledger.submit(other_direction) {
        Err(LedgerError::Conflict { field, .. }) => assert_eq!(field, "direction"),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn the_sweeper_closes_a_stale_journey_once_and_only_when_it_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let entered_sequence;
    {
        let ledger = open_at(dir.path());
        let open = Command::OpenAccount {
            account_id: RIDER,
            provider_id: 1,
            credit_limit: Amount(0),
        };
        submit(&ledger, 1, T, open);
        let top_up = Command::TopUp {
            account_id: RIDER,
            amount: Amount(2_000),
        };
        submit(&ledger, 2, T, top_up);
        entered_sequence = submit(&ledger, 10, at(0), tap(entry(101), 7, 10)).sequence;
    }
    // The open journey survives a restart, and is found by the sweeper's scan.
    let ledger = open_at(dir.path());
    let stale = ledger.open_journeys_before(at(4 * 60 + 1), 10).unwrap();
    assert_eq!(stale, vec![(RIDER, entered_sequence, at(0))]);
    assert!(ledger.open_journeys_before(at(0), 10).unwrap().is_empty());
    let close = Command::CloseJourney {
        account_id: RIDER,
        journey_id: entered_sequence,
    };
    let early = submit(&ledger, 20, at(60), close);
    assert_eq!(
        early.record.outcome,
        Outcome::Refused(Refusal::JourneyNotExpired)
    );
    let closed = submit(&ledger, 21, at(4 * 60), close);
    assert_eq!(closed.record.outcome, Outcome::Accepted);
    assert_eq!(closed.record.rider_charge(), Amount(900));
    assert_eq!(closed.record.journey.unwrap().id, entered_sequence);
    let again = submit(&ledger, 22, at(4 * 60 + 5), close);
    assert_eq!(
        again.record.outcome,
        Outcome::Refused(Refusal::JourneyNotOpen)
    );
    assert!(
        ledger
            .open_journeys_before(at(9_999), 10)
            .unwrap()
            .is_empty()
    );
    // An exit now has no entry: the maximum fare again.
    let out = submit(&ledger, 23, at(4 * 60 + 10), tap(exit(104), 8, 23));
    assert_eq!(out.record.rider_charge(), Amount(600));
    assert_eq!(balance(&ledger, AccountRef::Rider(RIDER)), 2_000 - 1_500);
    assert_audit_ok(&ledger);
}

#[test]
fn an_entry_needs_room_for_the_shortest_trip_but_an_exit_always_lets_the_rider_out() {
    let (_dir, ledger) = setup(299, 0);
    let refused = submit(&ledger, 10, at(0), tap(entry(101), 7, 10));
    assert_eq!(
        refused.record.outcome,
        Outcome::Refused(Refusal::CreditLimitExceeded)
    );
    assert_eq!(refused.record.rider_balance_after, Some(Amount(299)));
    let top_up = Command::TopUp {
        account_id: RIDER,
        amount: Amount(1),
    };
    submit(&ledger, 11, at(1), top_up);
    submit(&ledger, 12, at(2), tap(entry(101), 7, 12));
    // 700 from a balance of 300: the rider is let out and owes 400.
    let out = submit(&ledger, 13, at(50), tap(exit(104), 8, 13));
    assert_eq!(out.record.outcome, Outcome::Accepted);
    assert_eq!(out.record.rider_balance_after, Some(Amount(-400)));
    // A bus needs the whole fare within the limit.
    let bus = submit(
        &ledger,
        14,
        at(300),
        tap(TapKind::Bus { route: 501 }, 3, 14),
    );
    assert_eq!(
        bus.record.outcome,
        Outcome::Refused(Refusal::CreditLimitExceeded)
    );
    assert_audit_ok(&ledger);
}

#[test]
fn a_deny_listed_rider_cannot_enter_or_board_but_can_leave() {
    let (_dir, ledger) = setup(2_000, 0);
    submit(&ledger, 10, at(0), tap(entry(101), 7, 10));
    let deny = Command::SetStatus {
        account_id: RIDER,
        status: AccountStatus::Denied,
    };
    submit(&ledger, 11, at(1), deny);
    let out = submit(&ledger, 12, at(20), tap(exit(100), 8, 12));
    assert_eq!(out.record.rider_charge(), Amount(300));
    for (id, kind) in [(13, entry(101)), (14, TapKind::Bus { route: 501 })] {
        let refused = submit(&ledger, id, at(30), tap(kind, 7, id as u8));
        assert_eq!(
            refused.record.outcome,
            Outcome::Refused(Refusal::AccountDenied)
        );
    }
}

#[test]
fn unknown_places_and_accounts_are_refused_and_recorded() {
    let (_dir, ledger) = setup(2_000, 0);
    let cases = [
        (10, entry(999), Refusal::UnknownStation),
        (11, exit(999), Refusal::UnknownStation),
        (12, TapKind::Bus { route: 999 }, Refusal::UnknownRoute),
    ];
    for (id, kind, refusal) in cases {
        let refused = submit(&ledger, id, at(0), tap(kind, 7, id as u8));
        assert_eq!(refused.record.outcome, Outcome::Refused(refusal));
    }
    let stranger = Command::Tap(Tap {
        account_id: 7_777,
        gate_id: 1,
        code: [1; 16],
        kind: entry(101),
        offline: false,
        concessions: 0,
    });
    let refused = submit(&ledger, 20, at(0), stranger);
    assert_eq!(
        refused.record.outcome,
        Outcome::Refused(Refusal::UnknownAccount)
    );
    assert_eq!(balance(&ledger, AccountRef::Rider(RIDER)), 2_000);
}

#[test]
fn a_charged_tap_can_be_refunded_once_and_settles_with_the_riders_provider() {
    let (_dir, ledger) = setup(2_000, 0);
    let bus = submit(&ledger, 10, at(0), tap(TapKind::Bus { route: 501 }, 3, 10));
    let refund = submit(&ledger, 11, at(5), Command::Refund { original: TxId(10) });
    assert_eq!(refund.record.outcome, Outcome::Accepted);
    assert_eq!(refund.record.rider_charge(), Amount(-200));
    assert_eq!(balance(&ledger, AccountRef::Rider(RIDER)), 2_000);
    assert_eq!(balance(&ledger, BUS), 0);
    let again = submit(&ledger, 12, at(6), Command::Refund { original: TxId(10) });
    assert_eq!(
        again.record.outcome,
        Outcome::Refused(Refusal::AlreadyRefunded)
    );
    // An entry charged nothing: there is nothing to refund.
    submit(&ledger, 13, at(7), tap(entry(101), 7, 13));
    let nothing = submit(&ledger, 14, at(8), Command::Refund { original: TxId(13) });
    assert_eq!(
        nothing.record.outcome,
        Outcome::Refused(Refusal::NotRefundable)
    );
    let report = audit::audit(ledger.view()).unwrap();
    assert!(report.ok(), "{:?}", report.violations);
    // The bus tap and its refund are settlement entries of provider 1; the entry is not.
    let view = ledger.view();
    let entries: Vec<u64> = view
        .iterator_cf(
            view.cf(store::CF_PROVIDER_ENTRIES).unwrap(),
            rocksdb::IteratorMode::Start,
        )
        .map(|item| {
            let (key, _) = item.unwrap();
            assert_eq!(&key[..2], &1u16.to_be_bytes());
            u64::from_be_bytes(key[2..].try_into().unwrap())
        })
        .collect();
    assert_eq!(entries, vec![bus.sequence, refund.sequence]);
}

#[test]
fn a_ledger_without_fares_refuses_taps_as_a_fault() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), LedgerConfig::default()).unwrap();
    let request = Request {
        id: TxId(1),
        time: T,
        command: tap(entry(101), 7, 1),
    };
    assert!(matches!(ledger.submit(request), Err(LedgerError::NoFares)));
}

/// The data directory at `dir` opened as bare RocksDB, every column family, no format
/// check or upgrade: to write an older format's bytes, or read what an open left behind.
fn raw_db(dir: &std::path::Path) -> rocksdb::DB {
    rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, store::COLUMN_FAMILIES).unwrap()
}

/// Entries in `travel`, which storage format 7 leaves empty.
fn travel_entries(ledger: &Ledger) -> usize {
    let travel = ledger.view().cf(store::CF_TRAVEL).unwrap();
    ledger
        .view()
        .iterator_cf(travel, rocksdb::IteratorMode::Start)
        .count()
}

/// A storage format 5 directory is upgraded to 7 on open: a rider's travel state written
/// by format 5 (value version 2: the day's total only) moves into the rider's account
/// value, `travel` is left empty, and the day's total keeps counting towards the daily
/// cap.
#[test]
fn a_format_5_ledger_is_upgraded_and_its_day_totals_still_cap_the_day() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ledger = open_at(dir.path());
        for (id, command) in [
            (
                1,
                Command::OpenAccount {
                    account_id: RIDER,
                    provider_id: 1,
                    credit_limit: Amount(0),
                },
            ),
            (
                2,
                Command::TopUp {
                    account_id: RIDER,
                    amount: Amount(5_000),
                },
            ),
        ] {
            submit(&ledger, id, T, command);
        }
    }
    {
        // As format 5 wrote it: 1,400 charged today, the last trip at T, nothing open.
        let mut travel = vec![2u8];
        travel.extend(u32::try_from(T.0 / 86_400_000).unwrap().to_be_bytes());
        travel.extend(1_400i64.to_be_bytes());
        travel.push(1);
        travel.extend(T.0.to_be_bytes());
        travel.push(0);
        travel.extend(T.0.to_be_bytes());
        let db = raw_db(dir.path());
        let travel_cf = db.cf_handle(store::CF_TRAVEL).unwrap();
        db.put_cf(travel_cf, codec::rider_key(RIDER), travel)
            .unwrap();
        let meta = db.cf_handle(store::CF_META).unwrap();
        db.put_cf(meta, codec::META_FORMAT_VERSION, 5u32.to_be_bytes())
            .unwrap();
    }
    let ledger = open_at(dir.path());
    let meta = ledger.view().cf(store::CF_META).unwrap();
    let version = ledger
        .view()
        .get_pinned_cf(meta, codec::META_FORMAT_VERSION)
        .unwrap()
        .unwrap();
    assert_eq!(&version[..], &7u32.to_be_bytes());
    assert_eq!(travel_entries(&ledger), 0);
    let (_, travel) = ledger.view().rider(RIDER).unwrap().unwrap();
    assert_eq!(travel.totals.charged_today, Amount(1_400));
    assert_eq!(travel.latest_step_at, T);
    submit(&ledger, 10, at(300), tap(entry(101), 7, 10));
    let exited = submit(&ledger, 11, at(340), tap(exit(104), 8, 11));
    assert_eq!(exited.record.rider_charge(), Amount(100));
    assert_audit_ok(&ledger);
}

/// A tap reads and writes its rider as one key (storage format 7): the travel state is in
/// the rider's account value, `travel` stays empty, and the account's balance and the
/// open journey come back from the same value after a reopen.
#[test]
fn a_riders_travel_state_is_stored_in_the_riders_account() {
    let (dir, ledger) = setup(5_000, 0);
    let (_, before) = ledger.view().rider(RIDER).unwrap().unwrap();
    assert_eq!(before, Travel::default());
    let entered = submit(&ledger, 10, T, tap(entry(101), 7, 10));
    drop(ledger);
    let ledger = open_at(dir.path());
    let (account, travel) = ledger.view().rider(RIDER).unwrap().unwrap();
    assert_eq!(account.balance, Amount(5_000));
    let open = travel.open_journey.unwrap();
    assert_eq!(
        (open.id, open.station, open.entered_at),
        (entered.sequence, 101, T)
    );
    assert_eq!(travel.latest_step_at, T);
    let key = codec::account_key(AccountRef::Rider(RIDER));
    let accounts = ledger.view().cf(store::CF_ACCOUNTS).unwrap();
    let value = ledger.view().get_pinned_cf(accounts, key).unwrap().unwrap();
    assert_eq!(value[0], 2);
    assert_eq!(&value[..], &codec::encode_rider(&account, &travel)[..]);
    assert_eq!(travel_entries(&ledger), 0);
    let exited = submit(&ledger, 11, at(20), tap(exit(104), 8, 11));
    assert_eq!(exited.record.rider_charge(), Amount(700));
    let (account, travel) = ledger.view().rider(RIDER).unwrap().unwrap();
    assert_eq!(account.balance, Amount(4_300));
    assert_eq!(travel.open_journey, None);
    assert_eq!(travel.totals.charged_today, Amount(700));
    assert_audit_ok(&ledger);
}

/// A format 6 directory whose `travel` holds the state of a rider with no account cannot
/// be upgraded (there is no account to move it into): the open is refused as corruption,
/// naming it, and the directory is left as it was, still format 6.
#[test]
fn an_upgrade_refuses_a_travel_state_whose_rider_has_no_account() {
    let (dir, ledger) = setup(5_000, 0);
    drop(ledger);
    {
        let db = store::open(dir.path(), &store::StoreConfig::default()).unwrap();
        let travel = db.cf_handle(store::CF_TRAVEL).unwrap();
        let state = codec::encode_travel(&Travel {
            latest_step_at: T,
            ..Travel::default()
        });
        db.put_cf(travel, codec::rider_key(RIDER + 1), state)
            .unwrap();
        let meta = db.cf_handle(store::CF_META).unwrap();
        db.put_cf(meta, codec::META_FORMAT_VERSION, 6u32.to_be_bytes())
            .unwrap();
    }
    let refused = Ledger::open_with_rules(dir.path(), LedgerConfig::default(), sample_rules());
    assert!(
        matches!(
            refused,
            Err(LedgerError::Corrupt {
                what: "travel state",
                problem: "its rider has no account"
            })
        ),
        "{refused:?}"
    );
    let db = raw_db(dir.path());
    let meta = db.cf_handle(store::CF_META).unwrap();
    let version = db
        .get_cf(meta, codec::META_FORMAT_VERSION)
        .unwrap()
        .unwrap();
    assert_eq!(version, 6u32.to_be_bytes());
}
