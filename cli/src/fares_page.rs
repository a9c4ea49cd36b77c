//! `report.html` of `fareway fares replay`: the revenue per service day then and now as
//! an SVG chart (drawn with `splot` in the gate simulator's chart style, so that both
//! reports look alike), and the replay's tables. One self-contained file.

use std::fmt::Write as _;

use fareway::fares_replay::{Replay, groupings, render_table};
use gate_sim::html::{SPLOT_STYLE_LINK, STYLE, escape};

/// Revenue per service day, then (blue) and now (red), as SVG.
fn revenue_chart(replay: &Replay) -> String {
    let series = |now: bool| -> Vec<(f32, f32)> {
        replay
            .by_day
            .values()
            .enumerate()
            .map(|(index, revenue)| {
                let minor = if now {
                    revenue.now_minor
                } else {
                    revenue.then_minor
                };
                (index as f32, minor as f32)
            })
            .collect()
    };
    let (then, now) = (series(false), series(true));
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
pub fn render(replay: &Replay, fares_file: &str) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Fare-change replay</title>\
         <style>{STYLE}</style></head><body><h1>Fare-change replay</h1>"
    );
    let table = render_table(replay);
    let summary: Vec<&str> = table.lines().take(4).collect();
    let _ = write!(
        page,
        "<p>The recorded taps re-priced under <code>{}</code>.</p><pre>{}</pre>",
        escape(fares_file),
        escape(&summary.join("\n"))
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
