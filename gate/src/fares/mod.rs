//! Fares: the transit network and its fare rules, loaded from the operator's TOML file
//! (`docs/fares.md`, sample `docs/sample-city.toml`), and the pure functions that price a
//! trip. No storage and no clock: the caller passes in what the rider has already paid
//! today and when, so that pricing stays deterministic inside the ledger's state machine.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use serde::Deserialize;

use crate::money::Amount;

/// Most stations a network may have: all-pairs distances are computed at load.
pub const STATIONS_MAX: usize = 1_000;
/// The largest fares file read.
pub const FARES_FILE_BYTES_MAX: usize = 1 << 20;

/// A metro station's id, as gates send it.
pub type StationId = u32;
/// A bus route's id, as bus readers send it.
pub type RouteId = u32;

/// Where a tap happened, and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TapKind {
    /// Tap in at a metro station's entry gate: opens a journey.
    MetroEntry {
        /// The station.
        station: StationId,
    },
    /// Tap out at a metro station's exit gate: closes and prices the journey.
    MetroExit {
        /// The station.
        station: StationId,
    },
    /// Tap on a bus reader: charges the route's flat fare.
    Bus {
        /// The route.
        route: RouteId,
    },
}

/// Errors in a fares file, or a trip the network does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FareError {
    /// The file is not valid TOML of the documented shape.
    #[error("fares file is not valid: {0}")]
    Parse(String),
    /// The file is larger than [`FARES_FILE_BYTES_MAX`].
    #[error("fares file is larger than {FARES_FILE_BYTES_MAX} bytes")]
    TooLarge,
    /// A rule of the file is broken (named in the message).
    #[error("fares file: {0}")]
    Invalid(String),
    /// A tap names a station that is not in the network.
    #[error("unknown station {0}")]
    UnknownStation(StationId),
    /// A tap names a bus route that is not in the network.
    #[error("unknown bus route {0}")]
    UnknownRoute(RouteId),
    /// The two stations are not connected by any line.
    #[error("stations {0} and {1} are not connected")]
    NotConnected(StationId, StationId),
}

