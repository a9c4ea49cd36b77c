//! Tests of deciding the next group commit while the last one syncs, on a real RocksDB:
//! the write-ahead log's real sync, held back or failed by a test step around it.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::time::{Duration, Instant};

use super::*;
use crate::clock::UnixMillis;

const T: UnixMillis = UnixMillis(1_800_000_000_000);

/// The longest any step of these tests waits for another.
const WAIT_MAX: Duration = Duration::from_secs(10);

/// What arrives on `channel` within [`WAIT_MAX`].
fn within<T>(channel: &Receiver<T>) -> T {
    channel
        .recv_timeout(WAIT_MAX)
        .expect("nothing arrived within 10 s")
}

/// The local log, whose syncs wait for a go-ahead (and say when they start), or fail.
struct HeldWal {
    wal: LocalWal,
    started: Sender<()>,
    go: std::sync::Mutex<Option<Receiver<bool>>>,
}

impl Durability for HeldWal {
    fn commit(
        &mut self,
        requests: &[Request],
        write: rocksdb::WriteBatch,
    ) -> Result<(), LedgerError> {
        self.wal.commit(requests, write)
    }

    fn deferred_sync(&self) -> Option<Box<dyn LogSync>> {
        Some(Box::new(HeldSync {
            sync: self.wal.deferred_sync().expect("a synced log"),
            started: self.started.clone(),
            go: self.go.lock().unwrap().take().expect("one syncer"),
        }))
    }
}

struct HeldSync {
    sync: Box<dyn LogSync>,
    started: Sender<()>,
    /// `true`: sync; `false`: fail as a disk would.
    go: Receiver<bool>,
}

impl LogSync for HeldSync {
    fn sync(&mut self) -> Result<(), LedgerError> {
        let _ = self.started.send(());
        // Bounded, so that a failing test never leaves the syncer (and the ledger's drop)
        // waiting for ever.
        match self.go.recv_timeout(WAIT_MAX) {
            Ok(true) => self.sync.sync(),
            _ => Err(LedgerError::Unavailable(
                "test: the disk failed the sync".into(),
            )),
        }
    }
}

/// A ledger on a real database in `dir` whose syncs the test lets through one by one:
/// (the ledger, "a sync started", "go ahead (true) or fail (false)").
fn open_held(dir: &Path) -> (Ledger, Receiver<()>, Sender<bool>) {
    let db = Arc::new(store::open(dir, &StoreConfig::default()).unwrap());
    let (started, sync_started) = channel();
    let (go, go_receiver) = channel();
    let durability = HeldWal {
        wal: LocalWal::new(Arc::clone(&db), true),
        started,
        go: std::sync::Mutex::new(Some(go_receiver)),
    };
    let ledger = Ledger::start(
        LedgerView::new(db),
        Box::new(durability),
        LedgerConfig::default(),
        Rules::default(),
    )
    .unwrap();
    (ledger, sync_started, go)
}

/// [`open_held`] with rider 5's account opened and synced (request 1).
fn open_held_with_rider(dir: &Path) -> (Arc<Ledger>, Receiver<()>, Sender<bool>) {
    let (ledger, sync_started, go) = open_held(dir);
    let ledger = Arc::new(ledger);
    let opened = submit_in_background(&ledger, request(1, open_account(5)));
    within(&sync_started);
    go.send(true).unwrap();
    within(&opened).unwrap();
    (ledger, sync_started, go)
}

fn request(id: u128, command: Command) -> Request {
    Request {
        id: TxId(id),
        time: T,
        command,
    }
}

fn open_account(account_id: u64) -> Command {
    Command::OpenAccount {
        account_id,
        provider_id: 1,
        credit_limit: Amount(1_000),
    }
}

fn charge(account_id: u64, amount: i64) -> Command {
    Command::Charge {
        account_id,
        operator_id: 9,
        amount: Amount(amount),
    }
}

/// Submits on a thread of its own; the answer arrives on the returned channel.
fn submit_in_background(
    ledger: &Arc<Ledger>,
    request: Request,
) -> Receiver<Result<Receipt, LedgerError>> {
    in_background(ledger, move |ledger| ledger.submit(request))
}

/// Runs `read` on a thread of its own; the value arrives on the returned channel.
fn in_background<T: Send + 'static>(
    ledger: &Arc<Ledger>,
    read: impl FnOnce(&Ledger) -> T + Send + 'static,
) -> Receiver<T> {
    let (answer, answered) = channel();
    let ledger = Arc::clone(ledger);
    std::thread::spawn(move || {
        let _ = answer.send(read(&ledger));
    });
    answered
}

