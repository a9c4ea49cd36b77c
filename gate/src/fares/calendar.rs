//! The fares file's calendar: which service day, week and month a moment belongs to, and
//! whether it is in a peak window, in the network's own time zone. A service day starts
//! at a configured local time (London's starts at 04:30, so a tap at 01:00 belongs to the
//! day before), and the local time follows the time zone's daylight-saving changes. The
//! time zone database is the one compiled into the binary (`jiff`'s bundled copy, its
//! version pinned by `Cargo.lock`), never the machine's: every node of a cluster running
//! the same build puts every tap in the same day.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::clock::UnixMillis;

use super::{FareError, invalid};

/// One day in milliseconds: the fallback for a time outside the calendar's range.
const DAY_MS: u64 = 86_400_000;

/// The `[service_day]` table of the fares file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceDayEntry {
    /// An IANA time zone name, such as `Europe/London`.
    time_zone: String,
    /// The local time a service day starts, `HH:MM`.
    starts_at: String,
}

/// A `[[peak_window]]` of the fares file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PeakWindowEntry {
    /// Three-letter day names (`mon` to `sun`) the window applies on.
    days: Vec<String>,
    /// Local start time, `HH:MM`, included.
    from: String,
    /// Local end time, `HH:MM`, excluded.
    to: String,
}

/// The service day, week and month a moment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Periods {
    /// The service day: its local date, as days since 1970-01-01.
    pub day: u32,
    /// The service week (Monday to Sunday), numbered from the week of 1970-01-01.
    pub week: u32,
    /// The service day's calendar month, as `year * 12 + month - 1`.
    pub month: u32,
}

/// A peak window: on these weekdays, from `from` (included) to `to` (excluded), local.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeakWindow {
    days: Vec<Weekday>,
    from: Time,
    to: Time,
}

/// The calendar of a fares file: time zone, service-day start and peak windows.
#[derive(Debug, Clone)]
pub struct Calendar {
    zone_name: String,
    zone: TimeZone,
    starts_at: Time,
    peak: Vec<PeakWindow>,
}

impl Default for Calendar {
    /// UTC days from midnight, no peak: the rules of a fares file with no calendar.
    fn default() -> Self {
        Calendar {
            zone_name: "UTC".into(),
            zone: TimeZone::UTC,
            starts_at: Time::midnight(),
            peak: Vec::new(),
        }
    }
}

impl Calendar {
    /// Reads and checks the calendar of a fares file: a known time zone, times as
    /// `HH:MM`, and peak windows that do not overlap on any day.
    pub(super) fn from_entries(
        service_day: Option<&ServiceDayEntry>,
        peak: &[PeakWindowEntry],
    ) -> Result<Calendar, FareError> {
        let mut calendar = Calendar::default();
        if let Some(entry) = service_day {
            calendar.zone = TimeZone::get(&entry.time_zone).or_else(|_| {
                invalid(format!(
                    "service_day: unknown time zone {:?}",
                    entry.time_zone
                ))
            })?;
            calendar.zone_name = entry.time_zone.clone();
            calendar.starts_at = clock_time("service_day.starts_at", &entry.starts_at)?;
        }
        for entry in peak {
            calendar.peak.push(peak_window(entry)?);
        }
        refuse_overlaps(&calendar.peak)?;
        Ok(calendar)
    }

    /// The time zone's name.
    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    /// The service day, week and month of `time`.
    pub fn periods(&self, time: UnixMillis) -> Periods {
        match self.service_date(time) {
            Some(date) => periods_of_date(date),
            None => periods_of_day(u32::try_from(time.0 / DAY_MS).unwrap_or(u32::MAX)),
        }
    }

    /// When the service day of `time` began.
    pub fn day_start(&self, time: UnixMillis) -> UnixMillis {
        let start = self
            .service_date(time)
            .and_then(|date| self.start_of(date))
            .and_then(|instant| u64::try_from(instant.as_millisecond()).ok());
        UnixMillis(start.unwrap_or(time.0 - time.0 % DAY_MS))
    }

    /// The instant the service day of `date` starts: `starts_at` local on that date. A
    /// start time that a daylight-saving change skips is moved forward by the gap (jiff's
    /// "compatible" rule: 02:30 on a night that jumps from 02:00 to 03:00 is 03:30); one
    /// that a change repeats is its first occurrence.
    fn start_of(&self, date: Date) -> Option<Timestamp> {
        let local = date.to_datetime(self.starts_at);
        self.zone.to_ambiguous_timestamp(local).compatible().ok()
    }

    /// Whether a trip starting at `time` starts in a peak window (local wall time).
    pub fn is_peak(&self, time: UnixMillis) -> bool {
        let Some(local) = self.local(time) else {
            return false;
        };
        self.peak.iter().any(|window| {
            window.days.contains(&local.weekday())
                && window.from <= local.time()
                && local.time() < window.to
        })
    }

    /// The local date and time of `time`; none outside the calendar's range (years
    /// -9999 to 9999), where the callers fall back to UTC days.
    fn local(&self, time: UnixMillis) -> Option<DateTime> {
        Some(self.zone.to_datetime(instant(time)?))
    }

