//! Settlement on a real RocksDB ledger with the sample city's fares: batches, exact file
//! bytes, exactly-once coverage under concurrent charges, signatures, re-pulls,
//! acknowledgements and reconciliation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::manifest::{Manifest, SignatureError};
use super::model::{Batch, CloseRequest, Cutoff};
use super::verify::{VerifyError, verify};
use super::*;
use crate::clock::UnixMillis;
use crate::fares::FareTable;
use crate::ledger::{
    AccountRef, Command, LedgerConfig, Outcome, Request, Rules, Tap, TapKind, TxId,
};
use crate::money::Amount;

/// 08:00 UTC on 2027-01-15.
const T: UnixMillis = UnixMillis(1_800_000_000_000);
const MINUTE_MS: u64 = 60_000;

fn rules() -> Rules {
    let text = include_str!("../../../docs/sample-city.toml");
    Rules {
        fares: Some(Arc::new(FareTable::from_toml(text).unwrap())),
        code_retry_window_ms: crate::ledger::CODE_RETRY_WINDOW_MS_DEFAULT,
    }
}

fn key() -> SettlementKey {
    SettlementKey::from_seed([7; 32])
}

fn open_at(dir: &std::path::Path) -> (Arc<Ledger>, Settlement) {
    let ledger = Arc::new(Ledger::open_with_rules(dir, LedgerConfig::default(), rules()).unwrap());
    let settlement = Settlement::new(Arc::clone(&ledger), key(), "EUR".into());
    (ledger, settlement)
}

fn submit(ledger: &Ledger, id: u128, time: UnixMillis, command: Command) -> crate::ledger::Receipt {
    ledger
        .submit(Request {
            id: TxId(id),
            time,
            command,
        })
        .unwrap()
}

/// Opens rider `account_id` with provider `provider_id` and tops it up with 10,000.
fn rider(ledger: &Ledger, account_id: u64, provider_id: u16) {
    let open = Command::OpenAccount {
        account_id,
        provider_id,
        credit_limit: Amount(1_000),
    };
    submit(ledger, 900_000 + u128::from(account_id), T, open);
    let top_up = Command::TopUp {
        account_id,
        amount: Amount(10_000),
    };
    submit(ledger, 910_000 + u128::from(account_id), T, top_up);
}

fn charge(account_id: u64, amount: i64) -> Command {
    Command::Charge {
        account_id,
        operator_id: 1,
        amount: Amount(amount),
    }
}

fn tap(account_id: u64, gate_id: u32, code: u8, kind: TapKind) -> Command {
    Command::Tap(Tap {
        account_id,
        gate_id,
        code: [code; 16],
        kind,
        offline: false,
        concessions: 0,
    })
}

fn close(settlement: &Settlement, id: u128, providers: &[u16], cutoff: Cutoff) -> Closed {
    let request = CloseRequest {
        id: TxId(id),
        providers: providers.to_vec(),
        cutoff,
    };
    settlement
        .close(&request, T.saturating_add(60 * MINUTE_MS))
        .unwrap()
}

fn file_of(settlement: &Settlement, batch: &Batch) -> String {
    let mut bytes = Vec::new();
    settlement.export(batch, &mut bytes).unwrap();
    String::from_utf8(bytes).unwrap()
}

/// The detail lines' (transaction id, amount) of a file.
fn lines_of(file: &str) -> Vec<(String, i64)> {
    file.lines()
        .filter(|line| line.starts_with("D,"))
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[3].to_string(), fields[15].parse().unwrap())
        })
        .collect()
}

#[test]
fn closing_with_nothing_to_settle_gives_an_empty_batch_with_a_correct_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, settlement) = open_at(dir.path());
    // No provider has anything: nothing to close, and a named one is unknown.
    assert!(close(&settlement, 1, &[], Cutoff::Now).batches.is_empty());
    let unknown = CloseRequest {
        id: TxId(2),
        providers: vec![3],
        cutoff: Cutoff::Now,
    };
    assert!(matches!(
        settlement.close(&unknown, T),
        Err(SettlementError::UnknownProvider(3))
    ));
    rider(&ledger, 42, 3);
    submit(&ledger, 10, T, charge(42, 250));
    let first = close(&settlement, 3, &[3, 3], Cutoff::Now);
    assert_eq!(
        first.batches.len(),
        1,
        "a provider named twice gets one batch"
    );
    assert_eq!(first.batches[0].batch.totals.line_count, 1);
    // Nothing new: an empty batch with a correct trailer.
    let closed = close(&settlement, 4, &[], Cutoff::Now);
    assert_eq!(closed.batches.len(), 1);
    let batch = &closed.batches[0].batch;
    assert_eq!((batch.id, batch.provider_id), (2, 3));
    assert_eq!((batch.after_sequence, batch.through_sequence), (3, 3));
    assert_eq!(
        file_of(&settlement, batch),
        "H,1,3,2,3,3,now,EUR,2027-01-15T09:00:00.000Z\nT,0,0,0,0\n"
    );
}

