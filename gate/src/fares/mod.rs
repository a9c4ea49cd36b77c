//! Fares: the transit network and its fare rules, loaded from the operator's TOML file
//! (`docs/fares.md`, sample `docs/sample-city.toml`), and the pure functions that price a
//! trip. No storage and no clock: the caller passes in what the rider has already paid
//! today and when, so that pricing stays deterministic inside the ledger's state machine.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use serde::Deserialize;

use crate::clock::UnixMillis;
use crate::money::Amount;

mod calendar;
mod rider;

pub use calendar::{Calendar, Periods, date_of_day, day_of_date, periods_of_day};
pub use rider::{Mode, MonthlyTier, RiderTotals, Trip};

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
    daily_cap_minor: Option<i64>,
    transfer_window_ms: u64,
    transfer_discount_minor: i64,
    incomplete_journey_after_ms: u64,
    same_station_exit_free_within_ms: u64,
    #[serde(default)]
    same_station_exit: SameStationExit,
    #[serde(default)]
    entry_without_exit: EntryWithoutExit,
    #[serde(default)]
    exit_without_entry: ExitWithoutEntry,
    exit_without_entry_minor: Option<i64>,
    weekly_cap_minor: Option<i64>,
    bus_daily_cap_minor: Option<i64>,
    bus_weekly_cap_minor: Option<i64>,
    bus_hopper_window_ms: Option<u64>,
    #[serde(default)]
    monthly_tiers_metro_only: bool,
    #[serde(default)]
    monthly_tier: Vec<TierEntry>,
    service_day: Option<calendar::ServiceDayEntry>,
    #[serde(default)]
    peak_window: Vec<calendar::PeakWindowEntry>,
    #[serde(default)]
    concession: Vec<ConcessionEntry>,
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
    peak_fare_minor: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConcessionEntry {
    name: String,
    payable_percent: i64,
}

/// The concession bits of a rider code's credential flags (`docs/qr-token.md`): the
/// rider's issuer sets them, the fares file says what each is worth.
pub const CONCESSIONS: [(&str, u8); 3] = [("student", 0x01), ("senior", 0x02), ("disabled", 0x04)];

/// The flag bits that name concessions; the others stay provider-defined.
pub const CONCESSION_BITS: u8 = 0x07;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierEntry {
    after_spent_minor: i64,
    payable_percent: i64,
}

/// Exiting at the station one entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SameStationExit {
    /// Free within `same_station_exit_free_within_ms` (the rider changed their mind),
    /// the first band's fare after it.
    #[default]
    FreeWithinWindow,
    /// Always free: a cancelled trip.
    AlwaysFree,
    /// Always the first band's fare.
    FirstBand,
}

/// What an entry never exited costs (an incomplete journey).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryWithoutExit {
    /// The network's `max_fare_minor`.
    #[default]
    MaxFare,
    /// The highest fare from the entry station (London's maximum journey fare).
    HighestFromEntry,
}

/// What an exit with no entry costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitWithoutEntry {
    /// The network's `max_fare_minor`.
    #[default]
    MaxFare,
    /// The highest fare to the exit station.
    HighestToExit,
    /// `exit_without_entry_minor`.
    Fixed,
    /// Nothing.
    Free,
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
    /// The most a rider pays in one service day, every mode.
    pub daily_cap: Option<Amount>,
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
    /// Exiting where one entered.
    pub same_station_exit: SameStationExit,
    /// What an entry never exited costs.
    pub entry_without_exit: EntryWithoutExit,
    /// What an exit with no entry costs.
    pub exit_without_entry: ExitWithoutEntry,
    /// The fixed charge of an exit with no entry, for [`ExitWithoutEntry::Fixed`].
    pub exit_without_entry_fare: Amount,
    /// The most a rider pays in one service week (Monday to Sunday), every mode.
    pub weekly_cap: Option<Amount>,
    /// The most a rider pays for bus rides in one service day.
    pub bus_daily_cap: Option<Amount>,
    /// The most a rider pays for bus rides in one service week.
    pub bus_weekly_cap: Option<Amount>,
    /// A bus ride within this long of the rider's last paid bus ride is free.
    pub bus_hopper_window_ms: Option<u64>,
    /// The monthly spending tiers, by growing threshold.
    pub monthly_tiers: Vec<MonthlyTier>,
    /// Whether the tiers count and discount metro trips only.
    pub monthly_tiers_metro_only: bool,
    /// Per concession bit, the share of the fare a rider with it pays, in percent.
    pub concessions: Vec<(u8, u8)>,
    /// Time zone, service-day start and peak windows.
    pub calendar: Calendar,
    /// Per band: up to this distance, the off-peak and the peak fare.
    bands: Vec<Band>,
    /// Per station: the highest off-peak and peak fare of a trip from (or to) it.
    highest_from: HashMap<StationId, (Amount, Amount)>,
    station_names: BTreeMap<StationId, String>,
    /// Per station, the first line listing it.
    station_lines: BTreeMap<StationId, String>,
    distances_m: HashMap<(StationId, StationId), u32>,
    routes: BTreeMap<RouteId, (String, Amount)>,
}

