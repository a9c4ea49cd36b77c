//! Clients that misbehave at the connection level must not take the engine down or starve
//! the other gates: sockets that never speak are closed after the handshake timeout,
//! connections past `limits.connections_max` are closed at accept, and a real gate is
//! answered throughout and afterwards.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use std::time::{Duration, Instant};

use fareway::grpc::gate::ANSWER_UNREAD_MAX;
use fareway_proto::v1 as pb;
use fareway_tests::server::{
    ADMIN_TOKEN, FINANCE_TOKEN, GATE_TOKEN, GateClient, T, TestServer, open_rider, phone, tap, tx,
};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_stream::StreamExt as _;

/// The connection limit of these tests: the least an engine starts with.
const CONNECTIONS: usize = fareway::server::transport::CONNECTIONS_MIN;

/// A rider's bus tap on route 501 (a first ride's fare: 200).
async fn bus_tap(gate: &mut GateClient, id: u128, account_id: u64) -> pb::TapResponse {
    let code = phone(account_id, 1).code_text(T);
    gate.tap(tap(id, 7, pb::Direction::Bus, 501, T, code))
        .await
        .unwrap()
        .into_inner()
}

/// Reads from a socket until it closes or `within` passes: true when the server closed it.
/// (The server may speak first: HTTP/2 starts with the server's settings.)
async fn closed_by_server(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let until_closed = async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, until_closed).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_are_closed_and_the_excess_refused_while_gates_are_answered() {
    let server = TestServer::start(|config| {
        config.limits.connections_max = CONNECTIONS;
        config.limits.handshake_timeout_ms = 1_500;
    })
    .await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    open_rider(&mut admin, 10, 1, 1, 10_000).await;
    open_rider(&mut admin, 20, 2, 1, 10_000).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    drop(admin);
    // Let the server see the admin's connection close and free its slot.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The gate holds one slot; silent sockets take every other one.
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..CONNECTIONS - 1 {
        silent.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    // Let the server accept them all before the one too many arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut excess = TcpStream::connect(server.addr()).await.unwrap();
    assert!(
        closed_by_server(&mut excess, Duration::from_millis(1_000)).await,
        "a connection past the limit was kept open"
    );

    // The gate already connected is answered while every other slot is taken.
    let answer = bus_tap(&mut gate, 100, 1).await;
    assert_eq!(
        answer.decision,
        pb::TapDecision::Accepted as i32,
        "{answer:?}"
    );
    assert_eq!(answer.balance_after_minor, Some(9_800));

    // The silent sockets are closed once the handshake timeout passes, not before.
    for socket in &mut silent {
        assert!(
            closed_by_server(socket, Duration::from_millis(3_000)).await,
            "a socket that never spoke was kept open"
        );
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(1_500),
        "silent sockets were closed before the handshake timeout"
    );

    // Their slots are free again: a new gate connects and is answered.
    let mut new_gate = server.gate(Some(GATE_TOKEN)).await;
    let answer = bus_tap(&mut new_gate, 101, 2).await;
    assert_eq!(answer.balance_after_minor, Some(9_800), "{answer:?}");

    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("fareway_connections_refused_total 1"),
        "{metrics}"
    );
    server.stop().await;
}

/// A request far larger than any tap is refused from its length prefix, before it is
/// buffered whole, with `OUT_OF_RANGE` (tonic's status for a message over the receiver's
/// limit), and the gate's next tap is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_far_larger_than_any_tap_is_refused() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    open_rider(&mut admin, 10, 1, 1, 10_000).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    let huge = tap(
        100,
        7,
        pb::Direction::Bus,
        501,
        T,
        "A".repeat(fareway::grpc::GATE_MESSAGE_BYTES_MAX + 1),
    );
    let refused = gate.tap(huge).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("fareway_faults_total{code=\"message_too_large\"} 1"),
        "{metrics}"
    );
    let answer = bus_tap(&mut gate, 101, 1).await;
    assert_eq!(answer.balance_after_minor, Some(9_800), "{answer:?}");
    server.stop().await;
}

