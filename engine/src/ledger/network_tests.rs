//! The sample networks modelled on real ones (`docs/networks/`), charged by the ledger's
//! state machine on a real RocksDB: whole days, weeks and months of a rider's travel,
//! with the exact amounts the operators' published rules and worked examples give (each
//! test names its source). Times are local wall-clock times of the network's zone.

use std::sync::Arc;

use proptest::prelude::*;

use super::tap_tests::submit;
use super::*;
use crate::clock::UnixMillis;
use crate::fares::FareTable;

const BEIJING: &str = include_str!("../../../docs/networks/beijing.toml");
const SHANGHAI: &str = include_str!("../../../docs/networks/shanghai.toml");
const LONDON: &str = include_str!("../../../docs/networks/london.toml");

const RIDER: u64 = 7;
const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

/// A local wall-clock time (`2025-03-03T08:00`) in a time zone, as a scan time.
fn local(zone: &str, text: &str) -> UnixMillis {
    let zone = jiff::tz::TimeZone::get(zone).unwrap();
    let time: jiff::civil::DateTime = text.parse().unwrap();
    let millis = time.to_zoned(zone).unwrap().timestamp().as_millisecond();
    UnixMillis(u64::try_from(millis).unwrap())
}

fn london(text: &str) -> UnixMillis {
    local("Europe/London", text)
}

fn beijing(text: &str) -> UnixMillis {
    local("Asia/Shanghai", text)
}

/// One rider on a network's ledger, with money enough for anything.
struct Rider {
    _dir: tempfile::TempDir,
    ledger: Ledger,
    fares: Arc<FareTable>,
    next_id: u128,
    /// The concession bits of the rider's codes.
    concessions: u8,
}

impl Rider {
    fn on(fares_file: &str) -> Rider {
        let dir = tempfile::tempdir().unwrap();
        let fares = Arc::new(FareTable::from_toml(fares_file).unwrap());
        let rules = Rules {
            fares: Some(fares.clone()),
            code_retry_window_ms: CODE_RETRY_WINDOW_MS_DEFAULT,
        };
        let ledger = Ledger::open_with_rules(dir.path(), LedgerConfig::default(), rules).unwrap();
        let mut rider = Rider {
            _dir: dir,
            ledger,
            fares,
            next_id: 1,
            concessions: 0,
        };
        let open = Command::OpenAccount {
            account_id: RIDER,
            provider_id: 1,
            credit_limit: Amount(0),
        };
        let top_up = Command::TopUp {
            account_id: RIDER,
            amount: Amount(100_000_000),
        };
        for command in [open, top_up] {
            rider.submit(UnixMillis(1), command);
        }
        rider
    }

    fn submit(&mut self, time: UnixMillis, command: Command) -> Receipt {
        self.next_id += 1;
        submit(&self.ledger, self.next_id, time, command)
    }

    /// One tap, online or offline; returns what it charged.
    fn tap_as(&mut self, kind: TapKind, time: UnixMillis, offline: bool) -> i64 {
        let code = (self.next_id + 1).to_be_bytes();
        let tap = Command::Tap(Tap {
            account_id: RIDER,
            gate_id: 1,
            code,
            kind,
            offline,
            concessions: self.concessions,
        });
        let receipt = self.submit(time, tap);
        assert_eq!(
            receipt.record.outcome,
            Outcome::Accepted,
            "{kind:?} at {time:?}"
        );
        receipt.record.rider_charge().0
    }

    fn tap(&mut self, kind: TapKind, time: UnixMillis) -> i64 {
        self.tap_as(kind, time, false)
    }

    /// A metro journey from `from` to `to` entered at `entered`, `minutes` long; returns
    /// what it charged.
    fn ride(&mut self, from: u32, to: u32, entered: UnixMillis, minutes: u64) -> i64 {
        let at_entry = self.tap(TapKind::MetroEntry { station: from }, entered);
        let exited = entered.saturating_add(minutes * MINUTE_MS);
        at_entry + self.tap(TapKind::MetroExit { station: to }, exited)
    }

    fn bus(&mut self, route: u32, time: UnixMillis) -> i64 {
        self.tap(TapKind::Bus { route }, time)
    }

    fn balance(&self) -> i64 {
        let account = self.ledger.account(AccountRef::Rider(RIDER)).unwrap();
        account.unwrap().balance.0
    }

    fn assert_money_conserved(&self) {
        let report = audit::audit(self.ledger.view()).unwrap();
        assert!(report.ok(), "audit failed: {:?}", report.violations);
        assert_eq!(report.balance_sum, 0);
    }
}