#[test]
fn a_batch_file_has_one_exact_line_per_settled_entry_of_its_provider() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, settlement) = open_at(dir.path());
    rider(&ledger, 42, 1);
    rider(&ledger, 77, 2); // another provider's rider: not in provider 1's batch
    let minute = |m: u64| T.saturating_add(m * MINUTE_MS);
    submit(&ledger, 1, minute(1), charge(42, 250));
    submit(
        &ledger,
        2,
        minute(2),
        tap(42, 7, 1, TapKind::Bus { route: 501 }),
    );
    submit(
        &ledger,
        3,
        minute(3),
        tap(77, 7, 2, TapKind::Bus { route: 501 }),
    );
    submit(
        &ledger,
        4,
        minute(200),
        tap(42, 11, 3, TapKind::MetroEntry { station: 101 }),
    );
    submit(
        &ledger,
        5,
        minute(230),
        tap(42, 12, 4, TapKind::MetroExit { station: 104 }),
    );
    submit(
        &ledger,
        6,
        minute(240),
        tap(42, 13, 5, TapKind::MetroExit { station: 100 }),
    );
    let refund = submit(
        &ledger,
        7,
        minute(250),
        Command::Refund { original: TxId(1) },
    );
    assert_eq!(refund.record.outcome, Outcome::Accepted);

    let closed = close(&settlement, 100, &[1], Cutoff::Now);
    let batch = &closed.batches[0].batch;
    // Rider 42's four set-up records are sequences 1 to 4 (open, top up, for 42 and 77);
    // the exit with no entry costs the maximum fare (900) but the daily cap (1,500) leaves
    // only 600 after the bus ride and the journey.
    let expected = "\
H,1,1,1,0,11,now,EUR,2027-01-15T09:00:00.000Z
D,1,5,00000000000000000000000000000001,2027-01-15T08:01:00.000Z,charge,42,1,,,,,,,,250,
D,2,6,00000000000000000000000000000002,2027-01-15T08:02:00.000Z,bus,42,2,bus,7,,,,,501,200,
D,3,9,00000000000000000000000000000005,2027-01-15T11:50:00.000Z,metro,42,1,metro,12,101,2027-01-15T11:20:00.000Z,104,2027-01-15T11:50:00.000Z,,700,
D,4,10,00000000000000000000000000000006,2027-01-15T12:00:00.000Z,metro_no_entry,42,1,metro,13,,,100,2027-01-15T12:00:00.000Z,,600,
D,5,11,00000000000000000000000000000007,2027-01-15T12:10:00.000Z,refund,42,1,,,,,,,,-250,00000000000000000000000000000001
T,5,1750,250,1500
";
    assert_eq!(file_of(&settlement, batch), expected);
    assert_eq!(batch.totals.line_count, 5);
    assert_eq!(batch.totals.charge_count, 4);
    assert_eq!(batch.totals.refund_count, 1);
    assert_eq!(batch.totals.net(), Amount(1_500));
    assert_eq!(batch.file_bytes, expected.len() as u64);
}

