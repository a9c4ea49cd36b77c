//! Settlement end to end: a real server on 127.0.0.1, taps over real gRPC, batches closed
//! and pulled through `SettlementService`, files checked on disk, by their signature, and
//! by Python's `csv` module.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use fareway::settlement::verify::verify_pulled;
use fareway::token::mint::Issuer;
use fareway_gate::settlement::pull::pull_to_folder;
use fareway_proto::v1 as pb;
use fareway_tests::server::{
    ADMIN_TOKEN, AdminClient, FINANCE_TOKEN, GATE_TOKEN, SettlementClient, T, TestServer,
    open_rider, phone_of, tap, tx,
};
use tonic::Code;

/// Opens an account of `provider_id` and tops it up with 50,000.
async fn open_account(admin: &mut AdminClient, account_id: u64, provider_id: u32) {
    let id_base = 1_000_000 + u128::from(account_id) * 2;
    open_rider(admin, id_base, account_id, provider_id, 50_000).await;
}

fn issuer(provider_id: u16) -> Issuer {
    match provider_id {
        1 => Issuer::from_seed(1, [0x01; 32]),
        _ => Issuer::from_seed(2, [0x03; 32]),
    }
}

async fn close(settlement: &mut SettlementClient, id: u128, providers: Vec<u32>) -> Vec<pb::Batch> {
    settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(id),
            providers,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .batches
}

async fn signing_key(settlement: &mut SettlementClient) -> [u8; 32] {
    let key = settlement
        .get_signing_key(pb::GetSigningKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.algorithm, "ed25519");
    key.public_key.as_slice().try_into().unwrap()
}

async fn pull(
    settlement: &mut SettlementClient,
    batch_id: u64,
    folder: &Path,
) -> (Vec<u8>, Vec<u8>) {
    let key = signing_key(settlement).await;
    let stream = settlement
        .pull_batch(pb::PullBatchRequest { batch_id })
        .await
        .unwrap()
        .into_inner();
    let mut last_progress = (0, 0);
    let pulled = pull_to_folder(stream, batch_id, folder, &key, |received, total| {
        last_progress = (received, total);
    })
    .await
    .unwrap();
    if pulled.manifest.file_bytes > 0 {
        let whole = (pulled.manifest.file_bytes, pulled.manifest.file_bytes);
        assert_eq!(last_progress, whole);
    }
    verify_pulled(&pulled.file, &key).unwrap();
    (
        std::fs::read(&pulled.file).unwrap(),
        std::fs::read(&pulled.manifest_file).unwrap(),
    )
}

/// The detail lines' (transaction id, amount) of a file.
fn lines_of(file: &[u8]) -> Vec<(String, i64)> {
    std::str::from_utf8(file)
        .unwrap()
        .lines()
        .filter(|line| line.starts_with("D,"))
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[3].to_string(), fields[15].parse().unwrap())
        })
        .collect()
}