/// A distance band: trips up to `up_to_m` cost `fare`, or `peak_fare` when they start in
/// a peak window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Band {
    up_to_m: u32,
    fare: Amount,
    peak_fare: Amount,
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
        let exit_without_entry_fare = exit_without_entry_fare(&file)?;
        let bands = fare_bands(&file.fare_band, file.max_fare_minor)?;
        let (station_names, edges) = metro_network(&file.line)?;
        let routes = bus_routes(file.bus_route, file.max_fare_minor)?;
        let distances_m = all_pairs_shortest(&station_names, &edges);
        let calendar = Calendar::from_entries(file.service_day.as_ref(), &file.peak_window)?;
        let mut table = FareTable {
            max_fare: Amount(file.max_fare_minor),
            daily_cap: file.daily_cap_minor.map(Amount),
            transfer_window_ms: file.transfer_window_ms,
            transfer_discount: Amount(file.transfer_discount_minor),
            incomplete_journey_after_ms: file.incomplete_journey_after_ms,
            same_station_exit_free_within_ms: file.same_station_exit_free_within_ms,
            metro_operator_id: file.metro_operator_id,
            bus_operator_id: file.bus_operator_id,
            same_station_exit: file.same_station_exit,
            entry_without_exit: file.entry_without_exit,
            exit_without_entry: file.exit_without_entry,
            exit_without_entry_fare,
            weekly_cap: file.weekly_cap_minor.map(Amount),
            bus_daily_cap: file.bus_daily_cap_minor.map(Amount),
            bus_weekly_cap: file.bus_weekly_cap_minor.map(Amount),
            bus_hopper_window_ms: file.bus_hopper_window_ms,
            monthly_tiers: monthly_tiers(&file.monthly_tier)?,
            monthly_tiers_metro_only: file.monthly_tiers_metro_only,
            concessions: concessions(&file.concession)?,
            calendar,
            bands,
            highest_from: HashMap::new(),
            station_lines: first_lines(&file.line),
            station_names,
            distances_m,
            routes,
        };
        check_caps(&table)?;
        table.highest_from = table.highest_fares();
        Ok(table)
    }

    /// The service day, week and month of a moment.
    pub fn periods(&self, time: UnixMillis) -> Periods {
        self.calendar.periods(time)
    }

    /// When the service day of a moment began.
    pub fn day_start(&self, time: UnixMillis) -> UnixMillis {
        self.calendar.day_start(time)
    }

    /// The fare of the shortest metro trip (the first band): an entry is allowed only if
    /// the rider's credit limit leaves room for it.
    pub fn shortest_trip_fare(&self) -> Amount {
        self.bands
            .first()
            .map_or(self.max_fare, |band| band.fare.max(band.peak_fare))
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

    /// The name of the first line the fares file lists a station on.
    pub fn line_of(&self, station: StationId) -> Option<&str> {
        self.station_lines.get(&station).map(String::as_str)
    }

    /// A bus route's name.
    pub fn route_name(&self, route: RouteId) -> Option<&str> {
        self.routes.get(&route).map(|(name, _)| name.as_str())
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

    /// The fare of a metro journey starting at `started_at` before caps and discounts:
    /// the band of its distance, at its peak fare when it starts in a peak window (beyond
    /// the last band, the maximum fare). Exiting where one entered follows the
    /// same-station rule.
    pub fn metro_fare(
        &self,
        entry: StationId,
        exit: StationId,
        duration_ms: u64,
        started_at: UnixMillis,
    ) -> Result<Amount, FareError> {
        let distance = self.distance_m(entry, exit)?;
        let peak = self.calendar.is_peak(started_at);
        let first_band = self.band_fare(&self.bands[0], peak);
        if entry == exit {
            return Ok(match self.same_station_exit {
                SameStationExit::AlwaysFree => Amount::ZERO,
                SameStationExit::FirstBand => first_band,
                SameStationExit::FreeWithinWindow
                    if duration_ms <= self.same_station_exit_free_within_ms =>
                {
                    Amount::ZERO
                }
                SameStationExit::FreeWithinWindow => first_band,
            });
        }
        Ok(self.distance_fare(distance, peak))
    }

    /// What an entry at `station` at `entered_at`, never exited, costs.
    pub fn entry_without_exit_fare(&self, station: StationId, entered_at: UnixMillis) -> Amount {
        match self.entry_without_exit {
            EntryWithoutExit::MaxFare => self.max_fare,
            EntryWithoutExit::HighestFromEntry => self.highest_fare(station, entered_at),
        }
    }

    /// What an exit at `station` at `time` with no entry costs.
    pub fn exit_without_entry_fare(&self, station: StationId, time: UnixMillis) -> Amount {
        match self.exit_without_entry {
            ExitWithoutEntry::MaxFare => self.max_fare,
            ExitWithoutEntry::HighestToExit => self.highest_fare(station, time),
            ExitWithoutEntry::Fixed => self.exit_without_entry_fare,
            ExitWithoutEntry::Free => Amount::ZERO,
        }
    }

    /// The highest fare of a trip from (or, as distances are the same both ways, to)
    /// a station starting at `time`; the maximum fare for a station the file does not
    /// know.
    fn highest_fare(&self, station: StationId, time: UnixMillis) -> Amount {
        let peak = self.calendar.is_peak(time);
        self.highest_from
            .get(&station)
            .map_or(
                self.max_fare,
                |(off_peak, at_peak)| {
                    if peak { *at_peak } else { *off_peak }
                },
            )
    }

    /// Per station, the highest off-peak and peak fare of a trip to any other station.
    fn highest_fares(&self) -> HashMap<StationId, (Amount, Amount)> {
        let mut highest: HashMap<StationId, (Amount, Amount)> = HashMap::new();
        for (&(from, _), &distance) in &self.distances_m {
            let entry = highest.entry(from).or_default();
            entry.0 = entry.0.max(self.distance_fare(distance, false));
            entry.1 = entry.1.max(self.distance_fare(distance, true));
        }
        highest
    }

    /// The fare of a distance: its band's, or the maximum beyond the last band.
    fn distance_fare(&self, distance_m: u32, peak: bool) -> Amount {
        self.bands
            .iter()
            .find(|band| distance_m <= band.up_to_m)
            .map_or(self.max_fare, |band| self.band_fare(band, peak))
    }

    /// A band's fare, at peak or not.
    fn band_fare(&self, band: &Band, peak: bool) -> Amount {
        if peak { band.peak_fare } else { band.fare }
    }

    /// A bus route's flat fare, before caps and discounts.
    pub fn bus_fare(&self, route: RouteId) -> Result<Amount, FareError> {
        self.routes
            .get(&route)
            .map(|(_, fare)| *fare)
            .ok_or(FareError::UnknownRoute(route))
    }
}

/// A broken rule of the fares file.
fn invalid<T>(message: String) -> Result<T, FareError> {
    Err(FareError::Invalid(message))
}

/// No amount of the file is negative.
fn check_amounts(file: &FaresFile) -> Result<(), FareError> {
    let optional = [
        ("daily_cap_minor", file.daily_cap_minor),
        ("weekly_cap_minor", file.weekly_cap_minor),
        ("bus_daily_cap_minor", file.bus_daily_cap_minor),
        ("bus_weekly_cap_minor", file.bus_weekly_cap_minor),
        ("exit_without_entry_minor", file.exit_without_entry_minor),
    ];
    let required = [
        ("max_fare_minor", file.max_fare_minor),
        ("transfer_discount_minor", file.transfer_discount_minor),
    ];
    for (name, value) in required.into_iter().chain(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?))),
    ) {
        if value < 0 {
            return invalid(format!("{name} must not be negative"));
        }
    }
    if file.bus_hopper_window_ms == Some(0) {
        return invalid(
            "bus_hopper_window_ms must be more than 0 (leave it out for no hopper)".into(),
        );
    }
    Ok(())
}