/// Regression (found by `random_histories`): a trip the daily cap made free is still a
/// line of the batch, with amount 0, so the provider sees every trip its rider made.
#[test]
fn a_trip_the_daily_cap_made_free_is_a_line_of_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, settlement) = open_at(dir.path());
    rider(&ledger, 42, 1);
    let exit = |station| TapKind::MetroExit { station };
    // Two exits with no entry cost the maximum fare (900) each, capped at 1,500 a day.
    submit(&ledger, 1, T, tap(42, 7, 4, exit(201)));
    submit(
        &ledger,
        2,
        T.saturating_add(2 * MINUTE_MS),
        tap(42, 7, 5, exit(101)),
    );
    let bus = submit(
        &ledger,
        3,
        T.saturating_add(4 * MINUTE_MS),
        tap(42, 7, 2, TapKind::Bus { route: 501 }),
    );
    assert_eq!(bus.record.outcome, Outcome::Accepted);
    assert_eq!(bus.record.rider_charge(), Amount::ZERO);
    let closed = close(&settlement, 100, &[1], Cutoff::Now);
    let batch = &closed.batches[0].batch;
    let lines = lines_of(&file_of(&settlement, batch));
    let amounts: Vec<(String, i64)> = [(1, 900), (2, 600), (3, 0)]
        .into_iter()
        .map(|(id, amount)| (TxId(id).to_string(), amount))
        .collect();
    assert_eq!(lines, amounts);
    assert_eq!(batch.totals.line_count, 3);
    assert_eq!(batch.totals.net(), Amount(1_500));
}

#[test]
fn every_entry_lands_in_exactly_one_batch_across_closes_with_concurrent_charges() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, settlement) = open_at(dir.path());
    const RIDERS: u64 = 30;
    const CHARGES: u128 = 3_000;
    for account_id in 1..=RIDERS {
        rider(&ledger, account_id, (account_id % 3 + 1) as u16);
    }
    let mut batches = Vec::new();
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..4u128)
            .map(|thread| {
                let ledger = &ledger;
                scope.spawn(move || {
                    for n in (thread..CHARGES).step_by(4) {
                        let account_id = (n % u128::from(RIDERS)) as u64 + 1;
                        let id = 1_000_000 + n;
                        submit(ledger, id, T, charge(account_id, (n % 7) as i64 * 10 + 10));
                        if n % 10 == 0 {
                            submit(
                                ledger,
                                2_000_000 + n,
                                T,
                                Command::Refund { original: TxId(id) },
                            );
                        }
                    }
                })
            })
            .collect();
        let mut close_id = 1;
        while !writers.iter().all(|writer| writer.is_finished()) {
            batches.extend(close(&settlement, close_id, &[], Cutoff::Now).batches);
            close_id += 1;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        batches.extend(close(&settlement, close_id, &[], Cutoff::Now).batches);
    });
    assert!(
        batches.len() >= 6,
        "only {} batches were closed",
        batches.len()
    );

    // What the ledger says each provider owes, from its settling records.
    let mut owed: BTreeMap<u16, i64> = BTreeMap::new();
    let mut settling: HashMap<String, i64> = HashMap::new();
    for n in 0..CHARGES {
        for id in [1_000_000 + n, 2_000_000 + n] {
            if let Some((_, record)) = ledger.transaction(TxId(id)).unwrap() {
                let account_id = crate::ledger::model::rider_of_postings(&record.postings).unwrap();
                let provider = (account_id % 3 + 1) as u16;
                *owed.entry(provider).or_default() += record.rider_charge().0;
                settling.insert(TxId(id).to_string(), record.rider_charge().0);
            }
        }
    }
    let mut seen: HashMap<String, i64> = HashMap::new();
    let mut netted: BTreeMap<u16, i64> = BTreeMap::new();
    let mut position: BTreeMap<u16, u64> = BTreeMap::new();
    for view in &batches {
        let batch = &view.batch;
        let after = position
            .insert(batch.provider_id, batch.through_sequence)
            .unwrap_or(0);
        assert_eq!(
            batch.after_sequence, after,
            "batch {} does not follow on",
            batch.id
        );
        let file = file_of(&settlement, batch);
        for (id, amount) in lines_of(&file) {
            assert!(
                seen.insert(id.clone(), amount).is_none(),
                "{id} is in two batches"
            );
        }
        *netted.entry(batch.provider_id).or_default() += batch.totals.net().0;
    }
    assert_eq!(seen, settling);
    assert_eq!(netted, owed);
    assert_eq!(owed.len(), 3);
    let report = crate::ledger::audit::audit(ledger.view()).unwrap();
    assert!(report.ok(), "{:?}", report.violations);
}

