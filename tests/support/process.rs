//! A real `fareway serve` process for tests that kill it or break its disk, and gates
//! that play the simulator's plan against it, retrying every tap with the same
//! transaction id until it is answered, as real gates do.

#![allow(clippy::unwrap_used)] // test support: a failed unwrap fails the test, with its location

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use fareway::clock::{Clock as _, SystemClock, UnixMillis};
use fareway_proto::v1 as pb;
use gate_sim::Engine;
use gate_sim::plan::PlannedTap;
use gate_sim::run::{Answer, RunResult, TapResult};

/// The `fareway` binary `cargo test --workspace` builds next to this test's folder.
pub fn fareway_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().and_then(Path::parent).unwrap().join("fareway");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --release -p fareway` (or the whole workspace's tests) first",
        binary.display()
    );
    binary
}

/// A `fareway serve` process; its log goes to a file.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Kept open: the server writes more lines there, and a closed pipe would stop it.
    _stdout: BufReader<ChildStdout>,
}

impl ServerProcess {
    /// Starts `fareway serve --config CONFIG_FILE --listen LISTEN` at debug level, its log
    /// appended to `log`; returns once it takes calls.
    pub fn start(config_file: &Path, listen: SocketAddr, log: &Path) -> ServerProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(fareway_binary())
            .args(["serve", "--config"])
            .arg(config_file)
            .args(["--listen", &listen.to_string()])
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        // The server prints "listening on ADDR" once it takes calls.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first_line = String::new();
        stdout.read_line(&mut first_line).unwrap();
        let addr = first_line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the server said {first_line:?}"))
            .parse()
            .unwrap();
        ServerProcess {
            child,
            addr,
            _stdout: stdout,
        }
    }

    /// Kills it with SIGKILL and waits for it.
    pub fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

/// How long a gate keeps retrying one tap before the test gives up on the server.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

/// Sends one tap until the engine answers it: a call that fails because the server is
/// gone or unavailable (or times out) is retried with the same transaction id, on a new
/// connection. Returns the answer and how many times it was retried.
pub async fn tap_until_answered(engine: &Engine, request: &pb::TapRequest) -> (Answer, u32) {
    let mut retries = 0;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < RETRY_FOR,
            "tap {} got no answer in {RETRY_FOR:?}: the server did not come back",
            fareway::hex::encode(&request.transaction_id)
        );
        let attempt = async {
            let mut gate = engine.gate().await?;
            Ok::<_, anyhow::Error>(gate.tap(request.clone()).await)
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(Ok(response))) => return (Answer::Response(response.into_inner()), retries),
            Ok(Ok(Err(status)))
                if !matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) =>
            {
                return (
                    Answer::Failed(status.code(), status.message().to_string()),
                    retries,
                );
            }
            // No answer: the server is down or was killed mid-call. Retry.
            _ => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Plays `plan` (scan times are real times: each tap waits for its due time), each rider's
/// taps in order through one of `gates` gate workers, every tap until it is answered.
/// Returns the answers and how many taps needed a retry.
pub async fn play_with_retries(
    engine: &Engine,
    plan: &[PlannedTap],
    start: UnixMillis,
    gates: usize,
) -> (RunResult, u64) {
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..gates {
        let engine = engine.clone();
        let mine: Vec<(usize, PlannedTap)> = plan
            .iter()
            .enumerate()
            .filter(|(_, tap)| tap.account_id as usize % gates == worker)
            .map(|(index, tap)| (index, tap.clone()))
            .collect();
        workers.spawn(async move {
            let mut answers = Vec::new();
            for (index, tap) in mine {
                let due = start.0 + tap.due_ms;
                let now = SystemClock.now().0;
                if due > now {
                    tokio::time::sleep(Duration::from_millis(due - now)).await;
                }
                answers.push((index, tap_until_answered(&engine, &tap.request).await));
            }
            answers
        });
    }
    let mut results = vec![None; plan.len()];
    let mut retried = 0;
    while let Some(answers) = workers.join_next().await {
        for (index, (answer, retries)) in answers.expect("a gate worker finishes") {
            retried += u64::from(retries > 0);
            results[index] = Some(TapResult {
                answer,
                latency_us: 0,
                due_ms: plan[index].due_ms,
            });
        }
    }
    let run = RunResult {
        results: results
            .into_iter()
            .map(|result| result.expect("every tap is answered"))
            .collect(),
        elapsed: started.elapsed(),
    };
    (run, retried)
}
