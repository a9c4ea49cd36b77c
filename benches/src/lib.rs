//! Shared set-up for the benchmarks: a registry with one provider, riders' devices, and a
//! ledger with riders to charge.

use fareway::clock::UnixMillis;
use fareway::ledger::{Command, Ledger, LedgerConfig, Request, Tap, TapKind, TxId};
use fareway::money::Amount;
use fareway::token::mint::{Device, Issuer};
use fareway::token::{IssuerRegistry, Provider};

/// The time every benchmark runs at.
pub const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

/// A registry with provider 1 and its issuer, whose key has a fixed seed.
pub fn registry_and_issuer() -> (IssuerRegistry, Issuer) {
    let issuer = Issuer::from_seed(1, [1; 32]);
    let mut registry = IssuerRegistry::default();
    registry
        .add_provider(Provider {
            id: 1,
            name: "metro-pay".into(),
        })
        .unwrap_or_else(|err| unreachable!("{err}"));
    registry
        .add_key(issuer.issuer_key())
        .unwrap_or_else(|err| unreachable!("{err}"));
    (registry, issuer)
}

/// A rider's device for `account_id`, with a credential valid for a week from [`NOW`].
pub fn device(issuer: &Issuer, account_id: u64) -> Device {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&account_id.to_be_bytes());
    let key = Device::key_from_seed(&seed);
    let credential = issuer.issue(
        account_id,
        NOW.saturating_add(7 * 86_400_000),
        0,
        Device::public_key_of(&key),
    );
    Device::new(key, credential, 0)
}

/// Requests in flight at once in the ledger benches, as a gRPC server has them: async
/// tasks, not threads.
pub const CALLERS: u64 = 512;

/// A number from the environment variable `name`, or `default` when it is unset or not a
/// number: how the benches that are not criterion's take their sizes and durations.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Whether cargo only asks for the bench's list of cases (`cargo bench -- --list`,
/// `cargo test --benches`): a bench that is not criterion's has none, and returns.
pub fn asked_for_list() -> bool {
    std::env::args().any(|arg| arg == "--list")
}

/// Rider accounts in a benchmark ledger.
pub const RIDERS: u64 = 10_000;

/// A ledger in a temporary directory with [`RIDERS`] riders of ample credit, no fares.
/// `BENCH_KEEP_DIR=1` keeps the directory: its RocksDB LOG shows flushes and stalls.
pub fn ledger_with_riders(sync_writes: bool) -> (tempfile::TempDir, Ledger) {
    ledger_with_riders_under(sync_writes, fareway::ledger::Rules::default())
}

/// [`ledger_with_riders`] under `rules` (the sample city's fares, for taps).
pub fn ledger_with_riders_under(
    sync_writes: bool,
    rules: fareway::ledger::Rules,
) -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::Builder::new()
        .disable_cleanup(std::env::var_os("BENCH_KEEP_DIR").is_some())
        .tempdir()
        .unwrap_or_else(|err| unreachable!("{err}"));
    eprintln!("ledger bench data directory: {}", dir.path().display());
    let config = LedgerConfig {
        sync_writes,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::open_with_rules(dir.path(), config, rules)
        .unwrap_or_else(|err| unreachable!("{err}"));
    for account_id in 0..RIDERS {
        let open = Command::OpenAccount {
            account_id,
            provider_id: 1,
            credit_limit: Amount(i64::MAX / 2),
        };
        let request = Request {
            id: TxId(u128::from(account_id) << 64),
            time: NOW,
            command: open,
        };
        ledger
            .submit(request)
            .unwrap_or_else(|err| unreachable!("{err}"));
    }
    (dir, ledger)
}

/// The `id`-th fare charge of a benchmark: 300 to one of the riders, by turns.
pub fn charge(id: u64) -> Request {
    let command = Command::Charge {
        account_id: id % RIDERS,
        operator_id: 1,
        amount: Amount(300),
    };
    Request {
        id: TxId(u128::from(id) + 1),
        time: NOW,
        command,
    }
}

