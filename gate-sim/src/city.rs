//! A city made to measure: metro lines that all cross at one central station, and bus
//! routes, written as the engine's fares file (`docs/fares.md`), with the sample city's
//! fare rules. The same seed gives the same city.

use std::fmt::Write as _;

use crate::rng::Rng;

/// What to make.
#[derive(Debug, Clone, Copy)]
pub struct CitySpec {
    /// Metro lines (1 to 9).
    pub lines: u32,
    /// Stations on each line besides the central one (1 to 99).
    pub stations_per_line: u32,
    /// Bus routes (0 to 99).
    pub bus_routes: u32,
    /// The seed.
    pub seed: u64,
}

/// The central station every line passes through.
pub const CENTRAL_STATION: u32 = 100;

/// Why a city cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("a city has 1 to 9 lines, 1 to 99 stations per line and 0 to 99 bus routes")]
pub struct CityError;

/// The fares file of the city.
pub fn fares_toml(spec: CitySpec) -> Result<String, CityError> {
    if !(1..=9).contains(&spec.lines)
        || !(1..=99).contains(&spec.stations_per_line)
        || spec.bus_routes > 99
    {
        return Err(CityError);
    }
    let mut rng = Rng::new(spec.seed);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        text,
        "# A city made by gate-sim (seed {}): {} lines crossing at Central, {} bus routes.\n",
        spec.seed, spec.lines, spec.bus_routes
    );
    text.push_str(
        "max_fare_minor = 900\ndaily_cap_minor = 1500\ntransfer_window_ms = 5_400_000\n\
         transfer_discount_minor = 100\nincomplete_journey_after_ms = 14_400_000\n\
         same_station_exit_free_within_ms = 300_000\n\n",
    );
    for (up_to_m, fare) in [(6_000, 300), (12_000, 400), (22_000, 500), (40_000, 700)] {
        let _ = writeln!(
            text,
            "[[fare_band]]\nup_to_m = {up_to_m}\nfare_minor = {fare}\n"
        );
    }
    for line in 1..=spec.lines {
        let _ = writeln!(text, "[[line]]\nname = \"Line {line}\"\nstation = [");
        // Central sits in the middle of every line.
        let central_at = spec.stations_per_line / 2;
        let mut at_m = 0u32;
        let mut number = 0;
        for position in 0..=spec.stations_per_line {
            if position > 0 {
                at_m += 1_200 + rng.below(2_400) as u32;
            }
            if position == central_at {
                let _ = writeln!(
                    text,
                    "  {{ id = {CENTRAL_STATION}, name = \"Central\", at_m = {at_m} }},"
                );
            } else {
                number += 1;
                let id = line * 100 + number;
                let _ = writeln!(
                    text,
                    "  {{ id = {id}, name = \"Line {line} stop {number}\", at_m = {at_m} }},"
                );
            }
        }
        text.push_str("]\n\n");
    }
    for route in 1..=spec.bus_routes {
        let fare = if rng.below(4) == 0 { 300 } else { 200 };
        let _ = writeln!(
            text,
            "[[bus_route]]\nid = {}\nname = \"Route {route}\"\nfare_minor = {fare}\n",
            500 + route
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_city_loads_in_the_engine_with_every_station_and_route() {
        let spec = CitySpec {
            lines: 4,
            stations_per_line: 12,
            bus_routes: 5,
            seed: 3,
        };
        let text = fares_toml(spec).unwrap();
        let fares = fareway_gate::fares::FareTable::from_toml(&text).unwrap();
        assert_eq!(fares.stations().count(), 4 * 12 + 1);
        assert_eq!(fares.routes().count(), 5);
        assert!(fares.has_station(CENTRAL_STATION));
        // Every station reaches every other one through Central.
        assert!(
            fares
                .metro_fare(101, 412, 0, fareway_gate::clock::UnixMillis(0))
                .is_ok()
        );
        assert_eq!(
            fares_toml(spec).unwrap(),
            text,
            "the same seed, the same city"
        );
        assert!(fares_toml(CitySpec { lines: 0, ..spec }).is_err());
        assert!(
            fares_toml(CitySpec {
                bus_routes: 100,
                ..spec
            })
            .is_err()
        );
    }
}
