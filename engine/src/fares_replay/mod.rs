//! The fare-change replay (`fareway fares replay`, `docs/fares.md`): re-prices the
//! recorded riders' steps of a ledger (or of a cluster's shards, one replica each) under
//! another fares file, writing nothing, and
//! sums what they paid then against what they would pay now, per service day, per line
//! or route, per provider and per rider group, with the riders who would pay more or
//! less and the largest changes.
//!
//! It streams the `rider_steps` column family, which holds every rider's accepted taps
//! and journey closes in scan order, rider after rider, each with what the rider paid
//! for it net of fare corrections: one rider's steps are in memory at a time, plus the
//! sums (a few entries per day, line, provider and group) and the largest changes. Each
//! rider's steps are walked from their first kept one with the new file
//! (`ledger::travel::price`, the ledger's own pricing), so that caps, tiers and
//! transfers see what came before; only the steps in the period are counted.

mod report;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::Serialize;

pub use report::{change_percent, groupings, render_table};

use crate::fares::{CONCESSIONS, FareTable, date_of_day};
use crate::ledger::codec;
use crate::ledger::model::{AccountRef, OpenJourney, TapKind, Travel};
use crate::ledger::store::CF_RIDER_STEPS;
use crate::ledger::travel::{self, RecordedStep, StepKind};
use crate::ledger::{LedgerError, LedgerView};

/// How many steps between two progress reports.
pub const PROGRESS_EVERY_STEPS: u64 = 100_000;

/// What to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayPeriod {
    /// The first service day counted (days since 1970-01-01), if any.
    pub from_day: Option<u32>,
    /// The last service day counted, if any.
    pub to_day: Option<u32>,
    /// How many of the largest changes per rider to keep.
    pub largest: usize,
}

/// What a group of steps cost then (as charged, net of corrections) and now (under the
/// new fares file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Revenue {
    /// Accepted taps and journey closes.
    pub steps: u64,
    /// What the riders paid for them, in minor units.
    pub then_minor: i64,
    /// What they would pay under the new fares file.
    pub now_minor: i64,
}

impl Revenue {
    fn add(&mut self, then: i64, now: i64) {
        self.steps += 1;
        self.then_minor = self.then_minor.saturating_add(then);
        self.now_minor = self.now_minor.saturating_add(now);
    }
}

/// One rider's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RiderChange {
    /// The rider's account.
    pub account_id: u64,
    /// What they paid in the period.
    pub then_minor: i64,
    /// What they would pay.
    pub now_minor: i64,
}

impl RiderChange {
    /// How much more (or, negative, less) the rider would pay.
    pub fn change_minor(&self) -> i64 {
        self.now_minor.saturating_sub(self.then_minor)
    }
}

/// How the riders fare.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Riders {
    /// Riders with a step in the period.
    pub riders: u64,
    /// Who would pay more.
    pub pay_more: u64,
    /// Who would pay less.
    pub pay_less: u64,
    /// Who would pay the same.
    pub unchanged: u64,
    /// The largest changes, largest first.
    pub largest_changes: Vec<RiderChange>,
}

/// The replay's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Replay {
    /// The first and last service day with a step counted, as dates.
    pub first_day: Option<String>,
    /// The last.
    pub last_day: Option<String>,
    /// Every step counted.
    pub total: Revenue,
    /// Per service day (`YYYY-MM-DD`, the new fares file's days).
    pub by_day: BTreeMap<String, Revenue>,
    /// Per metro line (of the journey's entry station) or bus route.
    pub by_line_or_route: BTreeMap<String, Revenue>,
    /// Per payment provider of the rider.
    pub by_provider: BTreeMap<u16, Revenue>,
    /// Per rider group: the concession of the step (`standard` without one).
    pub by_rider_group: BTreeMap<String, Revenue>,
    /// How the riders fare.
    pub riders: Riders,
    /// Steps the new fares file cannot price (a station or route it no longer has):
    /// counted at what they cost then.
    pub unpriced_steps: u64,
    /// Steps read, in the period or not.
    pub steps_read: u64,
}

