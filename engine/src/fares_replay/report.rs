//! The replay's report for people: a table for the terminal, and one self-contained HTML
//! page with the revenue per day then and now as an SVG chart (drawn with `splot`, as
//! the gate simulator's report is) and the tables. Amounts are in minor units, as
//! everywhere in Fareway.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Replay, Revenue};

/// The change from then to now, in percent of then ("-" when then is zero).
fn change_percent(revenue: &Revenue) -> String {
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

/// The groupings in the order they are shown, with their headings.
fn groupings(replay: &Replay) -> Vec<(&'static str, Vec<[String; 5]>)> {
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

/// The page's style: the simulator report's, and colours for `splot`'s two lines.
const STYLE: &str = r#"
body { font-family: sans-serif; margin: 2em; color: #222; background: #fafafa; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
th { background: #eee; }
td:first-child, th:first-child { text-align: left; }
.chart { height: 420px; display: flex; justify-content: center; margin: 1em 0; }
.legend { display: flex; flex-direction: column; justify-content: center; font-size: 12px; }
.title { fill: #222; font-size: 50px; }
.axis { fill: #222; font-size: 36px; }
.axis-line { stroke: #222; stroke-width: 1px; vector-effect: non-scaling-stroke; }
.tick { fill: #222; font-size: 30px; }
.plot { clip-path: url(#clip-plot); }
.grid-x, .grid-y { stroke: gray; stroke-opacity: 50%; stroke-width: 1px; stroke-dasharray: 1 3; vector-effect: non-scaling-stroke; }
.plot-line, .legend-line { fill: none; stroke-width: 5px; }
.plot-0.plot-line, .plot-0.legend-line { stroke: #4E79A7; }
.plot-1.plot-line, .plot-1.legend-line { stroke: #E15759; }
marker { display: none; }
"#;

/// `splot` links each chart to its own style sheet; the page carries its style inline.
const SPLOT_STYLE_LINK: &str = r#"<link xmlns="http://www.w3.org/1999/xhtml" type="text/css" rel="stylesheet" href="./css/splot.css" />"#;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Revenue per service day, then (blue) and now (red), as SVG.
fn revenue_chart(replay: &Replay) -> String {
    let then: Vec<(f32, f32)> = replay
        .by_day
        .values()
        .enumerate()
        .map(|(index, revenue)| (index as f32, revenue.then_minor as f32))
        .collect();
    let now: Vec<(f32, f32)> = replay
        .by_day
        .values()
        .enumerate()
        .map(|(index, revenue)| (index as f32, revenue.now_minor as f32))
        .collect();
    let mut bounds = then.clone();
    bounds.extend(&now);
    bounds.push((0.0, 0.0));
    splot::Chart::new()
        .title("Revenue per service day: then (blue), now (red)")
        .domain(splot::Domain::from(&bounds[..]))
        .axis("service day of the period", splot::Edge::Bottom)
        .axis("minor units", splot::Edge::Left)
        .plot(splot::Plot::line("then", &then))
        .plot(splot::Plot::line("now", &now))
        .to_string()
        .replace(SPLOT_STYLE_LINK, "")
}

/// The replay as one HTML page; `fares_file` names the new fares file.
pub fn render_html(replay: &Replay, fares_file: &str) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Fare-change replay</title>\
         <style>{STYLE}</style></head><body><h1>Fare-change replay</h1>"
    );
    let _ = write!(
        page,
        "<p>The recorded taps re-priced under <code>{}</code>.</p><pre>{}</pre>",
        escape(fares_file),
        escape(
            render_table(replay)
                .lines()
                .take(4)
                .collect::<Vec<_>>()
                .join("\n")
                .as_str()
        )
    );
    if !replay.by_day.is_empty() {
        let _ = write!(page, "<div class=\"chart\">{}</div>", revenue_chart(replay));
    }
    for (heading, rows) in groupings(replay) {
        let _ = write!(
            page,
            "<h2>By {heading}</h2><table><tr><th>{heading}</th><th>steps</th><th>then</th>\
             <th>now</th><th>change</th></tr>"
        );
        for row in rows {
            page.push_str("<tr>");
            for cell in row {
                let _ = write!(page, "<td>{}</td>", escape(&cell));
            }
            page.push_str("</tr>");
        }
        page.push_str("</table>");
    }
    let changes = &replay.riders.largest_changes;
    if !changes.is_empty() {
        page.push_str(
            "<h2>Largest changes</h2><table><tr><th>rider</th><th>then</th><th>now</th>\
             <th>change</th></tr>",
        );
        for change in changes {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:+}</td></tr>",
                change.account_id,
                change.then_minor,
                change.now_minor,
                change.change_minor()
            );
        }
        page.push_str("</table>");
    }
    page.push_str("</body></html>\n");
    page
}
