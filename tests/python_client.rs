//! A client from outside Rust: Python's `grpcio` (installed by `.ci/setup`), with stubs
//! generated from the project's `.proto` files, checks health, taps with and without a
//! token, lists the services by server reflection (v1alpha and v1), retries a tap, and
//! closes and pulls settlement batches. What it saw must be
//! exactly what the engine did: the fare and balance, the replay, and batch files byte for
//! byte the same as a Rust pull of the same batches.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use fareway_gate::settlement::pull::pull_to_folder;
use fareway_proto::v1 as pb;
use fareway_tests::server::{
    ADMIN_TOKEN, FINANCE_TOKEN, GATE_TOKEN, T, TestServer, open_rider, phone, tap, tx,
};
use fareway_tests::workspace_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_taps_and_pulls_a_settlement_batch() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let account_id = 5;
    open_rider(&mut admin, 1, account_id, 1, 10_000).await;
    // Route 501 of the sample city: a flat bus fare of 200.
    let request = tap(
        77,
        9,
        pb::Direction::Bus,
        501,
        T,
        phone(account_id, 1).code_text(T),
    );
    let out = tempfile::tempdir().unwrap();
    let input = serde_json::json!({
        "proto_root": workspace_root().join("proto"),
        "server": server.addr().to_string(),
        "gate_token": GATE_TOKEN,
        "finance_token": FINANCE_TOKEN,
        "tap": {
            "transaction_id_hex": fareway::hex::encode(&request.transaction_id),
            "gate_id": request.gate_id,
            "direction": "DIRECTION_BUS",
            "route_id": request.route_id,
            "scan_time_ms": request.scan_time_ms,
            "code": request.code.as_ref().unwrap().text,
        },
        "close_id_hex": fareway::hex::encode(&tx(3)),
        "out": out.path(),
    });
    let input_file = out.path().join("input.json");
    std::fs::write(&input_file, input.to_string()).unwrap();

    // The server runs on this runtime's workers while Python waits on a blocking thread.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(workspace_root().join("tests/python/fareway_client.py"))
            .arg(&input_file)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the Python client failed (is grpcio installed? `.ci/setup` installs it):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    for service in ["", "fareway.v1.GateService", "fareway.v1.SettlementService"] {
        assert_eq!(seen["health"][service], "SERVING", "{service:?}");
    }
    // Both reflection versions list every service; v1alpha (Python's own reflection
    // client) also serves the gate service's descriptor.
    let services = [
        "fareway.v1.AdminService",
        "fareway.v1.GateService",
        "fareway.v1.SettlementService",
        "grpc.health.v1.Health",
    ];
    for version in ["v1alpha", "v1"] {
        // Each version may also list the reflection service itself.
        let listed: Vec<&str> = seen["reflection"][version]
            .as_array()
            .unwrap_or_else(|| panic!("no {version} answer: {seen:#}"))
            .iter()
            .filter_map(|name| name.as_str())
            .filter(|name| !name.starts_with("grpc.reflection."))
            .collect();
        assert_eq!(listed, services, "{version}: {seen:#}");
    }
    assert_eq!(
        seen["reflection"]["gate_methods"],
        serde_json::json!(["Tap", "TapStream", "GetGateBundle", "UploadOfflineTaps"])
    );
    assert_eq!(seen["tap_without_token"], "UNAUTHENTICATED");
    let id_hex = fareway::hex::encode(&request.transaction_id);
    assert_eq!(
        seen["taps"],
        serde_json::json!([
            {"decision": "TAP_DECISION_ACCEPTED", "fare_minor": 200, "balance_after_minor": 9_800,
             "replay": false, "transaction_id_hex": id_hex},
            {"decision": "TAP_DECISION_ACCEPTED", "fare_minor": 200, "balance_after_minor": 9_800,
             "replay": true, "transaction_id_hex": id_hex},
        ])
    );

    // One batch for provider 1 with the one tap; the bytes Python received are the bytes
    // a Rust pull gets, and their SHA-256 is the close's and the manifest's.
    let batches = seen["batches"].as_array().unwrap();
    let ours: Vec<_> = batches
        .iter()
        .filter(|batch| batch["provider_id"] == 1)
        .collect();
    assert_eq!(ours.len(), 1, "{seen:#}");
    let batch = ours[0];
    assert_eq!(batch["line_count"], 1);
    assert_eq!(batch["net_minor"], 200);
    assert_eq!(batch["sha256"], batch["sha256_from_close"]);
    assert_eq!(batch["manifest"]["file_sha256"], batch["sha256"]);
    assert_eq!(batch["manifest"]["net_minor"], 200);
    let python_bytes = std::fs::read(batch["file"].as_str().unwrap()).unwrap();
    assert_eq!(batch["bytes"], python_bytes.len());

    let mut settlement = server.settlement(Some(FINANCE_TOKEN)).await;
    let key: [u8; 32] = settlement
        .get_signing_key(pb::GetSigningKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .public_key
        .as_slice()
        .try_into()
        .unwrap();
    let batch_id = batch["batch_id"].as_u64().unwrap();
    let stream = settlement
        .pull_batch(pb::PullBatchRequest { batch_id })
        .await
        .unwrap()
        .into_inner();
    let rust_folder = out.path().join("rust");
    std::fs::create_dir_all(&rust_folder).unwrap();
    let pulled = pull_to_folder(stream, batch_id, &rust_folder, &key, |_, _| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&pulled.file).unwrap(), python_bytes);
    server.stop().await;
}
