//! The replay on a real ledger of the sample city: the same fares file changes nothing;
//! a dearer one changes exactly what its bands say, per day, line, provider and group;
//! the period is honoured; and a ledger the engine still has open can be read.

use std::sync::Arc;

use super::*;
use crate::clock::UnixMillis;
use crate::ledger::model::{Command, Outcome, Request, Tap, TxId};
use crate::ledger::{CODE_RETRY_WINDOW_MS_DEFAULT, Ledger, LedgerConfig, Rules, StoreConfig};
use crate::money::Amount;

const SAMPLE: &str = include_str!("../../../docs/sample-city.toml");
/// 08:00 UTC on 2027-01-15, service day 20,833 of the sample city (UTC days).
const T: u64 = 1_800_000_000_000;
const DAY_MS: u64 = 86_400_000;
const MINUTE_MS: u64 = 60_000;

fn fares(text: &str) -> FareTable {
    FareTable::from_toml(text).unwrap()
}

/// The sample city with every band and route 100 dearer, and the same cap.
fn dearer() -> FareTable {
    let mut text = SAMPLE.to_string();
    for (old, new) in [
        (
            "fare_minor = 300\n\n[[fare_band]]",
            "fare_minor = 400\n\n[[fare_band]]",
        ),
        (
            "up_to_m = 12_000\nfare_minor = 400",
            "up_to_m = 12_000\nfare_minor = 500",
        ),
        (
            "up_to_m = 22_000\nfare_minor = 500",
            "up_to_m = 22_000\nfare_minor = 600",
        ),
        (
            "up_to_m = 40_000\nfare_minor = 700",
            "up_to_m = 40_000\nfare_minor = 800",
        ),
        (
            "name = \"Ring\"\nfare_minor = 200",
            "name = \"Ring\"\nfare_minor = 300",
        ),
    ] {
        assert!(text.contains(old), "{old}");
        text = text.replace(old, new);
    }
    fares(&text)
}

/// A ledger of the sample city with three riders: 1 (provider 1) rides Harbour to
/// Central (300) on two days, 2 (provider 2, a student) takes the Ring bus (200) on the
/// first, 3 (provider 1) enters at Airport and never exits, then enters again.
fn recorded() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let rules = Rules {
        fares: Some(Arc::new(fares(SAMPLE))),
        code_retry_window_ms: CODE_RETRY_WINDOW_MS_DEFAULT,
    };
    let ledger = Ledger::open_with_rules(dir.path(), LedgerConfig::default(), rules).unwrap();
    let mut id = 0u128;
    let mut submit = |time: u64, command: Command| {
        id += 1;
        let receipt = ledger
            .submit(Request {
                id: TxId(id),
                time: UnixMillis(time),
                command,
            })
            .unwrap();
        assert_eq!(receipt.record.outcome, Outcome::Accepted, "{id}");
    };
    for (account_id, provider_id) in [(1u64, 1u16), (2, 2), (3, 1)] {
        submit(
            T,
            Command::OpenAccount {
                account_id,
                provider_id,
                credit_limit: Amount(0),
            },
        );
        submit(
            T,
            Command::TopUp {
                account_id,
                amount: Amount(10_000),
            },
        );
    }
    let tap = |account_id: u64, kind: TapKind, code: u8, concessions: u8| {
        Command::Tap(Tap {
            account_id,
            gate_id: 1,
            code: [code; 16],
            kind,
            offline: false,
            concessions,
        })
    };
    for day in 0..2 {
        let start = T + day * DAY_MS;
        submit(
            start,
            tap(1, TapKind::MetroEntry { station: 101 }, 10 + day as u8, 0),
        );
        submit(
            start + 20 * MINUTE_MS,
            tap(1, TapKind::MetroExit { station: 100 }, 20 + day as u8, 0),
        );
    }
    submit(
        T + 60 * MINUTE_MS,
        tap(2, TapKind::Bus { route: 501 }, 30, 0x01),
    );
    submit(T, tap(3, TapKind::MetroEntry { station: 104 }, 40, 0));
    submit(
        T + 600 * MINUTE_MS,
        tap(3, TapKind::MetroEntry { station: 101 }, 41, 0),
    );
    (dir, ledger)
}

