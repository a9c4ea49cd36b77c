//! The engine's own view of a run, scraped from its metrics endpoint before and after the
//! load, so that the report gives figures of this run alone: its tap latency histogram
//! (`fareway_tap_latency_seconds`), its ledger's syncs
//! (`fareway_ledger_sync_latency_seconds`), the stages of a request in its ledger
//! ([`LEDGER_STAGES`]), its process CPU time (`fareway_process_cpu_seconds`) and its
//! threads' wait for a core (`fareway_process_run_delay_seconds`).

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The tap latency histogram's name in the Prometheus text the engine serves.
const TAP_LATENCY: &str = "fareway_tap_latency_seconds";
/// The ledger's syncs' histogram.
const SYNC_LATENCY: &str = "fareway_ledger_sync_latency_seconds";
/// The process CPU gauge.
const PROCESS_CPU: &str = "fareway_process_cpu_seconds";
/// The gauge of the process's threads' wait for a core.
const PROCESS_RUN_DELAY: &str = "fareway_process_run_delay_seconds";
/// A ledger request's stages, in order: the report's name and the engine's histogram.
pub const LEDGER_STAGES: [(&str, &str); 3] = [
    ("queue_wait", "fareway_ledger_queue_wait_seconds"),
    ("decide_write", "fareway_ledger_decide_write_seconds"),
    ("sync_wait", "fareway_ledger_sync_wait_seconds"),
];

/// One histogram as scraped.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    /// Cumulative counts: (upper bound in seconds, taps at or under it), in order.
    pub counts: Vec<(f64, u64)>,
    /// The sum of every value, seconds (the histogram's `_sum`), when the text has it:
    /// means, unlike quantiles, add up stage by stage.
    pub sum_seconds: Option<f64>,
}

/// One scrape: the tap latency histogram, and where the engine serves them, the synced
/// writes' histogram and the process's CPU seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Scrape {
    /// Tap latency.
    pub taps: Buckets,
    /// Synced writes' time.
    pub syncs: Option<Buckets>,
    /// CPU seconds of the engine's process so far.
    pub cpu_seconds: Option<f64>,
    /// Each of [`LEDGER_STAGES`] (all or none).
    pub stages: Option<Vec<Buckets>>,
    /// Seconds the engine's threads waited for a core so far.
    pub run_delay_seconds: Option<f64>,
}

/// Scrapes the engine's metrics at `addr` (`HOST:PORT` of its metrics listener).
pub async fn scrape(addr: &str) -> anyhow::Result<Scrape> {
    parse_scrape(&metrics_text(addr).await?)
}

/// What a scrape holds, from a Prometheus text exposition.
pub fn parse_scrape(text: &str) -> anyhow::Result<Scrape> {
    let syncs = histogram(text, SYNC_LATENCY)?;
    let stages = LEDGER_STAGES
        .iter()
        .map(|(_, name)| histogram(text, name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Scrape {
        taps: parse(text)?,
        syncs: (!syncs.counts.is_empty()).then_some(syncs),
        cpu_seconds: gauge(text, PROCESS_CPU),
        stages: (stages.iter().all(|stage| !stage.counts.is_empty())).then_some(stages),
        run_delay_seconds: gauge(text, PROCESS_RUN_DELAY),
    })
}

/// The value of gauge `name`, when it is there.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The engine's metrics, as Prometheus text, from `addr` (`HOST:PORT`).
pub async fn metrics_text(addr: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach the engine's metrics at {addr}"))?;
    // HTTP/1.0: the server closes the connection after the answer, so the body ends there.
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("the metrics answer has no body")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.split(' ').nth(1) == Some("200"),
        "the metrics endpoint answered {}",
        head.lines().next().unwrap_or("nothing")
    );
    Ok(body.to_string())
}

/// The tap latency buckets in a Prometheus text exposition.
pub fn parse(text: &str) -> anyhow::Result<Buckets> {
    let buckets = histogram(text, TAP_LATENCY)?;
    anyhow::ensure!(
        !buckets.counts.is_empty(),
        "no fareway_tap_latency_seconds histogram in the metrics"
    );
    Ok(buckets)
}