/// Python's `csv` module reads the file: the sums of its detail lines, and its trailer.
fn python_totals(file: &Path) -> (serde_json::Value, serde_json::Value) {
    const SCRIPT: &str = r#"
import csv, json, sys
lines = charged = refunded = 0
trailer = None
with open(sys.argv[1], newline="", encoding="utf-8") as f:
    for row in csv.reader(f):
        if row[0] == "D":
            lines += 1
            amount = int(row[15])
            if amount >= 0:
                charged += amount
            else:
                refunded -= amount
        elif row[0] == "T":
            trailer = [int(x) for x in row[1:]]
print(json.dumps({"summed": [lines, charged, refunded, charged - refunded], "trailer": trailer}))
"#;
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(file)
        .output()
        .expect("python3 runs (the machine has it; .ci/setup installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    (answer["summed"].clone(), answer["trailer"].clone())
}

/// Taps flow from one task while batches close from another: afterwards every charged tap
/// is in exactly one batch, batch totals equal the fares charged per provider, files
/// re-pull byte for byte (also after a restart), Python reads the trailer's totals, and a
/// refund after the close lands in the next batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_cover_every_charged_tap_once_while_taps_flow() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut settlement = server.settlement(Some(FINANCE_TOKEN)).await;
    const RIDERS: u64 = 6;
    const TAPS: u64 = 240;
    for account_id in 1..=RIDERS {
        open_account(&mut admin, account_id, (account_id % 2 + 1) as u32).await;
    }
    let provider_of = |account_id: u64| (account_id % 2 + 1) as u16;

    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    let clock = std::sync::Arc::clone(&server.clock);
    let tapping = tokio::spawn(async move {
        let mut phones: Vec<_> = (1..=RIDERS)
            .map(|account_id| {
                phone_of(
                    &issuer(provider_of(account_id)),
                    account_id,
                    account_id as u8,
                )
            })
            .collect();
        let mut charged: HashMap<String, (u16, i64)> = HashMap::new();
        for n in 0..TAPS {
            let account_id = n % RIDERS + 1;
            let time = T.saturating_add(n * 1_000);
            clock.set(time);
            let code = phones[(account_id - 1) as usize].code_text(time);
            let id = 10_000 + u128::from(n);
            let answer = gate
                .tap(tap(id, 500 + n as u32, pb::Direction::Bus, 501, time, code))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                answer.decision,
                pb::TapDecision::Accepted as i32,
                "{answer:?}"
            );
            // A trip under the daily cap costs nothing but still settles, as a zero line.
            charged.insert(
                format!("{id:032x}"),
                (provider_of(account_id), answer.fare_minor),
            );
        }
        charged
    });
    let mut batches = Vec::new();
    let mut close_id = 1;
    while !tapping.is_finished() {
        batches.extend(close(&mut settlement, close_id, vec![]).await);
        close_id += 1;
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    let charged = tapping.await.unwrap();
    batches.extend(close(&mut settlement, close_id, vec![]).await);
    assert!(batches.len() >= 4, "{} batches", batches.len());

    let folder = tempfile::tempdir().unwrap();
    let mut seen: HashMap<String, i64> = HashMap::new();
    let mut netted: BTreeMap<u16, i64> = BTreeMap::new();
    let mut files = Vec::new();
    for batch in &batches {
        let (file, manifest) = pull(&mut settlement, batch.batch_id, folder.path()).await;
        assert_eq!(file.len() as u64, batch.file_bytes);
        for (id, amount) in lines_of(&file) {
            assert!(
                seen.insert(id.clone(), amount).is_none(),
                "{id} is in two batches"
            );
        }
        *netted.entry(batch.provider_id as u16).or_default() += batch.net_minor;
        files.push((batch.clone(), file, manifest));
    }
    let expected_lines: HashMap<String, i64> = charged
        .iter()
        .map(|(id, (_, fare))| (id.clone(), *fare))
        .collect();
    assert_eq!(seen, expected_lines);
    let mut owed: BTreeMap<u16, i64> = BTreeMap::new();
    for (provider, fare) in charged.values() {
        *owed.entry(*provider).or_default() += fare;
    }
    assert_eq!(netted, owed);
    // Only the pulled pairs are in the folder: no partial files are left behind.
    let names: Vec<String> = std::fs::read_dir(folder.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), batches.len() * 2, "{names:?}");
    assert!(names.iter().all(|name| !name.starts_with('.')), "{names:?}");

    // Python's csv module reads the biggest file's trailer, which equals its lines' sums.
    let (biggest, _, _) = files
        .iter()
        .max_by_key(|(batch, _, _)| batch.line_count)
        .unwrap();
    let path = folder.path().join(&biggest.file_name);
    let (summed, trailer) = python_totals(&path);
    assert_eq!(summed, trailer);
    assert_eq!(
        trailer,
        serde_json::json!([
            biggest.line_count,
            biggest.total_charged_minor,
            biggest.total_refunded_minor,
            biggest.net_minor
        ])
    );

    // A refund of a tap in a closed batch is a negative line in the provider's next batch.
    let (refunded_id, (refunded_provider, refunded_fare)) = charged
        .iter()
        .find(|(_, (_, fare))| *fare > 0)
        .map(|(id, v)| (id.clone(), *v))
        .unwrap();
    let refund = admin
        .refund(pb::RefundRequest {
            transaction_id: tx(99_999),
            original_transaction_id: fareway::hex::decode_array::<16>(&refunded_id)
                .unwrap()
                .to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(refund.accepted, "{refund:?}");
    let next = close(&mut settlement, 500, vec![u32::from(refunded_provider)]).await;
    assert_eq!(next.len(), 1);
    let (file, _) = pull(&mut settlement, next[0].batch_id, folder.path()).await;
    assert_eq!(
        lines_of(&file),
        [(format!("{:032x}", 99_999), -refunded_fare)]
    );
    assert_eq!(next[0].net_minor, -refunded_fare);

    // Pulled again, after a restart: byte for byte the same.
    let (config, data, clock) = server.stop().await;
    let server = TestServer::start_with(config, data, clock).await;
    let mut settlement = server.settlement(Some(FINANCE_TOKEN)).await;
    let again = tempfile::tempdir().unwrap();
    for (batch, file, manifest) in &files {
        let (file_again, manifest_again) =
            pull(&mut settlement, batch.batch_id, again.path()).await;
        assert!(file_again == *file, "batch {} file differs", batch.batch_id);
        assert!(
            manifest_again == *manifest,
            "batch {} manifest differs",
            batch.batch_id
        );
    }
}

/// The call's status code; an error must carry its stable code string too.
fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    result.map(|_| Code::Ok).unwrap_or_else(|status| {
        assert!(
            status.metadata().get("fareway-error-code").is_some(),
            "{status:?}"
        );
        status.code()
    })
}

