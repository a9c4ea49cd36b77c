//! Pricing against the shipped sample city, and the rules a fares file must keep.

use super::*;
use crate::clock::UnixMillis;

/// A moment with no peak window in the sample (it has none at all).
const NOON: UnixMillis = UnixMillis(1_800_000_000_000);

fn sample() -> FareTable {
    let text = include_str!("../../../docs/sample-city.toml");
    FareTable::from_toml(text).unwrap()
}

#[test]
fn distances_follow_the_lines_and_change_at_central() {
    let city = sample();
    assert_eq!(city.distance_m(101, 102).unwrap(), 2_100);
    assert_eq!(city.distance_m(102, 101).unwrap(), 2_100);
    // Harbour (Red, 0) to Stadium (Blue): 4,800 to Central, then 3,500 along Blue.
    assert_eq!(city.distance_m(101, 202).unwrap(), 8_300);
    assert_eq!(
        city.distance_m(104, 203).unwrap(),
        (31_000 - 4_800) + (11_000 - 3_000)
    );
    assert_eq!(city.distance_m(100, 100).unwrap(), 0);
    assert_eq!(
        city.distance_m(101, 999).unwrap_err(),
        FareError::UnknownStation(999)
    );
}

#[test]
fn a_journey_costs_the_band_of_its_distance_or_the_maximum_beyond() {
    let city = sample();
    assert_eq!(
        city.metro_fare(101, 102, 60_000, NOON).unwrap(),
        Amount(300)
    ); // 2.1 km
    assert_eq!(
        city.metro_fare(101, 100, 60_000, NOON).unwrap(),
        Amount(300)
    ); // 4.8 km
    assert_eq!(
        city.metro_fare(101, 202, 60_000, NOON).unwrap(),
        Amount(400)
    ); // 8.3 km
    assert_eq!(
        city.metro_fare(101, 104, 60_000, NOON).unwrap(),
        Amount(700)
    ); // 31 km
    assert_eq!(
        city.metro_fare(104, 203, 60_000, NOON).unwrap(),
        Amount(700)
    ); // 34.2 km
    // Beyond the last band, the maximum fare.
    let text = include_str!("../../../docs/sample-city.toml")
        .replace("up_to_m = 40_000", "up_to_m = 30_000");
    let shorter = FareTable::from_toml(&text).unwrap();
    assert_eq!(
        shorter.metro_fare(104, 203, 60_000, NOON).unwrap(),
        Amount(900)
    );
}

#[test]
fn leaving_where_one_entered_is_free_only_within_the_window() {
    let city = sample();
    assert_eq!(city.metro_fare(100, 100, 300_000, NOON).unwrap(), Amount(0));
    assert_eq!(
        city.metro_fare(100, 100, 300_001, NOON).unwrap(),
        Amount(300)
    );
}

#[test]
fn bus_routes_have_flat_fares() {
    let city = sample();
    assert_eq!(city.bus_fare(501).unwrap(), Amount(200));
    assert_eq!(
        city.bus_fare(777).unwrap_err(),
        FareError::UnknownRoute(777)
    );
}

/// A complete metro trip of `base` starting at `at` ms.
fn trip(base: i64, at: u64) -> Trip {
    Trip::metro(Amount(base), UnixMillis(at), 0)
}

