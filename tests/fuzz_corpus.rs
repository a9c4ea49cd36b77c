//! The fuzz corpora (`fuzz/corpus/*`) and any crash inputs (`fuzz/artifacts/*`) replayed
//! through their parsers (the verifier, the fares and configuration loaders, the request
//! conversions, reconciliation) on the stable toolchain, so every input the fuzzer kept
//! stays a regression test: each must get an answer, never a panic.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use std::path::Path;

use fareway::clock::UnixMillis;
use fareway::token::{Decision, format, vectors};
use fareway_proto::v1 as pb;
use fareway_tests::workspace_root;
use prost::Message as _;

fn inputs(folder: &str) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    for root in ["fuzz/corpus", "fuzz/artifacts"] {
        let dir = workspace_root().join(root).join(folder);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                found.push(
                    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display())),
                );
            }
        }
    }
    found
}

fn verifier() -> fareway::token::Verifier {
    vectors::verifier_for(&vectors::generate()).unwrap()
}

#[test]
fn every_kept_text_input_gets_an_answer() {
    let inputs = inputs("verify_text");
    assert!(
        inputs.len() >= 24,
        "the text corpus is seeded with the published vectors"
    );
    let verifier = verifier();
    let now = UnixMillis(vectors::BASE_TIME_MS);
    let mut accepted = 0;
    for input in inputs {
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        if matches!(verifier.verify_text(text, now), Decision::Accepted(_)) {
            accepted += 1;
        }
    }
    // The seeds include valid codes; the fuzzer cannot forge new ones.
    assert!(accepted >= 1);
}

#[test]
fn every_kept_byte_input_gets_an_answer_and_parses_back_to_itself() {
    let inputs = inputs("verify_bytes");
    assert!(!inputs.is_empty());
    let verifier = verifier();
    let now = UnixMillis(vectors::BASE_TIME_MS);
    for input in inputs {
        let _ = verifier.verify_bytes(&input, now);
        if let Ok(code) = format::parse(&input) {
            assert_eq!(
                &format::credential_body(&code.credential)[..],
                code.credential_body
            );
            assert_eq!(
                format::decode_text(&format::encode_text(&input)).as_deref(),
                Ok(&input[..])
            );
        }
    }
}

#[test]
fn every_kept_fares_file_loads_or_is_refused_with_a_reason() {
    let inputs = inputs("fares_file");
    assert!(
        !inputs.is_empty(),
        "the fares corpus is seeded with the sample city"
    );
    let mut loaded = 0;
    for input in inputs {
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        match fareway::fares::FareTable::from_toml(text) {
            Ok(table) => {
                loaded += 1;
                let _ = table.metro_fare(100, 101, 1_000, fareway::clock::UnixMillis(1_000));
            }
            Err(err) => assert!(!err.code().is_empty()),
        }
    }
    assert!(loaded >= 1, "the sample city loads");
}

/// A regression test per kept protobuf `TapRequest`: the conversion answers a tap input
/// that keeps the request's id, gate and scan time, or `INVALID_ARGUMENT`.
#[test]
fn every_kept_tap_request_converts_or_is_invalid() {
    let inputs = inputs("tap_request");
    assert!(inputs.len() >= 3, "the tap request corpus is seeded");
    let mut converted = 0;
    for input in inputs {
        let Ok(request) = pb::TapRequest::decode(&input[..]) else {
            continue;
        };
        match fareway::grpc::convert::tap_input(request.clone()) {
            Ok(tap) => {
                converted += 1;
                assert_eq!(
                    tap.id.0.to_be_bytes().as_slice(),
                    &request.transaction_id[..]
                );
                assert_eq!(tap.gate_id, request.gate_id);
                assert_eq!(tap.scan_time.0, request.scan_time_ms);
            }
            Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
        }
    }
    assert!(converted >= 1, "the seeds include a valid request");
}

#[test]
fn every_kept_close_request_converts_or_is_invalid() {
    let inputs = inputs("close_request");
    assert!(inputs.len() >= 3, "the close request corpus is seeded");
    for input in inputs {
        let Ok(request) = pb::CloseBatchesRequest::decode(&input[..]) else {
            continue;
        };
        if let Err(status) = fareway::grpc::settlement::close_request(&request) {
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
    }
}

#[test]
fn every_kept_server_configuration_loads_or_is_refused_with_a_reason() {
    let inputs = inputs("config_file");
    assert!(inputs.len() >= 2, "the configuration corpus is seeded");
    let mut loaded = 0;
    for input in inputs {
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        match fareway::server::config::ServerConfig::from_toml(text) {
            Ok(_) => loaded += 1,
            Err(err) => assert!(!err.to_string().is_empty()),
        }
    }
    assert!(loaded >= 1, "the documented configuration loads");
}

#[test]
fn every_kept_provider_reply_reconciles_or_is_refused_with_a_reason() {
    let inputs = inputs("reconcile_reply");
    assert!(inputs.len() >= 2, "the reply corpus is seeded");
    let batch = std::fs::read(workspace_root().join("fuzz/seeds/reconcile_batch.csv")).unwrap();
    let mut clean = 0;
    for input in inputs {
        // As the fuzz target reads it: a batch file and a reply around a zero byte, or a
        // reply to the seed batch.
        let (batch, reply) = match input.iter().position(|byte| *byte == 0) {
            Some(at) => (&input[..at], &input[at + 1..]),
            None => (&batch[..], &input[..]),
        };
        match fareway::settlement::reconcile::reconcile(batch, reply) {
            Ok(report) => clean += usize::from(report.is_clean()),
            Err(err) => assert!(!err.to_string().is_empty()),
        }
    }
    assert!(clean >= 1, "the clean reply seed reconciles clean");
}

/// Every kept key, signature and message: the device-signature check agrees with ring.
#[test]
fn every_kept_signature_is_judged_by_dalek_as_ring_judges_it() {
    let inputs = inputs("device_signature");
    // The seeds (the two RFC 8032 test vectors, one of them altered, and a forgery under
    // the identity key) and what `fuzz/run device_signature` kept.
    assert!(inputs.len() >= 4, "the seeds are kept");
    let mut accepted = 0;
    for input in inputs {
        // Shorter inputs are no signature (the target skips them too).
        let Some((key, rest)) = input.split_first_chunk::<32>() else {
            continue;
        };
        let Some((signature, message)) = rest.split_first_chunk::<64>() else {
            continue;
        };
        let ring_says = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
            .verify(message, signature)
            .is_ok();
        let ours = fareway::token::device_signature::verifies(key, message, signature);
        assert_eq!(ours, ring_says, "{input:02x?}");
        accepted += usize::from(ours);
    }
    // The two RFC 8032 vectors and the small-order key's forgery (which only the
    // weak-key check stops) verify; the altered vector does not.
    assert!(accepted >= 3);
}

#[test]
fn the_corpus_folders_exist() {
    assert!(Path::new(&workspace_root().join("fuzz/corpus/verify_text")).is_dir());
}