/// The fixed charge of an exit with no entry: given exactly when the rule is `fixed`,
/// and at most the maximum fare.
fn exit_without_entry_fare(file: &FaresFile) -> Result<Amount, FareError> {
    match (file.exit_without_entry, file.exit_without_entry_minor) {
        (ExitWithoutEntry::Fixed, Some(amount)) if amount <= file.max_fare_minor => {
            Ok(Amount(amount))
        }
        (ExitWithoutEntry::Fixed, Some(_)) => {
            invalid("exit_without_entry_minor must be at most max_fare_minor".into())
        }
        (ExitWithoutEntry::Fixed, None) => {
            invalid("exit_without_entry = \"fixed\" needs exit_without_entry_minor".into())
        }
        (_, Some(_)) => invalid(
            "exit_without_entry_minor is only read with exit_without_entry = \"fixed\"".into(),
        ),
        (_, None) => Ok(Amount::ZERO),
    }
}

/// No cap is below a single fare it caps (a trip could then cost more than the cap
/// allows in its whole period), and a week's cap is not below a day's.
fn check_caps(table: &FareTable) -> Result<(), FareError> {
    let highest_bus_fare = table.routes.values().map(|(_, fare)| *fare).max();
    let bus_day = table.bus_daily_cap.or(highest_bus_fare);
    let checks = [
        ("daily_cap_minor", table.daily_cap, Some(table.max_fare)),
        (
            "weekly_cap_minor",
            table.weekly_cap,
            table.daily_cap.or(Some(table.max_fare)),
        ),
        ("bus_daily_cap_minor", table.bus_daily_cap, highest_bus_fare),
        ("bus_weekly_cap_minor", table.bus_weekly_cap, bus_day),
    ];
    for (name, cap, floor) in checks {
        if let (Some(cap), Some(floor)) = (cap, floor)
            && cap < floor
        {
            return invalid(format!(
                "{name} ({}) is below a single fare or a shorter cap it covers ({})",
                cap.0, floor.0
            ));
        }
    }
    Ok(())
}

