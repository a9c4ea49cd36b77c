//! What a rider has paid in the periods the fare rules count ([`RiderTotals`]), and the
//! rules that turn a trip's base fare into what the rider is charged
//! ([`FareTable::charge`]): the bus hopper, the transfer discount, the monthly spending
//! tiers, then the caps. Pure: the engine's ledger and the simulator's own pricing keep
//! a rider's totals the same way, with no clock and no storage.

use crate::clock::UnixMillis;
use crate::money::Amount;

use super::calendar::Periods;
use super::{FareTable, StationId};

/// How a trip was made: caps and tiers can count one mode alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A metro journey (entry and exit, or an incomplete one).
    Metro,
    /// A bus ride.
    Bus,
}

/// A trip to charge: its fare before the rider's totals count, and what decides the
/// discounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trip {
    /// The fare before any discount or cap (a band's, a route's, or an incomplete
    /// journey's).
    pub base: Amount,
    /// Metro or bus.
    pub mode: Mode,
    /// When the trip started (the entry, or the bus tap).
    pub started_at: UnixMillis,
    /// An incomplete journey (entered and never exited): no transfer discount, and it is
    /// not a trip a later one can be a transfer from.
    pub incomplete: bool,
    /// The rider's concession bits ([`super::CONCESSION_BITS`] of the code's flags).
    pub concessions: u8,
}

impl Trip {
    /// A complete metro journey of `base` fare that started at `started_at`, by a rider
    /// with these concession bits.
    pub fn metro(base: Amount, started_at: UnixMillis, concessions: u8) -> Trip {
        Trip {
            base,
            mode: Mode::Metro,
            started_at,
            incomplete: false,
            concessions,
        }
    }

    /// A bus ride of `base` fare at `started_at`.
    pub fn bus(base: Amount, started_at: UnixMillis, concessions: u8) -> Trip {
        Trip {
            mode: Mode::Bus,
            ..Trip::metro(base, started_at, concessions)
        }
    }
}

/// What a rider has paid in the current service day, week and month, and when their
/// last trip and bus hopper started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RiderTotals {
    /// The service day, week and month the totals below belong to.
    pub periods: Periods,
    /// Charged on that day, every mode.
    pub charged_today: Amount,
    /// Charged on that day for bus rides.
    pub bus_today: Amount,
    /// Charged in that week, every mode.
    pub charged_week: Amount,
    /// Charged in that week for bus rides.
    pub bus_week: Amount,
    /// Spent in that month on the modes the monthly tiers count.
    pub tier_spend_month: Amount,
    /// When the rider's last complete trip that day started (for the transfer discount).
    pub last_trip_started_at: Option<UnixMillis>,
    /// When the rider's current bus hopper started that day: their last bus ride that
    /// was not itself a free hop.
    pub hopper_started_at: Option<UnixMillis>,
}

impl RiderTotals {
    /// Moves the totals to `periods` when they are later: a new day, week or month
    /// starts its totals afresh. Returns whether a trip in `periods` counts towards the
    /// totals: not so for one from an earlier day (only when a day's steps are not
    /// walked in order), which is then priced with no totals and leaves them alone.
    pub fn start(&mut self, periods: Periods) -> bool {
        if periods.day > self.periods.day {
            self.charged_today = Amount::ZERO;
            self.bus_today = Amount::ZERO;
            self.last_trip_started_at = None;
            self.hopper_started_at = None;
            if periods.week > self.periods.week {
                self.charged_week = Amount::ZERO;
                self.bus_week = Amount::ZERO;
            }
            if periods.month > self.periods.month {
                self.tier_spend_month = Amount::ZERO;
            }
            self.periods = periods;
        }
        periods.day == self.periods.day
    }
}

/// A monthly spending tier: once the month's spend reaches `after_spent`, trips cost
/// `payable_percent` of their fare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthlyTier {
    /// The month's spend from which the tier applies.
    pub after_spent: Amount,
    /// The share of the fare paid, in percent (0 to 100).
    pub payable_percent: u8,
}

impl FareTable {
    /// A journey entered at `station` at `entered_at` and never exited, as a trip: the
    /// file's incomplete-journey fare, no transfer discount.
    pub fn unfinished_journey(
        &self,
        station: StationId,
        entered_at: UnixMillis,
        concessions: u8,
    ) -> Trip {
        Trip {
            incomplete: true,
            ..Trip::metro(
                self.entry_without_exit_fare(station, entered_at),
                entered_at,
                concessions,
            )
        }
    }

    /// Moves `totals` to the periods of `time` (a step's scan time) and charges `trip`
    /// there, if the step charges one: with the totals, or, for a step of an earlier day
    /// than them (only when a day's steps are not walked in order), with none and leaving
    /// them alone. `None` when a total would overflow.
    pub fn charge_at(
        &self,
        time: UnixMillis,
        trip: Option<&Trip>,
        totals: &mut RiderTotals,
    ) -> Option<Amount> {
        let counts = totals.start(self.periods(time));
        match trip {
            Some(trip) if counts => self.charge(trip, totals),
            Some(trip) => self.charge(trip, &mut RiderTotals::default()),
            None => Some(Amount::ZERO),
        }
    }