    /// The local date of the service day `time` belongs to: its local date, or the day
    /// before when `time` is earlier than that date's start instant. Decided by instants,
    /// not wall-clock times, so that service days follow each other in time even on the
    /// nights the clocks change, and a day's start is never after a moment of it.
    fn service_date(&self, time: UnixMillis) -> Option<Date> {
        let instant = instant(time)?;
        let date = self.zone.to_datetime(instant).date();
        if instant < self.start_of(date)? {
            date.yesterday().ok()
        } else {
            Some(date)
        }
    }
}

/// A scan time as an instant; none outside the calendar's range.
fn instant(time: UnixMillis) -> Option<Timestamp> {
    Timestamp::from_millisecond(i64::try_from(time.0).ok()?).ok()
}

/// The service day number of a date written `YYYY-MM-DD` (days since 1970-01-01), as
/// [`Periods::day`] counts them; none for anything else or a date before 1970.
pub fn day_of_date(text: &str) -> Option<u32> {
    let date: Date = text.parse().ok()?;
    (date >= Date::constant(1970, 1, 1)).then(|| days_since_epoch(date))
}

/// The service week and month of a service day number (days since 1970-01-01), as
/// [`Periods`] counts them: what a stored day alone says (a travel state written before
/// weeks and months were kept).
pub fn periods_of_day(day: u32) -> Periods {
    date_of(day).map_or(
        Periods {
            day,
            week: week_of_day(day),
            month: 0,
        },
        periods_of_date,
    )
}

/// The periods of a service day's date.
fn periods_of_date(date: Date) -> Periods {
    let day = days_since_epoch(date);
    Periods {
        day,
        week: week_of_day(day),
        month: month_number(date.year(), date.month()),
    }
}

/// The service week of a day number: 1970-01-01 was a Thursday, so day 4 is the first
/// Monday, in week 1.
fn week_of_day(day: u32) -> u32 {
    day.saturating_add(3) / 7
}

/// The date of a service day number, `YYYY-MM-DD`.
pub fn date_of_day(day: u32) -> String {
    date_of(day).map_or_else(|| format!("day {day}"), |date| date.to_string())
}

/// The date of a day number; none past the calendar's range (year 9999).
fn date_of(day: u32) -> Option<Date> {
    let days = jiff::Span::new().try_days(i64::from(day)).ok()?;
    Date::constant(1970, 1, 1).checked_add(days).ok()
}

/// Days from 1970-01-01 to `date` (0 before it).
fn days_since_epoch(date: Date) -> u32 {
    let seconds = date
        .to_zoned(TimeZone::UTC)
        .map_or(0, |zoned| zoned.timestamp().as_second());
    u32::try_from(seconds.div_euclid(86_400)).unwrap_or(0)
}

/// `year * 12 + month - 1` (0 before year 0).
fn month_number(year: i16, month: i8) -> u32 {
    u32::try_from(i32::from(year) * 12 + i32::from(month) - 1).unwrap_or(0)
}

/// A local time of day written `HH:MM`.
fn clock_time(field: &str, text: &str) -> Result<Time, FareError> {
    let two_digits = |part: &str| -> Option<i8> {
        (part.len() == 2 && part.bytes().all(|byte| byte.is_ascii_digit()))
            .then(|| part.parse().ok())?
    };
    let parsed = text.split_once(':').and_then(|(hours, minutes)| {
        Time::new(two_digits(hours)?, two_digits(minutes)?, 0, 0).ok()
    });
    parsed.ok_or_else(|| FareError::Invalid(format!("{field}: {text:?} is not a time HH:MM")))
}

/// One peak window, checked: known day names, and a start before its end.
fn peak_window(entry: &PeakWindowEntry) -> Result<PeakWindow, FareError> {
    let from = clock_time("peak_window.from", &entry.from)?;
    let to = clock_time("peak_window.to", &entry.to)?;
    if from >= to {
        return invalid(format!(
            "peak_window {}-{}: from must be before to (a window does not cross midnight)",
            entry.from, entry.to
        ));
    }
    if entry.days.is_empty() {
        return invalid("peak_window: days must name at least one day".into());
    }
    let days = entry
        .days
        .iter()
        .map(|name| weekday(name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PeakWindow { days, from, to })
}

/// A weekday from its three-letter name.
fn weekday(name: &str) -> Result<Weekday, FareError> {
    Ok(match name {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => {
            return invalid(format!(
                "peak_window: unknown day {name:?} (use mon, tue, wed, thu, fri, sat, sun)"
            ));
        }
    })
}

/// Two windows that share a day must not share a moment.
fn refuse_overlaps(windows: &[PeakWindow]) -> Result<(), FareError> {
    for (index, first) in windows.iter().enumerate() {
        for second in &windows[index + 1..] {
            let share_a_day = first.days.iter().any(|day| second.days.contains(day));
            if share_a_day && first.from < second.to && second.from < first.to {
                return invalid(format!(
                    "peak windows {}-{} and {}-{} overlap",
                    first.from.strftime("%H:%M"),
                    first.to.strftime("%H:%M"),
                    second.from.strftime("%H:%M"),
                    second.to.strftime("%H:%M"),
                ));
            }
        }
    }
    Ok(())
}