/// Close replays, conflicts, bad requests, unknown batches and acknowledgements, each with
/// its exact status code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_and_acknowledgements_answer_with_exact_codes() {
    let server = TestServer::start(|_| {}).await;
    let mut settlement = server.settlement(Some(FINANCE_TOKEN)).await;
    // No provider has anything yet: nothing to settle, no batch, no error.
    let none = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(100),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.batches.is_empty());

    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    open_account(&mut admin, 5, 1).await;
    let mut phone = phone_of(&issuer(1), 5, 5);
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    let ride = gate
        .tap(tap(70, 9, pb::Direction::Bus, 501, T, phone.code_text(T)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ride.fare_minor, 200);
    let charged = close(&mut settlement, 101, vec![1]).await;
    assert_eq!((charged[0].line_count, charged[0].net_minor), (1, 200));

    let first = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(1),
            providers: vec![1],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replay);
    assert_eq!(first.batches.len(), 1);
    let batch = &first.batches[0];
    // Nothing new to settle: an empty batch with a correct trailer.
    assert_eq!((batch.line_count, batch.net_minor), (0, 0));
    assert_eq!(batch.after_sequence, charged[0].through_sequence);
    assert_eq!(batch.currency, "EUR");
    assert_eq!(batch.status, pb::BatchStatus::Closed as i32);

    let replay = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(1),
            providers: vec![1, 1],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replay);
    assert_eq!(replay.batches, first.batches);

    let conflict = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(1),
            providers: vec![2],
            ..Default::default()
        })
        .await;
    assert_eq!(code(conflict), Code::AlreadyExists);
    let both = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(2),
            cutoff_time_ms: Some(5),
            cutoff_sequence: Some(5),
            ..Default::default()
        })
        .await;
    assert_eq!(code(both), Code::InvalidArgument);
    let short_id = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: vec![1, 2, 3],
            ..Default::default()
        })
        .await;
    assert_eq!(code(short_id), Code::InvalidArgument);
    let provider_zero = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(3),
            providers: vec![0],
            ..Default::default()
        })
        .await;
    assert_eq!(code(provider_zero), Code::InvalidArgument);
    let ahead = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(4),
            cutoff_sequence: Some(1_000_000),
            ..Default::default()
        })
        .await;
    assert_eq!(code(ahead), Code::FailedPrecondition);
    // Year 10000 and later cannot be written as RFC 3339: refused, not a fault.
    let far = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(5),
            cutoff_time_ms: Some(253_402_300_800_000),
            ..Default::default()
        })
        .await;
    assert_eq!(code(far), Code::InvalidArgument);
    // A provider with no entries and no batches is a mistake, not an empty batch.
    let unknown_provider = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(6),
            providers: vec![4242],
            ..Default::default()
        })
        .await;
    assert_eq!(code(unknown_provider), Code::NotFound);
    // Sequence 0 is a real cut-off (nothing new), not "now".
    let nothing = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(7),
            providers: vec![1],
            cutoff_sequence: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nothing.batches[0].line_count, 0);
    assert_eq!(nothing.batches[0].cutoff, "sequence:0");

    let wrong_hash = settlement
        .acknowledge_batch(pb::AcknowledgeBatchRequest {
            batch_id: batch.batch_id,
            file_sha256: vec![0; 32],
        })
        .await;
    assert_eq!(code(wrong_hash), Code::FailedPrecondition);
    let short_hash = settlement
        .acknowledge_batch(pb::AcknowledgeBatchRequest {
            batch_id: batch.batch_id,
            file_sha256: vec![0; 3],
        })
        .await;
    assert_eq!(code(short_hash), Code::InvalidArgument);
    let unknown = settlement
        .acknowledge_batch(pb::AcknowledgeBatchRequest {
            batch_id: 77,
            file_sha256: batch.file_sha256.clone(),
        })
        .await;
    assert_eq!(code(unknown), Code::NotFound);
    let acknowledged = settlement
        .acknowledge_batch(pb::AcknowledgeBatchRequest {
            batch_id: batch.batch_id,
            file_sha256: batch.file_sha256.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acknowledged.status, pb::BatchStatus::Acknowledged as i32);
    assert_eq!(acknowledged.acknowledged_at_ms, T.0);
    let listed = settlement
        .list_batches(pb::ListBatchesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .batches;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[1], acknowledged);
}
