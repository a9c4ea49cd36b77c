//! The gate service end to end: a real server on 127.0.0.1 with a real RocksDB in a
//! temporary folder, driven over real gRPC. The sample city: Harbour (101) to Airport
//! (104) costs 700, Harbour to Central (100) 300, bus route 501 costs 200, the maximum
//! fare is 900, a transfer within 90 minutes saves 100.

#![allow(clippy::unwrap_used)]

use fareway::clock::UnixMillis;
use fareway::ledger::{LedgerConfig, audit};
use fareway::token::mint::Issuer;
use fareway::token::vectors;
use fareway_proto::v1 as pb;
use fareway_tests::server::{
    ADMIN_TOKEN, FINANCE_TOKEN, GATE_TOKEN, T, TestServer, open_rider, phone, phone_of, tap, tx,
};
use tonic::Code;

const MINUTE_MS: u64 = 60_000;

fn at(minutes: u64) -> UnixMillis {
    T.saturating_add(minutes * MINUTE_MS)
}

fn accepted(response: &pb::TapResponse) -> bool {
    response.decision == pb::TapDecision::Accepted as i32
}

/// A full metro journey and a bus ride: fares, balances, journeys and the statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metro_journey_and_a_bus_ride_are_priced_and_charged() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    open_rider(&mut admin, 1, 1001, 1, 2_000).await;
    let mut phone = phone(1001, 7);

    server.clock.set(at(0));
    let entry = gate
        .tap(tap(
            10,
            11,
            pb::Direction::Entry,
            101,
            at(0),
            phone.code_text(at(0)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(accepted(&entry), "{entry:?}");
    assert_eq!(entry.fare_minor, 0);
    assert_eq!(entry.balance_after_minor, Some(2_000));
    assert_ne!(entry.journey_id, 0);
    assert!(!entry.replay);

    server.clock.set(at(40));
    let exit = gate
        .tap(tap(
            11,
            12,
            pb::Direction::Exit,
            104,
            at(40),
            phone.code_text(at(40)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(accepted(&exit), "{exit:?}");
    assert_eq!(exit.fare_minor, 700);
    assert_eq!(exit.balance_after_minor, Some(1_300));
    assert_eq!(exit.journey_id, entry.journey_id);
    assert_eq!(exit.transaction_id, tx(11));

    // A bus 50 minutes after the journey started: a transfer, 200 - 100.
    server.clock.set(at(50));
    let bus = gate
        .tap(tap(
            12,
            31,
            pb::Direction::Bus,
            501,
            at(50),
            phone.code_text(at(50)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(accepted(&bus), "{bus:?}");
    assert_eq!(bus.fare_minor, 100);
    assert_eq!(bus.balance_after_minor, Some(1_200));

    let balance = admin
        .get_balance(pb::GetBalanceRequest { account_id: 1001 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(balance.balance_minor, 1_200);
    assert_eq!(balance.status, pb::AccountStatus::Active as i32);
    let statement = admin
        .get_statement(pb::GetStatementRequest {
            account_id: 1001,
            after_sequence: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let lines: Vec<(String, i64, i64)> = statement
        .lines
        .iter()
        .map(|line| {
            (
                line.kind.clone(),
                line.amount_minor,
                line.balance_after_minor,
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("top_up".to_string(), 2_000, 2_000),
            ("metro_exit".to_string(), -700, 1_300),
            ("bus".to_string(), -100, 1_200),
        ]
    );
    assert_eq!(statement.next_after_sequence, 0);

    // After a graceful stop the data directory passes the audit.
    server.stop_and_audit().await;
}

/// A rider code whose credential carries a concession bit (`docs/qr-token.md`: 0x01
/// student, 0x02 senior) is charged what the fares file says for it: here students pay
/// half, seniors nothing, and a code without the bits the full fare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concession_on_the_riders_code_is_charged_as_the_fares_file_says() {
    let folder = tempfile::tempdir().unwrap();
    let fares_file = folder.path().join("fares.toml");
    let sample =
        std::fs::read_to_string(fareway_tests::workspace_root().join("docs/sample-city.toml"))
            .unwrap();
    let concessions = "\n[[concession]]\nname = \"student\"\npayable_percent = 50\n\n[[concession]]\nname = \"senior\"\npayable_percent = 0\n";
    std::fs::write(&fares_file, format!("{sample}{concessions}")).unwrap();
    let server = TestServer::start(|config| config.fares_file = fares_file.clone()).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    let issuer = Issuer::from_seed(1, [1; 32]);
    server.clock.set(at(0));
    let mut fares = Vec::new();
    for (n, flags) in [0x00u8, 0x01, 0x02, 0x81].into_iter().enumerate() {
        let account_id = 2_001 + n as u64;
        open_rider(&mut admin, 100 + 2 * n as u128, account_id, 1, 2_000).await;
        let key = fareway::token::mint::Device::key_from_seed(&[n as u8 + 1; 32]);
        let credential = issuer.issue(
            account_id,
            T.saturating_add(7 * 86_400_000),
            flags,
            fareway::token::mint::Device::public_key_of(&key),
        );
        let mut phone = fareway::token::mint::Device::new(key, credential, 0);
        let id = 200 + 10 * n as u128;
        let bus = tap(
            id,
            31,
            pb::Direction::Bus,
            501,
            at(0),
            phone.code_text(at(0)),
        );
        let answer = gate.tap(bus).await.unwrap().into_inner();
        assert!(accepted(&answer), "{answer:?}");
        fares.push(answer.fare_minor);
    }
    // No bits, student, senior, and student with a provider's own bit (0x80) beside it.
    assert_eq!(fares, vec![200, 100, 0, 100]);
    server.stop_and_audit().await;
}

/// Every rejection reason of the published vectors comes back as that reason over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_code_rejection_reason_is_answered_with_its_code() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    // The vectors' deny-listed rider is deny-listed in the ledger.
    open_rider(&mut admin, 1, 6666, 1, 1_000).await;
    let denied = admin
        .add_deny_list_entry(pb::AccountRequest {
            transaction_id: tx(3),
            account_id: 6666,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(denied.accepted);
    let file = vectors::generate();
    let mut checked = 0;
    for (index, vector) in file.vectors.iter().enumerate() {
        let Some(reason) = &vector.reason else {
            continue;
        };
        let scan_time = UnixMillis(vector.now_ms);
        server.clock.set(scan_time);
        let id = 100 + index as u128;
        let answer = gate
            .tap(tap(
                id,
                5,
                pb::Direction::Entry,
                101,
                scan_time,
                vector.text.clone(),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(!accepted(&answer), "{}: {answer:?}", vector.name);
        assert_eq!(&answer.reason_code, reason, "{}", vector.name);
        assert_ne!(
            answer.reason,
            pb::TapReason::Unspecified as i32,
            "{}",
            vector.name
        );
        checked += 1;
    }
    // Every invalid vector, the weak device key's among them.
    assert_eq!(checked, 20);
}

/// The ledger's reasons: unknown account, closed, deny-listed, broke, unknown places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_account_and_place_rejection_is_answered_with_its_code() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    open_rider(&mut admin, 1, 501, 1, 0).await; // broke
    open_rider(&mut admin, 3, 502, 1, 1_000).await; // deny-listed below
    open_rider(&mut admin, 5, 503, 1, 0).await; // closed below
    open_rider(&mut admin, 7, 504, 1, 1_000).await; // for unknown places
    admin
        .add_deny_list_entry(pb::AccountRequest {
            transaction_id: tx(9),
            account_id: 502,
        })
        .await
        .unwrap();
    let closed = admin
        .close_account(pb::AccountRequest {
            transaction_id: tx(10),
            account_id: 503,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(closed.accepted, "{closed:?}");
    let cases = [
        (500, pb::Direction::Entry, 101, "unknown_account"),
        (501, pb::Direction::Entry, 101, "credit_limit_exceeded"),
        (502, pb::Direction::Entry, 101, "account_denied"),
        (503, pb::Direction::Entry, 101, "account_closed"),
        (504, pb::Direction::Entry, 999, "unknown_station"),
        (504, pb::Direction::Bus, 999, "unknown_route"),
    ];
    for (index, (account, direction, place, reason)) in cases.into_iter().enumerate() {
        let code = phone(account, index as u8 + 1).code_text(T);
        let answer = gate
            .tap(tap(100 + index as u128, 5, direction, place, T, code))
            .await
            .unwrap()
            .into_inner();
        assert!(!accepted(&answer), "{reason}: {answer:?}");
        assert_eq!(answer.reason_code, reason);
    }
    assert_eq!(
        admin
            .get_balance(pb::GetBalanceRequest { account_id: 502 })
            .await
            .unwrap()
            .into_inner()
            .status,
        pb::AccountStatus::Denied as i32
    );
}

/// A gate retrying gets the original answer; the code elsewhere is a replay; an id with
/// other content is ALREADY_EXISTS; a malformed request is INVALID_ARGUMENT naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_replays_conflicts_and_malformed_requests() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    open_rider(&mut admin, 1, 1001, 1, 2_000).await;
    let code = phone(1001, 7).code_text(T);
    let first = tap(10, 31, pb::Direction::Bus, 501, T, code.clone());
    let answer = gate.tap(first.clone()).await.unwrap().into_inner();
    assert_eq!(answer.fare_minor, 200);
    assert!(!answer.replay);

    // The same id again (a retry after a timeout): the same answer, marked a replay.
    let retry = gate.tap(first.clone()).await.unwrap().into_inner();
    assert!(retry.replay);
    assert_eq!(retry.fare_minor, 200);
    assert_eq!(retry.balance_after_minor, Some(1_800));
    // The same code at the same gate under a new id (scanned twice): the original answer.
    let twice = gate
        .tap(tap(11, 31, pb::Direction::Bus, 501, T, code.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(accepted(&twice) && twice.replay, "{twice:?}");
    assert_eq!(twice.journey_id, answer.journey_id);
    // The same code at another gate: a replay, rejected.
    let elsewhere = gate
        .tap(tap(12, 32, pb::Direction::Bus, 501, T, code.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(elsewhere.reason_code, "code_reused");
    // The first id with other content.
    let conflict = gate
        .tap(tap(10, 33, pb::Direction::Bus, 501, T, code.clone()))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists, "{conflict:?}");
    assert!(conflict.message().contains("gate_id"), "{conflict:?}");
    let balance = admin
        .get_balance(pb::GetBalanceRequest { account_id: 1001 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(balance.balance_minor, 1_800);

    let mut short_id = first.clone();
    short_id.transaction_id = vec![1; 15];
    let mut no_direction = first.clone();
    no_direction.direction = 0;
    let mut future = first.clone();
    future.transaction_id = tx(20);
    future.scan_time_ms = at(10).0;
    for (request, field) in [
        (short_id, "transaction_id"),
        (no_direction, "direction"),
        (future, "scan_time_ms"),
    ] {
        let status = gate.tap(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{status:?}");
    }
    // Admin input too: a top-up of zero names its field.
    let zero = admin
        .top_up(pb::TopUpRequest {
            transaction_id: tx(30),
            account_id: 1001,
            amount_minor: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(zero.code(), Code::InvalidArgument);
    assert!(zero.message().starts_with("amount_minor"), "{zero:?}");
}

/// The callers of the role table: no token, a token nobody configured, and each role.
const CALLERS: [(Option<&str>, &str); 5] = [
    (None, "none"),
    (Some("not-a-configured-token"), "wrong"),
    (Some(GATE_TOKEN), "gate"),
    (Some(FINANCE_TOKEN), "finance"),
    (Some(ADMIN_TOKEN), "admin"),
];

/// Calls one RPC as one caller, with arguments that change nothing (so that the table's
/// rows do not depend on each other); returns the status code.
async fn call_as(server: &TestServer, rpc: &str, token: Option<&str>) -> Code {
    fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
        result.map_or_else(|status| status.code(), |_| Code::Ok)
    }
    let mut gate = server.gate(token).await;
    let mut admin = server.admin(token).await;
    let mut settlement = server.settlement(token).await;
    // An empty transaction id is refused after the role check: INVALID_ARGUMENT.
    let no_id = Vec::new();
    let account = pb::AccountRequest {
        transaction_id: no_id.clone(),
        account_id: 1,
    };
    match rpc {
        // A code that does not decode is an answer (rejected), not an error.
        "Tap" => code(
            gate.tap(tap(1, 1, pb::Direction::Bus, 501, T, "X".into()))
                .await,
        ),
        "TapStream" => {
            let taps = tokio_stream::iter([tap(2, 1, pb::Direction::Bus, 501, T, "X".into())]);
            match gate.tap_stream(taps).await {
                Ok(answers) => {
                    let mut answers = answers.into_inner();
                    match answers.message().await {
                        Ok(Some(_)) => Code::Ok,
                        Ok(None) => Code::Unknown,
                        Err(status) => status.code(),
                    }
                }
                Err(status) => status.code(),
            }
        }
        "OpenAccount" => code(
            admin
                .open_account(pb::OpenAccountRequest {
                    transaction_id: no_id,
                    account_id: 1,
                    provider_id: 1,
                    credit_limit_minor: 0,
                })
                .await,
        ),
        "CloseAccount" => code(admin.close_account(account).await),
        "TopUp" => code(
            admin
                .top_up(pb::TopUpRequest {
                    transaction_id: no_id,
                    account_id: 1,
                    amount_minor: 5,
                })
                .await,
        ),
        "Refund" => code(
            admin
                .refund(pb::RefundRequest {
                    transaction_id: no_id,
                    original_transaction_id: tx(1),
                })
                .await,
        ),
        "AddDenyListEntry" => code(admin.add_deny_list_entry(account).await),
        "RemoveDenyListEntry" => code(admin.remove_deny_list_entry(account).await),
        // No account 1: NOT_FOUND means the call passed the role check.
        "GetBalance" => code(
            admin
                .get_balance(pb::GetBalanceRequest { account_id: 1 })
                .await,
        ),
        "GetStatement" => code(
            admin
                .get_statement(pb::GetStatementRequest {
                    account_id: 1,
                    after_sequence: 0,
                    limit: 10,
                })
                .await,
        ),
        "RegisterIssuerKey" => code(
            admin
                .register_issuer_key(pb::RegisterIssuerKeyRequest {
                    transaction_id: no_id,
                    provider_id: 9,
                    provider_name: "nine".into(),
                    public_key: vec![0; 32],
                })
                .await,
        ),
        "RevokeIssuerKey" => code(
            admin
                .revoke_issuer_key(pb::RevokeIssuerKeyRequest {
                    transaction_id: no_id,
                    provider_id: 9,
                    key_id: 9,
                })
                .await,
        ),
        "CloseBatches" => code(
            settlement
                .close_batches(pb::CloseBatchesRequest::default())
                .await,
        ),
        "ListBatches" => code(
            settlement
                .list_batches(pb::ListBatchesRequest::default())
                .await,
        ),
        // No batch 9: NOT_FOUND means the call passed the role check.
        "PullBatch" => code(
            settlement
                .pull_batch(pb::PullBatchRequest { batch_id: 9 })
                .await,
        ),
        "AcknowledgeBatch" => code(
            settlement
                .acknowledge_batch(pb::AcknowledgeBatchRequest {
                    batch_id: 9,
                    file_sha256: vec![0; 32],
                })
                .await,
        ),
        "CreateCheckpoint" => code(
            admin
                .create_checkpoint(pb::CreateCheckpointRequest {
                    name: String::new(),
                })
                .await,
        ),
        "GetSigningKey" => code(
            settlement
                .get_signing_key(pb::GetSigningKeyRequest {})
                .await,
        ),
        other => panic!("no call for {other}"),
    }
}

/// Every RPC against every caller: the exact status code of each cell. Columns: no token,
/// a wrong token, gate, finance, admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_each_role_with_its_exact_code() {
    use Code::{InvalidArgument as Invalid, NotFound, Ok, PermissionDenied as Denied};
    const NONE: Code = Code::Unauthenticated;
    #[rustfmt::skip]
    let table: [(&str, [Code; 5]); 18] = [
        //                         none  wrong gate    finance  admin
        ("Tap",                   [NONE, NONE, Ok,     Denied,  Denied]),
        ("TapStream",             [NONE, NONE, Ok,     Denied,  Denied]),
        ("OpenAccount",           [NONE, NONE, Denied, Denied,  Invalid]),
        ("CloseAccount",          [NONE, NONE, Denied, Denied,  Invalid]),
        ("TopUp",                 [NONE, NONE, Denied, Denied,  Invalid]),
        ("Refund",                [NONE, NONE, Denied, Denied,  Invalid]),
        ("AddDenyListEntry",      [NONE, NONE, Denied, Denied,  Invalid]),
        ("RemoveDenyListEntry",   [NONE, NONE, Denied, Denied,  Invalid]),
        ("GetBalance",            [NONE, NONE, Denied, Denied,  NotFound]),
        ("GetStatement",          [NONE, NONE, Denied, Denied,  NotFound]),
        ("RegisterIssuerKey",     [NONE, NONE, Denied, Denied,  Invalid]),
        ("RevokeIssuerKey",       [NONE, NONE, Denied, Denied,  Invalid]),
        ("CreateCheckpoint",      [NONE, NONE, Denied, Denied,  Invalid]),
        ("CloseBatches",          [NONE, NONE, Denied, Invalid, Denied]),
        ("ListBatches",           [NONE, NONE, Denied, Ok,      Denied]),
        ("PullBatch",             [NONE, NONE, Denied, NotFound, Denied]),
        ("AcknowledgeBatch",      [NONE, NONE, Denied, NotFound, Denied]),
        ("GetSigningKey",         [NONE, NONE, Denied, Ok,      Denied]),
    ];
    let server = TestServer::start(|_| {}).await;
    let mut wrong = Vec::new();
    for (rpc, expected) in table {
        for ((token, who), expected) in CALLERS.into_iter().zip(expected) {
            let got = call_as(&server, rpc, token).await;
            if got != expected {
                wrong.push(format!("{rpc} as {who}: {got:?}, expected {expected:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The standard health service answers without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_service_says_serving() {
    let server = TestServer::start(|_| {}).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    for service in [
        "",
        "fareway.v1.GateService",
        "fareway.v1.AdminService",
        "fareway.v1.SettlementService",
    ] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

/// A stream of taps: every answer comes back, matched by transaction id, with faults
/// reported per tap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_stream_answers_every_tap_by_transaction_id() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    let riders = 20u64;
    let mut requests = Vec::new();
    for rider in 0..riders {
        open_rider(
            &mut admin,
            1_000 + u128::from(rider) * 2,
            2_000 + rider,
            1,
            1_000,
        )
        .await;
        let mut phone = phone(2_000 + rider, rider as u8 + 1);
        requests.push(tap(
            10_000 + u128::from(rider),
            40,
            pb::Direction::Bus,
            501,
            T,
            phone.code_text(T),
        ));
    }
    // One malformed tap: its fault comes back as its answer.
    let mut malformed = requests[0].clone();
    malformed.transaction_id = tx(99_999);
    malformed.direction = 0;
    requests.push(malformed);
    let sent = requests.len();
    let mut answers = gate
        .tap_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut by_id = std::collections::HashMap::new();
    while let Some(answer) = answers.message().await.unwrap() {
        by_id.insert(answer.transaction_id.clone(), answer);
    }
    assert_eq!(by_id.len(), sent);
    for rider in 0..riders {
        let answer = &by_id[&tx(10_000 + u128::from(rider))];
        assert!(accepted(answer), "{answer:?}");
        assert_eq!(answer.fare_minor, 200);
        assert_eq!(answer.balance_after_minor, Some(800));
    }
    let fault = by_id[&tx(99_999)].error.as_ref().unwrap();
    assert_eq!(fault.code, Code::InvalidArgument as i32);
    assert!(fault.message.starts_with("direction"), "{fault:?}");
}

/// An entry never exited is closed by the sweeper with the maximum fare, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_charges_a_journey_with_no_exit_once() {
    let server = TestServer::start(|config| config.taps.journey_sweep_interval_ms = 20).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    open_rider(&mut admin, 1, 1001, 1, 2_000).await;
    let entry = gate
        .tap(tap(
            10,
            11,
            pb::Direction::Entry,
            101,
            T,
            phone(1001, 7).code_text(T),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(accepted(&entry));
    // Four hours and a minute later the journey is incomplete.
    server.clock.set(at(4 * 60 + 1));
    let mut balance = 2_000;
    for _ in 0..250 {
        balance = admin
            .get_balance(pb::GetBalanceRequest { account_id: 1001 })
            .await
            .unwrap()
            .into_inner()
            .balance_minor;
        if balance != 2_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(balance, 1_100);
    // More sweeps change nothing.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let statement = admin
        .get_statement(pb::GetStatementRequest {
            account_id: 1001,
            after_sequence: 0,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<&str> = statement
        .lines
        .iter()
        .map(|line| line.kind.as_str())
        .collect();
    assert_eq!(kinds, vec!["top_up", "close_journey"]);
    assert_eq!(statement.lines[1].journey_id, entry.journey_id);
}

/// Keys registered and revoked through the admin API take effect at once and survive a
/// restart, as do accounts and open journeys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_keys_change_through_the_admin_api_and_survive_a_restart() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    let issuer = Issuer::from_seed(3, [33; 32]);
    let register = pb::RegisterIssuerKeyRequest {
        transaction_id: tx(1),
        provider_id: 3,
        provider_name: "tram-wallet".into(),
        public_key: issuer.public_key().to_vec(),
    };
    let registered = admin
        .register_issuer_key(register.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(registered.key_id, issuer.key_id());
    assert!(!registered.revoked);
    // Registering it again changes nothing.
    assert_eq!(
        admin
            .register_issuer_key(register)
            .await
            .unwrap()
            .into_inner(),
        registered
    );
    let opened = admin
        .open_account(pb::OpenAccountRequest {
            transaction_id: tx(2),
            account_id: 3003,
            provider_id: 3,
            credit_limit_minor: 500,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(opened.accepted);
    let mut phone = phone_of(&issuer, 3003, 9);
    let entry = gate
        .tap(tap(
            10,
            11,
            pb::Direction::Entry,
            101,
            T,
            phone.code_text(T),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(accepted(&entry), "{entry:?}");

    let revoked = admin
        .revoke_issuer_key(pb::RevokeIssuerKeyRequest {
            transaction_id: tx(3),
            provider_id: 3,
            key_id: issuer.key_id(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    let after = gate
        .tap(tap(11, 12, pb::Direction::Exit, 100, T, phone.code_text(T)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.reason_code, "revoked_issuer_key");
    let unknown = admin
        .revoke_issuer_key(pb::RevokeIssuerKeyRequest {
            transaction_id: tx(4),
            provider_id: 3,
            key_id: 12345,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Restart on the same folder: the key is still revoked, the journey still open.
    let (config, folder, clock) = server.stop().await;
    let server = TestServer::start_with(config, folder, clock).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    let still = gate
        .tap(tap(12, 12, pb::Direction::Exit, 100, T, phone.code_text(T)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.reason_code, "revoked_issuer_key");
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    admin
        .register_issuer_key(pb::RegisterIssuerKeyRequest {
            transaction_id: tx(5),
            provider_id: 3,
            provider_name: String::new(),
            public_key: Issuer::from_seed(3, [34; 32]).public_key().to_vec(),
        })
        .await
        .unwrap();
    let new_issuer = Issuer::from_seed(3, [34; 32]);
    let mut new_phone = phone_of(&new_issuer, 3003, 10);
    let exit = gate
        .tap(tap(
            13,
            12,
            pb::Direction::Exit,
            100,
            T,
            new_phone.code_text(T),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(accepted(&exit), "{exit:?}");
    assert_eq!(exit.journey_id, entry.journey_id);
    assert_eq!(exit.fare_minor, 300);
}

/// The Prometheus endpoint counts taps by decision and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_taps_by_decision_and_reason() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    open_rider(&mut admin, 1, 1001, 1, 2_000).await;
    gate.tap(tap(
        10,
        31,
        pb::Direction::Bus,
        501,
        T,
        phone(1001, 7).code_text(T),
    ))
    .await
    .unwrap();
    gate.tap(tap(11, 31, pb::Direction::Bus, 501, T, "%%%".into()))
        .await
        .unwrap();
    let text = server.metrics_text().await;
    for line in [
        "fareway_taps_total{decision=\"accepted\",reason=\"none\"} 1",
        "fareway_taps_total{decision=\"rejected\",reason=\"bad_encoding\"} 1",
        "fareway_tap_latency_seconds_count 2",
        "fareway_ledger_queue_depth 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

/// A checkpoint made while the server runs is a whole data directory as of that moment:
/// it audits clean and holds what was written before it, not what came after. Names are
/// checked and never reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_a_consistent_copy_of_the_ledger() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    open_rider(&mut admin, 10, 7, 1, 1_000).await;
    let checkpoint = admin
        .create_checkpoint(pb::CreateCheckpointRequest {
            name: "nightly-2027-01-15".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let path = std::path::PathBuf::from(&checkpoint.path);
    assert_eq!(path, server.config.backup_dir.join("nightly-2027-01-15"));
    admin
        .top_up(pb::TopUpRequest {
            transaction_id: tx(20),
            account_id: 7,
            amount_minor: 500,
        })
        .await
        .unwrap();
    for (name, code) in [
        ("nightly-2027-01-15", Code::AlreadyExists),
        ("", Code::InvalidArgument),
        ("..", Code::InvalidArgument),
        ("a/b", Code::InvalidArgument),
        (&"x".repeat(65), Code::InvalidArgument),
    ] {
        let refused = admin
            .create_checkpoint(pb::CreateCheckpointRequest { name: name.into() })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{name:?}: {refused:?}");
    }
    // The folder stays until the end of the test.
    let (_config, _folder, _clock) = server.stop().await;

    let ledger = fareway::ledger::Ledger::open(&path, LedgerConfig::default()).unwrap();
    let report = audit::audit(ledger.view()).unwrap();
    assert!(report.ok(), "{:?}", report.violations);
    assert_eq!(report.balance_sum, 0);
    let account = ledger
        .account(fareway::ledger::AccountRef::Rider(7))
        .unwrap()
        .unwrap();
    assert_eq!(
        account.balance.0, 1_000,
        "the top-up after the checkpoint is not in it"
    );
}

/// Gate bundles (`docs/offline.md`): the engine signs what a gate needs to decide alone;
/// the gate library opens it with the engine's public key and decides as the engine
/// would; a deny-list change reaches the gate as a delta of that one change; requests the
/// engine cannot answer get their statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_decides_offline_from_the_engines_signed_bundles() {
    use fareway_gate::bundle::{self, Body};
    use fareway_gate::offline::{OfflineDecision, OfflineGate, OfflineRefusal};

    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    open_rider(&mut admin, 1, 501, 1, 1_000).await;
    open_rider(&mut admin, 3, 502, 1, 1_000).await;
    let account = |id, account_id| pb::AccountRequest {
        transaction_id: tx(id),
        account_id,
    };
    let denied = admin.add_deny_list_entry(account(5, 502)).await.unwrap();
    assert!(denied.into_inner().accepted);
    let (engine_key, _) =
        fareway::settlement::key::SettlementKey::load_or_create(&server.config.bundle.key_file)
            .unwrap();
    let engine_key = engine_key.public_key();
    let request = |have_version, have_positions| pb::GetGateBundleRequest {
        have_version,
        have_positions,
    };

    let whole = gate
        .get_gate_bundle(request(0, vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(!whole.delta);
    let Body::Whole(held) = bundle::open(&whole.body, &whole.signature, &engine_key).unwrap()
    else {
        panic!("a gate without a bundle gets it whole");
    };
    assert_eq!(held.version, whole.version);
    // Transactions 1-5: two openings, two top-ups, one deny-listing.
    assert_eq!(held.positions, vec![5]);
    assert_eq!(held.denied, std::collections::BTreeSet::from([502]));
    let mut offline = OfflineGate::new(held).unwrap();
    let code = |account_id, seed| phone(account_id, seed).code_text(T);
    assert!(matches!(
        offline.decide(&code(501, 1), T),
        OfflineDecision::Open(_)
    ));
    assert_eq!(
        offline.decide(&code(502, 2), T),
        OfflineDecision::Refuse(OfflineRefusal::Code(fareway::token::Reason::AccountDenied))
    );

    // Lifted at the engine: the next bundle is that one change.
    let lifted = admin.remove_deny_list_entry(account(6, 502)).await.unwrap();
    assert!(lifted.into_inner().accepted);
    let (version, positions) = (offline.bundle().version, offline.bundle().positions.clone());
    let next = gate
        .get_gate_bundle(request(version, positions.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(next.delta);
    assert_eq!(next.version, version + 1);
    let update = bundle::open(&next.body, &next.signature, &engine_key).unwrap();
    let Body::Delta(delta) = &update else {
        panic!("a gate one change behind gets a delta");
    };
    assert_eq!(delta.changes, vec![(502, false)]);
    offline.update(update).unwrap();
    assert!(matches!(
        offline.decide(&code(502, 3), T),
        OfflineDecision::Open(_)
    ));
    // The bundle it holds already: an empty delta.
    let same = gate
        .get_gate_bundle(request(next.version, vec![6]))
        .await
        .unwrap()
        .into_inner();
    assert!(same.delta);
    assert_eq!(same.version, next.version);

    // A version or a position this engine never made: UNAVAILABLE (a cluster node whose
    // replicas are behind says the same: ask again, or another node).
    for bad in [request(u64::MAX, vec![]), request(0, vec![99])] {
        let refused = gate.get_gate_bundle(bad).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert_eq!(
            refused.metadata().get("fareway-error-code").unwrap(),
            "bundle_from_future"
        );
    }
    // Positions of another number of shards (a gate moved from another engine): whole.
    let other = gate
        .get_gate_bundle(request(0, vec![0, 0]))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.delta);
    // Gates only: an admin token is refused.
    let mut not_a_gate = server.gate(Some(ADMIN_TOKEN)).await;
    let refused = not_a_gate
        .get_gate_bundle(request(0, vec![]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
}

/// The sweeper forgets ids past their retention (30 days by default): before that a retry
/// is a replay; after, the same id is a new request, as `docs/ledger.md` says; the
/// ledger still audits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_forgets_ids_past_their_retention() {
    let server = TestServer::start(|config| config.taps.journey_sweep_interval_ms = 20).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    open_rider(&mut admin, 1, 1001, 1, 2_000).await;
    let retry = pb::TopUpRequest {
        transaction_id: tx(2),
        account_id: 1001,
        amount_minor: 2_000,
    };
    // Sweeps within the retention forget nothing: the top-up's retry is a replay.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let replayed = admin.top_up(retry.clone()).await.unwrap().into_inner();
    assert_eq!(replayed.balance_after_minor, Some(2_000));
    // A day past the retention, a sweep forgets the id: the same request is new.
    server.clock.set(at(31 * 24 * 60));
    let mut balance = None;
    for _ in 0..250 {
        let answer = admin.top_up(retry.clone()).await.unwrap().into_inner();
        balance = answer.balance_after_minor;
        if balance != Some(2_000) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(balance, Some(4_000));
    server.stop_and_audit().await;
}