#[test]
fn a_pulled_file_is_byte_identical_every_time_and_its_signature_catches_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let batch = {
        let (ledger, settlement) = open_at(dir.path());
        rider(&ledger, 42, 1);
        for n in 0..50 {
            submit(&ledger, 10 + n, T, charge(42, 30));
        }
        let batch = close(&settlement, 1, &[1], Cutoff::Now)
            .batches
            .remove(0)
            .batch;
        // Taps after the close change nothing in it.
        submit(&ledger, 99, T, charge(42, 30));
        assert_eq!(file_of(&settlement, &batch), file_of(&settlement, &batch));
        batch
    };
    let (_ledger, settlement) = open_at(dir.path());
    let stored = settlement.batch(batch.id).unwrap().unwrap().batch;
    assert_eq!(stored, batch);
    let file = file_of(&settlement, &stored).into_bytes();
    assert_eq!(lines_of(std::str::from_utf8(&file).unwrap()).len(), 50);
    let manifest = Manifest::from_bytes(&settlement.manifest(&stored)).unwrap();
    let public_key = key().public_key();
    verify(&manifest, file.as_slice(), &public_key).unwrap();

    let mut flipped = file.clone();
    flipped[40] ^= 1;
    assert!(matches!(
        verify(&manifest, flipped.as_slice(), &public_key),
        Err(VerifyError::Hash { .. })
    ));
    let mut altered = manifest.clone();
    altered.net_minor += 1;
    assert!(matches!(
        verify(&altered, file.as_slice(), &public_key),
        Err(VerifyError::Signature(SignatureError::Invalid(_)))
    ));
    let other_key = SettlementKey::from_seed([8; 32]).public_key();
    assert!(matches!(
        verify(&manifest, file.as_slice(), &other_key),
        Err(VerifyError::Signature(SignatureError::KeyId { .. }))
    ));
}

#[test]
fn a_refund_of_a_settled_charge_is_a_negative_line_in_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, settlement) = open_at(dir.path());
    rider(&ledger, 42, 1);
    submit(&ledger, 1, T, charge(42, 400));
    let first = close(&settlement, 1, &[1], Cutoff::Now)
        .batches
        .remove(0)
        .batch;
    let first_file = file_of(&settlement, &first);
    submit(&ledger, 2, T, Command::Refund { original: TxId(1) });
    let second = close(&settlement, 2, &[1], Cutoff::Now)
        .batches
        .remove(0)
        .batch;
    assert_eq!(lines_of(&first_file), [(TxId(1).to_string(), 400)]);
    assert_eq!(
        file_of(&settlement, &first),
        first_file,
        "a closed batch never changes"
    );
    assert_eq!(
        lines_of(&file_of(&settlement, &second)),
        [(TxId(2).to_string(), -400)]
    );
    assert_eq!(second.totals.total_refunded, Amount(400));
    assert_eq!(second.totals.net(), Amount(-400));
}

#[test]
fn a_close_is_idempotent_by_its_id_and_other_content_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, settlement) = open_at(dir.path());
    rider(&ledger, 42, 1);
    submit(&ledger, 1, T, charge(42, 400));
    let first = close(&settlement, 5, &[1], Cutoff::Now);
    assert!(!first.replay);
    submit(&ledger, 2, T, charge(42, 100));
    let again = close(&settlement, 5, &[1], Cutoff::Now);
    assert!(again.replay);
    assert_eq!(again.batches, first.batches);
    let conflict = settlement.close(
        &CloseRequest {
            id: TxId(5),
            providers: vec![1, 2],
            cutoff: Cutoff::Now,
        },
        T,
    );
    assert!(matches!(
        conflict,
        Err(SettlementError::Conflict {
            field: "providers",
            ..
        })
    ));
    let conflict = settlement.close(
        &CloseRequest {
            id: TxId(5),
            providers: vec![1],
            cutoff: Cutoff::Sequence(3),
        },
        T,
    );
    assert!(matches!(
        conflict,
        Err(SettlementError::Conflict {
            field: "cutoff",
            ..
        })
    ));
    assert_eq!(settlement.list(None, 0, 10).unwrap().len(), 1);
}

