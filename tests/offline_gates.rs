//! Offline gates end to end (`docs/offline.md`): a gate library that decides alone from
//! the engine's signed bundle, queues its scans durably through a restart, and uploads
//! them to a real server on 127.0.0.1 (real RocksDB, real gRPC), which charges them at
//! their scan time, into debt if need be, and answers each. The sample city: bus route
//! 501 costs 200, Harbour (101) to Airport (104) 700, the maximum fare 900.

#![allow(clippy::unwrap_used)]

use fareway::clock::UnixMillis;
use fareway::fares::TapKind;
use fareway_gate::bundle::{self, Body, Bundle};
use fareway_gate::link::GateLink;
use fareway_gate::offline::{OfflineDecision, OfflineRefusal};
use fareway_proto::v1 as pb;
use fareway_tests::server::{
    ADMIN_TOKEN, GATE_TOKEN, GateClient, T, TestServer, open_rider, phone, tap, tx,
};
use tonic::Code;

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;
const BUS_501: TapKind = TapKind::Bus { route: 501 };

fn at(minutes: u64) -> UnixMillis {
    T.saturating_add(minutes * MINUTE_MS)
}

/// The engine's bundle key's public part, and a whole bundle from the engine.
async fn whole_bundle(server: &TestServer, gate: &mut GateClient) -> ([u8; 32], Bundle) {
    let (key, _) =
        fareway::settlement::key::SettlementKey::load_or_create(&server.config.bundle.key_file)
            .unwrap();
    let key = key.public_key();
    let request = pb::GetGateBundleRequest {
        have_version: 0,
        have_positions: vec![],
    };
    let answer = gate.get_gate_bundle(request).await.unwrap().into_inner();
    let Body::Whole(held) = bundle::open(&answer.body, &answer.signature, &key).unwrap() else {
        panic!("a gate without a bundle gets it whole");
    };
    (key, held)
}

async fn balance(server: &TestServer, account_id: u64) -> i64 {
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let request = pb::GetBalanceRequest { account_id };
    admin
        .get_balance(request)
        .await
        .unwrap()
        .into_inner()
        .balance_minor
}

fn upload(taps: Vec<(pb::TapRequest, bool)>) -> pb::UploadOfflineTapsRequest {
    pb::UploadOfflineTapsRequest {
        taps: taps
            .into_iter()
            .map(|(tap, opened)| pb::OfflineTap {
                tap: Some(tap),
                opened,
            })
            .collect(),
    }
}

fn status(result: &pb::OfflineTapResult) -> (pb::OfflineTapStatus, &str) {
    (
        pb::OfflineTapStatus::try_from(result.status).unwrap(),
        result.reason_code.as_str(),
    )
}