/// The concessions: each a known name, given once, with a share of 0 to 100 percent.
fn concessions(entries: &[ConcessionEntry]) -> Result<Vec<(u8, u8)>, FareError> {
    let mut concessions: Vec<(u8, u8)> = Vec::new();
    for entry in entries {
        let Some((_, bit)) = CONCESSIONS.iter().find(|(name, _)| *name == entry.name) else {
            return invalid(format!(
                "concession {:?} is not one of student, senior, disabled",
                entry.name
            ));
        };
        let Some(percent) = percent(entry.payable_percent) else {
            return invalid(format!(
                "concession {}: payable_percent must be 0 to 100",
                entry.name
            ));
        };
        if concessions.iter().any(|(known, _)| known == bit) {
            return invalid(format!("concession {} is listed twice", entry.name));
        }
        concessions.push((*bit, percent));
    }
    Ok(concessions)
}

/// A share in percent, 0 to 100.
fn percent(value: i64) -> Option<u8> {
    u8::try_from(value).ok().filter(|percent| *percent <= 100)
}

/// The monthly tiers: thresholds not negative and growing, and each a share of the fare
/// from 0 to 100 percent.
fn monthly_tiers(entries: &[TierEntry]) -> Result<Vec<MonthlyTier>, FareError> {
    let mut tiers: Vec<MonthlyTier> = Vec::new();
    for entry in entries {
        let Some(payable_percent) = percent(entry.payable_percent) else {
            return invalid(format!(
                "monthly_tier after {}: payable_percent must be 0 to 100",
                entry.after_spent_minor
            ));
        };
        if entry.after_spent_minor < 0 {
            return invalid("monthly_tier: after_spent_minor must not be negative".into());
        }
        let after_spent = Amount(entry.after_spent_minor);
        if tiers
            .last()
            .is_some_and(|last| after_spent <= last.after_spent)
        {
            return invalid("monthly_tier entries must grow in after_spent_minor".into());
        }
        tiers.push(MonthlyTier {
            after_spent,
            payable_percent,
        });
    }
    Ok(tiers)
}

/// The distance bands: at least one, growing in distance, not falling in fare (off-peak
/// or peak), and none above the maximum fare.
fn fare_bands(entries: &[BandEntry], max_fare_minor: i64) -> Result<Vec<Band>, FareError> {
    if entries.is_empty() {
        return invalid("at least one fare_band is needed".into());
    }
    let mut bands: Vec<Band> = Vec::new();
    for entry in entries {
        let peak_fare_minor = entry.peak_fare_minor.unwrap_or(entry.fare_minor);
        for fare in [entry.fare_minor, peak_fare_minor] {
            if fare < 0 || fare > max_fare_minor {
                return invalid(format!(
                    "fare_band up to {} m: fare must be 0 to max_fare_minor",
                    entry.up_to_m
                ));
            }
        }
        let band = Band {
            up_to_m: entry.up_to_m,
            fare: Amount(entry.fare_minor),
            peak_fare: Amount(peak_fare_minor),
        };
        if bands.last().is_some_and(|last| {
            band.up_to_m <= last.up_to_m || band.fare < last.fare || band.peak_fare < last.peak_fare
        }) {
            return invalid("fare_band entries must grow in distance and not fall in fare".into());
        }
        bands.push(band);
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

/// Per station, the name of the first line listing it.
fn first_lines(lines: &[LineEntry]) -> BTreeMap<StationId, String> {
    let mut first = BTreeMap::new();
    for line in lines {
        for station in &line.station {
            first.entry(station.id).or_insert_with(|| line.name.clone());
        }
    }
    first
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