#[test]
fn time_and_sequence_cutoffs_take_a_prefix_of_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, settlement) = open_at(dir.path());
    rider(&ledger, 42, 1);
    let minute = |m: u64| T.saturating_add(m * MINUTE_MS);
    let first = submit(&ledger, 1, minute(1), charge(42, 10)).sequence;
    submit(&ledger, 2, minute(3), charge(42, 20));
    // Recorded after the 08:03 charge with an earlier time: it waits for the next batch,
    // behind the entry that stopped this one.
    submit(&ledger, 3, minute(2), charge(42, 30));
    let by_time = close(&settlement, 1, &[1], Cutoff::Time(minute(2)))
        .batches
        .remove(0)
        .batch;
    assert_eq!(
        lines_of(&file_of(&settlement, &by_time)),
        [(TxId(1).to_string(), 10)]
    );
    assert_eq!(by_time.through_sequence, first);
    assert_eq!(by_time.cutoff.describe(), "time:2027-01-15T08:02:00.000Z");

    let last = ledger.transaction(TxId(3)).unwrap().unwrap().0;
    let ahead = settlement.close(
        &CloseRequest {
            id: TxId(2),
            providers: vec![1],
            cutoff: Cutoff::Sequence(last + 1),
        },
        T,
    );
    assert!(matches!(ahead, Err(SettlementError::CutoffAhead { .. })));
    let by_sequence = close(&settlement, 3, &[1], Cutoff::Sequence(last - 1))
        .batches
        .remove(0)
        .batch;
    assert_eq!(
        lines_of(&file_of(&settlement, &by_sequence)),
        [(TxId(2).to_string(), 20)]
    );
    let rest = close(&settlement, 4, &[1], Cutoff::Now)
        .batches
        .remove(0)
        .batch;
    assert_eq!(
        lines_of(&file_of(&settlement, &rest)),
        [(TxId(3).to_string(), 30)]
    );
}

#[test]
fn an_acknowledgement_checks_the_file_hash_and_keeps_its_first_time() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, settlement) = open_at(dir.path());
    rider(&ledger, 42, 1);
    submit(&ledger, 10, T, charge(42, 250));
    let batch = close(&settlement, 1, &[1], Cutoff::Now)
        .batches
        .remove(0)
        .batch;
    let wrong = settlement.acknowledge(batch.id, &"0".repeat(64), T);
    assert!(matches!(wrong, Err(SettlementError::HashMismatch { .. })));
    assert!(matches!(
        settlement.acknowledge(99, &batch.file_sha256, T),
        Err(SettlementError::UnknownBatch(99))
    ));
    let first = settlement
        .acknowledge(batch.id, &batch.file_sha256, T)
        .unwrap();
    assert_eq!(first.acknowledged_at, Some(T));
    let later = T.saturating_add(MINUTE_MS);
    let again = settlement
        .acknowledge(batch.id, &batch.file_sha256.to_uppercase(), later)
        .unwrap();
    assert_eq!(again.acknowledged_at, Some(T));
}

#[test]
fn a_version_2_data_directory_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (ledger, _) = open_at(dir.path());
        rider(&ledger, 42, 1);
    }
    {
        // Make it look like version 2: no settlement column family, version 2.
        let mut db = rocksdb::DB::open_cf(
            &{
                let mut options = rocksdb::Options::default();
                options.create_if_missing(false);
                options
            },
            dir.path(),
            crate::ledger::store::COLUMN_FAMILIES,
        )
        .unwrap();
        db.drop_cf(CF_SETTLEMENT).unwrap();
        let meta = db.cf_handle(crate::ledger::store::CF_META).unwrap();
        db.put_cf(
            meta,
            crate::ledger::codec::META_FORMAT_VERSION,
            2u32.to_be_bytes(),
        )
        .unwrap();
    }
    let (ledger, settlement) = open_at(dir.path());
    assert_eq!(
        ledger
            .account(AccountRef::Rider(42))
            .unwrap()
            .unwrap()
            .balance,
        Amount(10_000)
    );
    submit(&ledger, 10, T, charge(42, 250));
    let batch = close(&settlement, 1, &[1], Cutoff::Now)
        .batches
        .remove(0)
        .batch;
    assert_eq!(batch.totals.line_count, 1);
}

mod reconciliation {
    use super::super::reconcile::{Mismatch, reconcile};