/// Bytes that do not parse as a tap request are the sender's fault: `INVALID_ARGUMENT`,
/// not `INTERNAL` (which the gate API keeps for the engine's own bugs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_does_not_parse_is_invalid_argument() {
    let server = TestServer::start(|_| {}).await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    // Field 1 (transaction_id, bytes) claims 100 bytes and ends after 2.
    let mut request = tonic::Request::new(bytes::Bytes::from_static(&[0x0a, 100, 1, 2]));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {GATE_TOKEN}").parse().unwrap(),
    );
    let path = http::uri::PathAndQuery::from_static("/fareway.v1.GateService/Tap");
    let refused = grpc
        .unary::<_, pb::TapResponse, _>(request, path, RawCodec)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("fareway_faults_total{code=\"unparsable_message\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

/// Sends bytes as they are, to put a message on the wire that no protobuf encoder makes.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = pb::TapResponse;
    type Encoder = RawEncoder;
    type Decoder = <fareway_proto::codec::Codec<pb::TapRequest, pb::TapResponse> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        fareway_proto::codec::Codec::<pb::TapRequest, pb::TapResponse>::default().decoder()
    }
}

#[derive(Debug, Clone, Copy)]
struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        buf.put(item);
        Ok(())
    }
}

/// A client whose streams never read their answers (a zero receive window) holds at most
/// its connection's share of the requests in flight: another gate's tap is still
/// admitted and answered meanwhile; and once the answers have gone unread for
/// `ANSWER_UNREAD_MAX`, its streams are ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_take_every_permit() {
    let server = TestServer::start(|config| {
        config.limits.requests_in_flight_max = 64;
        config.limits.connection_requests_in_flight_max = 16;
        config.limits.stream_taps_in_flight_max = 16;
    })
    .await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    open_rider(&mut admin, 10, 1, 1, 10_000).await;
    open_rider(&mut admin, 20, 2, 1, 10_000).await;

    // Eight streams on one connection that reads nothing: the server cannot send a
    // byte of their answers, so every tap it admits keeps its permits.
    let stalled = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .initial_stream_window_size(Some(0))
        .connect()
        .await
        .unwrap();
    let mut held = Vec::new();
    for stream in 0..8u128 {
        let mut client = pb::gate_service_client::GateServiceClient::with_interceptor(
            stalled.clone(),
            fareway_tests::server::Bearer::new(Some(GATE_TOKEN)).unwrap(),
        );
        let taps: Vec<pb::TapRequest> = (0..40u128)
            .map(|n| {
                let code = phone(1, 1).code_text(T);
                tap(
                    1_000 + stream * 100 + n,
                    9,
                    pb::Direction::Bus,
                    501,
                    T,
                    code,
                )
            })
            .collect();
        let answers = client
            .tap_stream(tokio_stream::iter(taps))
            .await
            .unwrap()
            .into_inner();
        held.push((client, answers));
    }
    // Long enough for the server to read every tap it will admit.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    let answer = bus_tap(&mut gate, 100, 2).await;
    assert_eq!(answer.balance_after_minor, Some(9_800), "{answer:?}");

    // Once their answers have gone unread past the bound, the streams are ended and
    // their permits returned: the engine says so in its faults.
    let unread = "fareway_faults_total{code=\"answers_unread\"}";
    let deadline = Instant::now() + ANSWER_UNREAD_MAX + Duration::from_secs(5);
    loop {
        let metrics = server.metrics_text().await;
        if metrics.lines().any(|line| line.starts_with(unread)) {
            break;
        }
        assert!(Instant::now() < deadline, "no stream was ended:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(held);
    server.stop().await;
}

/// An issuer key with which anybody could sign anything (the identity point, the all-zero
/// key, bytes that are no curve point) is refused at registration with `INVALID_ARGUMENT`
/// naming the reason, and a tap whose credential is "signed" R = identity, S = 0 under
/// such a key never gets a charge through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_issuer_keys_are_refused_at_registration() {
    let server = TestServer::start(|_| {}).await;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut identity = [0u8; 32];
    identity[0] = 1;
    // y = 2 is no point of the curve (x^2 would have to be a non-square).
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    for (n, key) in [identity, [0u8; 32], not_a_point].into_iter().enumerate() {
        let refused = admin
            .register_issuer_key(pb::RegisterIssuerKeyRequest {
                transaction_id: tx(900 + n as u128),
                provider_id: 3,
                provider_name: "tram-wallet".into(),
                public_key: key.to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert_eq!(
            refused.metadata().get("fareway-error-code").unwrap(),
            "weak_public_key",
            "{refused:?}"
        );
    }
    server.stop().await;
}

/// An HTTP/2 connection of our own, below gRPC: headers and bodies exactly as a test
/// wants them, however wrong.
async fn raw_http2(server: &TestServer) -> h2::client::SendRequest<bytes::Bytes> {
    let socket = TcpStream::connect(server.addr()).await.unwrap();
    let (client, connection) = h2::client::handshake(socket).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    answered_once(client, health_check_headers(server)).await
}

/// Makes one whole health check and waits for its answer. The engine's SETTINGS
/// (its stream limit among them) come before any answer, so after this the client
/// keeps to the engine's limit; before it the client may assume h2's default of 100
/// streams and have the 65th refused (a flake seen in CI).
async fn answered_once(
    client: h2::client::SendRequest<bytes::Bytes>,
    request: http::Request<()>,
) -> h2::client::SendRequest<bytes::Bytes> {
    let mut ready = client.ready().await.unwrap();
    let (answer, mut body) = ready.send_request(request, false).unwrap();
    // An empty HealthCheckRequest: not compressed, length 0.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    ready
}

/// The headers of a health check whose body is still to come.
fn health_check_headers(server: &TestServer) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/grpc.health.v1.Health/Check",
            server.addr()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// A call whose body never arrives is ended after `limits.request_timeout_ms` (the
/// stream, and what it holds, freed), and streams past `streams_per_connection_max`
/// on one connection are not opened: the engine's memory stays bounded whatever a
/// client leaves half-sent. Measured: the process's resident size after thousands of
/// such calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_whose_bodies_never_come_are_ended_and_bounded() {
    const STREAMS: u32 = 64;
    let server = TestServer::start(|config| {
        config.limits.request_timeout_ms = 1_000;
        config.limits.streams_per_connection_max = STREAMS;
    })
    .await;
    let resident_before = resident_kib();

    // One call that never sends its body: answered CANCELLED once the timeout passes.
    let mut client = raw_http2(&server).await;
    client = client.ready().await.unwrap();
    let started = Instant::now();
    let (answer, _body_never_sent) = client
        .send_request(health_check_headers(&server), false)
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("the engine never ended the call")
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "ended after {waited:?}"
    );
    let status = match answer.headers().get("grpc-status") {
        Some(status) => status.clone(),
        None => answer
            .into_body()
            .trailers()
            .await
            .unwrap()
            .and_then(|trailers| trailers.get("grpc-status").cloned())
            .expect("a grpc-status"),
    };
    assert_eq!(status, "1", "CANCELLED");

    // Connections each trying twice their allowance of half-sent calls at once: no more
    // than the allowance is open at a time (the client must wait for a slot), and every
    // one is ended by the timeout. Nothing is left hanging.
    let mut held = Vec::new();
    for _ in 0..4 {
        let client = raw_http2(&server).await;
        let started = Instant::now();
        let mut answers = Vec::new();
        for _ in 0..2 * STREAMS {
            let mut ready = client.clone().ready().await.unwrap();
            let (answer, body) = ready
                .send_request(health_check_headers(&server), false)
                .unwrap();
            answers.push(answer);
            held.push(body);
        }
        let mut ended_in_first_timeout = 0;
        for answer in answers {
            let answered = tokio::time::timeout(Duration::from_secs(10), answer).await;
            assert!(matches!(answered, Ok(Ok(_))), "{answered:?}");
            if started.elapsed() < Duration::from_millis(1_800) {
                ended_in_first_timeout += 1;
            }
        }
        assert!(
            ended_in_first_timeout <= STREAMS,
            "{ended_in_first_timeout} calls were open at once; the allowance is {STREAMS}"
        );
    }
    let resident_after = resident_kib();
    assert!(
        resident_after < resident_before + 64 * 1024,
        "resident size grew from {resident_before} KiB to {resident_after} KiB"
    );

    // A tap is still answered.
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    open_rider(&mut admin, 10, 1, 1, 10_000).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    let answer = bus_tap(&mut gate, 100, 1).await;
    assert_eq!(answer.balance_after_minor, Some(9_800), "{answer:?}");
    drop(held);
    server.stop().await;
}

