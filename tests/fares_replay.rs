//! `fareway fares replay` end to end: an engine charges taps over gRPC, and while it is
//! still running the replay reads its data directory, re-prices the taps under a dearer
//! fares file and writes report.json and report.html with the exact sums; bad input gets
//! a clear error and a failing exit code.

#![allow(clippy::unwrap_used)]

use fareway::clock::UnixMillis;
use fareway_proto::v1 as pb;
use fareway_tests::process::fareway_binary;
use fareway_tests::server::{ADMIN_TOKEN, GATE_TOKEN, T, TestServer, open_rider, phone, tap};

fn at(minutes: u64) -> UnixMillis {
    T.saturating_add(minutes * 60_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_engines_taps_are_replayed_under_a_dearer_fares_file() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    open_rider(&mut admin, 1, 1001, 1, 5_000).await;
    let mut phone = phone(1001, 7);
    // Harbour to Central (300), then a bus three hours later (200, no transfer).
    for (id, gate_id, direction, place, minute) in [
        (10, 11, pb::Direction::Entry, 101, 0),
        (11, 12, pb::Direction::Exit, 100, 20),
        (12, 31, pb::Direction::Bus, 501, 200),
    ] {
        server.clock.set(at(minute));
        let request = tap(
            id,
            gate_id,
            direction,
            place,
            at(minute),
            phone.code_text(at(minute)),
        );
        let answer = gate.tap(request).await.unwrap().into_inner();
        assert_eq!(
            answer.decision,
            pb::TapDecision::Accepted as i32,
            "{answer:?}"
        );
    }
    let folder = tempfile::tempdir().unwrap();
    let sample =
        std::fs::read_to_string(fareway_tests::workspace_root().join("docs/sample-city.toml"))
            .unwrap();
    let dearer = folder.path().join("dearer.toml");
    std::fs::write(
        &dearer,
        sample.replace(
            "name = \"Ring\"\nfare_minor = 200",
            "name = \"Ring\"\nfare_minor = 350",
        ),
    )
    .unwrap();
    let out = folder.path().join("report");
    let data_dir = server.config.data_dir.clone();
    let output = std::process::Command::new(fareway_binary())
        .args(["fares", "replay", "--data-dir"])
        .arg(&data_dir)
        .arg("--fares")
        .arg(&dearer)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("revenue then 500 now 650 (+30.0%)"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        report["total"],
        serde_json::json!({"steps": 3, "then_minor": 500, "now_minor": 650})
    );
    assert_eq!(report["by_line_or_route"]["bus Ring"]["now_minor"], 350);
    assert_eq!(report["by_line_or_route"]["metro Red"]["then_minor"], 300);
    assert_eq!(report["riders"]["pay_more"], 1);
    assert_eq!(report["riders"]["largest_changes"][0]["account_id"], 1001);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<td>bus Ring</td><td>1</td><td>200</td><td>350</td><td>+75.0%</td>"));
    assert_eq!(html.matches("<svg").count(), 1, "the revenue chart");

    // Bad input: a date that is not one, a period backwards, a fares file that breaks a
    // rule, a folder that holds no ledger, the same ledger given twice.
    let broken = folder.path().join("broken.toml");
    std::fs::write(
        &broken,
        sample.replace("daily_cap_minor = 1500", "daily_cap_minor = 100"),
    )
    .unwrap();
    let empty = tempfile::tempdir().unwrap();
    let sample_path = fareway_tests::workspace_root().join("docs/sample-city.toml");
    for (extra, data, fares, message) in [
        (
            vec!["--from", "2027-02-30"],
            &data_dir,
            &sample_path,
            "--from \"2027-02-30\" is not a date",
        ),
        (
            vec!["--from", "2027-02-02", "--to", "2027-02-01"],
            &data_dir,
            &sample_path,
            "--from must not be after --to",
        ),
        (
            vec![],
            &data_dir,
            &broken,
            "daily_cap_minor (100) is below a single fare",
        ),
        (
            vec![],
            &empty.path().to_path_buf(),
            &sample_path,
            "no ledger",
        ),
        (
            vec!["--data-dir", data_dir.to_str().unwrap()],
            &data_dir,
            &sample_path,
            "hold the same ledger or shard: give one replica of each shard",
        ),
    ] {
        let output = std::process::Command::new(fareway_binary())
            .args(["fares", "replay", "--data-dir"])
            .arg(data)
            .arg("--fares")
            .arg(fares)
            .arg("--out")
            .arg(folder.path().join("unused"))
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(message), "{stderr} should say {message}");
    }
    server.stop_and_audit().await;
}
