//! `fareway demo`: the main job, end to end, on a temporary data directory.
//!
//! Until the gRPC server and the gate simulator exist, the demo drives the engine's real
//! parts in-process: real Ed25519 codes minted by real issuer and device keys, the real
//! verifier, and the real RocksDB ledger with durable group commit. Riders of two
//! providers tap from many threads at once; some codes are forged, stale or from
//! deny-listed or broke riders, and some gates retry. At the end it audits the ledger,
//! checks that every accepted tap was charged exactly once, closes a settlement batch per
//! provider and writes its signed file and manifest to the output folder, checked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use fareway::clock::UnixMillis;
use fareway::ledger::{
    AccountRef, AccountStatus, Command, Ledger, LedgerConfig, Outcome, Request, TxId,
};
use fareway::money::Amount;
use fareway::settlement::Settlement;
use fareway::settlement::key::SettlementKey;
use fareway::settlement::model::{CloseRequest, Cutoff};
use fareway::settlement::verify::verify_pulled;
use fareway::token::mint::{Device, Issuer};
use fareway::token::{Decision, IssuerRegistry, Provider, Verifier, VerifierConfig};
use hdrhistogram::Histogram;

/// The flat fare every demo tap is charged, in minor units.
const FARE_MINOR: i64 = 300;
const OPERATOR_ID: u16 = 1;
const PROVIDERS: [(u16, &str); 2] = [(1, "metro-pay"), (2, "city-wallet")];
const DEMO_TIME_MS: u64 = 1_800_000_000_000;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Riders to provision.
    #[arg(long, default_value_t = 2_000)]
    riders: u64,
    /// Taps to play.
    #[arg(long, default_value_t = 40_000)]
    taps: u64,
    /// Gates tapping at once (threads).
    #[arg(long, default_value_t = 32)]
    gates: usize,
    /// Keep the data directory here (it must not exist or be empty) instead of a
    /// temporary one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the settlement files go (made if missing; files of an earlier run with the
    /// same names are replaced).
    #[arg(long, default_value = "fareway-demo-output")]
    out: PathBuf,
}

/// What the demo meant each tap to be, so its outcome can be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Planned {
    Valid,
    Retry,
    Forged,
    Stale,
    Denied,
    Broke,
}

