//! Closes settlement batches in a loop while other threads charge riders, for the
//! settlement crash test: it prints `CLOSING <close id>` before each close and `CLOSED
//! <batch id> <sha256>` for each batch once the close returns, until it is killed or runs
//! out of charges.
//!
//! Usage: `settlement-crash-closer DATA_DIR CHARGE_START CHARGE_COUNT CLOSE_ID_START`.
//! Riders 1 to 30 (providers 1 to 3) are opened on the first run. The first half of the
//! charges is a backlog made before `READY` (without syncing each write, for speed), so
//! that the first close has hundreds of thousands of entries to read and a kill soon
//! after `READY` lands in the middle of it; the second half flows during the closes.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context as _;
use fareway::clock::UnixMillis;
use fareway::ledger::{Command, Ledger, LedgerConfig, LedgerError, Request, TxId};
use fareway::money::Amount;
use fareway::settlement::key::SettlementKey;
use fareway::settlement::model::{CloseRequest, Cutoff};
use fareway::settlement::{Settlement, SettlementBook};

/// The riders, and the provider of each.
pub const RIDERS: u64 = 30;
const CHARGING_THREADS: u64 = 8;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: settlement-crash-closer DATA_DIR CHARGE_START CHARGE_COUNT CLOSE_ID_START"
    );
    let number = |index: usize| {
        args[index]
            .parse::<u64>()
            .with_context(|| format!("argument {index}"))
    };
    let dir = PathBuf::from(&args[0]);
    let (charge_start, charge_count, close_id_start) = (number(1)?, number(2)?, number(3)?);

    let backlog = LedgerConfig {
        sync_writes: false,
        ..LedgerConfig::default()
    };
    let ledger = Arc::new(Ledger::open(&dir, backlog)?);
    for account_id in 1..=RIDERS {
        let open = Command::OpenAccount {
            account_id,
            provider_id: (account_id % 3 + 1) as u16,
            credit_limit: Amount(1 << 40),
        };
        ledger.submit(Request {
            id: TxId(u128::from(account_id)),
            time: UnixMillis(1),
            command: open,
        })?;
    }
    let half = charge_start + charge_count / 2;
    charge_all(&ledger, charge_start, half);
    drop(ledger);
    let ledger = Arc::new(Ledger::open(&dir, LedgerConfig::default())?);
    let settlement = Settlement::new(
        Arc::clone(&ledger),
        SettlementKey::from_seed([9; 32]),
        "EUR".into(),
    );
    println!("READY");

    let done = AtomicBool::new(false);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        scope.spawn(|| {
            charge_all(&ledger, half, charge_start + charge_count);
            done.store(true, Ordering::Relaxed);
        });
        let mut close_id = close_id_start;
        while !done.load(Ordering::Relaxed) {
            println!("CLOSING {close_id}");
            let request = CloseRequest {
                id: TxId(u128::from(close_id)),
                providers: Vec::new(),
                cutoff: Cutoff::Now,
            };
            let closed = settlement.close(&request, UnixMillis(close_id))?;
            let mut out = std::io::stdout().lock();
            for view in closed.batches {
                writeln!(out, "CLOSED {} {}", view.batch.id, view.batch.file_sha256)?;
            }
            out.flush()?;
            close_id += 1;
        }
        Ok(())
    })
}

/// Charges ids `start..end` from several threads.
fn charge_all(ledger: &Ledger, start: u64, end: u64) {
    let next = AtomicU64::new(start);
    std::thread::scope(|scope| {
        for _ in 0..CHARGING_THREADS {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= end {
                        break;
                    }
                    let request = Request {
                        id: TxId(u128::from(n)),
                        time: UnixMillis(n),
                        command: Command::Charge {
                            account_id: n % RIDERS + 1,
                            operator_id: 1,
                            amount: Amount((n % 9 + 1) as i64 * 10),
                        },
                    };
                    match ledger.submit(request) {
                        Ok(_) | Err(LedgerError::Overloaded(_)) => {}
                        Err(err) => panic!("charge {n} failed: {err}"),
                    }
                }
            });
        }
    });
}
