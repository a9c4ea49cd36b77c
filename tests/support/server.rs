//! A real server for end-to-end tests: started in-process on `127.0.0.1:0` with a
//! temporary data directory, the sample city's fares, the published vectors' issuer keys,
//! one token per role, and a clock the test controls. Clients talk real gRPC to it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use fareway::clock::{ManualClock, UnixMillis};
pub use fareway::grpc::auth::Bearer;
use fareway::server::config::{
    BundleSettings, Role, ServerConfig, SettlementSettings, TokenEntry, token_sha256_hex,
};
use fareway::server::{self, RunningServer};
use fareway::token::keys::RegistryFile;
use fareway::token::mint::{Device, Issuer};
use fareway::token::vectors;
use fareway_proto::v1 as pb;
use tonic::transport::Channel;

use crate::workspace_root;

/// The time the test clock starts at (the published vectors' "now"): 08:00 UTC.
pub const T: UnixMillis = UnixMillis(1_800_000_000_000);
/// The gate role's token.
pub const GATE_TOKEN: &str = "gate-token-for-tests";
/// The finance role's token.
pub const FINANCE_TOKEN: &str = "finance-token-for-tests";
/// The admin role's token.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

/// A running test server and what it runs on.
#[derive(Debug)]
pub struct TestServer {
    /// The server.
    pub running: Option<RunningServer>,
    /// The clock the server reads.
    pub clock: Arc<ManualClock>,
    /// The configuration it was started with (data directory, key file).
    pub config: ServerConfig,
    /// Keeps the temporary folder alive.
    pub folder: Arc<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server; `adjust` may change the configuration first.
    pub async fn start(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let folder = Arc::new(tempfile::tempdir().expect("temporary folder"));
        let config = write_config(folder.path(), adjust);
        TestServer::start_with(config, folder, Arc::new(ManualClock::new(T))).await
    }

    /// Starts a server on an existing configuration and folder (a restart).
    pub async fn start_with(
        config: ServerConfig,
        folder: Arc<tempfile::TempDir>,
        clock: Arc<ManualClock>,
    ) -> TestServer {
        let running = server::start(config.clone(), Arc::clone(&clock) as _)
            .await
            .expect("server starts");
        TestServer {
            running: Some(running),
            clock,
            config,
            folder,
        }
    }

    /// The gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.running.as_ref().expect("running").addr
    }

    /// The server's metrics, as Prometheus text.
    pub async fn metrics_text(&self) -> String {
        let addr = self.running.as_ref().expect("running").metrics_addr;
        let addr = addr.expect("the test configuration turns metrics on");
        gate_sim::server_metrics::metrics_text(&addr.to_string())
            .await
            .expect("metrics answer")
    }

    /// Stops the server gracefully; returns what a restart needs.
    pub async fn stop(mut self) -> (ServerConfig, Arc<tempfile::TempDir>, Arc<ManualClock>) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("server stops cleanly");
        }
        (self.config, self.folder, self.clock)
    }

    /// Stops the server gracefully and audits its data directory: money conserved, every
    /// index (the deny list included) agreeing with the log.
    pub async fn stop_and_audit(self) {
        let (config, _folder, _clock) = self.stop().await;
        let ledger = fareway::ledger::Ledger::open(
            &config.data_dir,
            fareway::ledger::LedgerConfig::default(),
        )
        .expect("the data directory opens after a graceful stop");
        let report = fareway::ledger::audit::audit(ledger.view()).expect("the audit reads it");
        assert!(report.ok(), "{:?}", report.violations);
        assert_eq!(report.balance_sum, 0);
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr()))
            .expect("valid address")
            .connect()
            .await
            .expect("connects")
    }

    /// A gate client with `token` (or none).
    pub async fn gate(&self, token: Option<&str>) -> GateClient {
        pb::gate_service_client::GateServiceClient::with_interceptor(
            self.channel().await,
            Bearer::new(token).expect("a test token is ASCII"),
        )
    }

    /// An admin client with `token` (or none).
    pub async fn admin(&self, token: Option<&str>) -> AdminClient {
        pb::admin_service_client::AdminServiceClient::with_interceptor(
            self.channel().await,
            Bearer::new(token).expect("a test token is ASCII"),
        )
    }

    /// A settlement client with `token` (or none).
    pub async fn settlement(&self, token: Option<&str>) -> SettlementClient {
        pb::settlement_service_client::SettlementServiceClient::with_interceptor(
            self.channel().await,
            Bearer::new(token).expect("a test token is ASCII"),
        )
    }
}

