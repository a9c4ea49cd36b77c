//! What the ledger's run-time money checks cost: encoding and decoding a tap's record (each
//! now checks that its postings sum to zero, the write side as an assertion, the read side
//! as a corruption error) against the bare check alone.
//!
//! Run: `cargo bench -p fareway-benches --bench codec`. A tap costs about 250 µs of engine
//! CPU (`docs/PERFORMANCE.md`); the checks must stay a rounding error of that.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fareway::clock::UnixMillis;
use fareway::ledger::codec;
use fareway::ledger::{
    AccountRef, Command, Journey, Outcome, Posting, Record, Request, Tap, TapKind, TxId,
};
use fareway::money::Amount;

/// An accepted bus tap's record: two postings, a journey, a balance.
fn bus_tap_record() -> Record {
    Record {
        request: Request {
            id: TxId(7),
            time: UnixMillis(1_767_225_600_000),
            command: Command::Tap(Tap {
                account_id: 42,
                gate_id: 9,
                code: [3; 16],
                kind: TapKind::Bus { route: 501 },
                offline: false,
                concessions: 0,
            }),
        },
        outcome: Outcome::Accepted,
        postings: vec![
            Posting {
                account: AccountRef::Rider(42),
                amount: Amount(-200),
            },
            Posting {
                account: AccountRef::OperatorRevenue(2),
                amount: Amount(200),
            },
        ],
        rider_balance_after: Some(Amount(9_800)),
        journey: Some(Journey {
            id: 11,
            entry_station: None,
            entered_at: None,
        }),
    }
}

fn records(c: &mut Criterion) {
    let record = bus_tap_record();
    let bytes = codec::encode_record(&record);
    let mut group = c.benchmark_group("codec");
    group.bench_function("postings_sum_to_zero", |b| {
        b.iter(|| codec::postings_sum_to_zero(black_box(&record.postings)))
    });
    group.bench_function("encode_record", |b| {
        b.iter(|| codec::encode_record(black_box(&record)))
    });
    group.bench_function("decode_record", |b| {
        b.iter(|| codec::decode_record(black_box(&bytes)))
    });
    group.finish();
}

criterion_group!(benches, records);
criterion_main!(benches);
