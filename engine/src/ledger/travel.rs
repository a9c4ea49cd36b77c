//! A rider's travel, priced one step at a time. Every accepted tap and journey close is a
//! [`Step`] over the rider's [`Travel`] state; [`price`] prices one step. A tap in scan
//! order takes one step from the stored state. A tap that arrives late (its scan time is
//! before the rider's latest step: a gate that was offline) makes the writer walk again
//! every step of the rider from the start of the tap's service day ([`walk`]), so that
//! what a rider pays never depends on the order in which taps arrive
//! (`docs/offline.md`, "Re-pricing the day"). Pure: no storage, no clock.

use crate::clock::UnixMillis;
use crate::fares::{FareTable, RiderTotals, Trip};
use crate::money::Amount;

use super::model::{Journey, OpenJourney, Refusal, TapKind, Travel};

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
    /// The tap's concession bits (0 for a close: its journey's entry has them).
    pub concessions: u8,
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
    /// The rider's totals after it: a walk from the start of a later service day starts
    /// from the last step before it, with its week's and month's totals.
    pub totals_after: RiderTotals,
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
    let (trip, priced) = match step.kind {
        StepKind::Tap(TapKind::MetroEntry { station }) => enter(fares, &mut next, step, station)?,
        StepKind::Tap(TapKind::MetroExit { station }) => exit(fares, &mut next, step, station)?,
        StepKind::Tap(TapKind::Bus { route }) => ride_bus(fares, step, route)?,
        StepKind::Close { journey_id } => close(fares, &mut next, journey_id),
    };
    let fare = fares
        .charge_at(step.time, trip.as_ref(), &mut next.totals)
        .ok_or(Refusal::BalanceOverflow)?;
    next.latest_step_at = next.latest_step_at.max(step.time);
    *travel = next;
    Ok(Priced { fare, ..priced })
}

/// One step walked: its pricing (or why it does not price: a step that no longer
/// prices, say at a station since removed from the fares file, leaves the state alone),
/// and the rider's travel state after it.
pub type Walked = (Result<Priced, Refusal>, Travel);

/// Prices `steps` (in scan order) after `start`: each step walked, and the state after
/// the last.
pub fn walk(fares: &FareTable, start: Travel, steps: &[Step]) -> (Vec<Walked>, Travel) {
    let mut travel = start;
    let walked = steps
        .iter()
        .map(|step| {
            let priced = price(fares, &mut travel, step);
            (priced, travel)
        })
        .collect();
    (walked, travel)
}

/// A tap-in at a metro station: opens a journey, and charges a journey left open as
/// incomplete (the file's incomplete-journey fare; the caps apply, a transfer discount
/// does not).
fn enter(
    fares: &FareTable,
    travel: &mut Travel,
    step: &Step,
    station: u32,
) -> Result<(Option<Trip>, Priced), Refusal> {
    if !fares.has_station(station) {
        return Err(Refusal::UnknownStation);
    }
    let closed = travel.open_journey;
    let opened = OpenJourney {
        id: step.sequence,
        station,
        entered_at: step.time,
        concessions: step.concessions,
    };
    travel.open_journey = Some(opened);
    let priced = Priced {
        fare: Amount::ZERO,
        operator_id: fares.metro_operator_id,
        charges: closed.is_some(),
        journey: Some(journey_of(opened)),
    };
    Ok((closed.map(|open| unfinished(fares, open)), priced))
}

/// A tap-out at a metro station: closes the open journey and prices it; with no open
/// journey, the file's fare of an exit with no entry.
fn exit(
    fares: &FareTable,
    travel: &mut Travel,
    step: &Step,
    station: u32,
) -> Result<(Option<Trip>, Priced), Refusal> {
    if !fares.has_station(station) {
        return Err(Refusal::UnknownStation);
    }
    let (trip, journey) = match travel.open_journey.take() {
        Some(open) => {
            let duration_ms = step.time.0.saturating_sub(open.entered_at.0);
            let trip = if duration_ms > fares.incomplete_journey_after_ms {
                // Too long to be one journey: the entry's incomplete fare, as a trip.
                Trip {
                    incomplete: false,
                    ..unfinished(fares, open)
                }
            } else {
                let base = fares
                    .metro_fare(open.station, station, duration_ms, open.entered_at)
                    .unwrap_or(fares.max_fare);
                Trip::metro(base, open.entered_at, open.concessions)
            };
            (trip, journey_of(open))
        }
        None => {
            let base = fares.exit_without_entry_fare(station, step.time);
            let journey = Journey {
                id: step.sequence,
                entry_station: None,
                entered_at: None,
            };
            (Trip::metro(base, step.time, step.concessions), journey)
        }
    };
    let priced = Priced {
        fare: Amount::ZERO,
        operator_id: fares.metro_operator_id,
        charges: true,
        journey: Some(journey),
    };
    Ok((Some(trip), priced))
}

/// A bus ride: one tap, the route's flat fare.
fn ride_bus(fares: &FareTable, step: &Step, route: u32) -> Result<(Option<Trip>, Priced), Refusal> {
    let base = fares.bus_fare(route).map_err(|_| Refusal::UnknownRoute)?;
    let trip = Trip::bus(base, step.time, step.concessions);
    let priced = Priced {
        fare: Amount::ZERO,
        operator_id: fares.bus_operator_id,
        charges: true,
        journey: Some(Journey {
            id: step.sequence,
            entry_station: None,
            entered_at: None,
        }),
    };
    Ok((Some(trip), priced))
}

/// The sweeper's close of a journey entered and never exited: the incomplete-journey
/// fare, when the journey is still the open one. Walked again after a late exit closed
/// it, it costs nothing.
fn close(fares: &FareTable, travel: &mut Travel, journey_id: u64) -> (Option<Trip>, Priced) {
    let nothing = Priced {
        fare: Amount::ZERO,
        operator_id: fares.metro_operator_id,
        charges: false,
        journey: None,
    };
    let Some(open) = travel.open_journey.filter(|open| open.id == journey_id) else {
        return (None, nothing);
    };
    travel.open_journey = None;
    let priced = Priced {
        charges: true,
        journey: Some(journey_of(open)),
        ..nothing
    };
    (Some(unfinished(fares, open)), priced)
}

/// An open journey never exited, as a trip (the entry's concession).
fn unfinished(fares: &FareTable, open: OpenJourney) -> Trip {
    fares.unfinished_journey(open.station, open.entered_at, open.concessions)
}

/// The journey an open journey is, as a record names it.
fn journey_of(open: OpenJourney) -> Journey {
    Journey {
        id: open.id,
        entry_station: Some(open.station),
        entered_at: Some(open.entered_at),
    }
}