const ALL: ReplayPeriod = ReplayPeriod {
    from_day: None,
    to_day: None,
    largest: 10,
};

fn revenue(steps: u64, then_minor: i64, now_minor: i64) -> Revenue {
    Revenue {
        steps,
        then_minor,
        now_minor,
    }
}

#[test]
fn the_same_fares_file_changes_nothing() {
    let (_dir, ledger) = recorded();
    let replay = replay(ledger.view(), &fares(SAMPLE), ALL, |_| {}).unwrap();
    // Rider 1: 4 steps, 600; rider 2: 200; rider 3: 2 steps, 900 (the maximum fare).
    assert_eq!(replay.total, revenue(7, 1_700, 1_700));
    assert_eq!(replay.steps_read, 7);
    assert_eq!(replay.riders.riders, 3);
    assert_eq!(replay.riders.unchanged, 3);
    assert!(replay.riders.largest_changes.is_empty());
    assert_eq!(replay.unpriced_steps, 0);
}

#[test]
fn a_dearer_file_changes_exactly_what_its_bands_say() {
    let (_dir, ledger) = recorded();
    let replay = replay(ledger.view(), &dearer(), ALL, |_| {}).unwrap();
    assert_eq!(replay.total, revenue(7, 1_700, 2_000));
    assert_eq!(replay.first_day.as_deref(), Some("2027-01-15"));
    assert_eq!(replay.last_day.as_deref(), Some("2027-01-16"));
    assert_eq!(
        replay.by_day,
        BTreeMap::from([
            ("2027-01-15".to_string(), revenue(5, 1_400, 1_600)),
            ("2027-01-16".to_string(), revenue(2, 300, 400)),
        ])
    );
    assert_eq!(
        replay.by_line_or_route,
        BTreeMap::from([
            ("bus Ring".to_string(), revenue(1, 200, 300)),
            // Rider 1's journeys from Harbour, rider 3's from Airport (the maximum fare,
            // unchanged) and Harbour (the entry that charged it).
            ("metro Red".to_string(), revenue(6, 1_500, 1_700)),
        ])
    );
    assert_eq!(
        replay.by_provider,
        BTreeMap::from([(1, revenue(6, 1_500, 1_700)), (2, revenue(1, 200, 300))])
    );
    assert_eq!(
        replay.by_rider_group,
        BTreeMap::from([
            ("standard".to_string(), revenue(6, 1_500, 1_700)),
            ("student".to_string(), revenue(1, 200, 300)),
        ])
    );
    let riders = &replay.riders;
    assert_eq!(
        (
            riders.riders,
            riders.pay_more,
            riders.pay_less,
            riders.unchanged
        ),
        (3, 2, 0, 1)
    );
    assert_eq!(
        riders.largest_changes,
        vec![
            RiderChange {
                account_id: 1,
                then_minor: 600,
                now_minor: 800
            },
            RiderChange {
                account_id: 2,
                then_minor: 200,
                now_minor: 300
            },
        ]
    );
    let table = render_table(&replay);
    assert!(
        table.contains("revenue then 1700 now 2000 (+17.6%)"),
        "{table}"
    );
}

#[test]
fn only_the_period_is_counted_but_the_days_before_it_are_walked() {
    let (_dir, ledger) = recorded();
    let second_day = ReplayPeriod {
        from_day: Some(20_834),
        to_day: Some(20_834),
        largest: 10,
    };
    let replay = replay(ledger.view(), &dearer(), second_day, |_| {}).unwrap();
    assert_eq!(replay.total, revenue(2, 300, 400));
    assert_eq!(replay.steps_read, 7);
    assert_eq!(replay.riders.riders, 1);
    let none = ReplayPeriod {
        from_day: Some(30_000),
        to_day: None,
        largest: 10,
    };
    let replay = super::replay(ledger.view(), &dearer(), none, |_| {}).unwrap();
    assert_eq!(replay.total, Revenue::default());
    assert_eq!(replay.first_day, None);
}