/// Beijing: "30 travel days a month, 2 rail rides a day, the highest single fare 10
/// yuan, 20% off after 100 and 50% off after 150: a monthly expenditure of 371 yuan"
/// (the Beijing Commission of Development and Reform's public-hearing proposal of
/// 2014-10-13, explaining the 400-yuan end of the discount adopted by 京发改[2014]2526号).
/// Rides 1-10 cost 10 yuan (100 spent), rides 11-17 8 yuan (156), rides 18-60 5 yuan.
#[test]
fn beijing_sixty_rides_of_ten_yuan_in_a_month_cost_371_yuan() {
    let mut rider = Rider::on(BEIJING);
    let (xidan, ming_tombs) = (1003, 2002); // 100 km: 10 yuan
    let mut fares = Vec::new();
    for day in 1..=30 {
        let morning = beijing(&format!("2025-11-{day:02}T08:00"));
        fares.push(rider.ride(xidan, ming_tombs, morning, 70));
        let evening = beijing(&format!("2025-11-{day:02}T18:00"));
        fares.push(rider.ride(ming_tombs, xidan, evening, 70));
    }
    let expected: Vec<i64> = [vec![1_000; 10], vec![800; 7], vec![500; 43]].concat();
    assert_eq!(fares, expected);
    assert_eq!(fares.iter().sum::<i64>(), 37_100);
    // A new calendar month starts the spend afresh.
    let december = beijing("2025-12-01T08:00");
    assert_eq!(rider.ride(xidan, ming_tombs, december, 70), 1_000);
    assert_eq!(rider.balance(), 100_000_000 - 37_100 - 1_000);
    rider.assert_money_conserved();
}

/// Beijing, the same proposal's table for a commuter making 44 rides a month at one
/// fare: the first discounted ride is the 35th at 3 yuan and the 26th at 4 yuan, and the
/// month costs 126.00 and 157.20 yuan; the 11th at 10 yuan, 291.00 yuan (derived from
/// the table's first discounted ride and average fare, 2.9, 3.6 and 6.6 yuan a ride).
#[test]
fn beijing_a_commuter_month_of_44_rides_follows_the_hearing_table() {
    for (from, to, first_discounted, month_total) in [
        (1001, 1002, 35, 12_600), // Pingguoyuan to Gongzhufen, 5 km: 3 yuan
        (1001, 1003, 26, 15_720), // Pingguoyuan to Xidan, 11 km: 4 yuan
        (1003, 2002, 11, 29_100), // Xidan to Ming Tombs, 100 km: 10 yuan (6.6 a ride)
    ] {
        let mut rider = Rider::on(BEIJING);
        let mut fares = Vec::new();
        for workday in 0..22u64 {
            let morning = beijing("2025-11-03T08:00").saturating_add(workday * DAY_MS);
            fares.push(rider.ride(from, to, morning, 30));
            fares.push(rider.ride(to, from, morning.saturating_add(600 * MINUTE_MS), 30));
        }
        let full = fares[0];
        let first = fares.iter().position(|fare| *fare < full).unwrap() + 1;
        assert_eq!(first, first_discounted);
        assert_eq!(fares.iter().sum::<i64>(), month_total);
        rider.assert_money_conserved();
    }
}

/// Beijing's tiers are for rail: a bus ride is neither discounted nor counted.
#[test]
fn beijing_bus_rides_neither_count_towards_nor_get_the_metro_tiers() {
    let mut rider = Rider::on(BEIJING);
    for n in 0..10 {
        let at = beijing("2025-11-03T08:00").saturating_add(n * DAY_MS);
        assert_eq!(rider.ride(1003, 2002, at, 70), 1_000);
    }
    // 100 yuan spent on the metro: the bus still costs its fare, and adds nothing.
    assert_eq!(rider.bus(1, beijing("2025-11-20T08:00")), 200);
    assert_eq!(rider.ride(1001, 1002, beijing("2025-11-20T09:00"), 20), 240);
}

/// Shanghai-style: after 70 yuan on the metro in a calendar month, 10% off until the
/// month ends (the rule as widely reported; see `docs/networks/shanghai.toml`). A
/// commuter's 44 rides at 4 yuan: the 18th ride brings the spend to 72, the 26 after it
/// cost 3.60: 72 + 93.60 = 165.60 yuan.
#[test]
fn shanghai_after_seventy_yuan_in_a_month_rides_cost_ninety_percent() {
    let mut rider = Rider::on(SHANGHAI);
    let (xinzhuang, xujiahui) = (1001, 1002); // 12 km: 4 yuan
    let mut fares = Vec::new();
    for workday in 0..22u64 {
        let morning = local("Asia/Shanghai", "2025-11-03T08:00").saturating_add(workday * DAY_MS);
        fares.push(rider.ride(xinzhuang, xujiahui, morning, 30));
        let evening = morning.saturating_add(600 * MINUTE_MS);
        fares.push(rider.ride(xujiahui, xinzhuang, evening, 30));
    }
    assert_eq!(fares, [vec![400; 18], vec![360; 26]].concat());
    assert_eq!(fares.iter().sum::<i64>(), 16_560);
    rider.assert_money_conserved();
}

