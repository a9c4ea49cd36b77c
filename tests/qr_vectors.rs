//! The published rider code vectors (`tests/vectors/qr-v1.json`): the verifier reproduces
//! every one, every rejection reason has a vector, and regenerating the file from its
//! fixed seeds gives the same bytes.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use fareway::clock::UnixMillis;
use fareway::token::vectors::{self, VectorFile};
use fareway::token::{Decision, Reason};
use fareway_tests::workspace_root;

fn published() -> (String, VectorFile) {
    let path = workspace_root().join("tests/vectors/qr-v1.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let file =
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    (text, file)
}

#[test]
fn the_verifier_reproduces_every_published_vector() {
    let (_, file) = published();
    let verifier = vectors::verifier_for(&file).unwrap();
    for vector in &file.vectors {
        let decision = verifier.verify_text(&vector.text, UnixMillis(vector.now_ms));
        let got = vectors::vector(
            &vector.name,
            &vector.description,
            vector.text.clone(),
            UnixMillis(vector.now_ms),
            decision,
        );
        assert_eq!(&got, vector, "vector {}", vector.name);
    }
}

#[test]
fn every_rejection_reason_has_a_vector_and_some_vectors_are_accepted() {
    let (_, file) = published();
    for reason in Reason::ALL {
        assert!(
            file.vectors
                .iter()
                .any(|vector| vector.reason.as_deref() == Some(reason.code())),
            "no vector for {reason}"
        );
    }
    assert!(
        file.vectors
            .iter()
            .filter(|vector| vector.decision == "accepted")
            .count()
            >= 2
    );
}

#[test]
fn regenerating_the_vectors_gives_the_published_bytes() {
    let (text, _) = published();
    assert!(
        text == vectors::generate_json(),
        "tests/vectors/qr-v1.json is stale: run `fareway token vectors`"
    );
}

#[test]
fn a_valid_vector_fits_a_version_10_m_qr_code() {
    let (_, file) = published();
    let valid = file
        .vectors
        .iter()
        .find(|vector| vector.name == "valid")
        .unwrap();
    // Version 10 at error correction M holds 311 alphanumeric characters.
    assert_eq!(valid.text.len(), 294);
    assert!(
        valid
            .text
            .bytes()
            .all(|b| b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:".contains(&b))
    );
    let verifier = vectors::verifier_for(&file).unwrap();
    assert!(matches!(
        verifier.verify_text(&valid.text, UnixMillis(valid.now_ms)),
        Decision::Accepted(_)
    ));
}
