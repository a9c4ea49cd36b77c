//! The replay's report for people: a table for the terminal, and the rows of each
//! grouping (the HTML page, `fareway fares replay`'s, is drawn by the command line
//! tool with the simulator's chart style). Amounts are in minor units, as everywhere in
//! Fareway.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Replay, Revenue};

/// The change from then to now, in percent of then ("-" when then is zero).
pub fn change_percent(revenue: &Revenue) -> String {
    if revenue.then_minor == 0 {
        return "-".into();
    }
    let change = (revenue.now_minor - revenue.then_minor) as f64 / revenue.then_minor as f64;
    format!("{:+.1}%", change * 100.0)
}

/// The rows of one grouping: name, steps, then, now, change.
fn rows<K: ToString>(groups: &BTreeMap<K, Revenue>) -> Vec<[String; 5]> {
    groups
        .iter()
        .map(|(name, revenue)| {
            [
                name.to_string(),
                revenue.steps.to_string(),
                revenue.then_minor.to_string(),
                revenue.now_minor.to_string(),
                change_percent(revenue),
            ]
        })
        .collect()
}

/// The groupings in the order they are shown, with their headings: rows of name,
/// steps, then, now and change.
pub fn groupings(replay: &Replay) -> Vec<(&'static str, Vec<[String; 5]>)> {
    let providers: BTreeMap<String, Revenue> = replay
        .by_provider
        .iter()
        .map(|(provider, revenue)| (format!("provider {provider}"), *revenue))
        .collect();
    vec![
        ("service day", rows(&replay.by_day)),
        ("line or route", rows(&replay.by_line_or_route)),
        ("provider", rows(&providers)),
        ("rider group", rows(&replay.by_rider_group)),
    ]
}

/// The replay as text for the terminal.
pub fn render_table(replay: &Replay) -> String {
    let mut text = String::new();
    let period = match (&replay.first_day, &replay.last_day) {
        (Some(first), Some(last)) => format!("{first} to {last}"),
        _ => "no steps in the period".into(),
    };
    let total = &replay.total;
    let _ = writeln!(
        text,
        "fare-change replay: {} steps counted ({} read), {period}",
        total.steps, replay.steps_read
    );
    let _ = writeln!(
        text,
        "revenue then {} now {} ({})",
        total.then_minor,
        total.now_minor,
        change_percent(total)
    );
    let riders = &replay.riders;
    let _ = writeln!(
        text,
        "riders {}: {} pay more, {} pay less, {} the same",
        riders.riders, riders.pay_more, riders.pay_less, riders.unchanged
    );
    if replay.unpriced_steps > 0 {
        let _ = writeln!(
            text,
            "{} steps the new fares file cannot price (counted at what they cost then)",
            replay.unpriced_steps
        );
    }
    for (heading, rows) in groupings(replay) {
        let _ = writeln!(
            text,
            "\n{heading:<28} {:>10} {:>14} {:>14} {:>8}",
            "steps", "then", "now", "change"
        );
        for [name, steps, then, now, change] in rows {
            let _ = writeln!(
                text,
                "{name:<28} {steps:>10} {then:>14} {now:>14} {change:>8}"
            );
        }
    }
    if !riders.largest_changes.is_empty() {
        let _ = writeln!(
            text,
            "\n{:<28} {:>14} {:>14} {:>14}",
            "largest changes: rider", "then", "now", "change"
        );
        for change in &riders.largest_changes {
            let _ = writeln!(
                text,
                "{:<28} {:>14} {:>14} {:>+14}",
                change.account_id,
                change.then_minor,
                change.now_minor,
                change.change_minor()
            );
        }
    }
    text
}