/// Histogram `name`'s cumulative buckets (empty when there is none) and its sum.
fn histogram(text: &str, name: &str) -> anyhow::Result<Buckets> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(prefix.as_str()) else {
            continue;
        };
        let (bound, count) = rest
            .split_once("\"}")
            .with_context(|| format!("unexpected metrics line: {line}"))?;
        let bound = if bound == "+Inf" {
            f64::INFINITY
        } else {
            bound
                .parse()
                .with_context(|| format!("bad bucket bound: {line}"))?
        };
        let count = count
            .split_whitespace()
            .next()
            .and_then(|count| count.parse().ok())
            .with_context(|| format!("bad bucket count: {line}"))?;
        buckets.push((bound, count));
    }
    Ok(Buckets {
        counts: buckets,
        sum_seconds: gauge(text, &format!("{name}_sum")),
    })
}

/// What the engine did between two scrapes: its taps' latency, its ledger's syncs' times
/// and the CPU time it took (the last two where it serves them).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerWindow {
    /// Taps answered.
    pub taps: Window,
    /// Synced writes.
    pub syncs: Option<Window>,
    /// CPU seconds.
    pub cpu_seconds: Option<f64>,
    /// Each of [`LEDGER_STAGES`].
    pub stages: Option<Vec<Window>>,
    /// Seconds the engine's threads waited for a core (never below zero: a thread that
    /// exited takes its wait with it).
    pub run_delay_seconds: Option<f64>,
    /// The same, second by second of the run (empty unless sampled).
    pub by_second: Vec<EngineSecond>,
}

/// One second of the run as the engine saw it: the taps it answered and their p99, and
/// its ledger's syncs and the longest of them (upper bounds of their buckets), so that a
/// disk stall shows beside the taps it held up.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSecond {
    /// From the first sample.
    pub second: u64,
    /// Taps answered in it.
    pub taps: u64,
    /// Their p99, microseconds (`None`: none, or over 5 s).
    pub tap_p99_us: Option<u64>,
    /// Synced writes in it.
    pub syncs: u64,
    /// The longest, microseconds (`None`: none, or over 5 s).
    pub sync_longest_us: Option<u64>,
}

/// How long one per-second scrape may take.
const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(900);

/// Scrapes the engine's metrics at `addr` every second until `stop` fires, and gives
/// what happened in each second (a failed scrape is skipped: its second merges into the
/// next).
pub async fn by_second(
    addr: String,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<EngineSecond> {
    let started = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    // A slow scrape skips the ticks it overran rather than bunching samples after it.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut samples: Vec<(u64, Scrape)> = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            tick = ticks.tick() => {
                // Bounded, so that an engine whose metrics stall cannot hold up the run.
                let scraped = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(&addr)).await;
                if let Ok(Ok(scrape)) = scraped {
                    let second = (tick - started).as_secs_f64().round() as u64;
                    samples.push((second, scrape));
                }
            }
        }
    }
    samples
        .windows(2)
        .filter_map(|pair| {
            let ((_, before), (second, after)) = (&pair[0], &pair[1]);
            let window = ServerWindow::between(before, after).ok()?;
            let syncs = window.syncs.as_ref();
            Some(EngineSecond {
                second: second.saturating_sub(1),
                taps: window.taps.count(),
                tap_p99_us: window.taps.quantile_us(0.99),
                syncs: syncs.map_or(0, Window::count),
                sync_longest_us: syncs.and_then(|syncs| syncs.quantile_us(1.0)),
            })
        })
        .collect()
}

