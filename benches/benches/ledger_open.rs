//! Opening a data directory that holds many accounts, and the memory that takes.
//!
//! Run: `cargo bench -p fareway-benches --bench ledger_open` (ACCOUNTS=10000000 by
//! default; set ACCOUNTS to change it, LEDGER_DIR to reuse a directory made earlier).
//! Goal (issue 3): under 5 seconds to open 10 million accounts, with the process's
//! memory under the configured cache budget.

use std::path::PathBuf;
use std::time::Instant;

use fareway::ledger::{AccountRef, Command, Ledger, LedgerConfig, Request, StoreConfig, TxId};
use fareway::money::Amount;
use fareway_benches::{NOW, asked_for_list, env_u64, proc_status_kib};

fn main() {
    if asked_for_list() {
        return;
    }
    let accounts = env_u64("ACCOUNTS", 10_000_000);
    let temp = tempfile::tempdir().unwrap_or_else(|err| unreachable!("{err}"));
    let dir = std::env::var("LEDGER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| temp.path().join("ledger"));
    let config = LedgerConfig::default();
    let budget = config.store.block_cache_bytes + config.store.write_buffers_bytes;

    if !dir.join("CURRENT").exists() {
        let started = Instant::now();
        let ledger = Ledger::open(
            &dir,
            LedgerConfig {
                sync_writes: false,
                ..config
            },
        )
        .unwrap_or_else(|err| panic!("{err}"));
        // Open accounts from many threads so that the writer's batches are full.
        std::thread::scope(|scope| {
            for thread in 0..8u64 {
                let ledger = &ledger;
                scope.spawn(move || {
                    for account_id in (thread..accounts).step_by(8) {
                        let open = Command::OpenAccount {
                            account_id,
                            provider_id: 1,
                            credit_limit: Amount(1_000),
                        };
                        loop {
                            match ledger.submit(Request {
                                id: TxId(u128::from(account_id)),
                                time: NOW,
                                command: open,
                            }) {
                                Ok(_) => {
                                    if thread == 0 && account_id % 1_000_000 == 0 {
                                        eprintln!("created about {account_id} accounts");
                                    }
                                    break;
                                }
                                Err(fareway::ledger::LedgerError::Overloaded(_)) => {
                                    std::thread::yield_now()
                                }
                                Err(err) => panic!("{err}"),
                            }
                        }
                    }
                });
            }
        });
        println!(
            "created {accounts} accounts in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        drop(ledger);
        // Measure the open in a fresh process, so that memory the creation used and the
        // allocator kept does not count against the open.
        let status = std::process::Command::new(
            std::env::current_exe().unwrap_or_else(|err| panic!("{err}")),
        )
        .arg("--bench")
        .env("LEDGER_DIR", &dir)
        .env("ACCOUNTS", accounts.to_string())
        .status()
        .unwrap_or_else(|err| panic!("{err}"));
        assert!(status.success(), "the open measurement failed");
        return;
    }

    let rss_before_kib = proc_status_kib("VmRSS");
    let started = Instant::now();
    let ledger = Ledger::open(
        &dir,
        LedgerConfig {
            store: StoreConfig::default(),
            ..config
        },
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let opened = started.elapsed();
    // Touch accounts spread over the key space: the first reads after opening.
    let started_reads = Instant::now();
    for account_id in (0..accounts).step_by((accounts / 10_000).max(1) as usize) {
        assert!(
            ledger
                .account(AccountRef::Rider(account_id))
                .unwrap_or_else(|err| panic!("{err}"))
                .is_some()
        );
    }
    let reads = started_reads.elapsed();
    println!(
        "opened a ledger of {accounts} accounts in {:.3}s",
        opened.as_secs_f64()
    );
    println!(
        "10,000 spread account reads after opening: {:.3}s",
        reads.as_secs_f64()
    );
    println!(
        "resident memory: {} MiB before opening, {} MiB after (cache budget {} MiB)",
        rss_before_kib / 1024,
        proc_status_kib("VmRSS") / 1024,
        budget >> 20
    );
}