/// This process's resident size, from `/proc/self/status`.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap()
}

/// Closes a batch of provider 1 far larger than the windows and the pull's chunks ahead
/// can hold: 64 riders, 100 bus taps each (a stream of them per rider, within a stream's
/// limit in flight).
async fn settle_a_large_batch(server: &TestServer) -> pb::Batch {
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await;
    let mut gate = server.gate(Some(GATE_TOKEN)).await;
    for account_id in 1..=64u64 {
        open_rider(
            &mut admin,
            u128::from(account_id) * 10,
            account_id,
            1,
            1_000_000,
        )
        .await;
        let mut device = phone(account_id, 1);
        let taps: Vec<_> = (0..100u128)
            .map(|n| {
                let id = 10_000 + u128::from(account_id) * 1_000 + n;
                tap(id, 7, pb::Direction::Bus, 501, T, device.code_text(T))
            })
            .collect();
        let answers: Vec<_> = gate
            .tap_stream(tokio_stream::iter(taps))
            .await
            .unwrap()
            .into_inner()
            .collect()
            .await;
        for answer in answers {
            let answer = answer.unwrap();
            assert_eq!(
                answer.decision,
                pb::TapDecision::Accepted as i32,
                "{answer:?}"
            );
        }
    }
    let batch = server
        .settlement(Some(FINANCE_TOKEN))
        .await
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(1),
            providers: vec![1],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .batches
        .remove(0);
    assert!(batch.file_bytes > 512 * 1024, "{} bytes", batch.file_bytes);
    batch
}

