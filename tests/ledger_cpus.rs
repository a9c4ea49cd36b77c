//! `[cpus] ledger` on a real `fareway serve`: the ledger's writer and syncer run on the CPU
//! named and nowhere else, every other thread of the process (the gRPC workers, RocksDB's
//! own) off it; a CPU the process may not use is refused at start with the reason.
//!
//! Needs two CPUs: with one, the test says so and passes without running.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use fareway_tests::process::{ServerProcess, process_config};

/// The CPUs this test may run on (and so the server it starts).
fn our_cpus() -> BTreeSet<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    cpus_allowed(&status)
}

/// The `Cpus_allowed_list` of a `/proc/.../status` text ("0-2,5"), as a set.
fn cpus_allowed(status: &str) -> BTreeSet<usize> {
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let mut cpus = BTreeSet::new();
    for part in list.split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(first.parse::<usize>().unwrap()..=last.parse::<usize>().unwrap());
    }
    cpus
}

/// Each thread of process `pid`: its name and the CPUs it may run on.
fn threads_of(pid: u32) -> Vec<(String, BTreeSet<usize>)> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    std::fs::read_dir(tasks)
        .unwrap()
        .map(|task| {
            let task = task.unwrap().path();
            let name = std::fs::read_to_string(task.join("comm")).unwrap();
            let status = std::fs::read_to_string(task.join("status")).unwrap();
            (name.trim().to_string(), cpus_allowed(&status))
        })
        .collect()
}

/// A server configuration in `folder` with `cpus` as its `[cpus]` section.
fn config_with_cpus(folder: &Path, cpus: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (_, config_file, log) = process_config(folder, None);
    let mut text = std::fs::read_to_string(&config_file).unwrap();
    text.push_str(&format!("\n[cpus]\n{cpus}\n"));
    std::fs::write(&config_file, text).unwrap();
    (config_file, log)
}

#[test]
fn the_ledger_threads_run_alone_on_the_ledger_cpu() {
    let ours = our_cpus();
    let Some(&ledger_cpu) = ours.iter().last().filter(|_| ours.len() >= 2) else {
        eprintln!("one CPU only ({ours:?}): nothing to keep apart, not run");
        return;
    };
    let folder = tempfile::tempdir().unwrap();
    let (config_file, log) = config_with_cpus(folder.path(), &format!("ledger = [{ledger_cpu}]"));
    let server = ServerProcess::start(&config_file, SocketAddr::from(([127, 0, 0, 1], 0)), &log);

    let threads = threads_of(server.pid());
    let only_ledger = BTreeSet::from([ledger_cpu]);
    let the_rest: BTreeSet<usize> = ours.iter().copied().filter(|&c| c != ledger_cpu).collect();
    for name in ["ledger-writer", "ledger-syncer"] {
        let (_, cpus) = threads.iter().find(|(thread, _)| thread == name).unwrap();
        assert_eq!(cpus, &only_ledger, "{name}");
    }
    let others: Vec<_> = threads
        .iter()
        .filter(|(name, _)| !name.starts_with("ledger-"))
        .collect();
    assert!(
        others.iter().any(|(name, _)| name == "fareway-server"),
        "the gRPC workers are among them: {threads:?}"
    );
    for (name, cpus) in others {
        assert_eq!(cpus, &the_rest, "{name} must stay off the ledger's CPU");
    }
    server.kill();
}

#[test]
fn a_cpu_the_process_may_not_use_is_refused_at_start() {
    let folder = tempfile::tempdir().unwrap();
    let (config_file, log) = config_with_cpus(folder.path(), "ledger = [1023]");
    let said = ServerProcess::try_start(&config_file, SocketAddr::from(([127, 0, 0, 1], 0)), &log)
        .expect_err("a server with a CPU it may not use");
    assert_eq!(said, "", "it never listens");
    let allowed: Vec<String> = our_cpus().iter().map(usize::to_string).collect();
    let logged = std::fs::read_to_string(&log).unwrap();
    let expected = format!(
        "cpus.ledger lists CPU 1023, which this process may not run on (it may run on {})",
        allowed.join(", ")
    );
    assert!(logged.contains(&expected), "{logged}");
}