    /// What the rider is charged for `trip`, and their totals moved past it (the caller
    /// has already started the trip's periods with [`RiderTotals::start`]). In order: a
    /// bus ride within the hopper window of the rider's last paid bus ride is free; else
    /// a complete trip within the transfer window of the last one gets the transfer
    /// discount; then the monthly tier of the month's spend so far takes its share, and
    /// the rider's concession its share; then no cap is passed (day, week, and the bus
    /// caps for a bus ride). `None` when a total would overflow.
    pub fn charge(&self, trip: &Trip, totals: &mut RiderTotals) -> Option<Amount> {
        let hop = trip.mode == Mode::Bus && self.within_hopper(trip, totals);
        let mut fare = if hop { Amount::ZERO } else { trip.base };
        if !hop && !trip.incomplete && self.is_transfer(trip, totals) {
            fare = Amount(fare.0.saturating_sub(self.transfer_discount.0).max(0));
        }
        if self.tiers_count(trip.mode) {
            fare = tiered(fare, self.tier_of(totals.tier_spend_month));
        }
        fare = tiered(fare, self.concession_of(trip.concessions));
        fare = fare.min(self.left_under_caps(trip.mode, totals));
        self.record(trip, fare, hop, totals)?;
        Some(fare)
    }

    /// Whether the monthly tiers apply to (and count) trips of this mode.
    fn tiers_count(&self, mode: Mode) -> bool {
        !self.monthly_tiers.is_empty() && (mode == Mode::Metro || !self.monthly_tiers_metro_only)
    }

    /// The payable percent of the highest tier whose threshold the spend has reached.
    fn tier_of(&self, spent: Amount) -> u8 {
        self.monthly_tiers
            .iter()
            .rev()
            .find(|tier| spent >= tier.after_spent)
            .map_or(100, |tier| tier.payable_percent)
    }

    /// The payable percent of the most favourable concession among the rider's bits that
    /// the fares file lists (100 without one).
    fn concession_of(&self, bits: u8) -> u8 {
        self.concessions
            .iter()
            .filter(|(bit, _)| bits & bit != 0)
            .map(|(_, percent)| *percent)
            .min()
            .unwrap_or(100)
    }

    /// Whether a bus ride starts within the hopper window of the rider's hopper.
    fn within_hopper(&self, trip: &Trip, totals: &RiderTotals) -> bool {
        let (Some(window), Some(started)) = (self.bus_hopper_window_ms, totals.hopper_started_at)
        else {
            return false;
        };
        trip.started_at >= started && trip.started_at.0 - started.0 <= window
    }

    /// Whether a trip starts within the transfer window of the rider's last trip.
    fn is_transfer(&self, trip: &Trip, totals: &RiderTotals) -> bool {
        totals.last_trip_started_at.is_some_and(|previous| {
            trip.started_at.0.saturating_sub(previous.0) <= self.transfer_window_ms
        })
    }

    /// What is left under every cap that applies to the mode (never below zero).
    fn left_under_caps(&self, mode: Mode, totals: &RiderTotals) -> Amount {
        let left = |cap: Amount, used: Amount| Amount(cap.0.saturating_sub(used.0).max(0));
        let mut most = Amount(i64::MAX);
        let mut apply = |cap: Option<Amount>, used: Amount| {
            if let Some(cap) = cap {
                most = most.min(left(cap, used));
            }
        };
        apply(self.daily_cap, totals.charged_today);
        apply(self.weekly_cap, totals.charged_week);
        if mode == Mode::Bus {
            apply(self.bus_daily_cap, totals.bus_today);
            apply(self.bus_weekly_cap, totals.bus_week);
        }
        most
    }

    /// Adds a charged fare to the totals it counts in, and notes the trip's start for
    /// transfers and the hopper.
    fn record(&self, trip: &Trip, fare: Amount, hop: bool, totals: &mut RiderTotals) -> Option<()> {
        let add = |total: &mut Amount| -> Option<()> {
            *total = total.checked_add(fare)?;
            Some(())
        };
        add(&mut totals.charged_today)?;
        add(&mut totals.charged_week)?;
        if trip.mode == Mode::Bus {
            add(&mut totals.bus_today)?;
            add(&mut totals.bus_week)?;
            if !hop {
                totals.hopper_started_at = Some(trip.started_at);
            }
        }
        if self.tiers_count(trip.mode) {
            add(&mut totals.tier_spend_month)?;
        }
        if !trip.incomplete {
            totals.last_trip_started_at = Some(trip.started_at);
        }
        Some(())
    }
}

/// `percent` of a fare, rounded down to the minor unit (in the rider's favour).
fn tiered(fare: Amount, percent: u8) -> Amount {
    Amount(fare.0.saturating_mul(i64::from(percent)) / 100)
}
