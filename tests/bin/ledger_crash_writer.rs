//! A ledger writer under concurrent load, for the crash test: it charges riders from many
//! threads and prints `ACK <id> <sequence>` for every durable answer, until it is killed
//! or runs out of ids.
//!
//! Usage: `ledger-crash-writer DATA_DIR ACCOUNTS ID_START ID_COUNT RETRY_START RETRY_COUNT`.
//! The content of a charge follows from its id alone ([`charge_for`]), so a retry of an id
//! from an earlier run carries the same content.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use fareway::clock::UnixMillis;
use fareway::ledger::{Command, Ledger, LedgerConfig, LedgerError, Request, TxId};
use fareway::money::Amount;

const THREADS: u64 = 16;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() == 6,
        "usage: ledger-crash-writer DATA_DIR ACCOUNTS ID_START ID_COUNT RETRY_START RETRY_COUNT"
    );
    let number = |index: usize| {
        args[index]
            .parse::<u64>()
            .with_context(|| format!("argument {index}"))
    };
    let (dir, accounts) = (PathBuf::from(&args[0]), number(1)?);
    let (id_start, id_count, retry_start, retry_count) =
        (number(2)?, number(3)?, number(4)?, number(5)?);

    let ledger = Ledger::open(&dir, LedgerConfig::default())?;
    for account_id in 1..=accounts {
        let open = Command::OpenAccount {
            account_id,
            provider_id: 1,
            credit_limit: Amount(1 << 40),
        };
        ledger.submit(Request {
            id: TxId(u128::from(account_id)),
            time: UnixMillis(1),
            command: open,
        })?;
    }
    let stdout = Mutex::new(std::io::stdout());
    writeln!(stdout.lock().unwrap_or_else(|p| p.into_inner()), "READY")?;

    let ids: Vec<u64> = (retry_start..retry_start + retry_count)
        .chain(id_start..id_start + id_count)
        .collect();
    let next = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| -> anyhow::Result<()> {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&id) = ids.get(index) else {
                        return Ok(());
                    };
                    let receipt = loop {
                        match ledger.submit(charge_for(id, accounts)) {
                            Err(LedgerError::Overloaded(_)) => std::thread::yield_now(),
                            other => break other?,
                        }
                    };
                    let mut out = stdout.lock().unwrap_or_else(|p| p.into_inner());
                    writeln!(out, "ACK {id} {}", receipt.sequence)?;
                    out.flush()?;
                }
            });
        }
    });
    writeln!(stdout.lock().unwrap_or_else(|p| p.into_inner()), "DONE")?;
    Ok(())
}

/// The charge with this id: its content follows from the id alone.
pub fn charge_for(id: u64, accounts: u64) -> Request {
    let command = Command::Charge {
        account_id: 1 + id % accounts,
        operator_id: 1,
        amount: Amount(7 + (id % 5) as i64),
    };
    Request {
        id: TxId(u128::from(id)),
        time: UnixMillis(2),
        command,
    }
}
