//! Clients that misbehave at the connection level must not take the engine down or starve
//! the other gates: sockets that never speak are closed after the handshake timeout,
//! connections past `limits.connections_max` are closed at accept, and a real gate is
//! answered throughout and afterwards.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use std::time::{Duration, Instant};

use fareway::grpc::gate::ANSWER_UNREAD_MAX;
use fareway_proto::v1 as pb;
use fareway_tests::server::{
    ADMIN_TOKEN, GATE_TOKEN, GateClient, T, TestServer, open_rider, phone, tap,
};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

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
