//! The machine the simulator runs on, over the timed window: how busy all its cores were,
//! and how much CPU the simulator itself took. With the engine on the same machine (a
//! loopback run), this says whether a latency was measured on idle cores or on cores the
//! load generator shared with the engine: a tap's hand-off between threads waits for a
//! core only when none is free. Read from `/proc/stat` and `/proc/self/stat` (Linux);
//! where they are missing the report says null.

/// The kernel's fixed tick rate in `/proc/stat` and `/proc/self/stat` (`USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// The machine's and this process's CPU time so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    /// Cores counted (`cpuN` lines).
    cores: usize,
    /// Ticks every core spent on anything but idling, waiting for I/O, or waiting for the
    /// hypervisor (steal), summed.
    busy_ticks: u64,
    /// Ticks a virtual core wanted to run while the hypervisor ran something else.
    steal_ticks: u64,
    /// Every tick of every core.
    total_ticks: u64,
    /// This process's user and system ticks, every thread.
    own_ticks: u64,
}

/// The CPU over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineWindow {
    /// Cores on the machine.
    pub cores: usize,
    /// The share of all cores' time spent busy, 0 to 1 (every process: the engine, the
    /// simulator and anything else running).
    pub busy_share: f64,
    /// The share of all cores' time taken by the hypervisor from a virtual machine that
    /// wanted it, 0 to 1.
    pub steal_share: f64,
    /// The simulator's own CPU time in the window, seconds.
    pub simulator_cpu_seconds: f64,
}

/// The machine's and this process's CPU time now, or `None` off Linux.
pub fn sample() -> Option<CpuSample> {
    let machine = std::fs::read_to_string("/proc/stat").ok()?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse(&machine, &own)
}

/// A sample from the texts of `/proc/stat` and `/proc/self/stat`.
pub fn parse(machine: &str, own: &str) -> Option<CpuSample> {
    // "cpu  user nice system idle iowait irq softirq steal guest guest_nice": guest time
    // is counted in user already, so the first eight fields are every tick.
    let all = machine.lines().find(|line| line.starts_with("cpu "))?;
    let ticks = all
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|field| field.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
        return None;
    };
    let cores = machine
        .lines()
        .filter(|line| line.starts_with("cpu") && !line.starts_with("cpu "))
        .count();
    // The command name (field 2) may hold spaces; utime and stime are fields 14 and 15.
    let (_, after_name) = own.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let own_user: u64 = fields.next()?.parse().ok()?;
    let own_system: u64 = fields.next()?.parse().ok()?;
    Some(CpuSample {
        cores,
        busy_ticks: user + nice + system + irq + softirq,
        steal_ticks: steal,
        total_ticks: user + nice + system + idle + iowait + irq + softirq + steal,
        own_ticks: own_user + own_system,
    })
}

impl MachineWindow {
    /// The CPU between two samples; `None` when no tick passed.
    pub fn between(before: &CpuSample, after: &CpuSample) -> Option<MachineWindow> {
        let total = after.total_ticks.checked_sub(before.total_ticks)?;
        let busy = after.busy_ticks.checked_sub(before.busy_ticks)?;
        let steal = after.steal_ticks.checked_sub(before.steal_ticks)?;
        let own = after.own_ticks.saturating_sub(before.own_ticks);
        (total > 0).then(|| MachineWindow {
            cores: after.cores,
            busy_share: busy as f64 / total as f64,
            steal_share: steal as f64 / total as f64,
            simulator_cpu_seconds: own as f64 / TICKS_PER_SECOND,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const OWN_BEFORE: &str = "4242 (gate sim) S 1 2 3 4 5 6 7 8 9 10 300 40 0 0 20 0 9";
    const OWN_AFTER: &str = "4242 (gate sim) S 1 2 3 4 5 6 7 8 9 10 450 90 0 0 20 0 9";

    fn machine(user: u64, idle: u64, iowait: u64, steal: u64) -> String {
        format!(
            "cpu  {user} 10 200 {idle} {iowait} 5 15 {steal} 7 0\n\
             cpu0 0 0 0 0 0 0 0 0 0 0\n\
             cpu1 0 0 0 0 0 0 0 0 0 0\n\
             intr 123\n"
        )
    }

    #[test]
    fn the_busy_share_counts_every_core_and_the_simulators_own_time_apart() {
        let before = parse(&machine(1_000, 5_000, 100, 20), OWN_BEFORE).unwrap();
        let after = parse(&machine(1_300, 5_100, 150, 70), OWN_AFTER).unwrap();
        let window = MachineWindow::between(&before, &after).unwrap();
        assert_eq!(window.cores, 2);
        // 500 ticks passed: 300 busy (user), 100 idle, 50 waiting for I/O, 50 stolen.
        assert_eq!((window.busy_share, window.steal_share), (0.6, 0.1));
        // utime 300 -> 450 and stime 40 -> 90: 200 ticks.
        assert_eq!(window.simulator_cpu_seconds, 2.0);
    }

    #[test]
    fn no_tick_or_an_unreadable_text_gives_nothing() {
        let sample = parse(&machine(1_000, 5_000, 100, 20), OWN_BEFORE).unwrap();
        assert_eq!(MachineWindow::between(&sample, &sample), None);
        assert_eq!(parse("cpu  1 2 3\n", OWN_BEFORE), None);
        assert_eq!(parse(&machine(1, 2, 3, 4), "4242 (gate sim) S 1"), None);
    }
}