/// Waits (at most [`WAIT_MAX`]) until `done`.
fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !done() {
        assert!(Instant::now() < deadline, "not done within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until the writer's write of `id` is readable.
fn wait_until_written(ledger: &Ledger, id: u128) {
    wait_until(|| ledger.view().transaction(TxId(id)).unwrap().is_some());
}

fn still_waiting<T: std::fmt::Debug>(answered: &Receiver<T>) {
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(answered.try_recv().unwrap_err(), TryRecvError::Empty);
}

#[test]
fn the_writer_decides_the_next_group_while_the_last_one_syncs_and_answers_only_after_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, sync_started, go) = open_held(dir.path());
    let ledger = Arc::new(ledger);

    let opened = submit_in_background(&ledger, request(1, open_account(5)));
    within(&sync_started);
    // The account is written, its sync not done: the charge is decided on top of it (it
    // needs the account) while that sync is held.
    let charged = submit_in_background(&ledger, request(2, charge(5, 300)));
    wait_until_written(&ledger, 2);
    still_waiting(&opened);
    still_waiting(&charged);
    // Reads that answer callers must not show the charge before it is durable.
    let balance = in_background(&ledger, |ledger| {
        ledger
            .account(AccountRef::Rider(5))
            .unwrap()
            .unwrap()
            .balance
    });
    let recorded = in_background(&ledger, |ledger| {
        ledger
            .transaction(TxId(2))
            .unwrap()
            .map(|(sequence, _)| sequence)
    });
    let statement = in_background(&ledger, |ledger| {
        let lines = ledger.statement(AccountRef::Rider(5), 0, 10).unwrap();
        lines.iter().map(|line| line.amount).collect::<Vec<_>>()
    });
    still_waiting(&balance);
    still_waiting(&recorded);
    still_waiting(&statement);

    go.send(true).unwrap();
    assert_eq!(within(&opened).unwrap().record.outcome, Outcome::Accepted);
    still_waiting(&charged);
    still_waiting(&balance);
    within(&sync_started);
    go.send(true).unwrap();
    let receipt = within(&charged).unwrap();
    assert_eq!(receipt.record.rider_balance_after, Some(Amount(-300)));
    assert_eq!(within(&balance), Amount(-300));
    assert_eq!(within(&recorded), Some(receipt.sequence));
    assert_eq!(within(&statement), vec![Amount(-300)]);
    assert_eq!(ledger.stats().write_times.count(), 2);
}

#[test]
fn a_failed_sync_fails_its_callers_and_everything_after_until_reopened_and_a_retry_charges_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (ledger, sync_started, go) = open_held_with_rider(dir.path());
        let charged = submit_in_background(&ledger, request(2, charge(5, 300)));
        within(&sync_started);
        wait_until_written(&ledger, 2);
        // The same id with other content conflicts with a record that may not survive:
        // its caller must not be told "conflict" for good.
        let conflicting = submit_in_background(&ledger, request(2, charge(5, 999)));
        wait_until(|| ledger.stats().requests.load(Ordering::Relaxed) == 3);
        let waiting_reader = in_background(&ledger, |ledger| {
            ledger.account(AccountRef::Rider(5)).map(|_| ())
        });
        still_waiting(&waiting_reader);
        go.send(false).unwrap();
        assert_eq!(
            within(&waiting_reader).unwrap_err().to_string(),
            "test: the disk failed the sync"
        );
        let failed = within(&charged).unwrap_err();
        let not_a_conflict = within(&conflicting).unwrap_err();
        assert_eq!(not_a_conflict.code(), "unavailable");
        assert_eq!(failed.code(), "unavailable");
        assert_eq!(failed.to_string(), "test: the disk failed the sync");
        // Nothing more is decided on top of a write whose outcome is unknown, and a
        // reader is told so rather than left waiting.
        let refused = ledger.submit(request(3, charge(5, 100))).unwrap_err();
        assert_eq!(refused.to_string(), "test: the disk failed the sync");
        assert!(ledger.view().transaction(TxId(3)).unwrap().is_none());
        assert_eq!(
            ledger
                .account(AccountRef::Rider(5))
                .unwrap_err()
                .to_string(),
            "test: the disk failed the sync"
        );
        assert_eq!(ledger.stats().write_failures.load(Ordering::Relaxed), 1);
        drop(go);
    }
    // Opened again: the callers retry with the same ids, and each charge lands once.
    let ledger = Ledger::open(dir.path(), LedgerConfig::default()).unwrap();
    ledger.submit(request(2, charge(5, 300))).unwrap();
    ledger.submit(request(3, charge(5, 100))).unwrap();
    ledger.submit(request(2, charge(5, 300))).unwrap();
    let account = ledger.account(AccountRef::Rider(5)).unwrap().unwrap();
    assert_eq!(account.balance, Amount(-400));
    let report = audit::audit(ledger.view()).unwrap();
    assert!(report.ok(), "{:?}", report.violations);
    assert_eq!(report.transactions, 3);
}

#[test]
fn a_gate_bundle_holds_no_deny_listing_before_it_is_durable() {
    use crate::commands::Commands;
    use crate::gate::bundle::Bundles;
    use crate::settlement::key::SettlementKey;
    use crate::token::IssuerRegistry;

    let dir = tempfile::tempdir().unwrap();
    let (ledger, sync_started, go) = open_held_with_rider(dir.path());
    let denied = Command::SetStatus {
        account_id: 5,
        status: AccountStatus::Denied,
    };
    let denying = submit_in_background(&ledger, request(2, denied));
    within(&sync_started);
    wait_until_written(&ledger, 2);
    let bundle = {
        let commands = Commands::Local(Arc::clone(&ledger));
        let settings = fareway_gate::bundle::Settings {
            code_validity_ms: 120_000,
            clock_skew_ms: 30_000,
        };
        let bundles = Bundles::new(SettlementKey::from_seed([9; 32]), settings);
        let registry = IssuerRegistry::from_toml("provider = []\nissuer_key = []\n").unwrap();
        in_background(&ledger, move |_| {
            let bundle = bundles.answer(&commands, &registry, 0, &[]).unwrap();
            (bundle.version, bundle.delta)
        })
    };
    still_waiting(&bundle);
    go.send(true).unwrap();
    within(&denying).unwrap();
    // Both transactions are in the version it carries: it waited for the sync.
    assert_eq!(within(&bundle), (2, false));
}