/// A bus reader loses its link, lets a rider with too little money on, restarts, and
/// uploads when the link is back: the ride is charged into debt, the rider is on the
/// next bundle's deny list, and a top-up lifts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_ride_is_queued_through_a_restart_uploaded_and_charged_into_debt() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    open_rider(&mut admin, 1, 501, 1, 100).await;
    let (engine_key, held) = whole_bundle(&server, &mut gate).await;
    let folder = tempfile::tempdir().unwrap();
    let queue = folder.path().join("gate-31.queue");

    // The link is down: the reader decides alone. The rider can pay 100 of a 200 fare;
    // the reader cannot know, and lets them on. Then a scan of something that is no code.
    let mut link = GateLink::open(31, engine_key, held.clone(), &queue).unwrap();
    let code = phone(501, 4).code_text(at(5));
    let decided = link.scan(1_001, BUS_501, &code, at(5)).unwrap();
    assert!(matches!(decided, OfflineDecision::Open(_)), "{decided:?}");
    let refused = link.scan(1_002, BUS_501, "NOT A CODE", at(6)).unwrap();
    assert_eq!(
        refused,
        OfflineDecision::Refuse(OfflineRefusal::Code(fareway::token::Reason::BadEncoding))
    );
    // The reader restarts: both scans are still queued.
    drop(link);
    let mut link = GateLink::open(31, engine_key, held, &queue).unwrap();
    let ids: Vec<u128> = link.pending().iter().map(|tap| tap.id).collect();
    assert_eq!(ids, vec![1_001, 1_002]);

    // The link is back (the engine's clock an hour on): upload, then refresh.
    server.clock.set(at(65));
    let uploaded = link.sync(&mut gate).await.unwrap();
    assert_eq!(
        (uploaded.answered, uploaded.rejected, uploaded.to_retry),
        (2, 1, 0)
    );
    assert!(uploaded.interrupted.is_none() && uploaded.refresh_failed.is_none());
    let answers: Vec<_> = uploaded
        .results
        .iter()
        .map(|(id, result)| (*id, status(result)))
        .collect();
    assert_eq!(
        answers,
        vec![
            (1_001, (pb::OfflineTapStatus::Charged, "")),
            (1_002, (pb::OfflineTapStatus::Rejected, "refused_at_gate")),
        ]
    );
    assert!(link.pending().is_empty());
    assert_eq!(std::fs::metadata(&queue).unwrap().len(), 0);
    assert_eq!(balance(&server, 501).await, -100);
    assert!(link.bundle().denied.contains(&501), "the debt deny-lists");
    // Online, the rider in debt is refused at once: past the credit limit.
    let online = gate
        .tap(tap(
            2_000,
            32,
            pb::Direction::Bus,
            501,
            at(65),
            phone(501, 4).code_text(at(65)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(online.reason_code, "credit_limit_exceeded");

    // A top-up clears the debt: the next refresh lifts the deny-listing.
    let top_up = pb::TopUpRequest {
        transaction_id: tx(50),
        account_id: 501,
        amount_minor: 300,
    };
    assert!(admin.top_up(top_up).await.unwrap().into_inner().accepted);
    link.sync(&mut gate).await.unwrap();
    assert!(!link.bundle().denied.contains(&501));
    assert_eq!(balance(&server, 501).await, 200);
    server.stop_and_audit().await;
}

/// Every answer an upload gives, each with its documented status and reason, and
/// nothing recorded twice or half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_uploaded_tap_gets_its_status_and_reason() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    open_rider(&mut admin, 1, 601, 1, 5_000).await;
    server.clock.set(at(120));
    let mut rider = phone(601, 6);
    let bus = |id, scan: UnixMillis, code: String| {
        (tap(id, 41, pb::Direction::Bus, 501, scan, code), true)
    };
    let exit_code = rider.code_text(at(40));
    let entry_code = rider.code_text(at(0));
    // A code whose device signature's last byte was changed.
    let mut forged = fareway::token::format::decode_text(&rider.code_text(at(10))).unwrap();
    *forged.last_mut().unwrap() ^= 1;
    let forged = fareway::token::format::encode_text(&forged);
    let too_old = T.saturating_sub(15 * DAY_MS);
    let taps = vec![
        // An exit, then its entry (the entry gate uploads after the exit gate).
        (
            tap(101, 42, pb::Direction::Exit, 104, at(40), exit_code.clone()),
            true,
        ),
        (
            tap(102, 43, pb::Direction::Entry, 101, at(0), entry_code),
            true,
        ),
        bus(103, at(10), forged),
        bus(104, too_old, rider.code_text(too_old)),
        // Scanned before its code was made (beyond the clock skew).
        bus(105, at(11), rider.code_text(at(30))),
        // The gate stayed shut.
        (
            tap(
                106,
                41,
                pb::Direction::Bus,
                501,
                at(12),
                rider.code_text(at(12)),
            ),
            false,
        ),
        // The exit's code again, at another gate, still fresh: a replay.
        bus(107, at(42), exit_code),
    ];
    let first = gate
        .upload_offline_taps(upload(taps.clone()))
        .await
        .unwrap()
        .into_inner();
    let answers: Vec<_> = first.results.iter().map(status).collect();
    use pb::OfflineTapStatus::{Charged, Corrected, Duplicate, Rejected};
    assert_eq!(
        answers,
        vec![
            (Charged, ""),
            (Corrected, ""),
            (Rejected, "bad_code_signature"),
            (Rejected, "scan_time_too_old"),
            (Rejected, "code_from_future"),
            (Rejected, "refused_at_gate"),
            (Rejected, "code_reused"),
        ],
        "{first:?}"
    );
    assert_eq!(first.results[0].fare_minor, 900);
    assert_eq!(first.results[1].corrections, 1);
    // The exit at the maximum, corrected to Harbour-Airport's 700 by its entry.
    assert_eq!(balance(&server, 601).await, 5_000 - 700);

    // The gate retries the whole upload (its answer was lost): duplicates, the same
    // reasons, nothing charged again; what was recorded nowhere is answered as before.
    let again = gate
        .upload_offline_taps(upload(taps.clone()))
        .await
        .unwrap()
        .into_inner();
    let answers: Vec<_> = again.results.iter().map(status).collect();
    assert_eq!(
        answers,
        vec![
            (Duplicate, ""),
            (Duplicate, ""),
            (Duplicate, "bad_code_signature"),
            (Rejected, "scan_time_too_old"),
            (Duplicate, "code_from_future"),
            (Rejected, "refused_at_gate"),
            (Duplicate, "code_reused"),
        ],
        "{again:?}"
    );
    assert_eq!(balance(&server, 601).await, 5_000 - 700);

    // The same id with other content: a conflict, recorded nowhere.
    let mut other = taps[0].clone();
    other.0.gate_id = 99;
    let conflict = gate
        .upload_offline_taps(upload(vec![other]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&conflict.results[0]), (Rejected, "id_conflict"));
    // A malformed tap among good ones: rejected by itself, naming its field.
    let mut malformed = bus(108, at(13), rider.code_text(at(13)));
    malformed.0.route_id = 0;
    let good = bus(109, at(115), rider.code_text(at(115)));
    let mixed = gate
        .upload_offline_taps(upload(vec![malformed, good]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&mixed.results[0]), (Rejected, "invalid_argument"));
    assert!(mixed.results[0].message.contains("route_id"), "{mixed:?}");
    assert_eq!(status(&mixed.results[1]).0, Charged);
    assert_eq!(mixed.results[1].transaction_id, tx(109));

    // A gate whose clock ran fast while offline: not lost, to be uploaded again later.
    let ahead = bus(110, at(130), rider.code_text(at(130)));
    let waits = gate
        .upload_offline_taps(upload(vec![ahead.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status(&waits.results[0]),
        (pb::OfflineTapStatus::Retry, "scan_time_ahead")
    );
    server.clock.set(at(131));
    let later = gate
        .upload_offline_taps(upload(vec![ahead]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&later.results[0]), (Charged, ""));
    // A tap the gate sent online, whose answer it lost before it went offline and
    // queued the same scan: the recorded answer, not a conflict.
    let scan = rider.code_text(at(131));
    let online = tap(111, 44, pb::Direction::Bus, 501, at(131), scan);
    gate.tap(online.clone()).await.unwrap();
    let queued = gate
        .upload_offline_taps(upload(vec![(online, true)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&queued.results[0]), (Duplicate, ""));
    // More than 32 taps in one upload: INVALID_ARGUMENT, and nothing of it recorded.
    let many: Vec<_> = (0..33u128)
        .map(|i| bus(10_000 + i, at(15), rider.code_text(at(15))))
        .collect();
    let refused = gate.upload_offline_taps(upload(many)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("at most 32"), "{refused:?}");
    // The journey (700) and the bus rides (200, more than 90 minutes after the journey
    // started; then 100 and 100, each within 90 minutes of the one before).
    assert_eq!(balance(&server, 601).await, 5_000 - 700 - 200 - 100 - 100);
    server.stop_and_audit().await;
}

/// A gate offline for long uploads its queue in calls of at most 32 taps, all of them,
/// and the rider's day is capped as it would have been online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_queue_is_uploaded_in_batches_and_the_day_is_capped() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    open_rider(&mut admin, 1, 701, 1, 50_000).await;
    let (engine_key, held) = whole_bundle(&server, &mut gate).await;
    let folder = tempfile::tempdir().unwrap();
    let mut link = GateLink::open(51, engine_key, held, &folder.path().join("queue")).unwrap();
    let mut rider = phone(701, 9);
    for ride in 0..70u64 {
        let scanned = at(ride * 10);
        let decided = link
            .scan(
                5_000 + u128::from(ride),
                BUS_501,
                &rider.code_text(scanned),
                scanned,
            )
            .unwrap();
        assert!(matches!(decided, OfflineDecision::Open(_)));
    }
    server.clock.set(at(700));
    let uploaded = link.upload(&mut gate).await.unwrap();
    assert_eq!(
        (uploaded.answered, uploaded.rejected, uploaded.to_retry),
        (70, 0, 0)
    );
    assert_eq!(uploaded.results.len(), 70);
    assert!(link.pending().is_empty());
    // Seventy rides of 200 (less 100 each within 90 minutes of the one before), capped
    // at 1,500 for the day.
    assert_eq!(balance(&server, 701).await, 50_000 - 1_500);
    server.stop_and_audit().await;
}