/// A cluster's shards replayed as one: two ledgers (standing in for two shards, each
/// with its own riders) sum to what each replays alone.
#[test]
fn shards_replayed_as_one_sum_their_riders() {
    let (_one, first) = recorded();
    let (_two, second) = recorded();
    let alone = replay(first.view(), &dearer(), ALL, |_| {}).unwrap();
    let both = replay_shards(&[first.view(), second.view()], &dearer(), ALL, |_| {}).unwrap();
    assert_eq!(both.total, revenue(14, 3_400, 4_000));
    assert_eq!(both.steps_read, 2 * alone.steps_read);
    assert_eq!(both.riders.riders, 6);
    assert_eq!(both.riders.pay_more, 4);
    assert_eq!(both.by_day["2027-01-16"], revenue(4, 600, 800));
    assert_eq!(both.riders.largest_changes.len(), 4);
}

#[test]
fn a_ledger_the_engine_has_open_is_read_as_of_the_open() {
    let (dir, ledger) = recorded();
    let scratch = tempfile::tempdir().unwrap();
    let view =
        LedgerView::open_secondary(dir.path(), scratch.path(), &StoreConfig::default()).unwrap();
    let replay = replay(&view, &fares(SAMPLE), ALL, |_| {}).unwrap();
    assert_eq!(replay.total, revenue(7, 1_700, 1_700));
    drop(ledger);
    let missing = tempfile::tempdir().unwrap();
    let err = LedgerView::open_secondary(missing.path(), scratch.path(), &StoreConfig::default())
        .unwrap_err();
    assert!(err.to_string().contains("no ledger"), "{err}");
}

/// Regression (a review found it): a rider whose first kept step is an exit, its entry's
/// step pruned with its id, was walked as an exit with no entry (the maximum fare) and
/// shown paying more; the walk now starts with the journey the exit's record names.
#[test]
fn an_exit_whose_entry_was_pruned_is_replayed_as_its_journey() {
    let dir = tempfile::tempdir().unwrap();
    let rules = Rules {
        fares: Some(Arc::new(fares(SAMPLE))),
        code_retry_window_ms: CODE_RETRY_WINDOW_MS_DEFAULT,
    };
    let config = LedgerConfig {
        id_retention_ms: 60 * MINUTE_MS,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::open_with_rules(dir.path(), config, rules).unwrap();
    let mut id = 0u128;
    let mut submit = |time: u64, command: Command| {
        id += 1;
        let request = Request {
            id: TxId(id),
            time: UnixMillis(time),
            command,
        };
        assert_eq!(
            ledger.submit(request).unwrap().record.outcome,
            Outcome::Accepted
        );
    };
    submit(
        T,
        Command::OpenAccount {
            account_id: 1,
            provider_id: 1,
            credit_limit: Amount(5_000),
        },
    );
    let tap = |kind: TapKind, code: u8| {
        Command::Tap(Tap {
            account_id: 1,
            gate_id: 1,
            code: [code; 16],
            kind,
            offline: false,
            concessions: 0,
        })
    };
    submit(T, tap(TapKind::MetroEntry { station: 101 }, 1));
    submit(
        T + 50 * MINUTE_MS,
        tap(TapKind::MetroExit { station: 100 }, 2),
    );
    while ledger
        .prune_expired_ids(UnixMillis(T + 100 * MINUTE_MS))
        .unwrap()
        > 0
    {}
    let replay = replay(ledger.view(), &fares(SAMPLE), ALL, |_| {}).unwrap();
    assert_eq!(replay.steps_read, 1, "the entry's step was pruned");
    assert_eq!(replay.total, revenue(1, 300, 300));
    assert_eq!(replay.riders.unchanged, 1);
}