/// London: peak fares on weekday mornings and evenings, off-peak otherwise (TfL: peak is
/// 06:30-09:30 and 16:00-19:00 Monday to Friday; a Zone 1 single is 290 peak, 280
/// off-peak). The fare is decided by when the journey starts.
#[test]
fn london_peak_fares_follow_the_journeys_start() {
    let mut rider = Rider::on(LONDON);
    let (bank, oxford_circus) = (1, 2); // 3.5 km: "Zone 1"
    // One journey a day, so that no cap is reached.
    for (start, fare) in [
        ("2025-03-03T06:29", 280), // Monday, just before the morning peak
        ("2025-03-04T06:30", 290),
        ("2025-03-05T09:25", 290), // entered in the peak, out after it
        ("2025-03-06T09:30", 280),
        ("2025-03-07T18:59", 290),
        ("2025-03-10T19:00", 280),
        ("2025-03-08T08:00", 280), // Saturday has no peak
    ] {
        assert_eq!(
            rider.ride(bank, oxford_circus, london(start), 10),
            fare,
            "{start}"
        );
    }
    rider.assert_money_conserved();
}

/// London: the daily cap (890 for Zones 1-2) and the travel day from 04:30 to 04:29 the
/// next day (TfL). A journey at 01:00 belongs to the day before, so it is free once that
/// day is capped.
#[test]
fn london_a_capped_day_runs_until_half_past_four_the_next_morning() {
    let mut rider = Rider::on(LONDON);
    let (bank, shepherds_bush) = (1, 3); // 8.5 km: 350 peak
    let rides: Vec<i64> = ["08:00", "08:45", "17:00", "17:45"]
        .iter()
        .map(|time| {
            let start = london(&format!("2025-03-03T{time}"));
            rider.ride(bank, shepherds_bush, start, 20)
        })
        .collect();
    assert_eq!(rides, vec![350, 350, 190, 0]);
    assert_eq!(
        rider.ride(bank, shepherds_bush, london("2025-03-04T01:00"), 20),
        0
    );
    assert_eq!(
        rider.ride(bank, shepherds_bush, london("2025-03-04T04:05"), 20),
        0
    );
    assert_eq!(
        rider.ride(bank, shepherds_bush, london("2025-03-04T04:30"), 20),
        290
    );
    rider.assert_money_conserved();
}

/// London: the weekly cap runs Monday to Sunday (TfL), beside the daily cap: five capped
/// weekdays are 4,450, so Saturday costs the 20 left and Sunday nothing; Monday starts
/// a new week.
#[test]
fn london_the_weekly_cap_runs_monday_to_sunday() {
    let mut rider = Rider::on(LONDON);
    let (bank, ealing) = (1, 4); // 16 km: 480 peak, 380 off-peak
    let mut days = Vec::new();
    for day in 3..=10 {
        let mut paid = 0;
        for time in ["08:00", "17:00", "20:00"] {
            paid += rider.ride(
                bank,
                ealing,
                london(&format!("2025-03-{day:02}T{time}")),
                40,
            );
        }
        days.push(paid);
    }
    assert_eq!(days, vec![890, 890, 890, 890, 890, 20, 0, 890]);
    rider.assert_money_conserved();
}

/// London: the Hopper, unlimited bus journeys within one hour of the first touch, for
/// one fare of 175; the bus cap of 525 a day (TfL). Bus fares count towards the all-mode
/// daily cap too.
#[test]
fn london_buses_hop_for_an_hour_and_cap_at_525_a_day() {
    let mut rider = Rider::on(LONDON);
    let buses: Vec<i64> = [
        "10:00", "10:50", "11:00", "11:05", "11:30", "12:10", "14:00", "16:00",
    ]
    .iter()
    .map(|time| rider.bus(25, london(&format!("2025-03-08T{time}"))))
    .collect();
    // 10:00 pays and starts a hopper; 10:50 and 11:00 hop free; 11:05 pays again, 11:30
    // hops; 12:10 pays, the third fare (525, capped); then nothing.
    assert_eq!(buses, vec![175, 0, 0, 175, 0, 175, 0, 0]);
    // 525 on buses: the all-mode cap leaves 365 for the metro.
    let (bank, shepherds_bush) = (1, 3);
    assert_eq!(
        rider.ride(bank, shepherds_bush, london("2025-03-08T18:00"), 20),
        290
    );
    assert_eq!(
        rider.ride(bank, shepherds_bush, london("2025-03-08T19:00"), 20),
        75
    );
    rider.assert_money_conserved();
}

