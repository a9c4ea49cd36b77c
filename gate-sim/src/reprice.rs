//! What a rider's day must cost: the simulator's own pricing of a rider's accepted taps
//! in scan order, from the fares file's rules (`docs/fares.md`), written apart from the
//! engine's ledger so that it can catch the engine charging by arrival order. It keeps
//! the rider's journey itself and uses the fares file's lookups (a trip's distance fare,
//! a route's fare, the incomplete-journey fares) and its charging rules
//! (`FareTable::charge` over the rider's totals: caps, tiers, transfers, the hopper),
//! not the engine's journey state machine.

use std::collections::BTreeMap;

use fareway_gate::clock::UnixMillis;
use fareway_gate::fares::{FareTable, RiderTotals, TapKind, Trip};
use fareway_gate::money::Amount;

/// Per service day (the fares file's, days since the epoch), what a rider's taps cost
/// when priced in scan order. `taps` may come in any order.
pub fn day_totals(fares: &FareTable, taps: &[(UnixMillis, TapKind)]) -> BTreeMap<u64, i64> {
    let mut sorted = taps.to_vec();
    sorted.sort_by_key(|(time, _)| *time);
    let mut rider = Rider::default();
    let mut totals = BTreeMap::new();
    for (time, kind) in sorted {
        let fare = rider.tap(fares, time, kind);
        let day = fares.periods(time).day;
        *totals.entry(u64::from(day)).or_insert(0) += fare.0;
    }
    totals
}

/// A rider as the taps so far leave them: the journey entered and not exited, and what
/// they paid in the periods the rules count.
#[derive(Debug, Default)]
struct Rider {
    entered: Option<(u32, UnixMillis)>,
    totals: RiderTotals,
}

impl Rider {
    /// The fare of one tap, and the rider after it.
    fn tap(&mut self, fares: &FareTable, time: UnixMillis, kind: TapKind) -> Amount {
        // The simulator's riders hold codes without concession flags.
        let trip = match kind {
            // An entry with a journey still open: that journey was never exited, and
            // costs its incomplete fare now (no transfer discount).
            TapKind::MetroEntry { station } => {
                let left_open = self.entered.replace((station, time));
                left_open.map(|(from, entered_at)| fares.unfinished_journey(from, entered_at, 0))
            }
            TapKind::MetroExit { station } => Some(match self.entered.take() {
                Some((from, entered_at)) => {
                    let ride_ms = time.0.saturating_sub(entered_at.0);
                    let base = if ride_ms > fares.incomplete_journey_after_ms {
                        fares.entry_without_exit_fare(from, entered_at)
                    } else {
                        fares
                            .metro_fare(from, station, ride_ms, entered_at)
                            .unwrap_or(fares.max_fare)
                    };
                    Trip::metro(base, entered_at, 0)
                }
                None => Trip::metro(fares.exit_without_entry_fare(station, time), time, 0),
            }),
            TapKind::Bus { route } => Some(Trip::bus(
                fares.bus_fare(route).unwrap_or(fares.max_fare),
                time,
                0,
            )),
        };
        // As the ledger: a tap of an earlier day than the rider's totals (only on a night
        // the clocks change) is charged with no totals and leaves them alone.
        fares
            .charge_at(time, trip.as_ref(), &mut self.totals)
            .unwrap_or(Amount::ZERO)
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
        let day = T / 86_400_000;
        let totals = day_totals(&fares, &taps);
        assert_eq!(totals, BTreeMap::from([(day, 1_500)]));
        let mut reversed = taps.clone();
        reversed.reverse();
        assert_eq!(day_totals(&fares, &reversed), totals);
    }
}
