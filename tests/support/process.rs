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
use gate_sim::client::GateClient;
use gate_sim::plan::PlannedTap;
use gate_sim::run::{Answer, RunResult, TapResult};

/// The `fareway` binary `cargo test --workspace` builds next to this test's folder.
pub fn fareway_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().and_then(Path::parent).unwrap().join("fareway");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --release -p fareway-cli` (or the whole workspace's tests) first",
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
        ServerProcess::try_start(config_file, listen, log)
            .unwrap_or_else(|said| panic!("the server said {said:?}"))
    }

    /// Like [`ServerProcess::start`]; when the server exits before it listens, what it
    /// printed instead.
    pub fn try_start(
        config_file: &Path,
        listen: SocketAddr,
        log: &Path,
    ) -> Result<ServerProcess, String> {
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
        let Some(addr) = first_line.trim().strip_prefix("listening on ") else {
            let _ = child.wait();
            return Err(first_line);
        };
        Ok(ServerProcess {
            child,
            addr: addr.parse().unwrap(),
            _stdout: stdout,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it a signal by name (`STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// Kills it with SIGKILL and waits for it.
    pub fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    /// A test that fails midway does not leave its server running (holding ports,
    /// files and, in the disk tests, the mounted file system).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a gate keeps retrying one tap before the test gives up on the server.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

/// Sends one tap until the engine answers it, on the gate's connection (`connection`,
/// made on first use): a call that fails because the server is gone or unavailable (or
/// times out) is retried with the same transaction id on a new connection, as a gate
/// reconnects after losing its server. Returns the answer and how many times it was
/// retried.
pub async fn tap_until_answered(
    engine: &Engine,
    connection: &mut Option<GateClient>,
    request: &pb::TapRequest,
) -> (Answer, u32) {
    let mut retries = 0;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < RETRY_FOR,
            "tap {} got no answer in {RETRY_FOR:?}: the server did not come back",
            fareway::hex::encode(&request.transaction_id)
        );
        let attempt = async {
            let gate = match connection {
                Some(gate) => gate,
                None => connection.insert(engine.gate().await?),
            };
            Ok::<_, anyhow::Error>(gate.tap(request.clone()).await)
        };
        let answered = tokio::time::timeout(Duration::from_secs(2), attempt).await;
        match answered {
            Ok(Ok(Ok(response))) => return (Answer::Response(response.into_inner()), retries),
            // tonic reports a broken HTTP/2 connection (a server killed or its disk full
            // mid-call) as INTERNAL "h2 protocol error": no answer from the engine.
            Ok(Ok(Err(status)))
                if !matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) && !status.message().starts_with("h2 protocol error") =>
            {
                return (
                    Answer::Failed(status.code(), status.message().to_string()),
                    retries,
                );
            }
            // No answer: the server is down or was killed mid-call. Retry on a new
            // connection.
            _ => {
                *connection = None;
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
            let mut connection = None;
            for (index, tap) in mine {
                let due = start.0 + tap.due_ms;
                let now = SystemClock.now().0;
                if due > now {
                    tokio::time::sleep(Duration::from_millis(due - now)).await;
                }
                let (answer, retries) =
                    tap_until_answered(&engine, &mut connection, &tap.request).await;
                let latency_ms = SystemClock.now().0.saturating_sub(due);
                answers.push((index, (answer, retries, latency_ms)));
            }
            answers
        });
    }
    let mut results = vec![None; plan.len()];
    let mut retried = 0;
    while let Some(answers) = workers.join_next().await {
        for (index, (answer, retries, latency_ms)) in answers.expect("a gate worker finishes") {
            retried += u64::from(retries > 0);
            results[index] = Some(TapResult {
                answer,
                latency_us: latency_ms * 1_000,
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
        offline: None,
    };
    (run, retried)
}

/// Sends process `pid` the signal `name` (`STOP`, `CONT`, `KILL`).
pub fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid} failed");
}

