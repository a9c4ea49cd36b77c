//! Overload: past its limit of requests in flight the engine refuses at once with
//! `RESOURCE_EXHAUSTED` (error code `overloaded`), never queues without bound, and recovers
//! by itself: the gates' retries with the same transaction ids are then accepted, each
//! tap charged exactly once. (The figures under 3x load are measured with the simulator:
//! `docs/PERFORMANCE.md`.)

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use fareway::ledger::{Ledger, LedgerConfig, audit};
use fareway_proto::v1 as pb;
use fareway_tests::server::{ADMIN_TOKEN, GATE_TOKEN, T, TestServer, open_rider, phone, tap};

const RIDERS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_taps_are_shed_at_once_and_their_retries_are_charged_once() {
    let server = TestServer::start(|config| config.limits.requests_in_flight_max = 4).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    for account_id in 1..=RIDERS {
        open_rider(
            &mut admin,
            u128::from(account_id) * 10,
            account_id,
            1,
            1_000,
        )
        .await;
    }
    // One bus tap per rider (route 501: 200), all sent at once on one connection.
    let requests: Vec<pb::TapRequest> = (1..=RIDERS)
        .map(|account_id| {
            let code = phone(account_id, 1).code_text(T);
            tap(
                1_000_000 + u128::from(account_id),
                7,
                pb::Direction::Bus,
                501,
                T,
                code,
            )
        })
        .collect();
    let gate = server.gate(Some(GATE_TOKEN)).await;
    let send_all = |requests: Vec<pb::TapRequest>| {
        let gate = gate.clone();
        async move {
            let mut calls = tokio::task::JoinSet::new();
            for request in requests {
                let mut gate = gate.clone();
                calls.spawn(async move { (request.clone(), gate.tap(request).await) });
            }
            let mut answers = Vec::new();
            while let Some(answer) = calls.join_next().await {
                answers.push(answer.unwrap());
            }
            answers
        }
    };

    let mut shed = Vec::new();
    let mut accepted = 0;
    for (request, answer) in send_all(requests.clone()).await {
        match answer {
            Ok(response) => {
                let response = response.into_inner();
                assert_eq!(response.decision, pb::TapDecision::Accepted as i32);
                assert_eq!(response.fare_minor, 200);
                assert!(!response.replay);
                accepted += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert_eq!(
                    status
                        .metadata()
                        .get(fareway::grpc::convert::ERROR_CODE_METADATA)
                        .unwrap(),
                    "overloaded"
                );
                assert_eq!(
                    status.message(),
                    "too many requests in flight; retry with the same transaction id"
                );
                shed.push(request);
            }
        }
    }
    assert!(
        !shed.is_empty(),
        "200 taps at once past a limit of 4: some are shed"
    );
    assert!(accepted >= 4, "the taps within the limit are answered");
    assert_eq!(accepted + shed.len(), RIDERS as usize);
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains(&format!("fareway_requests_shed_total {}\n", shed.len())),
        "{metrics}"
    );

    // The load is gone: the gates retry the shed taps one at a time, and every one is
    // accepted; the taps answered before are replays, charged once.
    let mut gate = gate.clone();
    for request in &shed {
        let response = gate.tap(request.clone()).await.unwrap().into_inner();
        assert_eq!(response.decision, pb::TapDecision::Accepted as i32);
        assert!(!response.replay, "a shed tap was never recorded");
    }
    for request in &requests {
        let response = gate.tap(request.clone()).await.unwrap().into_inner();
        assert_eq!(response.decision, pb::TapDecision::Accepted as i32);
        assert!(response.replay);
        assert_eq!(response.balance_after_minor, Some(800));
    }
    for account_id in 1..=RIDERS {
        let balance = admin
            .get_balance(pb::GetBalanceRequest { account_id })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(balance.balance_minor, 800, "rider {account_id}");
    }
    let (config, _folder, _clock) = server.stop().await;
    let ledger = Ledger::open(&config.data_dir, LedgerConfig::default()).unwrap();
    let report = audit::audit(ledger.view()).unwrap();
    assert!(report.ok(), "{:?}", report.violations);
    assert_eq!(report.balance_sum, 0);
}