    const BATCH: &str = "\
H,1,1,1,0,13,now,EUR,2027-01-15T09:00:00.000Z
D,1,7,00000000000000000000000000000001,2027-01-15T08:01:00.000Z,charge,42,1,,,,,,,,250,
D,2,8,00000000000000000000000000000002,2027-01-15T08:02:00.000Z,bus,42,2,bus,7,,,,,501,200,
D,3,9,00000000000000000000000000000003,2027-01-15T08:03:00.000Z,bus,42,2,bus,7,,,,,501,200,
D,4,13,00000000000000000000000000000007,2027-01-15T12:10:00.000Z,refund,42,1,,,,,,,,-250,00000000000000000000000000000001
T,4,650,250,400
";

    #[test]
    fn a_matching_reply_is_clean() {
        let reply = "transaction_id,amount_minor,status
00000000000000000000000000000007,-250,settled
00000000000000000000000000000001,250,settled
00000000000000000000000000000002,200,settled
00000000000000000000000000000003, 200 ,SETTLED
";
        let report = reconcile(BATCH.as_bytes(), reply.as_bytes()).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.matched, 4);
        assert_eq!((report.batch_net, report.reply_settled), (400, 400));
    }

    #[test]
    fn missing_extra_mismatched_and_bad_lines_are_each_reported_by_line() {
        let reply = "transaction_id,amount_minor,status
00000000000000000000000000000001,250,settled
00000000000000000000000000000002,210,settled
00000000000000000000000000000007,-250,rejected
000000000000000000000000000000ff,50,settled
not-an-id,250,settled
00000000000000000000000000000001,250,settled
00000000000000000000000000000009,2.50,settled
00000000000000000000000000000009,250,pending
00000000000000000000000000000009,250
";
        let report = reconcile(BATCH.as_bytes(), reply.as_bytes()).unwrap();
        assert!(!report.is_clean());
        assert_eq!(report.matched, 1);
        assert_eq!(
            report.missing,
            [("00000000000000000000000000000003".to_string(), 200)]
        );
        assert_eq!(
            report.extra,
            [(5, "000000000000000000000000000000ff".to_string(), 50)]
        );
        assert_eq!(
            report.mismatched,
            [
                Mismatch {
                    reply_line: 3,
                    transaction_id: "00000000000000000000000000000002".into(),
                    batch_amount: 200,
                    reply_amount: 210,
                    status: "settled".into(),
                },
                Mismatch {
                    reply_line: 4,
                    transaction_id: "00000000000000000000000000000007".into(),
                    batch_amount: -250,
                    reply_amount: -250,
                    status: "rejected".into(),
                },
            ]
        );
        let bad: Vec<u64> = report.bad_lines.iter().map(|(line, _)| *line).collect();
        assert_eq!(bad, [6, 7, 8, 9, 10]);
        assert!(
            report.bad_lines[1].1.contains("repeated (first on line 2)"),
            "{:?}",
            report.bad_lines
        );
        assert_eq!((report.batch_net, report.reply_settled), (400, 460));
    }

    #[test]
    fn a_reply_without_the_header_row_says_so_and_is_still_compared() {
        let reply = "00000000000000000000000000000001,250,settled\n\n00000000000000000000000000000002,200,settled\n";
        let report = reconcile(BATCH.as_bytes(), reply.as_bytes()).unwrap();
        assert_eq!(report.bad_lines.len(), 1);
        assert_eq!(report.bad_lines[0].0, 1);
        assert_eq!(report.matched, 2);
        assert_eq!(report.missing.len(), 2);
    }

    #[test]
    fn line_numbers_count_blank_lines_and_a_field_never_spans_lines() {
        let reply = "transaction_id,amount_minor,status\n\n\"0000000000000000000000000000000\n1\",250,settled\n00000000000000000000000000000002,x,settled\n";
        let report = reconcile(BATCH.as_bytes(), reply.as_bytes()).unwrap();
        let bad: Vec<u64> = report.bad_lines.iter().map(|(line, _)| *line).collect();
        // The quoted line end splits the record: lines 3 and 4 are each not a transaction.
        assert_eq!(bad, [3, 4, 5], "{:?}", report.bad_lines);
    }
}