/// London: an entry never exited is charged the maximum journey fare of its station (the
/// highest fare from it, at its time of day), when the next entry finds it open; an exit
/// with no entry the highest fare to its station.
#[test]
fn london_an_unfinished_journey_costs_the_highest_fare_from_its_station() {
    let mut rider = Rider::on(LONDON);
    let (bank, oxford_circus, heathrow) = (1, 2, 6);
    let entry = |station| TapKind::MetroEntry { station };
    let exit = |station| TapKind::MetroExit { station };
    // Bank's highest fare is to Heathrow (29.5 km): 620 peak, 450 off-peak. The next entry
    // finds the 08:00 journey open and charges it at its (peak) entry time.
    assert_eq!(rider.tap(entry(bank), london("2025-03-10T08:00")), 0);
    assert_eq!(rider.tap(entry(bank), london("2025-03-10T12:00")), 620);
    // The daily cap (890) leaves 270 of the 280 off-peak fare.
    assert_eq!(
        rider.tap(exit(oxford_circus), london("2025-03-10T12:30")),
        270
    );
    // An exit with no entry: the highest fare to Bank, off-peak.
    assert_eq!(rider.tap(exit(bank), london("2025-03-12T11:00")), 450);
    // Heathrow's highest is to Ealing (38.5 km, beyond the bands): the maximum fare.
    assert_eq!(rider.tap(exit(heathrow), london("2025-03-13T11:00")), 890);
    // Out more than 2 hours after the entry: Oxford Circus's highest off-peak fare (to
    // Heathrow, 26 km).
    assert_eq!(
        rider.ride(oxford_circus, bank, london("2025-03-14T10:00"), 150),
        450
    );
    rider.assert_money_conserved();
}

/// London: a code with the senior or disabled bit travels free (the sample's rule for
/// the Freedom Pass and 60+ cards); a student bit, which London's file does not list,
/// pays the full fare. An entry never exited is charged with the entry's concession.
#[test]
fn london_concessions_come_from_the_riders_code() {
    let (bank, oxford_circus) = (1, 2);
    for (bits, fare, unfinished) in [
        (0x00, 290, 620),
        (0x02, 0, 0),
        (0x04, 0, 0),
        (0x01, 290, 620),
    ] {
        let mut rider = Rider::on(LONDON);
        rider.concessions = bits;
        assert_eq!(
            rider.ride(bank, oxford_circus, london("2025-03-03T08:00"), 10),
            fare
        );
        rider.tap(
            TapKind::MetroEntry { station: bank },
            london("2025-03-04T08:00"),
        );
        // The next entry, with no bits, finds Tuesday's journey open: the entry's bits count.
        rider.concessions = 0;
        let next = rider.tap(
            TapKind::MetroEntry { station: bank },
            london("2025-03-05T08:00"),
        );
        assert_eq!(next, unfinished, "bits {bits:#x}");
        rider.assert_money_conserved();
    }
}

/// London's travel day starts at 04:30 London time, whatever the clocks say: on the
/// Sunday the clocks go forward (2025-03-30, 01:00 UTC) 04:30 is 03:30 UTC, and on the
/// Sunday they go back (2025-10-26) it is 04:30 UTC. A Saturday capped, each Sunday's
/// early journey is Saturday's (free) up to 04:29 local and Sunday's (charged) from 04:30.
#[test]
fn london_the_travel_day_follows_the_clock_changes() {
    let utc = |text: &str| local("UTC", text);
    let (bank, ealing) = (1, 4); // 380 off-peak
    for (saturday, saturdays_late, sundays_early) in [
        ("2025-03-29", "2025-03-30T03:15", "2025-03-30T03:45"), // 04:15 and 04:45 BST
        ("2025-10-25", "2025-10-26T04:15", "2025-10-26T04:35"), // 04:15 and 04:35 GMT
    ] {
        let mut rider = Rider::on(LONDON);
        for time in ["10:00", "12:00", "14:00"] {
            rider.ride(bank, ealing, london(&format!("{saturday}T{time}")), 40);
        }
        assert_eq!(
            rider.ride(bank, ealing, utc(saturdays_late), 5),
            0,
            "{saturdays_late}"
        );
        assert_eq!(
            rider.ride(bank, ealing, utc(sundays_early), 5),
            380,
            "{sundays_early}"
        );
        rider.assert_money_conserved();
    }
}

