//! `report.html`: the run's latency over time and its latency histogram as SVG charts
//! (drawn with `splot`, styled by the CSS below: plain colours, no CSS variables, so that
//! SVG tools other than browsers draw them too), the decision table, the faults and the
//! invariants. One self-contained file: no scripts, no external style sheet.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::plan::Profile;
use crate::run::{Answer, RunResult};

/// The charts' style: `splot` draws plain SVG with classes, and this colours it. Also the
/// style of `fareway fares replay`'s page.
pub const STYLE: &str = r#"
body { font-family: sans-serif; margin: 2em; color: #222; background: #fafafa; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
th { background: #eee; }
td:first-child, th:first-child { text-align: left; }
.bad { color: #b00; font-weight: bold; }
.good { color: #070; font-weight: bold; }
.chart { height: 420px; display: flex; justify-content: center; margin: 1em 0; }
.legend { display: flex; flex-direction: column; justify-content: center; font-size: 12px; }
.title { fill: #222; font-size: 50px; }
.axis { fill: #222; font-size: 36px; }
.axis-line { stroke: #222; stroke-width: 1px; vector-effect: non-scaling-stroke; }
.tick { fill: #222; font-size: 30px; }
.plot { clip-path: url(#clip-plot); }
.grid-x, .grid-y { stroke: gray; stroke-opacity: 50%; stroke-width: 1px; stroke-dasharray: 1 3; vector-effect: non-scaling-stroke; }
.plot-area { stroke: none; }
.plot-line, .legend-line { fill: none; stroke-width: 5px; }
.plot-0.plot-area { fill: #4E79A7; }
.plot-0.plot-line, .plot-0.legend-line { stroke: #4E79A7; }
.plot-1.plot-line, .plot-1.legend-line { stroke: #E15759; }
.plot-2.plot-line, .plot-2.legend-line { stroke: #59A14F; }
marker { display: none; }
"#;

/// `splot` links each chart to its own style sheet; the page carries its style inline.
pub const SPLOT_STYLE_LINK: &str = r#"<link xmlns="http://www.w3.org/1999/xhtml" type="text/css" rel="stylesheet" href="./css/splot.css" />"#;

/// Per second of the window: (second, p50 ms, p99 ms) of the taps due in it.
fn latency_by_second(run: &RunResult) -> Vec<(f32, f32, f32)> {
    let mut seconds: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for result in &run.results {
        if !matches!(result.answer, Answer::NotSent) {
            seconds
                .entry(result.due_ms / 1_000)
                .or_default()
                .push(result.latency_us);
        }
    }
    seconds
        .into_iter()
        .map(|(second, mut latencies)| {
            latencies.sort_unstable();
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
            (
                second as f32,
                at(0.5) as f32 / 1_000.0,
                at(0.99) as f32 / 1_000.0,
            )
        })
        .collect()
}

/// Taps per latency band, ten bands a decade, as (log10 of the latency in µs, taps).
fn latency_histogram(run: &RunResult) -> Vec<(f32, f32)> {
    let mut bands: BTreeMap<i64, u64> = BTreeMap::new();
    for result in &run.results {
        if !matches!(result.answer, Answer::NotSent) {
            let band = ((result.latency_us.max(1) as f64).log10() * 10.0).floor() as i64;
            *bands.entry(band).or_default() += 1;
        }
    }
    let (Some(first), Some(last)) = (bands.keys().next().copied(), bands.keys().last().copied())
    else {
        return Vec::new();
    };
    (first..=last)
        .map(|band| {
            (
                band as f32 / 10.0,
                bands.get(&band).copied().unwrap_or(0) as f32,
            )
        })
        .collect()
}

/// Text made safe inside HTML (also for `fareway fares replay`'s page).
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The whole page.
pub fn render(report: &serde_json::Value, run: &RunResult) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>gate-sim report</title><style>{STYLE}</style></head><body>\n"
    );
    write_summary(&mut page, report);
    for chart in [
        latency_over_time_chart(run, report),
        latency_histogram_chart(run),
    ] {
        page.push_str(&chart.replace(SPLOT_STYLE_LINK, ""));
    }
    write_decisions(&mut page, report);
    write_faults(&mut page, report);
    write_invariants(&mut page, report);
    page.push_str("<p>Details of every check: <code>report.json</code>.</p>\n</body></html>\n");
    page
}

/// The chart of p50 and p99 latency by second of the run, and where the engine's metrics
/// were read, its longest sync of the ledger's log in each second (a disk stall beside the taps it
/// held up), as SVG.
fn latency_over_time_chart(run: &RunResult, report: &serde_json::Value) -> String {
    let by_second = latency_by_second(run);
    let p50: Vec<(f32, f32)> = by_second.iter().map(|(s, p50, _)| (*s, *p50)).collect();
    let p99: Vec<(f32, f32)> = by_second.iter().map(|(s, _, p99)| (*s, *p99)).collect();
    let longest_sync: Vec<(f32, f32)> = report["engine_by_second"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|second| {
            let us = second["sync_longest_us"].as_f64()?;
            Some((second["second"].as_f64()? as f32, us as f32 / 1_000.0))
        })
        .collect();
    let mut bounds = p99.clone();
    bounds.extend(&longest_sync);
    bounds.push((0.0, 0.0));
    let title = if longest_sync.is_empty() {
        "Latency by second of the run: p50 (blue), p99 (red)"
    } else {
        "Latency by second: p50 (blue), p99 (red), the engine's longest sync (green)"
    };
    // splot takes the title before the axes, and plots after them.
    let mut chart = splot::Chart::new()
        .title(title)
        .domain(splot::Domain::from(&bounds[..]))
        .axis("second of the run", splot::Edge::Bottom)
        .axis("milliseconds", splot::Edge::Left)
        .plot(splot::Plot::line("p50", &p50))
        .plot(splot::Plot::line("p99", &p99));
    if !longest_sync.is_empty() {
        chart = chart.plot(splot::Plot::line("longest sync", &longest_sync));
    }
    chart.to_string()
}

/// The chart of taps per latency band, as SVG.
fn latency_histogram_chart(run: &RunResult) -> String {
    let histogram = latency_histogram(run);
    let mut histogram_bounds = histogram.clone();
    histogram_bounds.push((histogram.first().map_or(0.0, |(x, _)| *x), 0.0));
    let chart = splot::Chart::new()
        .title("Latency histogram")
        .domain(splot::Domain::from(&histogram_bounds[..]))
        .axis(
            "log10 of microseconds (3 = 1 ms, 4 = 10 ms, 5 = 100 ms)",
            splot::Edge::Bottom,
        )
        .axis("taps", splot::Edge::Left)
        .plot(splot::Plot::area("taps", &histogram));
    chart.to_string()
}

/// The heading, the run in a sentence (taps, rate, mode, offered load, verdict), how the
/// codes were minted, and the latency table.
fn write_summary(page: &mut String, report: &serde_json::Value) {
    let ok = report["invariants"]["ok"] == serde_json::json!(true);
    let _ = write!(
        page,
        "<h1>gate-sim report</h1>\n<p>{} taps planned, {} answered, {} not sent; <b>{:.0} taps/s</b> over {:.1} s ({}, offered {}). Invariants: <span class=\"{}\">{}</span>.</p>\n<p>{}</p>\n",
        report["taps_total"],
        report["taps_answered"],
        report["taps_not_sent"],
        report["taps_per_second"].as_f64().unwrap_or(0.0),
        report["duration_s"].as_f64().unwrap_or(0.0),
        escape(report["mode"].as_str().unwrap_or("")),
        escape(&offered_load(&report["offered"])),
        if ok { "good" } else { "bad" },
        if ok { "ok" } else { "FAILED" },
        escape(report["codes"].as_str().unwrap_or("")),
    );
    let latency = &report["latency_us"];
    let _ = writeln!(
        page,
        "<table><tr><th>latency (µs)</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr><tr><td>due time to answer</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        latency["p50"], latency["p90"], latency["p99"], latency["p999"], latency["max"]
    );
}

/// The report's `offered` object in words ("a rush hour peaking at 3,000 taps/s"), or as
/// it is when it is not a profile.
fn offered_load(offered: &serde_json::Value) -> String {
    Profile::from_json(offered).map_or_else(|| offered.to_string(), |profile| profile.to_string())
}

/// The decision table: taps per answer.
fn write_decisions(page: &mut String, report: &serde_json::Value) {
    page.push_str("<h2>Decisions</h2>\n<table><tr><th>answer</th><th>taps</th></tr>\n");
    if let Some(decisions) = report["decisions"].as_object() {
        for (name, count) in decisions {
            let _ = writeln!(page, "<tr><td>{}</td><td>{count}</td></tr>", escape(name));
        }
    }
    page.push_str("</table>\n");
}

/// The fault table: injected and answered as expected, marked bad when they differ.
fn write_faults(page: &mut String, report: &serde_json::Value) {
    page.push_str("<h2>Faults</h2>\n<table><tr><th>fault</th><th>injected</th><th>expected outcome</th></tr>\n");
    if let Some(faults) = report["faults"].as_object() {
        for (name, counts) in faults {
            let class = if counts["injected"] == counts["expected_outcome"] {
                "good"
            } else {
                "bad"
            };
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{}</td></tr>",
                escape(name),
                counts["injected"],
                counts["expected_outcome"]
            );
        }
    }
    page.push_str("</table>\n");
}

/// The invariant table: each check's verdict.
fn write_invariants(page: &mut String, report: &serde_json::Value) {
    page.push_str("<h2>Invariants</h2>\n<table><tr><th>check</th><th>result</th></tr>\n");
    if let Some(invariants) = report["invariants"].as_object() {
        for (name, value) in invariants {
            if name == "ok" {
                continue;
            }
            let verdict = match value.get("ok") {
                Some(serde_json::Value::Bool(true)) => "<span class=\"good\">ok</span>".to_string(),
                Some(serde_json::Value::Bool(false)) => {
                    "<span class=\"bad\">FAILED</span>".to_string()
                }
                _ => escape(&value.to_string()),
            };
            let _ = writeln!(page, "<tr><td>{}</td><td>{verdict}</td></tr>", escape(name));
        }
    }
    page.push_str("</table>\n");
}