#[test]
fn transfers_are_discounted_and_the_day_is_capped() {
    let city = sample();
    let mut totals = RiderTotals::default();
    assert!(totals.start(city.periods(UnixMillis(1_000))));
    assert_eq!(
        city.charge(&trip(400, 1_000), &mut totals),
        Some(Amount(400))
    );
    assert_eq!(totals.charged_today, Amount(400));
    assert_eq!(totals.last_trip_started_at, Some(UnixMillis(1_000)));
    let transfer = totals;
    assert_eq!(
        city.charge(&trip(400, 1_000 + 5_400_000), &mut transfer.clone()),
        Some(Amount(300))
    );
    assert_eq!(
        city.charge(&trip(400, 1_000 + 5_400_001), &mut transfer.clone()),
        Some(Amount(400))
    );
    assert_eq!(
        city.charge(&trip(50, 2_000), &mut transfer.clone()),
        Some(Amount(0))
    );
    // An incomplete journey gets no transfer discount and is no trip to transfer from.
    let mut after_incomplete = transfer;
    let incomplete = Trip {
        incomplete: true,
        ..trip(900, 2_000)
    };
    assert_eq!(
        city.charge(&incomplete, &mut after_incomplete),
        Some(Amount(900))
    );
    assert_eq!(
        after_incomplete.last_trip_started_at,
        Some(UnixMillis(1_000))
    );
    let nearly_capped = RiderTotals {
        charged_today: Amount(1_400),
        ..RiderTotals::default()
    };
    assert_eq!(
        city.charge(&trip(400, 9_000_000), &mut nearly_capped.clone()),
        Some(Amount(100))
    );
    let capped = RiderTotals {
        charged_today: Amount(1_500),
        ..RiderTotals::default()
    };
    assert_eq!(
        city.charge(&trip(900, 9_000_000), &mut capped.clone()),
        Some(Amount(0))
    );
    // Nonsense input saturates instead of overflowing, or is refused when a total would.
    let odd = RiderTotals {
        charged_today: Amount(i64::MIN),
        ..RiderTotals::default()
    };
    assert_eq!(
        city.charge(&trip(400, 9_000_000), &mut odd.clone()),
        Some(Amount(400))
    );
    let odd = RiderTotals {
        charged_today: Amount(i64::MAX),
        last_trip_started_at: Some(UnixMillis(0)),
        ..RiderTotals::default()
    };
    assert_eq!(
        city.charge(&trip(i64::MIN, 1), &mut odd.clone()),
        Some(Amount(0))
    );
    let full_week = RiderTotals {
        charged_week: Amount(i64::MAX),
        ..RiderTotals::default()
    };
    assert_eq!(city.charge(&trip(400, 1), &mut full_week.clone()), None);
}

const PEAK: &str =
    "\n[[peak_window]]\ndays = [\"mon\", \"tue\"]\nfrom = \"06:30\"\nto = \"09:30\"\n";
const PEAK_OVERLAPPING: &str =
    "\n[[peak_window]]\ndays = [\"tue\"]\nfrom = \"09:00\"\nto = \"10:00\"\n";
const TIER_100: &str = "\n[[monthly_tier]]\nafter_spent_minor = 10000\npayable_percent = 80\n";

/// A London wall-clock time as a scan time, via the calendar's own crate.
fn london(text: &str) -> UnixMillis {
    let zone = jiff::tz::TimeZone::get("Europe/London").unwrap();
    let time: jiff::civil::DateTime = text.parse().unwrap();
    let millis = time.to_zoned(zone).unwrap().timestamp().as_millisecond();
    UnixMillis(u64::try_from(millis).unwrap())
}

#[test]
fn the_calendar_puts_moments_in_local_service_days_weeks_and_months() {
    let text = include_str!("../../../docs/networks/london.toml");
    let london_fares = FareTable::from_toml(text).unwrap();
    // Monday 2025-03-03 is day 20,150 since 1970-01-01, in week (20,150 + 3) / 7 and
    // month 2025 * 12 + 2.
    let monday = london_fares.periods(london("2025-03-03T04:30"));
    assert_eq!(
        monday,
        Periods {
            day: 20_150,
            week: 2_879,
            month: 24_302
        }
    );
    assert_eq!(london_fares.periods(london("2025-03-03T04:29")).day, 20_149);
    assert_eq!(london_fares.periods(london("2025-03-04T04:29")).day, 20_150);
    // Sunday the 9th is in Monday's week; the 10th starts the next.
    assert_eq!(london_fares.periods(london("2025-03-09T23:00")).week, 2_879);
    assert_eq!(london_fares.periods(london("2025-03-10T05:00")).week, 2_880);
    // 1 April before 04:30 is still March's last service day.
    assert_eq!(
        london_fares.periods(london("2025-04-01T03:00")).month,
        24_302
    );
    assert_eq!(
        london_fares.periods(london("2025-04-01T05:00")).month,
        24_303
    );
    // The day starts at 04:30 local: 04:30 UTC in winter, 03:30 UTC in summer.
    let march_30_0330_utc = UnixMillis(1_743_292_800_000 + 210 * 60_000);
    let march_29_0430_utc = UnixMillis(1_743_222_600_000);
    assert_eq!(
        london_fares.day_start(london("2025-03-30T10:00")),
        march_30_0330_utc
    );
    assert_eq!(
        london_fares.day_start(london("2025-03-29T10:00")),
        march_29_0430_utc
    );
    assert!(london_fares.calendar.is_peak(london("2025-03-03T08:00")));
    assert!(!london_fares.calendar.is_peak(london("2025-03-08T08:00")));
    // The sample city has no calendar: UTC days from midnight, as before.
    let city = sample();
    assert_eq!(city.periods(NOON).day, 20_833);
    assert_eq!(city.day_start(NOON), UnixMillis(20_833 * 86_400_000));
    assert_eq!(city.calendar.zone_name(), "UTC");
    // Times outside the calendar's range fall back to UTC days, without a panic.
    assert_eq!(london_fares.periods(UnixMillis(u64::MAX)).day, u32::MAX);
    assert!(!london_fares.calendar.is_peak(UnixMillis(u64::MAX)));
    assert_eq!(date_of_day(u32::MAX), "day 4294967295");
    assert_eq!(periods_of_day(u32::MAX).month, 0);
}