/// One tap of a generated London history: minutes after Monday 2025-03-03 04:30, what,
/// and whether an offline gate took it (uploaded late, in a shuffled order).
#[derive(Debug, Clone, Copy)]
struct LondonTap {
    minute: u64,
    kind: TapKind,
    offline: bool,
}

fn london_tap() -> impl Strategy<Value = LondonTap> {
    let station = || prop::sample::select(vec![1u32, 2, 3, 4, 5, 6]);
    let kind = prop_oneof![
        station().prop_map(|station| TapKind::MetroEntry { station }),
        station().prop_map(|station| TapKind::MetroExit { station }),
        prop::sample::select(vec![25u32, 73]).prop_map(|route| TapKind::Bus { route }),
    ];
    // Ten days: two service weeks.
    (0u64..10 * 24 * 60, kind, any::<bool>()).prop_map(|(minute, kind, offline)| LondonTap {
        minute,
        kind,
        offline,
    })
}

/// What the rider paid (taps, closes and corrections, each on the day of the fare it
/// belongs to) per service day, per service day on buses, and per service week.
type Paid = (
    std::collections::BTreeMap<u32, i64>,
    std::collections::BTreeMap<u32, i64>,
    std::collections::BTreeMap<u32, i64>,
);

fn paid(rider: &Rider) -> Paid {
    let mut paid = Paid::default();
    let view = rider.ledger.view();
    for sequence in 1..view.next_sequence().unwrap() {
        let record = view.record(sequence).unwrap().unwrap();
        let charge = record.rider_charge().0;
        if charge == 0 || matches!(record.request.command, Command::TopUp { .. }) {
            continue;
        }
        let periods = rider.fares.periods(record.request.time);
        *paid.0.entry(periods.day).or_default() += charge;
        let bus = AccountRef::OperatorRevenue(rider.fares.bus_operator_id);
        if record.postings.iter().any(|posting| posting.account == bus) {
            *paid.1.entry(periods.day).or_default() += charge;
        }
        *paid.2.entry(periods.week).or_default() += charge;
    }
    for totals in [&mut paid.0, &mut paid.1, &mut paid.2] {
        totals.retain(|_, total| *total != 0);
    }
    paid
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever a London rider does (with or without a concession), in whatever order their
    /// offline gates' taps arrive:
    /// no service day costs more than the daily cap, no day's buses more than the bus
    /// cap, no week more than the weekly cap, what they pay is what scan order charges,
    /// and money is conserved.
    #[test]
    fn london_no_day_or_week_costs_more_than_its_cap_whatever_the_rider_does(
        mut taps in prop::collection::vec(london_tap(), 1..150),
        order_seed in any::<u64>(),
        concessions in 0u8..8,
    ) {
        taps.sort_by_key(|tap| tap.minute);
        taps.dedup_by_key(|tap| tap.minute);
        let start = london("2025-03-03T04:30");
        let mut results = Vec::new();
        for shuffled in [false, true] {
            let mut order: Vec<usize> = (0..taps.len()).collect();
            if shuffled {
                // Online taps keep their place; offline ones arrive after, in any order.
                order.sort_by_key(|index| (taps[*index].offline, mix(*index as u64 ^ order_seed)));
            }
            let mut rider = Rider::on(LONDON);
            rider.concessions = concessions;
            for index in order {
                let tap = taps[index];
                let time = start.saturating_add(tap.minute * MINUTE_MS);
                rider.tap_as(tap.kind, time, tap.offline);
            }
            let report = audit::audit(rider.ledger.view()).unwrap();
            prop_assert!(report.ok(), "audit failed: {:?}", report.violations);
            prop_assert_eq!(report.balance_sum, 0);
            let paid = paid(&rider);
            prop_assert!(paid.0.values().all(|day| *day <= 890), "days {:?}", paid.0);
            prop_assert!(paid.1.values().all(|day| *day <= 525), "bus days {:?}", paid.1);
            prop_assert!(paid.2.values().all(|week| *week <= 4_470), "weeks {:?}", paid.2);
            results.push(paid);
        }
        prop_assert_eq!(&results[0], &results[1], "taps {:?}", taps);
    }
}

/// A 64-bit mix (splitmix64's finaliser): a reproducible shuffle key.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