mod random_histories {
    //! Random sequences of taps, gate retries, refunds and batch closes keep money
    //! conserved, keep every id's outcome what it first was, and settle every settling
    //! entry in exactly one batch with per-provider totals equal to the ledger's.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// A tap by rider 1..=4 with one of a few codes (so codes are sometimes reused).
        Tap {
            account_id: u64,
            code: u8,
            kind: TapKind,
        },
        /// The gate sends an earlier step's request again (same id, same content).
        Retry { step: usize },
        /// A refund of an earlier step's transaction.
        Refund { step: usize },
        /// Settlement closes a batch per provider now.
        Close,
    }

    fn step() -> impl Strategy<Value = Step> {
        let station = prop::sample::select(vec![100u32, 101, 102, 103, 104, 201, 202, 203]);
        let kind = prop_oneof![
            station
                .clone()
                .prop_map(|station| TapKind::MetroEntry { station }),
            station.prop_map(|station| TapKind::MetroExit { station }),
            prop::sample::select(vec![501u32, 502]).prop_map(|route| TapKind::Bus { route }),
        ];
        prop_oneof![
            6 => (1u64..=4, 0u8..6, kind).prop_map(|(account_id, code, kind)| Step::Tap { account_id, code, kind }),
            2 => (0usize..80).prop_map(|step| Step::Retry { step }),
            1 => (0usize..80).prop_map(|step| Step::Refund { step }),
            1 => Just(Step::Close),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::proptest_cases(16), ..ProptestConfig::default() })]

        #[test]
        fn taps_retries_refunds_and_closes_conserve_money_and_settle_once(
            steps in proptest::collection::vec(step(), 1..80)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let ledger = Arc::new(
                Ledger::open_with_rules(
                    dir.path(),
                    LedgerConfig { sync_writes: false, ..LedgerConfig::default() },
                    rules(),
                )
                .unwrap(),
            );
            let settlement = Settlement::new(Arc::clone(&ledger), key(), "EUR".into());
            for account_id in 1..=4 {
                rider(&ledger, account_id, (account_id % 2 + 1) as u16);
            }
            // Each step's request and its first receipt, by step index.
            let mut sent: Vec<Option<(Request, crate::ledger::Receipt)>> = Vec::new();
            let mut batches = Vec::new();
            let mut close_id = 1u128;
            for (index, step) in steps.iter().enumerate() {
                // A tap every 2 minutes: journeys open and close within the fares' limits.
                let time = T.saturating_add(index as u64 * 2 * MINUTE_MS);
                let id = 1_000 + index as u128;
                let request = match step {
                    Step::Tap { account_id, code, kind } => Some(Request {
                        id: TxId(id),
                        time,
                        command: tap(*account_id, 7, *code, *kind),
                    }),
                    Step::Refund { step } => sent.get(*step).and_then(Option::as_ref).map(|(original, _)| Request {
                        id: TxId(id),
                        time,
                        command: Command::Refund { original: original.id },
                    }),
                    Step::Retry { step } => {
                        if let Some(Some((first, first_receipt))) = sent.get(*step) {
                            let again = ledger.submit(*first).unwrap();
                            prop_assert!(again.replay);
                            prop_assert_eq!(&again.record, &first_receipt.record);
                            prop_assert_eq!(again.sequence, first_receipt.sequence);
                        }
                        None
                    }
                    Step::Close => {
                        batches.extend(close(&settlement, close_id, &[], Cutoff::Now).batches);
                        close_id += 1;
                        None
                    }
                };
                let answered = request.map(|request| {
                    let receipt = ledger.submit(request).unwrap();
                    (request, receipt)
                });
                if let Some((_, receipt)) = &answered {
                    prop_assert!(!receipt.replay);
                }
                sent.push(answered);
            }
            batches.extend(close(&settlement, close_id, &[], Cutoff::Now).batches);

            // Money is conserved.
            let report = crate::ledger::audit::audit(ledger.view()).unwrap();
            prop_assert!(report.ok(), "{:?}", report.violations);
            prop_assert_eq!(report.balance_sum, 0);

            // Every entry that moved a rider's money is in exactly one batch, with its
            // amount; per provider, the batches net what the riders were charged.
            let mut owed: BTreeMap<u16, i64> = BTreeMap::new();
            let mut settling: HashMap<String, i64> = HashMap::new();
            for (request, _) in sent.iter().flatten() {
                let (_, record) = ledger.transaction(request.id).unwrap().unwrap();
                let charge = record.rider_charge().0;
                // A trip that cost nothing (a capped or free transfer) still settles, as a
                // line of 0: the provider sees every trip its rider made.
                if crate::ledger::model::settles(&request.command, record.outcome, &record.postings) {
                    let account_id =
                        crate::ledger::model::rider_of_postings(&record.postings).unwrap();
                    *owed.entry((account_id % 2 + 1) as u16).or_default() += charge;
                    settling.insert(request.id.to_string(), charge);
                }
            }
            let mut seen: HashMap<String, i64> = HashMap::new();
            let mut netted: BTreeMap<u16, i64> = BTreeMap::new();
            for view in &batches {
                for (id, amount) in lines_of(&file_of(&settlement, &view.batch)) {
                    prop_assert!(seen.insert(id.clone(), amount).is_none(), "{} is in two batches", id);
                }
                *netted.entry(view.batch.provider_id).or_default() += view.batch.totals.net().0;
            }
            prop_assert_eq!(seen, settling);
            netted.retain(|_, net| *net != 0);
            owed.retain(|_, net| *net != 0);
            prop_assert_eq!(netted, owed);
        }
    }
}