/// A New York wall-clock time (`2024-03-10T07:10`, UTC offsets by the zone's rules)
/// given as UTC, and the sample city with a New York service day starting at `starts_at`.
fn new_york(starts_at: &str) -> FareTable {
    let text = format!(
        "{}\n[service_day]\ntime_zone = \"America/New_York\"\nstarts_at = \"{starts_at}\"\n",
        include_str!("../../../docs/sample-city.toml")
    );
    FareTable::from_toml(&text).unwrap()
}

fn utc(text: &str) -> UnixMillis {
    let time: jiff::civil::DateTime = text.parse().unwrap();
    let millis = time
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp()
        .as_millisecond();
    UnixMillis(u64::try_from(millis).unwrap())
}

/// Regression (a review found it): service days were decided by wall-clock time and day
/// starts by instant, so on a night whose clock change skips or repeats the start time a
/// moment could come before its own day's start, or fall in the day before. Days are now
/// decided by start instants: a day's start is never after a moment of it, and days never
/// go back in time.
#[test]
fn service_days_follow_each_other_in_time_across_clock_changes() {
    // 2024-03-10: 02:00 EST (07:00Z) jumps to 03:00 EDT. A 02:30 start is skipped and
    // moved forward by the gap: 03:30 EDT, 07:30Z.
    let skipped = new_york("02:30");
    let march_9 = skipped.periods(utc("2024-03-10T06:00")).day;
    assert_eq!(skipped.periods(utc("2024-03-10T07:10")).day, march_9);
    assert_eq!(skipped.periods(utc("2024-03-10T07:30")).day, march_9 + 1);
    assert_eq!(
        skipped.day_start(utc("2024-03-10T07:40")),
        utc("2024-03-10T07:30")
    );
    // 2024-11-03: 02:00 EDT (06:00Z) falls back to 01:00 EST. A 01:30 start happens twice:
    // the first, 01:30 EDT (05:30Z), starts the day; 01:10 EST (06:10Z) is in it.
    let repeated = new_york("01:30");
    let november_3 = repeated.periods(utc("2024-11-03T05:30")).day;
    assert_eq!(
        repeated.periods(utc("2024-11-03T05:29")).day,
        november_3 - 1
    );
    assert_eq!(repeated.periods(utc("2024-11-03T06:10")).day, november_3);
    assert_eq!(
        repeated.day_start(utc("2024-11-03T06:10")),
        utc("2024-11-03T05:30")
    );
    // Every ten minutes over both nights: the day never goes back, and its start is never
    // after the moment.
    for (fares, from) in [
        (&skipped, "2024-03-09T12:00"),
        (&repeated, "2024-11-02T12:00"),
    ] {
        let mut last_day = 0;
        for step in 0..24 * 6 {
            let time = utc(from).saturating_add(step * 600_000);
            let day = fares.periods(time).day;
            assert!(day >= last_day, "{time:?}");
            assert!(fares.day_start(time) <= time, "{time:?}");
            last_day = day;
        }
    }
}

#[test]
fn every_sample_network_loads() {
    for text in [
        include_str!("../../../docs/networks/beijing.toml"),
        include_str!("../../../docs/networks/shanghai.toml"),
        include_str!("../../../docs/networks/london.toml"),
    ] {
        FareTable::from_toml(text).unwrap();
    }
}

