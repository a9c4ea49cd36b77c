//! A rider's travel, priced one step at a time. Every accepted tap and journey close is a
//! [`Step`] over the rider's [`Travel`] state; [`price`] prices one step. A tap in scan
//! order takes one step from the stored state. A tap that arrives late (its scan time is
//! before the rider's latest step: a gate that was offline) makes the writer walk again
//! every step of the rider from the start of the tap's service day ([`walk`]), so that
//! what a rider pays never depends on the order in which taps arrive
//! (`docs/offline.md`, "Re-pricing the day"). Pure: no storage, no clock.

use crate::clock::UnixMillis;
use crate::fares::{FareTable, RiderDay};
use crate::money::Amount;

use super::model::{Journey, OpenJourney, Refusal, TapKind, Travel};

/// One day in milliseconds: service days are UTC days.
pub const DAY_MS: u64 = 86_400_000;

/// The service day of a time: days since the Unix epoch, UTC.
pub fn service_day(time: UnixMillis) -> u32 {
    u32::try_from(time.0 / DAY_MS).unwrap_or(u32::MAX)
}

/// What a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A tap at a gate or bus reader.
    Tap(TapKind),
    /// The sweeper's close of the journey with this id (entered, never exited).
    Close {
        /// The journey (its entry's sequence).
        journey_id: u64,
    },
}

/// One accepted tap or journey close of a rider, as the rider's history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The scan time (for a close, the time the sweeper gave it).
    pub time: UnixMillis,
    /// The transaction's sequence: orders steps of the same time, and names a journey an
    /// entry opens.
    pub sequence: u64,
    /// What it was.
    pub kind: StepKind,
}

/// A step as the rider's history stores it (`rider_steps`): what the rider paid for it
/// so far (its fare, plus any corrections), and the journey left open after it, so that
/// a re-pricing can start at a day's start without walking the days before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedStep {
    /// The step.
    pub step: Step,
    /// The operator that earned its fare.
    pub operator_id: u16,
    /// What the rider paid for it, net of corrections.
    pub charged: Amount,
    /// The journey open after it.
    pub open_after: Option<OpenJourney>,
}

/// What a step costs, and what it does to the rider's journeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priced {
    /// The fare (zero for an entry that only opens a journey, or a capped trip).
    pub fare: Amount,
    /// The operator that earns it.
    pub operator_id: u16,
    /// Whether anything is charged at all: false for an entry that only opens a journey
    /// and for a close of a journey that is no longer open (which then costs nothing).
    pub charges: bool,
    /// The journey the step belongs to.
    pub journey: Option<Journey>,
}

/// Prices `step` after the rider's `travel`, and moves `travel` past it. A refusal (a
/// station or route the fares file does not know, a total out of range) leaves `travel`
/// as it was.
pub fn price(fares: &FareTable, travel: &mut Travel, step: &Step) -> Result<Priced, Refusal> {
    let mut next = *travel;
    let counts = next.start_day(step.time);
    let totals = if counts {
        RiderDay {
            charged_today: next.charged_today,
            previous_trip_started_at_ms: next.last_trip_started_at.map(|at| at.0),
        }
    } else {
        RiderDay::default()
    };
    let priced = match step.kind {
        StepKind::Tap(TapKind::MetroEntry { station }) => {
            enter(fares, &mut next, step, station, totals)?
        }
        StepKind::Tap(TapKind::MetroExit { station }) => {
            exit(fares, &mut next, step, station, totals)?
        }
        StepKind::Tap(TapKind::Bus { route }) => ride_bus(fares, &mut next, step, route, totals)?,
        StepKind::Close { journey_id } => close(fares, &mut next, journey_id, totals),
    };
    if counts {
        next.charged_today = next
            .charged_today
            .checked_add(priced.fare)
            .ok_or(Refusal::BalanceOverflow)?;
    }
    next.latest_step_at = next.latest_step_at.max(step.time);
    *travel = next;
    Ok(priced)
}

/// One step walked: its pricing (or why it does not price: a step that no longer
/// prices, say at a station since removed from the fares file, leaves the state alone),
/// and the journey open after it.
pub type Walked = (Result<Priced, Refusal>, Option<OpenJourney>);

/// Prices `steps` (in scan order) after `start`: each step walked, and the state after
/// the last.
pub fn walk(fares: &FareTable, start: Travel, steps: &[Step]) -> (Vec<Walked>, Travel) {
    let mut travel = start;
    let walked = steps
        .iter()
        .map(|step| {
            let priced = price(fares, &mut travel, step);
            (priced, travel.open_journey)
        })
        .collect();
    (walked, travel)
}