impl ServerWindow {
    /// The engine's work between `before` and `after`.
    pub fn between(before: &Scrape, after: &Scrape) -> anyhow::Result<ServerWindow> {
        let syncs = match (&before.syncs, &after.syncs) {
            (Some(before), Some(after)) => Some(Window::between(before, after)?),
            _ => None,
        };
        let stages = match (&before.stages, &after.stages) {
            (Some(before), Some(after)) => Some(
                before
                    .iter()
                    .zip(after)
                    .map(|(before, after)| Window::between(before, after))
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
            _ => None,
        };
        let growth = |before: Option<f64>, after: Option<f64>| {
            before.zip(after).map(|(before, after)| after - before)
        };
        Ok(ServerWindow {
            taps: Window::between(&before.taps, &after.taps)?,
            syncs,
            cpu_seconds: growth(before.cpu_seconds, after.cpu_seconds),
            stages,
            run_delay_seconds: growth(before.run_delay_seconds, after.run_delay_seconds)
                .map(|waited| waited.max(0.0)),
            by_second: Vec::new(),
        })
    }

    /// A tap's mean time in the engine outside its ledger, microseconds: the taps'
    /// latency sum less every ledger stage's sum, over the taps (sums, not means: a tap
    /// refused before the ledger has no stages, and counts whole). `None` without the
    /// sums or taps, or when a stage counted more requests than there were taps: the
    /// ledger then also served requests that are not online taps (an offline gate's
    /// upload, top-ups), and its stages' time is not the taps'. Approximate when taps
    /// are refused with a gRPC status after the ledger (an id conflict): their stages
    /// count, their latency does not.
    pub fn outside_ledger_us_per_tap(&self) -> Option<f64> {
        let taps = self.taps.count();
        let mut outside_s = self.taps.sum_seconds?;
        for stage in self.stages.as_ref()? {
            if stage.count() > taps {
                return None;
            }
            outside_s -= stage.sum_seconds?;
        }
        (taps > 0).then(|| outside_s * 1e6 / taps as f64)
    }
}

/// The taps answered between two scrapes, and their latency quantiles and mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Cumulative counts of the taps between the scrapes.
    pub buckets: Vec<(f64, u64)>,
    /// Their latencies' sum, seconds, when both scrapes had it.
    pub sum_seconds: Option<f64>,
}

impl Window {
    /// The histogram of what happened between `before` and `after`.
    pub fn between(before: &Buckets, after: &Buckets) -> anyhow::Result<Window> {
        let (was, is) = (&before.counts, &after.counts);
        anyhow::ensure!(
            was.len() == is.len() && was.iter().zip(is).all(|(a, b)| a.0 == b.0),
            "the engine's histogram buckets changed between the scrapes"
        );
        let buckets = was
            .iter()
            .zip(is)
            .map(|((bound, was), (_, is))| (*bound, is.saturating_sub(*was)))
            .collect();
        // A count that went down is an engine that restarted between the scrapes: its
        // buckets are clamped at zero, and no mean is made of them.
        let restarted = was.last().map(|(_, count)| *count) > is.last().map(|(_, count)| *count);
        let sum_seconds = before
            .sum_seconds
            .zip(after.sum_seconds)
            .filter(|(was, is)| !restarted && is >= was)
            .map(|(was, is)| is - was);
        Ok(Window {
            buckets,
            sum_seconds,
        })
    }

    /// The mean, in microseconds, when the window has values and their sum.
    pub fn mean_us(&self) -> Option<f64> {
        let count = self.count();
        self.sum_seconds
            .filter(|_| count > 0)
            .map(|sum| sum * 1e6 / count as f64)
    }

