//! What a rider's day must cost: the simulator's own pricing of a rider's accepted taps
//! in scan order, from the fares file's rules (`docs/fares.md`), written apart from the
//! engine's ledger so that it can catch the engine charging by arrival order. It uses
//! the fares file's lookups (a trip's distance fare, a route's fare, the cap and the
//! transfer discount), not the engine's journey state machine.

use std::collections::BTreeMap;

use fareway_gate::clock::UnixMillis;
use fareway_gate::fares::{FareTable, RiderDay, TapKind};
use fareway_gate::money::Amount;

/// One day in milliseconds: service days are UTC days.
const DAY_MS: u64 = 86_400_000;

/// Per service day (days since the epoch), what a rider's taps cost when priced in scan
/// order. `taps` may come in any order.
pub fn day_totals(fares: &FareTable, taps: &[(UnixMillis, TapKind)]) -> BTreeMap<u64, i64> {
    let mut sorted = taps.to_vec();
    sorted.sort_by_key(|(time, _)| *time);
    let mut rider = Rider::default();
    let mut totals = BTreeMap::new();
    for (time, kind) in sorted {
        let fare = rider.tap(fares, time, kind);
        *totals.entry(time.0 / DAY_MS).or_insert(0) += fare.0;
    }
    totals
}

/// A rider as the taps so far leave them: the journey entered and not exited, and the
/// day's charges and last trip.
#[derive(Debug, Default)]
struct Rider {
    entered: Option<(u32, UnixMillis)>,
    day: u64,
    charged_today: Amount,
    last_trip_started_at: Option<UnixMillis>,
}

impl Rider {
    /// The fare of one tap, and the rider after it.
    fn tap(&mut self, fares: &FareTable, time: UnixMillis, kind: TapKind) -> Amount {
        if time.0 / DAY_MS > self.day {
            self.day = time.0 / DAY_MS;
            self.charged_today = Amount::ZERO;
            self.last_trip_started_at = None;
        }
        let fare = match kind {
            // An entry with a journey still open: that journey was never exited, and
            // costs the maximum (capped, no transfer) now.
            TapKind::MetroEntry { station } => {
                let left_open = self.entered.replace((station, time));
                match left_open {
                    Some((_, entered_at)) => self.price(fares, fares.max_fare, entered_at, false),
                    None => Amount::ZERO,
                }
            }
            TapKind::MetroExit { station } => {
                let (base, started_at) = match self.entered.take() {
                    Some((from, entered_at)) => {
                        let ride_ms = time.0.saturating_sub(entered_at.0);
                        let base = if ride_ms > fares.incomplete_journey_after_ms {
                            fares.max_fare
                        } else {
                            fares
                                .metro_fare(from, station, ride_ms)
                                .unwrap_or(fares.max_fare)
                        };
                        (base, entered_at)
                    }
                    None => (fares.max_fare, time),
                };
                let fare = self.price(fares, base, started_at, true);
                self.last_trip_started_at = Some(started_at);
                fare
            }
            TapKind::Bus { route } => {
                let base = fares.bus_fare(route).unwrap_or(fares.max_fare);
                let fare = self.price(fares, base, time, true);
                self.last_trip_started_at = Some(time);
                fare
            }
        };
        self.charged_today = Amount(self.charged_today.0 + fare.0);
        fare
    }

    /// A base fare less the transfer discount (when it counts) and within the day's cap.
    fn price(
        &self,
        fares: &FareTable,
        base: Amount,
        started_at: UnixMillis,
        transfer_counts: bool,
    ) -> Amount {
        let previous = self
            .last_trip_started_at
            .filter(|_| transfer_counts)
            .map(|at| at.0);
        let day = RiderDay {
            charged_today: self.charged_today,
            previous_trip_started_at_ms: previous,
        };
        fares.charge(base, started_at.0, day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_800_000_000_000;
    const MINUTE_MS: u64 = 60_000;

    fn sample() -> FareTable {
        FareTable::from_toml(include_str!("../../docs/sample-city.toml")).unwrap()
    }

    fn at(minutes: u64) -> UnixMillis {
        UnixMillis(T + minutes * MINUTE_MS)
    }

    #[test]
    fn a_day_costs_the_same_whatever_the_order_the_taps_come_in() {
        let fares = sample();
        let entry = |station| TapKind::MetroEntry { station };
        let exit = |station| TapKind::MetroExit { station };
        let bus = TapKind::Bus { route: 501 };
        // Harbour to Airport (700), a bus 30 minutes after it started (200 - 100), a
        // journey never exited (900, charged at the next entry, capped: 1,500 - 800 =
        // 700 left), Harbour to Central (300, the cap leaves nothing).
        let taps = vec![
            (at(0), entry(101)),
            (at(40), exit(104)),
            (at(30), bus),
            (at(300), entry(101)),
            (at(500), entry(101)),
            (at(520), exit(100)),
        ];
        let day = T / DAY_MS;
        let totals = day_totals(&fares, &taps);
        assert_eq!(totals, BTreeMap::from([(day, 1_500)]));
        let mut reversed = taps.clone();
        reversed.reverse();
        assert_eq!(day_totals(&fares, &reversed), totals);
    }
}