/// Replays every rider's recorded steps under `fares`, counting those in `period`.
/// `progress` is called every [`PROGRESS_EVERY_STEPS`] steps read.
pub fn replay(
    view: &LedgerView,
    fares: &FareTable,
    period: ReplayPeriod,
    progress: impl FnMut(u64),
) -> Result<Replay, LedgerError> {
    replay_shards(&[view], fares, period, progress)
}

/// Replays the riders of several ledgers as one: a cluster's shards, one replica of each
/// (a rider's steps are all on their shard, so no rider is counted twice).
pub fn replay_shards(
    views: &[&LedgerView],
    fares: &FareTable,
    period: ReplayPeriod,
    mut progress: impl FnMut(u64),
) -> Result<Replay, LedgerError> {
    let mut sums = Sums::new(period);
    for view in views {
        sums.add_ledger(view, fares, &mut progress)?;
    }
    Ok(sums.finish())
}

impl Sums {
    /// Reads one ledger's steps, rider after rider.
    fn add_ledger(
        &mut self,
        view: &LedgerView,
        fares: &FareTable,
        progress: &mut impl FnMut(u64),
    ) -> Result<(), LedgerError> {
        let mut rider: Option<(u64, Vec<RecordedStep>)> = None;
        let steps = view.iterator_cf(view.cf(CF_RIDER_STEPS)?, rocksdb::IteratorMode::Start);
        for entry in steps {
            let (key, value) = entry?;
            let (account_id, recorded) = codec::decode_rider_step(&key, &value)?;
            self.replay.steps_read += 1;
            if self.replay.steps_read.is_multiple_of(PROGRESS_EVERY_STEPS) {
                progress(self.replay.steps_read);
            }
            match &mut rider {
                Some((current, steps)) if *current == account_id => steps.push(recorded),
                _ => {
                    if let Some((done, steps)) = rider.replace((account_id, vec![recorded])) {
                        self.add_rider(view, fares, done, &steps)?;
                    }
                }
            }
        }
        if let Some((done, steps)) = rider {
            self.add_rider(view, fares, done, &steps)?;
        }
        Ok(())
    }
}

/// The sums as the riders come.
struct Sums {
    period: ReplayPeriod,
    replay: Replay,
    days: BTreeMap<u32, Revenue>,
    /// The largest changes so far, smallest first (a bounded min-heap).
    largest: BinaryHeap<Reverse<(u64, RiderChange)>>,
}

impl Sums {
    fn new(period: ReplayPeriod) -> Sums {
        Sums {
            period,
            replay: Replay::default(),
            days: BTreeMap::new(),
            largest: BinaryHeap::new(),
        }
    }

    /// Walks one rider's steps under the new fares and counts those in the period.
    fn add_rider(
        &mut self,
        view: &LedgerView,
        fares: &FareTable,
        account_id: u64,
        steps: &[RecordedStep],
    ) -> Result<(), LedgerError> {
        let provider = view
            .account(AccountRef::Rider(account_id))?
            .map_or(0, |account| account.provider_id);
        let mut travel = start_before(view, steps.first())?;
        let mut change = RiderChange {
            account_id,
            then_minor: 0,
            now_minor: 0,
        };
        let mut counted = false;
        for recorded in steps {
            let open_before = travel.open_journey;
            let priced = travel::price(fares, &mut travel, &recorded.step);
            let day = fares.periods(recorded.step.time).day;
            if !self.in_period(day) {
                continue;
            }
            let then = recorded.charged.0;
            let now = priced.map_or_else(
                |_| {
                    self.replay.unpriced_steps += 1;
                    then
                },
                |priced| priced.fare.0,
            );
            counted = true;
            change.then_minor = change.then_minor.saturating_add(then);
            change.now_minor = change.now_minor.saturating_add(now);
            let place = line_or_route(fares, recorded, open_before);
            let group = rider_group(recorded, open_before);
            self.count_step(day, place, provider, group, (then, now));
        }
        if counted {
            self.count_rider(change);
        }
        Ok(())
    }

    /// Adds one step's then and now to every grouping.
    fn count_step(
        &mut self,
        day: u32,
        place: String,
        provider: u16,
        group: &str,
        (then, now): (i64, i64),
    ) {
        let replay = &mut self.replay;
        self.days.entry(day).or_default().add(then, now);
        replay
            .by_line_or_route
            .entry(place)
            .or_default()
            .add(then, now);
        replay
            .by_provider
            .entry(provider)
            .or_default()
            .add(then, now);
        replay
            .by_rider_group
            .entry(group.into())
            .or_default()
            .add(then, now);
        replay.total.add(then, now);
    }