/// A cluster batch joins its shards' ledgers in shard order (file format 2): exact bytes,
/// a signed version 2 manifest that `verify` accepts, and a shard record the manifest
/// does not name is caught.
#[test]
fn a_joined_batch_writes_each_shard_after_its_range_and_verifies() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (shard0, _) = open_at(dirs[0].path());
    let (shard1, _) = open_at(dirs[1].path());
    rider(&shard0, 2, 1);
    rider(&shard1, 3, 1);
    submit(&shard0, 1, T, charge(2, 150));
    submit(&shard1, 2, UnixMillis(T.0 + MINUTE_MS), charge(3, 250));
    let mut batch = Batch {
        id: 4,
        provider_id: 1,
        after_sequence: 0,
        through_sequence: 0,
        cutoff: Cutoff::Now,
        created_at: T,
        currency: "EUR".into(),
        totals: Default::default(),
        file_bytes: 0,
        file_sha256: String::new(),
        key_id: String::new(),
        signature: String::new(),
        close_id: TxId(5).to_string(),
        shards: vec![
            model::ShardRange {
                shard: 0,
                after_sequence: 0,
                through_sequence: 3,
            },
            model::ShardRange {
                shard: 1,
                after_sequence: 0,
                through_sequence: 3,
            },
        ],
    };
    let sources = [
        file::Source {
            view: shard0.view(),
            snapshot: None,
        },
        file::Source {
            view: shard1.view(),
            snapshot: None,
        },
    ];
    seal(&mut batch, &sources, &key()).unwrap();
    let mut bytes = Vec::new();
    export_checked(&sources, &batch, &mut bytes).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert_eq!(
        text,
        "H,2,1,4,,,now,EUR,2027-01-15T08:00:00.000Z\n\
         S,0,0,3\n\
         D,1,3,00000000000000000000000000000001,2027-01-15T08:00:00.000Z,charge,2,1,,,,,,,,150,\n\
         S,1,0,3\n\
         D,2,3,00000000000000000000000000000002,2027-01-15T08:01:00.000Z,charge,3,1,,,,,,,,250,\n\
         T,2,400,0,400\n"
    );
    let manifest = Manifest::from_bytes(&batch.manifest().to_bytes()).unwrap();
    assert_eq!(manifest.format_version, 2);
    verify(&manifest, bytes.as_slice(), &key().public_key()).unwrap();

    // Another manifest's shards do not verify against the signature, and a file whose
    // shard record differs from its manifest is refused at that record.
    let mut moved = manifest.clone();
    moved.shards[1].through_sequence = 2;
    assert!(matches!(
        moved.verify(&key().public_key()),
        Err(SignatureError::Invalid(_))
    ));
    let forged = text.replace("S,1,0,3", "S,1,1,3");
    let err = verify(&manifest, forged.as_bytes(), &key().public_key()).unwrap_err();
    assert!(matches!(err, VerifyError::Hash { .. }), "{err}");
    // A manifest signed for these bytes but naming another range for shard 1.
    let mut other = batch.manifest();
    other.shards[1].after_sequence = 1;
    key().sign_manifest(&mut other);
    let err = verify(&other, text.as_bytes(), &key().public_key()).unwrap_err();
    assert!(
        err.to_string().contains("is not the manifest's next shard"),
        "{err}"
    );
}