/// Clients that send a bearer token: the simulator's.
pub use gate_sim::client::{AdminClient, GateClient, SettlementClient};

/// Writes the fares, the vectors' issuer keys and a configuration into `folder`.
pub fn write_config(folder: &Path, adjust: impl FnOnce(&mut ServerConfig)) -> ServerConfig {
    let fares_file = folder.join("fares.toml");
    std::fs::copy(workspace_root().join("docs/sample-city.toml"), &fares_file)
        .expect("sample city copied");
    let vectors = vectors::generate();
    let registry = RegistryFile {
        provider: vectors.registry.provider.clone(),
        issuer_key: vectors.registry.issuer_key.clone(),
    };
    let issuer_keys_file = folder.join("issuer-keys.toml");
    std::fs::write(
        &issuer_keys_file,
        toml::to_string(&registry).expect("registry encodes"),
    )
    .expect("keys written");
    let token = |role, token: &str| TokenEntry {
        role,
        sha256: token_sha256_hex(token),
        name: format!("{role:?}"),
    };
    let mut config = ServerConfig {
        data_dir: folder.join("data"),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        fares_file,
        issuer_keys_file,
        backup_dir: folder.join("backups"),
        settlement: SettlementSettings {
            key_file: folder.join("settlement.key"),
            currency: "EUR".into(),
        },
        bundle: BundleSettings {
            key_file: folder.join("bundle.key"),
        },
        token: vec![
            token(Role::Gate, GATE_TOKEN),
            token(Role::Finance, FINANCE_TOKEN),
            token(Role::Admin, ADMIN_TOKEN),
        ],
        ..ServerConfig::default()
    };
    adjust(&mut config);
    config
}

/// The configuration file of a server process started with `config` (the fields
/// [`write_config`] sets; the rest keep their defaults).
pub fn config_file_text(config: &ServerConfig) -> String {
    config
        .file_text()
        .unwrap_or_else(|err| panic!("config_file_text: {err}"))
}

/// A rider's phone: a credential from provider 1's published issuer key (seed 0x01...).
pub fn phone(account_id: u64, device_seed: u8) -> Device {
    phone_of(&Issuer::from_seed(1, [1; 32]), account_id, device_seed)
}

/// A rider's phone with a credential from `issuer`, valid for a week after [`T`].
pub fn phone_of(issuer: &Issuer, account_id: u64, device_seed: u8) -> Device {
    let key = Device::key_from_seed(&[device_seed; 32]);
    let credential = issuer.issue(
        account_id,
        T.saturating_add(7 * 86_400_000),
        0,
        Device::public_key_of(&key),
    );
    Device::new(key, credential, 0)
}

/// Opens rider `account_id` of `provider_id` (transaction `id_base`) and tops it up with
/// `balance` (transaction `id_base + 1`) when positive, checking both answers.
pub async fn open_rider(
    admin: &mut AdminClient,
    id_base: u128,
    account_id: u64,
    provider_id: u32,
    balance: i64,
) {
    let opened = admin
        .open_account(pb::OpenAccountRequest {
            transaction_id: tx(id_base),
            account_id,
            provider_id,
            credit_limit_minor: 0,
        })
        .await
        .expect("account opens")
        .into_inner();
    assert!(opened.accepted, "{opened:?}");
    if balance > 0 {
        let topped = admin
            .top_up(pb::TopUpRequest {
                transaction_id: tx(id_base + 1),
                account_id,
                amount_minor: balance,
            })
            .await
            .expect("top-up")
            .into_inner();
        assert_eq!(topped.balance_after_minor, Some(balance));
    }
}

/// A transaction id from a number.
pub fn tx(id: u128) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// A tap request: the simulator's, so that tests and the simulator build taps alike.
pub use gate_sim::plan::request as tap;