/// The configuration of a `fareway serve` process written into `folder` (its data in
/// `data_dir`, or `folder/data`): the sample city and no issuer keys (the simulator
/// registers them). Returns the configuration, its file, and where the log goes.
pub fn process_config(
    folder: &Path,
    data_dir: Option<PathBuf>,
) -> (fareway::server::config::ServerConfig, PathBuf, PathBuf) {
    let empty_keys = folder.join("no-keys.toml");
    std::fs::write(&empty_keys, "provider = []\nissuer_key = []\n").unwrap();
    let config = crate::server::write_config(folder, |config| {
        config.issuer_keys_file = empty_keys;
        if let Some(data_dir) = data_dir {
            config.data_dir = data_dir;
        }
    });
    let config_file = folder.join("server.toml");
    std::fs::write(&config_file, crate::server::config_file_text(&config)).unwrap();
    (config, config_file, folder.join("server.log"))
}

/// The simulator's handle on a server at `addr`, with the test tokens.
pub fn engine_at(addr: SocketAddr) -> Engine {
    Engine {
        url: format!("http://{addr}"),
        more_urls: Vec::new(),
        gate_token: crate::server::GATE_TOKEN.into(),
        admin_token: crate::server::ADMIN_TOKEN.into(),
        finance_token: crate::server::FINANCE_TOKEN.into(),
        metrics_addr: None,
    }
}

/// Riders of the sample city provisioned through the admin API, and the city's network
/// (4 gates a station).
pub async fn provision_sample_city(
    engine: &Engine,
    riders: u64,
    seed: u64,
) -> (gate_sim::provision::Provisioned, gate_sim::Network) {
    let admin = engine.admin().await.unwrap();
    let provisioned =
        gate_sim::provision::provision(&admin, gate_sim::Population::standard(riders, 2), seed)
            .await
            .unwrap();
    let fares = fareway::fares::FareTable::from_toml(
        &std::fs::read_to_string(crate::workspace_root().join("docs/sample-city.toml")).unwrap(),
    )
    .unwrap();
    (provisioned, gate_sim::Network::of(&fares, 4))
}

/// A test's phase of valid taps (no faults) at `rate` for `duration_s`, starting 300 ms
/// from now, with ids of their own (`phase` in the high bits). Returns the plan and its
/// start.
pub fn plan_phase(
    provisioned: &mut gate_sim::provision::Provisioned,
    network: &gate_sim::Network,
    rate: f64,
    duration_s: f64,
    phase: u64,
) -> (Vec<PlannedTap>, UnixMillis) {
    let start = SystemClock.now().saturating_add(300);
    let plan = gate_sim::plan::make_plan(gate_sim::plan::PlanInput {
        riders: &mut provisioned.riders,
        network,
        profile: gate_sim::Profile::Constant { rate },
        duration_s,
        taps_max: 100_000,
        faults: &gate_sim::FaultRates::new(),
        seed: phase,
        start,
        unknown_issuer: &provisioned.unknown_issuer,
        revoked_issuer: &provisioned.revoked_issuer,
        first_id: u128::from(phase) << 64,
        link_loss_share: 0.0,
    });
    (plan, start)
}

/// Every phase's taps so far and their answers.
#[derive(Debug, Default)]
pub struct Played {
    /// The taps, phase after phase.
    pub plan: Vec<PlannedTap>,
    /// Their answers, in the same order.
    pub results: Vec<TapResult>,
}

impl Played {
    /// Adds a phase.
    pub fn add(&mut self, plan: Vec<PlannedTap>, run: RunResult) {
        self.plan.extend(plan);
        self.results.extend(run.results);
    }

    /// All answers so far, as the simulator's checks take them.
    pub fn run(&self) -> RunResult {
        RunResult {
            results: self.results.clone(),
            elapsed: Duration::ZERO,
            offline: None,
        }
    }

    /// Every accepted tap so far is in its rider's statement exactly once, with minus its
    /// fare, and no statement has a tap the gates did not see accepted.
    pub async fn assert_charged_exactly_once(&self, engine: &Engine, phase: &str) {
        let admin = engine.admin().await.unwrap();
        let (charged, _) = gate_sim::check::charged_exactly_once(&admin, &self.plan, &self.run())
            .await
            .unwrap();
        assert_eq!(charged["ok"], true, "{phase}: {charged:#}");
    }
}

/// The body of an HTTP/1.0 GET of `path` at `addr` (a node's `/metrics`, a NATS server's
/// monitoring); empty when nothing answers.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_string())
}