/// The `n`-th tap of a benchmark's set-up: id `n + 1`, a code of its own made from `n`,
/// online, no concession.
pub fn tap(n: u64, account_id: u64, gate_id: u32, time: UnixMillis, kind: TapKind) -> Request {
    let mut code = [0u8; 16];
    code[..8].copy_from_slice(&n.to_be_bytes());
    Request {
        id: TxId(u128::from(n) + 1),
        time,
        command: Command::Tap(Tap {
            account_id,
            gate_id,
            code,
            kind,
            offline: false,
            concessions: 0,
        }),
    }
}

/// A memory figure of this process from `/proc/self/status` in KiB (Linux): `VmRSS` for
/// the resident set now, `VmHWM` for its peak. 0 where it cannot be read.
pub fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| {
                    line.strip_prefix(field)
                        .is_some_and(|rest| rest.starts_with(':'))
                })
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse().ok())
        })
        .unwrap_or(0)
}

/// The pattern of the benches that measure a large ledger (settlement export, the
/// fare-change replay): the ledger of `TAPS` taps (env, default `taps_default`) is made
/// once in a folder, then measured by a fresh run of the same bench, so that the set-up's
/// memory does not count. `dir_var` names the folder to the fresh run (set it to reuse a
/// ledger made before). `measure` gets the folder, the taps and a scratch folder.
pub fn made_once_then_measured(
    dir_var: &str,
    taps_default: u64,
    make: impl FnOnce(&std::path::Path, u64),
    measure: impl FnOnce(&std::path::Path, u64, &std::path::Path),
) {
    if asked_for_list() {
        return;
    }
    let taps = env_u64("TAPS", taps_default);
    let temp = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
    let dir = std::env::var(dir_var)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| temp.path().join("ledger"));
    if dir.join("CURRENT").exists() {
        measure(&dir, taps, temp.path());
        return;
    }
    make(&dir, taps);
    let status =
        std::process::Command::new(std::env::current_exe().unwrap_or_else(|err| panic!("{err}")))
            .arg("--bench")
            .env(dir_var, &dir)
            .env("TAPS", taps.to_string())
            .status()
            .unwrap_or_else(|err| panic!("{err}"));
    assert!(status.success(), "the measurement failed");
}

/// The sample city's fares (`docs/sample-city.toml`) and the default code retry window.
pub fn sample_city_rules() -> fareway::ledger::Rules {
    let fares = fareway::fares::FareTable::from_toml(include_str!("../../docs/sample-city.toml"))
        .unwrap_or_else(|err| panic!("{err}"));
    fareway::ledger::Rules {
        fares: Some(std::sync::Arc::new(fares)),
        code_retry_window_ms: fareway::ledger::CODE_RETRY_WINDOW_MS_DEFAULT,
    }
}

/// The ledger of a large bench's set-up in `dir`: the sample city's fares, written
/// without syncs (a crash would lose it; the set-up is not what is measured).
pub fn unsynced_sample_city_ledger(dir: &std::path::Path) -> Ledger {
    let rules = sample_city_rules();
    let config = LedgerConfig {
        sync_writes: false,
        ..LedgerConfig::default()
    };
    Ledger::open_with_rules(dir, config, rules).unwrap_or_else(|err| panic!("{err}"))
}

/// Submits a set-up request, waiting while the writer is overloaded.
pub fn submit_waiting(ledger: &Ledger, request: Request) {
    loop {
        match ledger.submit(request) {
            Ok(_) => return,
            Err(fareway::ledger::LedgerError::Overloaded(_)) => std::thread::yield_now(),
            Err(err) => panic!("{err}"),
        }
    }
}

/// Opens riders `0..riders` on 8 threads, each of provider `provider_of(account)` with
/// ample credit.
pub fn open_riders(ledger: &Ledger, riders: u64, provider_of: impl Fn(u64) -> u16 + Sync) {
    std::thread::scope(|scope| {
        for thread in 0..8u64 {
            let provider_of = &provider_of;
            scope.spawn(move || {
                for account_id in (thread..riders).step_by(8) {
                    let open = Command::OpenAccount {
                        account_id,
                        provider_id: provider_of(account_id),
                        credit_limit: Amount(1 << 40),
                    };
                    let request = Request {
                        id: TxId(u128::from(account_id) << 64),
                        time: NOW,
                        command: open,
                    };
                    submit_waiting(ledger, request);
                }
            });
        }
    });
}