struct Tap {
    id: TxId,
    text: String,
    planned: Planned,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.riders >= 10 && args.taps > 0 && args.gates > 0,
        "need at least 10 riders, 1 tap and 1 gate"
    );
    let temp = tempfile::tempdir().context("making a temporary data directory")?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().join("ledger"));
    // The demo's transaction ids start at 1 on every run: in a used directory they would
    // all be replays, and the checks below would rightly fail.
    let used = std::fs::read_dir(&data_dir)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    anyhow::ensure!(
        !used,
        "{} is not empty: the demo needs a new data directory",
        data_dir.display()
    );
    let now = UnixMillis(DEMO_TIME_MS);
    println!(
        "fareway demo: {} riders, {} taps from {} gates, ledger in {}",
        args.riders,
        args.taps,
        args.gates,
        data_dir.display()
    );

    // Providers and their issuer keys (fixed seeds: every run is the same city).
    let mut registry = IssuerRegistry::default();
    let issuers: Vec<Issuer> = PROVIDERS
        .iter()
        .map(|(id, name)| {
            registry.add_provider(Provider {
                id: *id,
                name: name.to_string(),
            })?;
            let issuer = Issuer::from_seed(*id, [*id as u8; 32]);
            registry.add_key(issuer.issuer_key())?;
            Ok(issuer)
        })
        .collect::<anyhow::Result<_>>()?;
    let verifier = Verifier::new(VerifierConfig::default(), registry);
    let ledger = Arc::new(
        Ledger::open(&data_dir, LedgerConfig::default())
            .with_context(|| format!("opening the ledger in {}", data_dir.display()))?,
    );

    // Riders: one in 50 deny-listed, one in 25 broke (no balance, no credit).
    let started = Instant::now();
    let mut devices = Vec::new();
    let mut id_counter = 0u128;
    let mut next_id = || {
        id_counter += 1;
        TxId(id_counter)
    };
    for account_id in 1..=args.riders {
        let issuer = &issuers[(account_id % 2) as usize];
        let broke = account_id % 25 == 3;
        let credit_limit = Amount(if broke { 0 } else { 1_000 });
        let open = Command::OpenAccount {
            account_id,
            provider_id: issuer.provider_id(),
            credit_limit,
        };
        ledger.submit(Request {
            id: next_id(),
            time: now,
            command: open,
        })?;
        if !broke {
            let top_up = Command::TopUp {
                account_id,
                amount: Amount(50_000),
            };
            ledger.submit(Request {
                id: next_id(),
                time: now,
                command: top_up,
            })?;
        }
        if account_id % 50 == 7 {
            let deny = Command::SetStatus {
                account_id,
                status: AccountStatus::Denied,
            };
            ledger.submit(Request {
                id: next_id(),
                time: now,
                command: deny,
            })?;
            verifier.set_denied(account_id, true);
        }
        let seed = account_id.to_be_bytes().repeat(4);
        let key = Device::key_from_seed(&seed.try_into().unwrap_or([0; 32]));
        let credential = issuer.issue(
            account_id,
            now.saturating_add(7 * 86_400_000),
            0,
            Device::public_key_of(&key),
        );
        devices.push(Device::new(key, credential, 0));
    }
    println!(
        "provisioned {} riders in {:.1}s",
        args.riders,
        started.elapsed().as_secs_f64()
    );

    // Codes are minted before the timed window, so that signing does not count as engine time.
    let mut taps = Vec::with_capacity(args.taps as usize);
    for index in 0..args.taps {
        let account_id = 1 + (index * 7_919) % args.riders;
        let device = &mut devices[(account_id - 1) as usize];
        let mut planned = match index % 100 {
            0..=2 => Planned::Forged,
            3..=4 => Planned::Stale,
            5..=7 => Planned::Retry,
            _ => Planned::Valid,
        };
        let made = if planned == Planned::Stale {
            now.saturating_sub(600_000)
        } else {
            now
        };
        let mut bytes = device.code_bytes(made);
        if planned == Planned::Forged {
            bytes[150] ^= 0x20;
        }
        if account_id % 50 == 7 && planned == Planned::Valid {
            planned = Planned::Denied;
        } else if account_id % 25 == 3 && planned == Planned::Valid {
            planned = Planned::Broke;
        }
        taps.push(Tap {
            id: next_id(),
            text: fareway::token::format::encode_text(&bytes),
            planned,
        });
    }

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let outcomes: Mutex<HashMap<(Planned, String), u64>> = Mutex::new(HashMap::new());
    let charged: Mutex<HashMap<TxId, u64>> = Mutex::new(HashMap::new());
    let chunk = taps.len().div_ceil(args.gates);
    let timed = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = taps
            .chunks(chunk)
            .map(|gate_taps| {
                let (verifier, ledger, outcomes, charged) =
                    (&verifier, &ledger, &outcomes, &charged);
                scope.spawn(move || -> anyhow::Result<Histogram<u64>> {
                    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                    for tap in gate_taps {
                        let attempts = if tap.planned == Planned::Retry { 2 } else { 1 };
                        for _ in 0..attempts {
                            let started = Instant::now();
                            let decision = verifier.verify_text(&tap.text, now);
                            let label = match decision {
                                Decision::Rejected(reason) => reason.code().to_string(),
                                Decision::Accepted(code) => {
                                    let charge = Command::Charge {
                                        account_id: code.account_id,
                                        operator_id: OPERATOR_ID,
                                        amount: Amount(FARE_MINOR),
                                    };
                                    let receipt = ledger.submit(Request {
                                        id: tap.id,
                                        time: now,
                                        command: charge,
                                    })?;
                                    match receipt.record.outcome {
                                        Outcome::Accepted if receipt.replay => {
                                            "accepted_replay".to_string()
                                        }
                                        Outcome::Accepted => {
                                            *charged
                                                .lock()
                                                .unwrap_or_else(|p| p.into_inner())
                                                .entry(tap.id)
                                                .or_default() += 1;
                                            "accepted".to_string()
                                        }
                                        Outcome::Refused(refusal) => refusal.code().to_string(),
                                        // Only taps are duplicates; the demo sends charges.
                                        Outcome::Duplicate { .. } => "duplicate".to_string(),
                                    }
                                }
                            };
                            local.saturating_record(started.elapsed().as_micros() as u64);
                            *outcomes
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry((tap.planned, label))
                                .or_default() += 1;
                        }
                    }
                    Ok(local)
                })
            })
            .collect();
        for worker in workers {
            let local = worker
                .join()
                .map_err(|_| anyhow::anyhow!("a gate thread panicked"))??;
            histogram.add(local)?;
        }
        Ok(())
    })?;
    let elapsed = timed.elapsed().as_secs_f64();
    let stats = ledger.stats();
    let batches = stats
        .batches
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1);

    // Check every tap got the outcome its plan says.
    let outcomes = outcomes.into_inner().unwrap_or_else(|p| p.into_inner());
    let expected = |planned: Planned| -> &[&str] {
        match planned {
            Planned::Valid => &["accepted"],
            Planned::Retry => &["accepted", "accepted_replay"],
            Planned::Forged => &["bad_code_signature"],
            Planned::Stale => &["code_expired"],
            Planned::Denied => &["account_denied"],
            Planned::Broke => &["credit_limit_exceeded"],
        }
    };
    let mut rows: Vec<_> = outcomes.iter().collect();
    rows.sort();
    let mut unexpected = 0u64;
    let total: u64 = outcomes.values().sum();
    println!();
    println!("{:<10} {:<24} {:>8}", "planned", "decision", "taps");
    for ((planned, label), count) in &rows {
        let ok = expected(*planned).contains(&label.as_str());
        if !ok {
            unexpected += **count;
        }
        println!(
            "{:<10} {:<24} {:>8}{}",
            format!("{planned:?}").to_lowercase(),
            label,
            count,
            if ok { "" } else { "  UNEXPECTED" }
        );
    }
    let charged = charged.into_inner().unwrap_or_else(|p| p.into_inner());
    let charged_twice = charged.values().filter(|count| **count > 1).count();
    let accepted = charged.len() as i64;
    println!();
    println!(
        "taps (with retries): {total} in {elapsed:.2}s = {:.0} taps/s",
        total as f64 / elapsed
    );
    println!(
        "latency per tap (verify + durable charge), us: p50 {} p90 {} p99 {} p99.9 {} max {}",
        histogram.value_at_quantile(0.50),
        histogram.value_at_quantile(0.90),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max()
    );
    println!(
        "ledger: {} group commits, {:.1} requests per commit, mean synced write {} us",
        batches,
        stats.requests.load(std::sync::atomic::Ordering::Relaxed) as f64 / batches as f64,
        stats
            .write_time_us
            .load(std::sync::atomic::Ordering::Relaxed)
            / batches
    );

    // Invariants: the audit, and the operator's revenue equals the fares accepted.
    let revenue = ledger
        .account(AccountRef::OperatorRevenue(OPERATOR_ID))?
        .map_or(0, |account| account.balance.0);
    let report = fareway::ledger::audit::audit(ledger.db())?;
    println!();
    super::audit::print_report(&report);
    let revenue_ok = revenue == accepted * FARE_MINOR;
    println!(
        "revenue: operator {OPERATOR_ID} earned {revenue}, {accepted} accepted taps x {FARE_MINOR} = {}: {}",
        accepted * FARE_MINOR,
        if revenue_ok { "ok" } else { "MISMATCH" }
    );
    println!("charged twice: {charged_twice}; taps with an unexpected outcome: {unexpected}");

    // Settlement: a batch per provider, written and checked like a pull.
    let (key, _) = SettlementKey::load_or_create(&temp.path().join("settlement.key"))?;
    let public_key = key.public_key();
    let settlement = Settlement::new(Arc::clone(&ledger), key, "EUR".into());
    let close = CloseRequest {
        id: next_id(),
        providers: Vec::new(),
        cutoff: Cutoff::Now,
    };
    let closed = settlement.close(&close, now)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot make folder {}", args.out.display()))?;
    // The key is new on every run: its public half goes beside the files to check them with.
    let key_path = args.out.join("settlement-public-key.txt");
    std::fs::write(
        &key_path,
        format!("{}\n", fareway::hex::encode(&public_key)),
    )
    .with_context(|| format!("cannot write {}", key_path.display()))?;
    println!();
    let mut settled = 0;
    for view in &closed.batches {
        let (file, _) = settlement.write_files(&view.batch, &args.out)?;
        let manifest = verify_pulled(&file, &public_key)
            .with_context(|| format!("{} does not check", file.display()))?;
        settled += manifest.net_minor;
        println!(
            "settlement batch {} for provider {}: {} lines, net {} {}, signed and checked: {}",
            manifest.batch_id,
            manifest.provider_id,
            manifest.line_count,
            manifest.net_minor,
            manifest.currency,
            file.display()
        );
    }
    let settled_ok = settled == revenue;
    println!(
        "settlement: batches net {settled}, operator revenue {revenue}: {}; public key in {}",
        if settled_ok { "ok" } else { "MISMATCH" },
        key_path.display()
    );
    let ok = report.ok() && revenue_ok && settled_ok && charged_twice == 0 && unexpected == 0;
    println!("invariants: {}", if ok { "ok" } else { "FAILED" });
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