    fn in_period(&self, day: u32) -> bool {
        self.period.from_day.is_none_or(|from| day >= from)
            && self.period.to_day.is_none_or(|to| day <= to)
    }

    fn count_rider(&mut self, change: RiderChange) {
        let riders = &mut self.replay.riders;
        riders.riders += 1;
        match change.change_minor() {
            0 => riders.unchanged += 1,
            more if more > 0 => riders.pay_more += 1,
            _ => riders.pay_less += 1,
        }
        if change.change_minor() != 0 && self.period.largest > 0 {
            self.largest
                .push(Reverse((change.change_minor().unsigned_abs(), change)));
            if self.largest.len() > self.period.largest {
                self.largest.pop();
            }
        }
    }

    fn finish(mut self) -> Replay {
        let mut largest: Vec<(u64, RiderChange)> = self
            .largest
            .into_iter()
            .map(|Reverse(entry)| entry)
            .collect();
        largest.sort_by(|a, b| b.cmp(a));
        self.replay.riders.largest_changes =
            largest.into_iter().map(|(_, change)| change).collect();
        self.replay.first_day = self.days.keys().next().map(|day| date_of_day(*day));
        self.replay.last_day = self.days.keys().next_back().map(|day| date_of_day(*day));
        self.replay.by_day = self
            .days
            .into_iter()
            .map(|(day, revenue)| (date_of_day(day), revenue))
            .collect();
        self.replay
    }
}

/// The travel state to walk a rider's kept steps from: none, but the journey the first
/// of them closes when its entry was pruned (read from the step's log record), so that
/// its exit is priced as the journey it was, not as an exit with no entry. The totals of
/// the first kept week and month start at zero.
fn start_before(view: &LedgerView, first: Option<&RecordedStep>) -> Result<Travel, LedgerError> {
    let Some(first) = first else {
        return Ok(Travel::default());
    };
    let closes_a_journey = matches!(
        first.step.kind,
        StepKind::Tap(TapKind::MetroExit { .. }) | StepKind::Close { .. }
    );
    let journey = if closes_a_journey {
        view.record(first.step.sequence)?
            .and_then(|record| record.journey)
    } else {
        None
    };
    let open_journey = journey.and_then(|journey| {
        Some(OpenJourney {
            id: journey.id,
            station: journey.entry_station?,
            entered_at: journey.entered_at?,
            concessions: first.step.concessions,
        })
    });
    Ok(Travel {
        open_journey,
        ..Travel::default()
    })
}

/// Where a step's fare was earned: a bus route's name, or the metro line of the
/// journey's entry station (the first line the new file lists it on; the step's own
/// station for an exit with no entry).
fn line_or_route(fares: &FareTable, recorded: &RecordedStep, open: Option<OpenJourney>) -> String {
    let station = match recorded.step.kind {
        StepKind::Tap(TapKind::Bus { route }) => {
            return match fares.route_name(route) {
                Some(name) => format!("bus {name}"),
                None => format!("bus route {route}"),
            };
        }
        StepKind::Tap(TapKind::MetroEntry { station } | TapKind::MetroExit { station }) => {
            open.map_or(station, |open| open.station)
        }
        StepKind::Close { .. } => match open {
            Some(open) => open.station,
            None => return "metro".into(),
        },
    };
    match fares.line_of(station) {
        Some(line) => format!("metro {line}"),
        None => format!("metro station {station}"),
    }
}

/// The rider group of a step: its concession (a journey's is its entry's); with several
/// bits, the first of student, senior, disabled.
fn rider_group(recorded: &RecordedStep, open: Option<OpenJourney>) -> &'static str {
    let bits = match recorded.step.kind {
        StepKind::Tap(TapKind::Bus { .. }) => recorded.step.concessions,
        _ => open.map_or(recorded.step.concessions, |open| open.concessions),
    };
    CONCESSIONS
        .iter()
        .find(|(_, bit)| bits & bit != 0)
        .map_or("standard", |(name, _)| name)
}

#[cfg(test)]
mod tests;
