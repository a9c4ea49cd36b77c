//! A real NATS JetStream cluster for the cluster tests: `fareway::cluster::local`'s servers
//! on 127.0.0.1 with free ports, in a temporary folder removed when the test ends.

#![allow(clippy::unwrap_used)] // test support: a failed unwrap fails the test, with its location

use fareway::cluster::local::{Credentials, LocalNats, ServerTls};

/// A running NATS cluster; its servers stop and its storage goes when it is dropped.
#[derive(Debug)]
pub struct NatsCluster {
    servers: LocalNats,
    _folder: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` servers routed to each other, and waits until each takes clients.
    pub fn start(size: usize) -> NatsCluster {
        NatsCluster::start_with(size, None)
    }

    /// Like [`NatsCluster::start`], with TLS required of every client and route when
    /// `tls` is given.
    pub fn start_with(size: usize, tls: Option<&ServerTls>) -> NatsCluster {
        let folder = tempfile::tempdir().unwrap();
        NatsCluster {
            servers: LocalNats::start_with(size, folder.path(), tls).unwrap(),
            _folder: folder,
        }
    }

    /// The client URLs of every server.
    pub fn urls(&self) -> Vec<String> {
        self.servers.urls()
    }

    /// The engine nodes' user.
    pub fn node_credentials(&self) -> &Credentials {
        self.servers.node_credentials()
    }

    /// Kills server `index` with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        self.servers.kill(index).unwrap();
    }

    /// Starts server `index` again, on its ports and storage.
    pub fn start_server(&mut self, index: usize) {
        self.servers.start_server(index).unwrap();
    }

    /// Sends server `index` the signal `name` (`STOP`, `CONT`).
    pub fn signal(&self, index: usize, name: &str) {
        crate::process::signal(self.servers.pid(index).unwrap(), name);
    }

    /// The index of the server that leads the JetStream meta group now (asked of
    /// server `ask`'s monitoring endpoint), once it has a leader.
    pub fn meta_leader(&self, ask: usize) -> usize {
        let started = std::time::Instant::now();
        loop {
            let jsz = crate::process::http_get(self.servers.monitor_addr(ask), "/jsz");
            let found: serde_json::Value = serde_json::from_str(&jsz).unwrap_or_default();
            if let Some(leader) = found["meta_cluster"]["leader"].as_str() {
                return leader.trim_start_matches("fareway-nats-").parse().unwrap();
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "no JetStream meta leader: {jsz}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// A user that is not a node's.
    pub fn gate_credentials(&self) -> &Credentials {
        self.servers.gate_credentials()
    }
}
