//! Pricing against the shipped sample city, and the rules a fares file must keep.

use super::*;

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
    assert_eq!(city.metro_fare(101, 102, 60_000).unwrap(), Amount(300)); // 2.1 km
    assert_eq!(city.metro_fare(101, 100, 60_000).unwrap(), Amount(300)); // 4.8 km
    assert_eq!(city.metro_fare(101, 202, 60_000).unwrap(), Amount(400)); // 8.3 km
    assert_eq!(city.metro_fare(101, 104, 60_000).unwrap(), Amount(700)); // 31 km
    assert_eq!(city.metro_fare(104, 203, 60_000).unwrap(), Amount(700)); // 34.2 km
    // Beyond the last band, the maximum fare.
    let text = include_str!("../../../docs/sample-city.toml")
        .replace("up_to_m = 40_000", "up_to_m = 30_000");
    let shorter = FareTable::from_toml(&text).unwrap();
    assert_eq!(shorter.metro_fare(104, 203, 60_000).unwrap(), Amount(900));
}

#[test]
fn leaving_where_one_entered_is_free_only_within_the_window() {
    let city = sample();
    assert_eq!(city.metro_fare(100, 100, 300_000).unwrap(), Amount(0));
    assert_eq!(city.metro_fare(100, 100, 300_001).unwrap(), Amount(300));
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

#[test]
fn transfers_are_discounted_and_the_day_is_capped() {
    let city = sample();
    let first = RiderDay::default();
    assert_eq!(city.charge(Amount(400), 1_000, first), Amount(400));
    let transfer = RiderDay {
        charged_today: Amount(400),
        previous_trip_started_at_ms: Some(1_000),
    };
    assert_eq!(
        city.charge(Amount(400), 1_000 + 5_400_000, transfer),
        Amount(300)
    );
    assert_eq!(
        city.charge(Amount(400), 1_000 + 5_400_001, transfer),
        Amount(400)
    );
    assert_eq!(city.charge(Amount(50), 2_000, transfer), Amount(0));
    let nearly_capped = RiderDay {
        charged_today: Amount(1_400),
        previous_trip_started_at_ms: None,
    };
    assert_eq!(
        city.charge(Amount(400), 9_000_000, nearly_capped),
        Amount(100)
    );
    let capped = RiderDay {
        charged_today: Amount(1_500),
        previous_trip_started_at_ms: None,
    };
    assert_eq!(city.charge(Amount(900), 9_000_000, capped), Amount(0));
    // Nonsense input saturates instead of overflowing.
    let odd = RiderDay {
        charged_today: Amount(i64::MIN),
        previous_trip_started_at_ms: None,
    };
    assert_eq!(city.charge(Amount(400), 9_000_000, odd), Amount(400));
    let odd = RiderDay {
        charged_today: Amount(i64::MAX),
        previous_trip_started_at_ms: Some(0),
    };
    assert_eq!(city.charge(Amount(i64::MIN), 1, odd), Amount(0));
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
