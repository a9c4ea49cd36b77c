//! The `fareway` command line as an operator uses it: make an issuer key, mint a code,
//! inspect it against a registry, run the demo, audit a data directory, verify and
//! reconcile settlement files. Lives in the binary's package so that Cargo builds it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

fn fareway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fareway"))
        .args(args)
        .output()
        .expect("fareway runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn new_issuer_mint_and_inspect_work_together() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("issuer.toml");
    let key_path = key_file.to_str().unwrap();
    let made = fareway(&[
        "keys",
        "new-issuer",
        "--provider",
        "metro-pay",
        "--provider-id",
        "3",
        "--out",
        key_path,
    ]);
    assert!(made.status.success(), "{made:?}");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Refuses to overwrite a key.
    let again = fareway(&[
        "keys",
        "new-issuer",
        "--provider",
        "metro-pay",
        "--out",
        key_path,
    ]);
    assert!(!again.status.success());

    // The printed registry entry, with its provider, makes the registry.
    let printed = stdout(&made);
    let entry = &printed[printed.find("[[issuer_key]]").unwrap()..];
    let registry = dir.path().join("registry.toml");
    std::fs::write(
        &registry,
        format!("[[provider]]\nid = 3\nname = \"metro-pay\"\n\n{entry}"),
    )
    .unwrap();

    let at = "1800000000000";
    let minted = fareway(&[
        "token",
        "mint",
        "--issuer-key",
        key_path,
        "--account",
        "12345",
        "--sequence",
        "9",
        "--at-ms",
        at,
    ]);
    assert!(minted.status.success(), "{minted:?}");
    // Only the line break goes: a code's text may begin or end with a space or '-'.
    let code = stdout(&minted).trim_end_matches('\n').to_string();
    assert_eq!(code.len(), 294);

    let inspected = fareway(&[
        "token",
        "inspect",
        &code,
        "--keys",
        registry.to_str().unwrap(),
        "--at-ms",
        at,
    ]);
    assert_eq!(inspected.status.code(), Some(0), "{inspected:?}");
    let text = stdout(&inspected);
    assert!(text.contains("account id:            12345"), "{text}");
    assert!(text.contains("provider id:           3"), "{text}");
    assert!(text.contains("sequence:              9"), "{text}");
    assert!(text.contains("verdict:               accepted"), "{text}");

    // Ten minutes later the same code is stale, and inspect says exactly why.
    let later = fareway(&[
        "token",
        "inspect",
        &code,
        "--keys",
        registry.to_str().unwrap(),
        "--at-ms",
        "1800000600000",
    ]);
    assert_eq!(later.status.code(), Some(1));
    assert!(
        stdout(&later).contains("rejected at 1800000600000: code_expired"),
        "{}",
        stdout(&later)
    );

    let denied = fareway(&[
        "token",
        "inspect",
        &code,
        "--keys",
        registry.to_str().unwrap(),
        "--at-ms",
        at,
        "--deny",
        "12345",
    ]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(stdout(&denied).contains("account_denied"));
}

#[test]
fn inspect_explains_an_undecodable_code() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(&registry, "").unwrap();
    let output = fareway(&[
        "token",
        "inspect",
        "NOT~BASE45",
        "--keys",
        registry.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains("decode:                failed: the text is not valid Base45"),
        "{text}"
    );
    assert!(text.contains("bad_encoding"), "{text}");
}

#[test]
fn a_bad_registry_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(
        &registry,
        "[[issuer_key]]\nprovider_id = 1\nkey_id = 1\npublic_key = \"short\"\n",
    )
    .unwrap();
    let output = fareway(&[
        "token",
        "inspect",
        "00",
        "--keys",
        registry.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("public key of provider 1 is not 32 bytes of base64url"),
        "{stderr}"
    );
}

#[test]
fn audit_passes_on_the_demo_ledger_and_refuses_a_non_ledger_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let demo = fareway(&[
        "demo",
        "--riders",
        "100",
        "--duration",
        "3",
        "--rush-peak",
        "300",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert!(demo.status.success(), "{}", stdout(&demo));
    assert!(stdout(&demo).contains("invariants: ok"));
    let audited = fareway(&["audit", "--data-dir", data.to_str().unwrap()]);
    assert!(audited.status.success(), "{audited:?}");
    assert!(stdout(&audited).contains("audit: ok"));
    // A second demo on the same directory is refused rather than replayed.
    let again = fareway(&[
        "demo",
        "--riders",
        "100",
        "--duration",
        "1",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("the demo needs a new data directory"));
    let empty = fareway(&["audit", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("is not a ledger data directory"));
}

/// The demo's settlement files check offline; a flipped byte does not; a provider's reply
/// that agrees reconciles (exit 0) and one that differs does not (exit 1).
#[test]
fn settle_verify_and_reconcile_check_the_demo_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let demo = fareway(&[
        "demo",
        "--riders",
        "100",
        "--duration",
        "3",
        "--rush-peak",
        "300",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(demo.status.success(), "{}", stdout(&demo));
    let key = std::fs::read_to_string(out.join("settlement-public-key.txt")).unwrap();
    let file = out.join("settlement/fareway-settlement-p00001-b00000001.csv");
    let verified = fareway(&[
        "settle",
        "verify",
        file.to_str().unwrap(),
        "--public-key",
        key.trim(),
    ]);
    assert!(verified.status.success(), "{verified:?}");
    assert!(
        stdout(&verified).starts_with("ok: batch 1 of provider 1"),
        "{}",
        stdout(&verified)
    );

    let text = std::fs::read_to_string(&file).unwrap();
    let mut reply = String::from("transaction_id,amount_minor,status\n");
    for line in text.lines().filter(|line| line.starts_with("D,")) {
        let fields: Vec<&str> = line.split(',').collect();
        reply.push_str(&format!("{},{},settled\n", fields[3], fields[15]));
    }
    let reply_path = dir.path().join("reply.csv");
    std::fs::write(&reply_path, &reply).unwrap();
    let reconcile = |reply: &std::path::Path| {
        fareway(&[
            "settle",
            "reconcile",
            "--batch",
            "1",
            "--dir",
            out.join("settlement").to_str().unwrap(),
            reply.to_str().unwrap(),
        ])
    };
    let agreed = reconcile(&reply_path);
    assert!(agreed.status.success(), "{}", stdout(&agreed));
    assert!(stdout(&agreed).contains("reconciled: the reply agrees with the batch"));
    let mut lines: Vec<&str> = reply.lines().collect();
    let changed = lines[1].replace(",settled", ",rejected");
    lines[1] = &changed;
    std::fs::write(&reply_path, lines.join("\n") + "\nnot,a,line\n").unwrap();
    let differs = reconcile(&reply_path);
    assert_eq!(differs.status.code(), Some(1), "{}", stdout(&differs));
    assert!(
        stdout(&differs).contains("reply line 2:"),
        "{}",
        stdout(&differs)
    );
    assert!(
        stdout(&differs).contains("mismatched 1, bad lines 1"),
        "{}",
        stdout(&differs)
    );

    let mut bytes = std::fs::read(&file).unwrap();
    bytes[60] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let tampered = fareway(&[
        "settle",
        "verify",
        file.to_str().unwrap(),
        "--public-key",
        key.trim(),
    ]);
    assert_eq!(tampered.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&tampered.stderr).contains("SHA-256"),
        "{tampered:?}"
    );
}
