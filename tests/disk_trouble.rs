//! Disk trouble: the data directory lives on a small tmpfs the test mounts, under a real
//! `fareway serve` process taking taps from gates that retry with the same ids. The disk
//! fills up, twice. Meanwhile taps are refused with `UNAVAILABLE` (the gate's cue for its
//! offline rules); when space comes back the engine serves again by itself (it reopens
//! its data directory: the same process), and in the end every accepted tap is charged
//! exactly once and the audit passes.
//!
//! A read-only turn is not tested: a file system cannot be remounted read-only while the
//! engine holds its log open for writing (`mount` says busy), and the engine meets a
//! read-only disk the same way as a full one (a failed write, then reopening).
//!
//! Mounting needs root: without it the test says so and passes without running.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fareway::ledger::{Ledger, LedgerConfig, audit};
use fareway_proto::v1 as pb;
use fareway_tests::process::{
    Played, ServerProcess, engine_at, plan_phase, play_with_retries, process_config,
    provision_sample_city,
};
use gate_sim::Engine;
use gate_sim::run::Answer;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, megabytes: u32) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        mount(
            &["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"],
            at,
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(args: &[&str], at: &Path) {
    let status = Command::new("mount").args(args).arg(at).status().unwrap();
    assert!(status.success(), "mount {args:?} {} failed", at.display());
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout == b"0\n")
}

/// Fills the file system holding `path` to the last byte.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

/// One tap sent straight to the engine, as a gate would before falling back: the code.
async fn one_tap(engine: &Engine, request: pb::TapRequest) -> tonic::Code {
    let Ok(mut gate) = engine.gate().await else {
        return tonic::Code::Unavailable; // connection refused: the engine is reopening
    };
    match gate.tap(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_taps_and_service_resumes_by_itself() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let folder = tempfile::tempdir().unwrap();
    let disk = Mount::tmpfs(&folder.path().join("disk"), 64);
    let (config, config_file, log) = process_config(folder.path(), Some(disk.0.join("data")));
    let server = ServerProcess::start(&config_file, SocketAddr::from(([127, 0, 0, 1], 0)), &log);
    let engine = engine_at(server.addr);
    let (mut provisioned, network) = provision_sample_city(&engine, 100, 5).await;

    let filler = disk.0.join("filler");
    let mut played = Played::default();
    for phase in 1..=2u64 {
        let (phase_plan, start) = plan_phase(&mut provisioned, &network, 100.0, 6.0, phase);
        // A tap of its own, sent while the disk is in trouble: refused, UNAVAILABLE.
        let probe = {
            let mut probe = phase_plan[0].request.clone();
            probe.transaction_id = ((u128::from(phase) << 64) | 0xFFFF_FFFF)
                .to_be_bytes()
                .to_vec();
            probe
        };
        let trouble_then_repair = async {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            fill(&filler);
            // Let the engine meet the trouble (taps are flowing), then probe it.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let code = one_tap(&engine, probe.clone()).await;
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            std::fs::remove_file(&filler).unwrap();
            code
        };
        let ((run, retried), probe_code) = tokio::join!(
            play_with_retries(&engine, &phase_plan, start, 16),
            trouble_then_repair
        );
        assert_eq!(probe_code, tonic::Code::Unavailable, "phase {phase}");
        assert!(retried > 0, "phase {phase}: no gate met the trouble");
        for result in &run.results {
            assert!(
                matches!(result.answer, Answer::Response(_)),
                "phase {phase}: {:?}",
                result.answer
            );
        }
        eprintln!(
            "phase {phase}: {} taps, {retried} retried until answered",
            phase_plan.len()
        );
        played.add(phase_plan, run);
        played
            .assert_charged_exactly_once(&engine, &format!("phase {phase}"))
            .await;
    }

    // The same process served throughout: it reopened its data directory by itself.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("a ledger write failed"),
        "the log says why it reopened"
    );
    assert!(logged.contains("serving again after a storage failure"));
    server.kill();
    let ledger = Ledger::open(&config.data_dir, LedgerConfig::default()).unwrap();
    let report = audit::audit(ledger.db()).unwrap();
    assert!(report.ok(), "{:?}", report.violations);
    assert_eq!(report.balance_sum, 0);
    drop(ledger);
    drop(disk);
}