    /// Taps in the window.
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, count)| *count)
    }

    /// The upper bound, in microseconds, of the bucket holding quantile `q`: the true
    /// value is at or below it. `None` when the window is empty or the quantile is past
    /// the last finite bound.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        self.buckets
            .iter()
            .find(|(_, count)| *count >= rank)
            .filter(|(bound, _)| bound.is_finite())
            .map(|(bound, _)| (bound * 1e6).round() as u64)
    }

    /// The share of taps answered within `bound_s` seconds, when that is a bucket bound.
    pub fn share_within(&self, bound_s: f64) -> Option<f64> {
        let total = self.count();
        let (_, within) = self.buckets.iter().find(|(bound, _)| *bound == bound_s)?;
        (total > 0).then(|| *within as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const BEFORE: &str = "# TYPE fareway_tap_latency_seconds histogram\n\
        fareway_tap_latency_seconds_sum 0.5\n\
        fareway_tap_latency_seconds_count 10\n\
        fareway_tap_latency_seconds_bucket{le=\"0.001\"} 4\n\
        fareway_tap_latency_seconds_bucket{le=\"0.005\"} 9\n\
        fareway_tap_latency_seconds_bucket{le=\"+Inf\"} 10\n";
    const AFTER: &str = "fareway_tap_latency_seconds_sum 1.25\n\
        fareway_tap_latency_seconds_bucket{le=\"0.001\"} 54\n\
        fareway_tap_latency_seconds_bucket{le=\"0.005\"} 157\n\
        fareway_tap_latency_seconds_bucket{le=\"+Inf\"} 160\n\
        fareway_taps_total{decision=\"accepted\",reason=\"none\"} 160\n";

    #[test]
    fn quantiles_come_from_the_taps_between_the_two_scrapes() {
        let window = Window::between(&parse(BEFORE).unwrap(), &parse(AFTER).unwrap()).unwrap();
        assert_eq!(
            window.buckets,
            vec![(0.001, 50), (0.005, 148), (f64::INFINITY, 150)]
        );
        assert_eq!(window.count(), 150);
        assert_eq!(window.quantile_us(0.5), Some(5_000));
        assert_eq!(window.quantile_us(50.0 / 150.0), Some(1_000));
        assert_eq!(window.quantile_us(0.98), Some(5_000));
        // The last two taps took longer than the last finite bound.
        assert_eq!(window.quantile_us(0.99), None);
        assert_eq!(window.share_within(0.005), Some(148.0 / 150.0));
        assert_eq!(window.share_within(0.002), None);
        // The mean from the sums: 0.75 s over 150 taps.
        assert_eq!(window.sum_seconds, Some(0.75));
        assert_eq!(window.mean_us(), Some(5_000.0));
        // A scrape without a sum gives quantiles and no mean.
        let unsummed = parse(&AFTER.replace("fareway_tap_latency_seconds_sum 1.25\n", "")).unwrap();
        let window = Window::between(&parse(BEFORE).unwrap(), &unsummed).unwrap();
        assert_eq!((window.count(), window.mean_us()), (150, None));
    }

    #[test]
    fn cpu_time_and_sync_times_come_from_the_two_scrapes() {
        let with = |cpu: &str, fast: u64, slow: u64| {
            format!(
                "{AFTER}fareway_process_cpu_seconds {cpu}\n\
                 fareway_ledger_sync_latency_seconds_bucket{{le=\"0.0002\"}} {fast}\n\
                 fareway_ledger_sync_latency_seconds_bucket{{le=\"0.05\"}} {slow}\n\
                 fareway_ledger_sync_latency_seconds_bucket{{le=\"+Inf\"}} {slow}\n"
            )
        };
        let before = parse_scrape(&with("1.5", 10, 10)).unwrap();
        let after = parse_scrape(&with("4.25", 1_008, 1_010)).unwrap();
        let window = ServerWindow::between(&before, &after).unwrap();
        assert_eq!(window.cpu_seconds, Some(2.75));
        assert_eq!((window.stages, window.run_delay_seconds), (None, None));
        let syncs = window.syncs.unwrap();
        assert_eq!(syncs.count(), 1_000);
        assert_eq!(syncs.quantile_us(0.99), Some(200));
        assert_eq!(syncs.quantile_us(0.999), Some(50_000));
        // An engine without them: taps only.
        let bare = parse_scrape(AFTER).unwrap();
        assert_eq!((bare.syncs, bare.cpu_seconds), (None, None));
    }

    #[test]
    fn the_ledger_stages_and_the_wait_for_a_core_come_from_the_two_scrapes() {
        let with = |waited: &str, fast: u64, slow: u64| {
            let mut text = format!("{AFTER}fareway_process_run_delay_seconds {waited}\n");
            for (_, name) in LEDGER_STAGES {
                let sum = slow as f64 * 0.0005;
                text += &format!(
                    "{name}_sum {sum}\n\
                     {name}_bucket{{le=\"0.0001\"}} {fast}\n\
                     {name}_bucket{{le=\"0.001\"}} {slow}\n\
                     {name}_bucket{{le=\"+Inf\"}} {slow}\n"
                );
            }
            text
        };
        let before = parse_scrape(&with("0.5", 0, 0)).unwrap();
        let after = parse_scrape(&with("2.0", 60, 100)).unwrap();
        let window = ServerWindow::between(&before, &after).unwrap();
        assert_eq!(window.run_delay_seconds, Some(1.5));
        let stages = window.stages.unwrap();
        assert_eq!(stages.len(), 3);
        for stage in &stages {
            assert_eq!(stage.count(), 100);
            assert_eq!(stage.quantile_us(0.5), Some(100));
            assert_eq!(stage.quantile_us(0.9), Some(1_000));
            // 0.05 s over 100 requests.
            assert_eq!(stage.mean_us().map(f64::round), Some(500.0));
        }
        // A thread that exited took its wait with it: the growth is never below zero.
        let shrunk = parse_scrape(&with("0.25", 60, 100)).unwrap();
        let window = ServerWindow::between(&before, &shrunk).unwrap();
        assert_eq!(window.run_delay_seconds, Some(0.0));
        // One stage missing: none are reported.
        let text = with("2.0", 60, 100).replace("fareway_ledger_sync_wait_seconds", "other");
        assert_eq!(parse_scrape(&text).unwrap().stages, None);
    }

    #[test]
    fn an_empty_window_has_no_quantiles() {
        let before = parse(BEFORE).unwrap();
        let window = Window::between(&before, &before).unwrap();
        assert_eq!(window.count(), 0);
        assert_eq!(window.quantile_us(0.99), None);
        assert_eq!(window.mean_us(), None);
    }

    #[test]
    fn a_taps_time_outside_the_ledger_is_the_sums_difference_over_the_taps() {
        let window = |count, sum| Window {
            buckets: vec![(f64::INFINITY, count)],
            sum_seconds: sum,
        };
        let mut engine = ServerWindow {
            taps: window(150, Some(0.75)),
            syncs: None,
            cpu_seconds: None,
            stages: Some(vec![window(100, Some(0.05)); 3]),
            run_delay_seconds: None,
            by_second: Vec::new(),
        };
        // The taps' 0.75 s less the stages' 3 x 0.05 s, over 150 taps (50 of them refused
        // before the ledger): 4 ms, where the means' difference would say 4.5 ms.
        assert_eq!(
            engine.outside_ledger_us_per_tap().map(f64::round),
            Some(4_000.0)
        );
        // 151 requests for 150 taps: an upload or a top-up among them.
        engine.stages = Some(vec![window(100, Some(0.05)), window(151, Some(0.05))]);
        assert_eq!(engine.outside_ledger_us_per_tap(), None);
        engine.stages = Some(vec![window(100, Some(0.05)), window(100, None)]);
        assert_eq!(engine.outside_ledger_us_per_tap(), None);
    }

    #[test]
    fn an_engine_restarted_between_the_scrapes_gives_no_mean() {
        let (before, after) = (parse(BEFORE).unwrap(), parse(AFTER).unwrap());
        let window = Window::between(&after, &before).unwrap();
        assert_eq!((window.count(), window.sum_seconds), (0, None));
        assert_eq!(window.mean_us(), None);
    }

    #[test]
    fn metrics_without_the_histogram_or_with_other_buckets_are_refused() {
        let err = parse("fareway_taps_total 3\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no fareway_tap_latency_seconds histogram in the metrics"
        );
        let other = parse("fareway_tap_latency_seconds_bucket{le=\"0.002\"} 1\n").unwrap();
        let err = Window::between(&parse(BEFORE).unwrap(), &other).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the engine's histogram buckets changed between the scrapes"
        );
        let err = parse("fareway_tap_latency_seconds_bucket{le=\"x\"} 1\n").unwrap_err();
        assert!(err.to_string().starts_with("bad bucket bound"), "{err}");
    }
}