impl FareError {
    /// The stable code string of this error.
    pub fn code(&self) -> &'static str {
        match self {
            FareError::Parse(_) => "fares_file_invalid",
            FareError::TooLarge => "fares_file_too_large",
            FareError::Invalid(_) => "fares_rule_broken",
            FareError::UnknownStation(_) => "unknown_station",
            FareError::UnknownRoute(_) => "unknown_route",
            FareError::NotConnected(..) => "stations_not_connected",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaresFile {
    max_fare_minor: i64,
    daily_cap_minor: i64,
    transfer_window_ms: u64,
    transfer_discount_minor: i64,
    incomplete_journey_after_ms: u64,
    same_station_exit_free_within_ms: u64,
    #[serde(default = "default_metro_operator_id")]
    metro_operator_id: u16,
    #[serde(default = "default_bus_operator_id")]
    bus_operator_id: u16,
    fare_band: Vec<BandEntry>,
    #[serde(default)]
    line: Vec<LineEntry>,
    #[serde(default)]
    bus_route: Vec<RouteEntry>,
}

fn default_metro_operator_id() -> u16 {
    1
}

fn default_bus_operator_id() -> u16 {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BandEntry {
    up_to_m: u32,
    fare_minor: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineEntry {
    name: String,
    station: Vec<StationEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StationEntry {
    id: StationId,
    name: String,
    at_m: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    id: RouteId,
    name: String,
    fare_minor: i64,
}

/// The network and its fare rules, checked and ready to price trips.
#[derive(Debug, Clone)]
pub struct FareTable {
    /// The fare of an incomplete journey, and the most any single trip costs.
    pub max_fare: Amount,
    /// The most a rider pays in one day.
    pub daily_cap: Amount,
    /// A trip starting within this long of the rider's previous charged trip is a transfer.
    pub transfer_window_ms: u64,
    /// Taken off a transfer's fare.
    pub transfer_discount: Amount,
    /// An entry with no exit after this long is an incomplete journey.
    pub incomplete_journey_after_ms: u64,
    /// Exiting at the entry station within this long is free (the rider changed their
    /// mind); later, it is priced as the shortest band.
    pub same_station_exit_free_within_ms: u64,
    /// The operator that earns metro fares.
    pub metro_operator_id: u16,
    /// The operator that earns bus fares.
    pub bus_operator_id: u16,
    bands: Vec<(u32, Amount)>,
    station_names: BTreeMap<StationId, String>,
    distances_m: HashMap<(StationId, StationId), u32>,
    routes: BTreeMap<RouteId, (String, Amount)>,
}

/// What a rider has already paid on the service day of a new trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RiderDay {
    /// The sum of today's charges so far.
    pub charged_today: Amount,
    /// When the rider's previous charged trip started, if today.
    pub previous_trip_started_at_ms: Option<u64>,
}

impl FareTable {
    /// Parses and checks a fares file.
    pub fn from_toml(text: &str) -> Result<FareTable, FareError> {
        if text.len() > FARES_FILE_BYTES_MAX {
            return Err(FareError::TooLarge);
        }
        let file: FaresFile =
            toml::from_str(text).map_err(|err| FareError::Parse(err.to_string()))?;
        check_amounts(&file)?;
        let bands = fare_bands(&file.fare_band, file.max_fare_minor)?;
        let (station_names, edges) = metro_network(&file.line)?;
        let routes = bus_routes(file.bus_route, file.max_fare_minor)?;
        let distances_m = all_pairs_shortest(&station_names, &edges);
        Ok(FareTable {
            max_fare: Amount(file.max_fare_minor),
            daily_cap: Amount(file.daily_cap_minor),
            transfer_window_ms: file.transfer_window_ms,
            transfer_discount: Amount(file.transfer_discount_minor),
            incomplete_journey_after_ms: file.incomplete_journey_after_ms,
            same_station_exit_free_within_ms: file.same_station_exit_free_within_ms,
            metro_operator_id: file.metro_operator_id,
            bus_operator_id: file.bus_operator_id,
            bands,
            station_names,
            distances_m,
            routes,
        })
    }

    /// The fare of the shortest metro trip (the first band): an entry is allowed only if
    /// the rider's credit limit leaves room for it.
    pub fn shortest_trip_fare(&self) -> Amount {
        self.bands.first().map_or(self.max_fare, |(_, fare)| *fare)
    }

    /// Every station id, in order.
    pub fn stations(&self) -> impl Iterator<Item = (StationId, &str)> {
        self.station_names
            .iter()
            .map(|(id, name)| (*id, name.as_str()))
    }

    /// Every bus route id, in order.
    pub fn routes(&self) -> impl Iterator<Item = (RouteId, &str)> {
        self.routes
            .iter()
            .map(|(id, (name, _))| (*id, name.as_str()))
    }

    /// Whether a station exists.
    pub fn has_station(&self, station: StationId) -> bool {
        self.station_names.contains_key(&station)
    }

    /// The shortest distance along the network between two stations, in metres.
    pub fn distance_m(&self, from: StationId, to: StationId) -> Result<u32, FareError> {
        for station in [from, to] {
            if !self.has_station(station) {
                return Err(FareError::UnknownStation(station));
            }
        }
        self.distances_m
            .get(&(from, to))
            .copied()
            .ok_or(FareError::NotConnected(from, to))
    }

    /// The fare of a metro journey before caps and discounts: the band of its distance
    /// (beyond the last band, the maximum fare). Exiting where one entered follows the
    /// same-station rule: free within the window, the first band after it.
    pub fn metro_fare(
        &self,
        entry: StationId,
        exit: StationId,
        duration_ms: u64,
    ) -> Result<Amount, FareError> {
        let distance = self.distance_m(entry, exit)?;
        if entry == exit {
            return Ok(if duration_ms <= self.same_station_exit_free_within_ms {
                Amount::ZERO
            } else {
                self.bands[0].1
            });
        }
        Ok(self
            .bands
            .iter()
            .find(|(up_to, _)| distance <= *up_to)
            .map_or(self.max_fare, |(_, fare)| *fare))
    }

    /// A bus route's flat fare, before caps and discounts.
    pub fn bus_fare(&self, route: RouteId) -> Result<Amount, FareError> {
        self.routes
            .get(&route)
            .map(|(_, fare)| *fare)
            .ok_or(FareError::UnknownRoute(route))
    }

    /// What the rider is charged for a trip of `base` fare starting at `started_at_ms`:
    /// the transfer discount if the previous charged trip started within the window, then
    /// the daily cap (never more than what is left under it, never below zero).
    pub fn charge(&self, base: Amount, started_at_ms: u64, day: RiderDay) -> Amount {
        let transfer = day.previous_trip_started_at_ms.is_some_and(|previous| {
            started_at_ms.saturating_sub(previous) <= self.transfer_window_ms
        });
        let discounted = if transfer {
            Amount(base.0.saturating_sub(self.transfer_discount.0).max(0))
        } else {
            base
        };
        // `charged_today` comes from the caller: saturate rather than overflow on nonsense.
        let left_under_cap = Amount(self.daily_cap.0.saturating_sub(day.charged_today.0).max(0));
        discounted.min(left_under_cap)
    }
}

/// A broken rule of the fares file.
fn invalid<T>(message: String) -> Result<T, FareError> {
    Err(FareError::Invalid(message))
}

/// The maximum fare, the daily cap and the transfer discount are not negative.
fn check_amounts(file: &FaresFile) -> Result<(), FareError> {
    for (name, value) in [
        ("max_fare_minor", file.max_fare_minor),
        ("daily_cap_minor", file.daily_cap_minor),
        ("transfer_discount_minor", file.transfer_discount_minor),
    ] {
        if value < 0 {
            return invalid(format!("{name} must not be negative"));
        }
    }
    Ok(())
}

/// The distance bands: at least one, growing in distance, not falling in fare, and none
/// above the maximum fare.
fn fare_bands(entries: &[BandEntry], max_fare_minor: i64) -> Result<Vec<(u32, Amount)>, FareError> {
    if entries.is_empty() {
        return invalid("at least one fare_band is needed".into());
    }
    let mut bands: Vec<(u32, Amount)> = Vec::new();
    for band in entries {
        if band.fare_minor < 0 || band.fare_minor > max_fare_minor {
            return invalid(format!(
                "fare_band up to {} m: fare must be 0 to max_fare_minor",
                band.up_to_m
            ));
        }
        if bands
            .last()
            .is_some_and(|(up_to, fare)| band.up_to_m <= *up_to || Amount(band.fare_minor) < *fare)
        {
            return invalid("fare_band entries must grow in distance and not fall in fare".into());
        }
        bands.push((band.up_to_m, Amount(band.fare_minor)));
    }
    Ok(bands)
}

/// Station names by id, and the track between neighbouring stations of every line.
type MetroNetwork = (
    BTreeMap<StationId, String>,
    HashMap<StationId, Vec<(StationId, u32)>>,
);

/// The metro network of the lines: each line has two stations or more in growing
/// position, a station has one name on every line, and there are at most
/// [`STATIONS_MAX`] stations.
fn metro_network(lines: &[LineEntry]) -> Result<MetroNetwork, FareError> {
    let mut station_names = BTreeMap::new();
    let mut edges: HashMap<StationId, Vec<(StationId, u32)>> = HashMap::new();
    for line in lines {
        if line.station.len() < 2 {
            return invalid(format!("line {} needs at least two stations", line.name));
        }
        for pair in line.station.windows(2) {
            if pair[1].at_m <= pair[0].at_m {
                return invalid(format!("line {}: at_m must grow along the line", line.name));
            }
            let gap = pair[1].at_m - pair[0].at_m;
            edges.entry(pair[0].id).or_default().push((pair[1].id, gap));
            edges.entry(pair[1].id).or_default().push((pair[0].id, gap));
        }
        for station in &line.station {
            match station_names.get(&station.id) {
                Some(name) if name != &station.name => {
                    return invalid(format!("station {} has two names", station.id));
                }
                _ => {
                    station_names.insert(station.id, station.name.clone());
                }
            }
        }
    }
    if station_names.len() > STATIONS_MAX {
        return invalid(format!("more than {STATIONS_MAX} stations"));
    }
    Ok((station_names, edges))
}

/// The bus routes by id: each listed once, with a fare of at most the maximum fare.
fn bus_routes(
    entries: Vec<RouteEntry>,
    max_fare_minor: i64,
) -> Result<BTreeMap<RouteId, (String, Amount)>, FareError> {
    let mut routes = BTreeMap::new();
    for route in entries {
        if route.fare_minor < 0 || route.fare_minor > max_fare_minor {
            return invalid(format!(
                "bus_route {}: fare must be 0 to max_fare_minor",
                route.id
            ));
        }
        if routes
            .insert(route.id, (route.name, Amount(route.fare_minor)))
            .is_some()
        {
            return invalid(format!("bus_route {} is listed twice", route.id));
        }
    }
    Ok(routes)
}

/// Dijkstra from every station: the network is small (at most [`STATIONS_MAX`]).
fn all_pairs_shortest(
    stations: &BTreeMap<StationId, String>,
    edges: &HashMap<StationId, Vec<(StationId, u32)>>,
) -> HashMap<(StationId, StationId), u32> {
    let mut distances = HashMap::new();
    for &source in stations.keys() {
        let mut best: HashMap<StationId, u32> = HashMap::from([(source, 0)]);
        let mut queue = BinaryHeap::from([Reverse((0u32, source))]);
        while let Some(Reverse((distance, station))) = queue.pop() {
            if best.get(&station).is_some_and(|known| *known < distance) {
                continue;
            }
            for &(next, gap) in edges.get(&station).into_iter().flatten() {
                let through = distance.saturating_add(gap);
                if best.get(&next).is_none_or(|known| through < *known) {
                    best.insert(next, through);
                    queue.push(Reverse((through, next)));
                }
            }
        }
        distances.extend(
            best.into_iter()
                .map(|(target, distance)| ((source, target), distance)),
        );
    }
    distances
}

#[cfg(test)]
mod tests;
