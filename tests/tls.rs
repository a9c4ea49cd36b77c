//! TLS end to end, with gate client certificates: a CA, a server certificate and client
//! certificates are made by the test (rcgen); the server requires a client certificate
//! signed by the gates' CA. A gate with one taps; without one, with one from another CA,
//! or without TLS at all, it cannot even connect.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use fareway::grpc::auth::Bearer;
use fareway::server::config::TlsSettings;
use fareway_proto::v1 as pb;
use fareway_tests::certs::{Ca, write};
use fareway_tests::server::{GATE_TOKEN, T, TestServer, phone, tap};
use rcgen::ExtendedKeyUsagePurpose;
use tonic::transport::{ClientTlsConfig, Endpoint, Identity};

/// A gate's call over TLS (with a client certificate when given): the tap's status code,
/// `UNAVAILABLE` when no connection could be made.
async fn tap_over_tls(
    url: &str,
    server_ca: &str,
    client: Option<&(String, String)>,
) -> tonic::Code {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(server_ca))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    let Ok(channel) = channel else {
        return tonic::Code::Unavailable;
    };
    let mut gate = pb::gate_service_client::GateServiceClient::with_interceptor(
        channel,
        Bearer::new(Some(GATE_TOKEN)).unwrap(),
    );
    let code = phone(1, 1).code_text(T);
    match gate.tap(tap(1, 7, pb::Direction::Bus, 501, T, code)).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_gate_client_certificates_works_end_to_end() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("fareway test CA");
    let gates_ca = Ca::new("fareway gates CA");
    let (server_cert, server_key) = ca.issue(
        &["localhost", "127.0.0.1"],
        &[ExtendedKeyUsagePurpose::ServerAuth],
    );
    let gate_identity = gates_ca.issue(&["gate-7"], &[ExtendedKeyUsagePurpose::ClientAuth]);
    let stranger =
        Ca::new("someone else").issue(&["gate-7"], &[ExtendedKeyUsagePurpose::ClientAuth]);
    let tls = TlsSettings {
        cert_file: write(certs.path(), "server.pem", &server_cert),
        key_file: write(certs.path(), "server.key", &server_key),
        client_ca_file: Some(write(certs.path(), "gates-ca.pem", &gates_ca.pem())),
    };
    let server = TestServer::start(|config| config.tls = Some(tls)).await;
    let url = format!("https://localhost:{}", server.addr().port());
    let server_ca = ca.pem();

    // With the gates' certificate: the call goes through (account 1 does not exist: the
    // tap is an answer, rejected, not an error).
    assert_eq!(
        tap_over_tls(&url, &server_ca, Some(&gate_identity)).await,
        tonic::Code::Ok
    );
    // Without a client certificate, or with one another CA signed, the server ends the
    // handshake: with TLS 1.3 the client learns it on its first call, which fails as a
    // transport error (UNKNOWN or CANCELLED, by timing) rather than at connect
    // (UNAVAILABLE). Never an answer.
    for client in [None, Some(&stranger)] {
        let code = tap_over_tls(&url, &server_ca, client).await;
        assert!(
            matches!(
                code,
                tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
            ),
            "{code:?}"
        );
    }
    // Plain HTTP/2 to a TLS listener: no connection either.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", server.addr().port()))
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => pb::gate_service_client::GateServiceClient::new(channel)
            .tap(tap(2, 7, pb::Direction::Bus, 501, T, "X".into()))
            .await
            .is_err(),
    };
    assert!(refused, "a plain call to the TLS listener must fail");
    server.stop().await;
}