#[test]
fn broken_files_are_refused_with_the_rule_named() {
    let text = include_str!("../../../docs/sample-city.toml");
    let cases = [
        (
            text.replace("up_to_m = 12_000", "up_to_m = 5_000"),
            "fare_band entries must grow",
        ),
        (
            text.replace("at_m = 2_100", "at_m = 9_000"),
            "at_m must grow along the line",
        ),
        (
            text.replace(
                "name = \"Central\", at_m = 3_000",
                "name = \"Centre\", at_m = 3_000",
            ),
            "station 100 has two names",
        ),
        (
            text.replace(
                "fare_minor = 300\n\n[[fare_band]]\nup_to_m = 12_000",
                "fare_minor = 1300\n\n[[fare_band]]\nup_to_m = 12_000",
            ),
            "fare must be 0 to max_fare_minor",
        ),
        (
            text.replace("id = 502", "id = 501"),
            "bus_route 501 is listed twice",
        ),
        (
            text.replace("daily_cap_minor = 1500", "daily_cap_minor = -1"),
            "daily_cap_minor must not be negative",
        ),
        (
            text.replace("daily_cap_minor = 1500", "daily_cap_minor = 800"),
            "daily_cap_minor (800) is below a single fare",
        ),
        (
            text.replace(
                "daily_cap_minor = 1500",
                "daily_cap_minor = 1500\nweekly_cap_minor = 1000",
            ),
            "weekly_cap_minor (1000) is below",
        ),
        (
            text.replace(
                "daily_cap_minor = 1500",
                "daily_cap_minor = 1500\nbus_daily_cap_minor = 250",
            ),
            "bus_daily_cap_minor (250) is below",
        ),
        (
            format!(
                "{text}\n[service_day]\ntime_zone = \"Europe/Lundon\"\nstarts_at = \"04:30\"\n"
            ),
            "unknown time zone \"Europe/Lundon\"",
        ),
        (
            format!("{text}\n[service_day]\ntime_zone = \"UTC\"\nstarts_at = \"4:30\"\n"),
            "service_day.starts_at: \"4:30\" is not a time HH:MM",
        ),
        (
            format!("{text}\n[service_day]\ntime_zone = \"UTC\"\nstarts_at = \"+4:30\"\n"),
            "service_day.starts_at: \"+4:30\" is not a time HH:MM",
        ),
        (
            format!("{text}{PEAK}{PEAK_OVERLAPPING}"),
            "peak windows 06:30-09:30 and 09:00-10:00 overlap",
        ),
        (
            format!(
                "{text}\n[[peak_window]]\ndays = [\"fri\"]\nfrom = \"22:00\"\nto = \"02:00\"\n"
            ),
            "from must be before to",
        ),
        (
            format!(
                "{text}\n[[peak_window]]\ndays = [\"friday\"]\nfrom = \"07:00\"\nto = \"09:00\"\n"
            ),
            "unknown day \"friday\"",
        ),
        (
            format!(
                "{text}{TIER_100}\n[[monthly_tier]]\nafter_spent_minor = 5000\npayable_percent = 50\n"
            ),
            "monthly_tier entries must grow",
        ),
        (
            format!("{text}\n[[monthly_tier]]\nafter_spent_minor = 5000\npayable_percent = -20\n"),
            "payable_percent must be 0 to 100",
        ),
        (
            format!("{text}\n[[monthly_tier]]\nafter_spent_minor = -1\npayable_percent = 80\n"),
            "after_spent_minor must not be negative",
        ),
        (
            text.replace(
                "daily_cap_minor = 1500",
                "daily_cap_minor = 1500\nexit_without_entry = \"fixed\"",
            ),
            "exit_without_entry = \"fixed\" needs exit_without_entry_minor",
        ),
        (
            text.replace(
                "daily_cap_minor = 1500",
                "daily_cap_minor = 1500\nexit_without_entry_minor = 100",
            ),
            "exit_without_entry_minor is only read with",
        ),
        (
            text.replace(
                "daily_cap_minor = 1500",
                "daily_cap_minor = 1500\nbus_hopper_window_ms = 0",
            ),
            "bus_hopper_window_ms must be more than 0",
        ),
    ];
    for (broken, message) in cases {
        let err = FareTable::from_toml(&broken).unwrap_err();
        assert!(
            err.to_string().contains(message),
            "{err} should say {message}"
        );
    }
    assert_eq!(
        FareTable::from_toml("max_fare_minor = \"x\"")
            .unwrap_err()
            .code(),
        "fares_file_invalid"
    );
    assert_eq!(
        FareTable::from_toml(&"#".repeat(FARES_FILE_BYTES_MAX + 1)).unwrap_err(),
        FareError::TooLarge
    );
}
