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
    Trip {
        base: Amount(base),
        mode: Mode::Metro,
        started_at: UnixMillis(at),
        incomplete: false,
    }
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