impl Travel {
    /// Starts the service day of `time` when it is later than the stored one (the day's
    /// totals afresh). Returns whether a step at `time` counts towards the stored day's
    /// totals: a step from an earlier day (only when a day's steps are not walked in
    /// order) is priced with no totals and leaves them alone.
    fn start_day(&mut self, time: UnixMillis) -> bool {
        let day = service_day(time);
        if day > self.day {
            self.day = day;
            self.charged_today = Amount::ZERO;
            self.last_trip_started_at = None;
        }
        day == self.day
    }
}

/// A tap-in at a metro station: opens a journey, and charges a journey left open as
/// incomplete (the maximum fare; the daily cap applies, a transfer discount does not).
fn enter(
    fares: &FareTable,
    travel: &mut Travel,
    step: &Step,
    station: u32,
    totals: RiderDay,
) -> Result<Priced, Refusal> {
    if !fares.has_station(station) {
        return Err(Refusal::UnknownStation);
    }
    let closed = travel.open_journey;
    let fare = match closed {
        Some(open) => fares.charge(fares.max_fare, open.entered_at.0, without_transfer(totals)),
        None => Amount::ZERO,
    };
    let opened = OpenJourney {
        id: step.sequence,
        station,
        entered_at: step.time,
    };
    travel.open_journey = Some(opened);
    Ok(Priced {
        fare,
        operator_id: fares.metro_operator_id,
        charges: closed.is_some(),
        journey: Some(journey_of(opened)),
    })
}

/// A tap-out at a metro station: closes the open journey and prices it; with no open
/// journey, an incomplete journey at the maximum fare.
fn exit(
    fares: &FareTable,
    travel: &mut Travel,
    step: &Step,
    station: u32,
    totals: RiderDay,
) -> Result<Priced, Refusal> {
    if !fares.has_station(station) {
        return Err(Refusal::UnknownStation);
    }
    let closed = travel.open_journey.take();
    let (base, started_at, journey) = match closed {
        Some(open) => {
            let duration_ms = step.time.0.saturating_sub(open.entered_at.0);
            let base = if duration_ms > fares.incomplete_journey_after_ms {
                fares.max_fare
            } else {
                fares
                    .metro_fare(open.station, station, duration_ms)
                    .unwrap_or(fares.max_fare)
            };
            (base, open.entered_at, journey_of(open))
        }
        None => {
            let journey = Journey {
                id: step.sequence,
                entry_station: None,
                entered_at: None,
            };
            (fares.max_fare, step.time, journey)
        }
    };
    travel.last_trip_started_at = Some(started_at);
    Ok(Priced {
        fare: fares.charge(base, started_at.0, totals),
        operator_id: fares.metro_operator_id,
        charges: true,
        journey: Some(journey),
    })
}

/// A bus ride: one tap, the route's flat fare.
fn ride_bus(
    fares: &FareTable,
    travel: &mut Travel,
    step: &Step,
    route: u32,
    totals: RiderDay,
) -> Result<Priced, Refusal> {
    let base = fares.bus_fare(route).map_err(|_| Refusal::UnknownRoute)?;
    travel.last_trip_started_at = Some(step.time);
    Ok(Priced {
        fare: fares.charge(base, step.time.0, totals),
        operator_id: fares.bus_operator_id,
        charges: true,
        journey: Some(Journey {
            id: step.sequence,
            entry_station: None,
            entered_at: None,
        }),
    })
}

/// The sweeper's close of a journey entered and never exited: the maximum fare, when the
/// journey is still the open one. Walked again after a late exit closed it, it costs
/// nothing.
fn close(fares: &FareTable, travel: &mut Travel, journey_id: u64, totals: RiderDay) -> Priced {
    let nothing = Priced {
        fare: Amount::ZERO,
        operator_id: fares.metro_operator_id,
        charges: false,
        journey: None,
    };
    let Some(open) = travel.open_journey.filter(|open| open.id == journey_id) else {
        return nothing;
    };
    travel.open_journey = None;
    Priced {
        fare: fares.charge(fares.max_fare, open.entered_at.0, without_transfer(totals)),
        charges: true,
        journey: Some(journey_of(open)),
        ..nothing
    }
}

/// The journey an open journey is, as a record names it.
fn journey_of(open: OpenJourney) -> Journey {
    Journey {
        id: open.id,
        entry_station: Some(open.station),
        entered_at: Some(open.entered_at),
    }
}

/// For an incomplete journey's maximum fare: the daily cap applies, a transfer discount
/// does not.
fn without_transfer(totals: RiderDay) -> RiderDay {
    RiderDay {
        previous_trip_started_at_ms: None,
        ..totals
    }
}