/// Starts pulling a batch on a connection with the smallest windows HTTP/2 allows, and
/// reads nothing: the caller decides when, if ever.
async fn pull_without_reading(
    server: &TestServer,
    batch_id: u64,
) -> tonic::Streaming<pb::BatchChunk> {
    let slow = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    pb::settlement_service_client::SettlementServiceClient::with_interceptor(
        slow,
        fareway_tests::server::Bearer::new(Some(FINANCE_TOKEN)).unwrap(),
    )
    .pull_batch(pb::PullBatchRequest { batch_id })
    .await
    .unwrap()
    .into_inner()
}

/// A settlement pull whose client stops reading never ends OK with part of the file:
/// after `limits.pull_stall_ms` it ends `DEADLINE_EXCEEDED` (`client_stalled`), after
/// the chunks already on their way. (It ended OK with a truncated file before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pull_never_ends_ok_with_part_of_the_file() {
    let server = TestServer::start(|config| config.limits.pull_stall_ms = 1_000).await;
    let batch = settle_a_large_batch(&server).await;
    let mut pulled = pull_without_reading(&server, batch.batch_id).await;
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let mut received = 0u64;
    let end = loop {
        match pulled.next().await {
            Some(Ok(pb::BatchChunk {
                part: Some(pb::batch_chunk::Part::FileData(data)),
            })) => received += data.len() as u64,
            Some(Ok(_)) => {}
            Some(Err(status)) => break Some(status),
            None => break None,
        }
    };
    let status = end.expect("a pull cut short ended OK");
    assert!(
        received < batch.file_bytes,
        "{received} of {}",
        batch.file_bytes
    );
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.metadata().get("fareway-error-code").unwrap(),
        "client_stalled"
    );
    server.stop().await;
}

/// Pulls that hold every pull slot (their clients read nothing) do not keep the finance
/// team from closing: a close has a slot of its own. (Closes were refused before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_is_not_starved_by_stalled_pulls() {
    let server = TestServer::start(|config| config.limits.settlement_jobs_max = 1).await;
    let batch = settle_a_large_batch(&server).await;
    let _stalled = pull_without_reading(&server, batch.batch_id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut settlement = server.settlement(Some(FINANCE_TOKEN)).await;
    let second_pull = settlement
        .pull_batch(pb::PullBatchRequest {
            batch_id: batch.batch_id,
        })
        .await
        .unwrap_err();
    assert_eq!(
        second_pull.code(),
        tonic::Code::ResourceExhausted,
        "{second_pull:?}"
    );
    let closed = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: tx(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!closed.batches.is_empty(), "{closed:?}");
    server.stop().await;
}
