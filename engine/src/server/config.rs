//! The server's configuration file (`fareway serve --config FILE`), documented setting by
//! setting in `docs/configuration.md`. Every setting has a default; relative paths are
//! read from the configuration file's folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cpus::{CpuPlan, CpuPlanError};
use crate::gate::ScanTimeLimits;
use crate::ledger::{CODE_RETRY_WINDOW_MS_DEFAULT, LedgerConfig};
use crate::token::VerifierConfig;

/// The largest configuration file read.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

/// A caller's role: each RPC is allowed to some roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Turnstiles and bus readers: taps only.
    Gate,
    /// The finance team: settlement.
    Finance,
    /// Operations: accounts, top-ups, refunds, keys, the deny list.
    Admin,
}

impl Role {
    /// The role's name, as in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Gate => "gate",
            Role::Finance => "finance",
            Role::Admin => "admin",
        }
    }
}

/// One accepted bearer token: only its SHA-256 is configured, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The role the token proves.
    pub role: Role,
    /// The SHA-256 of the token, 64 lowercase hex digits.
    pub sha256: String,
    /// A name for logs ("station-42-gates"); never the token.
    #[serde(default)]
    pub name: String,
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The ledger's RocksDB folder (created if missing).
    pub data_dir: PathBuf,
    /// Where gRPC listens.
    pub listen: SocketAddr,
    /// Where the Prometheus `/metrics` endpoint listens; left out, metrics are off.
    pub metrics_listen: Option<SocketAddr>,
    /// The network and fares (TOML, `docs/fares.md`).
    pub fares_file: PathBuf,
    /// The issuer key registry (TOML, `docs/qr-token.md`). Keys registered or revoked
    /// through the admin API are written back to it.
    pub issuer_keys_file: PathBuf,
    /// Where `AdminService.CreateCheckpoint` writes ledger checkpoints (created if
    /// missing). On the data directory's file system, a checkpoint is hard links.
    pub backup_dir: PathBuf,
    /// Log format; the level comes from `RUST_LOG`.
    pub log_format: LogFormat,
    /// Limits on work in flight.
    pub limits: Limits,
    /// How codes are judged.
    pub verifier: VerifierSettings,
    /// Tap and journey rules besides the fares file.
    pub taps: TapSettings,
    /// Settlement batches and their signing key.
    pub settlement: SettlementSettings,
    /// The gate bundles' signing key (`docs/offline.md`).
    pub bundle: BundleSettings,
    /// TLS for the gRPC listener; absent means plain HTTP/2 (for a trusted network or a
    /// TLS-terminating proxy in front).
    pub tls: Option<TlsSettings>,
    /// Accepted bearer tokens.
    pub token: Vec<TokenEntry>,
    /// Cluster mode (`docs/cluster.md`): present, the node holds shards replicated
    /// through NATS JetStream, and `data_dir` holds one replica per shard.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Which CPUs the engine's threads run on.
    pub cpus: CpuSettings,
}

/// Which CPUs the engine's threads run on (see [`crate::cpus`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuSettings {
    /// CPUs of the ledger's writer and syncer alone, numbered as the system numbers them
    /// (`[1]`); every other thread of the engine runs on the CPUs left. Empty (the
    /// default): every thread anywhere.
    pub ledger: Vec<usize>,
    /// The plan `ledger` makes on this machine, once [`ServerConfig::claim_ledger_cpus`]
    /// has made it.
    #[serde(skip)]
    pub plan: Option<CpuPlan>,
}

/// Limits on work in flight. Excess is refused at once with `RESOURCE_EXHAUSTED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// RPCs (and taps on streams) being worked on at once, across all connections.
    pub requests_in_flight_max: usize,
    /// Ledger requests waiting for the writer.
    pub ledger_queue_depth_max: usize,
    /// Most requests in one group commit (`ledger_batch_size_max` is the old name, still
    /// read).
    #[serde(alias = "ledger_batch_size_max")]
    pub ledger_group_commit_requests_max: usize,
    /// Taps of one stream being worked on at once.
    pub stream_taps_in_flight_max: usize,
    /// Gate requests (taps, and taps on streams) of one connection being worked on at
    /// once: one client's share of `requests_in_flight_max`, so that a client that stops
    /// reading cannot hold every permit.
    pub connection_requests_in_flight_max: usize,
    /// How long a graceful shutdown waits for calls in flight before it stops anyway.
    pub shutdown_grace_ms: u64,
    /// RocksDB block cache, in MiB.
    pub block_cache_mib: usize,
    /// RocksDB memtables, in MiB.
    pub write_buffers_mib: usize,
    /// Settlement pulls being worked on at once (each reads a whole batch); a close has
    /// a slot of its own.
    pub settlement_jobs_max: usize,
    /// How long a settlement pull waits for a client that reads nothing before it ends
    /// the pull (`DEADLINE_EXCEEDED`) and frees its slot.
    pub pull_stall_ms: u64,
    /// gRPC connections open at once; past it, a new connection is closed at accept. Cut
    /// down at start when the process's open-file limit leaves no room for it beside the
    /// ledger's files (`server::transport`).
    pub connections_max: usize,
    /// A connection that sends nothing this long after it is accepted is closed.
    pub handshake_timeout_ms: u64,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub streams_per_connection_max: u32,
    /// The longest a call may take to be answered, its request's arrival included: a
    /// request whose body never comes ends `CANCELLED` after this. (A tap stream's or a
    /// pull's answers flow on after their call is answered; this does not cut them.)
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        let ledger = LedgerConfig::default();
        Limits {
            requests_in_flight_max: 4_096,
            ledger_queue_depth_max: ledger.queue_depth_max,
            ledger_group_commit_requests_max: ledger.group_commit_requests_max,
            stream_taps_in_flight_max: 512,
            // A quarter of the whole: a station controller's streams, and three more like
            // it could stall without starving the rest.
            connection_requests_in_flight_max: 1_024,
            shutdown_grace_ms: 10_000,
            block_cache_mib: ledger.store.block_cache_bytes >> 20,
            write_buffers_mib: ledger.store.write_buffers_bytes >> 20,
            settlement_jobs_max: 2,
            // A finance client reads as it writes; half a minute is a stalled one.
            pull_stall_ms: 30_000,
            // A city's gates over a few station controllers, with room; each costs a
            // descriptor, and the ledger's files need theirs.
            connections_max: 1_024,
            // A client that means to talk sends its HTTP/2 preface at once.
            handshake_timeout_ms: 10_000,
            // A gate needs a stream or two; a station controller a few hundred taps.
            streams_per_connection_max: 256,
            // A tap takes milliseconds; a close of ten million lines about 20 s here.
            request_timeout_ms: 60_000,
        }
    }
}

/// How codes are judged (see [`VerifierConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierSettings {
    /// A code older than this (at the scan time) is refused.
    pub code_validity_ms: u64,
    /// How far ahead of the scan time a code's time may be.
    pub clock_skew_ms: u64,
    /// Verified credentials remembered; 0 turns the cache off.
    pub credential_cache_entries_max: usize,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        let config = VerifierConfig::default();
        VerifierSettings {
            code_validity_ms: config.code_validity_ms,
            clock_skew_ms: config.clock_skew_ms,
            credential_cache_entries_max: config.credential_cache_entries_max,
        }
    }
}

/// Tap rules besides the fares file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TapSettings {
    /// The same code at the same gate within this long is a retry, not a replay.
    pub code_retry_window_ms: u64,
    /// A scan time further ahead of the server's clock is refused.
    pub scan_time_future_max_ms: u64,
    /// A scan time further behind the server's clock is refused.
    pub scan_time_past_max_ms: u64,
    /// An uploaded offline tap scanned longer ago than this is rejected.
    pub offline_age_max_ms: u64,
    /// How often the sweeper looks for journeys entered and never exited.
    pub journey_sweep_interval_ms: u64,
    /// How long a transaction id is remembered.
    pub id_retention_ms: u64,
}

impl Default for TapSettings {
    fn default() -> Self {
        let scan = ScanTimeLimits::default();
        TapSettings {
            code_retry_window_ms: CODE_RETRY_WINDOW_MS_DEFAULT,
            scan_time_future_max_ms: scan.future_max_ms,
            scan_time_past_max_ms: scan.past_max_ms,
            offline_age_max_ms: scan.offline_past_max_ms,
            journey_sweep_interval_ms: 60_000,
            id_retention_ms: LedgerConfig::default().id_retention_ms,
        }
    }
}

/// TLS on the gRPC listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// The server's private key (PEM).
    pub key_file: PathBuf,
    /// When set, every client must present a certificate signed by this CA (PEM): the
    /// gates' (and the back office's) client certificates. Roles still come from tokens.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// Gate bundle settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundleSettings {
    /// The Ed25519 key that signs gate bundles (64 hex digits of private seed, like the
    /// settlement key; made on first start if the file does not exist, its public key
    /// logged: gates are configured with it).
    pub key_file: PathBuf,
}

impl Default for BundleSettings {
    fn default() -> Self {
        BundleSettings {
            key_file: PathBuf::from("bundle.key"),
        }
    }
}

/// Settlement settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SettlementSettings {
    /// The Ed25519 key that signs batch manifests (64 hex digits of private seed; made on
    /// first start if the file does not exist).
    pub key_file: PathBuf,
    /// The deployment's currency (ISO 4217), written in every file and manifest.
    pub currency: String,
}

impl Default for SettlementSettings {
    fn default() -> Self {
        SettlementSettings {
            key_file: PathBuf::from("settlement.key"),
            // ISO 4217's code for "no currency": a deployment names its own.
            currency: "XXX".into(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("fareway-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            // Off unless asked for: an endpoint nobody configured is a port nobody watches.
            metrics_listen: None,
            fares_file: PathBuf::from("fares.toml"),
            issuer_keys_file: PathBuf::from("issuer-keys.toml"),
            backup_dir: PathBuf::from("fareway-backups"),
            log_format: LogFormat::Human,
            limits: Limits::default(),
            verifier: VerifierSettings::default(),
            taps: TapSettings::default(),
            settlement: SettlementSettings::default(),
            bundle: BundleSettings::default(),
            tls: None,
            token: Vec::new(),
            cluster: None,
            cpus: CpuSettings::default(),
        }
    }
}

/// Errors in the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The file is larger than [`CONFIG_FILE_BYTES_MAX`].
    #[error("configuration file {path} is larger than {CONFIG_FILE_BYTES_MAX} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// The file is not valid TOML of the documented shape.
    #[error("configuration file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with its line.
        message: String,
    },
    /// A setting is out of range (named in the message).
    #[error("configuration: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// The stable code string.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config_unreadable",
            ConfigError::TooLarge { .. } => "config_too_large",
            ConfigError::Parse { .. } => "config_invalid",
            ConfigError::Invalid(_) => "config_setting_invalid",
        }
    }
}

impl ServerConfig {
    /// The configuration as a file's text, for programs that start servers (the cluster
    /// demo, the tests): the paths, addresses, settlement, tokens and cluster section.
    /// An error when a setting it does not write differs from its default, so that the
    /// file always reads back as this configuration.
    pub fn file_text(&self) -> Result<String, String> {
        let mut text = format!(
            "data_dir = {:?}\nlisten = \"{}\"\nfares_file = {:?}\nissuer_keys_file = {:?}\nbackup_dir = {:?}\n",
            self.data_dir, self.listen, self.fares_file, self.issuer_keys_file, self.backup_dir
        );
        if let Some(metrics) = self.metrics_listen {
            text.push_str(&format!("metrics_listen = \"{metrics}\"\n"));
        }
        text.push_str(&format!(
            "\n[settlement]\nkey_file = {:?}\ncurrency = \"{}\"\n",
            self.settlement.key_file, self.settlement.currency
        ));
        text.push_str(&format!(
            "\n[bundle]\nkey_file = {:?}\n",
            self.bundle.key_file
        ));
        for token in &self.token {
            text.push_str(&format!(
                "\n[[token]]\nrole = \"{}\"\nsha256 = \"{}\"\nname = \"{}\"\n",
                token.role.name(),
                token.sha256,
                token.name
            ));
        }
        if let Some(cluster) = &self.cluster {
            text.push_str(&format!(
                "\n[cluster]\nnode_id = {:?}\nnats_urls = {:?}\nshards = {}\nshards_held = {:?}\nreplicas = {}\nlease_ttl_ms = {}\nlease_renew_ms = {}\nrequest_timeout_ms = {}\n",
                cluster.node_id,
                cluster.nats_urls,
                cluster.shards,
                cluster.shards_held,
                cluster.replicas,
                cluster.lease_ttl_ms,
                cluster.lease_renew_ms,
                cluster.request_timeout_ms
            ));
            if let (Some(user), Some(password)) = (&cluster.nats_user, &cluster.nats_password) {
                text.push_str(&format!(
                    "nats_user = {user:?}\nnats_password = {password:?}\n"
                ));
            }
            if let Some(ca_file) = &cluster.nats_ca_file {
                text.push_str(&format!("nats_ca_file = {ca_file:?}\n"));
            }
        }
        match toml::from_str::<ServerConfig>(&text) {
            Ok(read_back) if read_back == *self => Ok(text),
            Ok(_) => Err("the configuration has a setting the file text does not write".into()),
            Err(err) => Err(format!(
                "the configuration's file text does not parse: {err}"
            )),
        }
    }

    /// Reads and checks a configuration file; relative paths in it are made relative to
    /// the file's folder.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let shown = path.display().to_string();
        let read_error = |source| ConfigError::Read {
            path: shown.clone(),
            source,
        };
        let text = match crate::files::read_bounded(path, CONFIG_FILE_BYTES_MAX) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::FileTooLarge => {
                return Err(ConfigError::TooLarge { path: shown });
            }
            Err(err) => return Err(read_error(err)),
        };
        let mut config = ServerConfig::from_toml(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: shown.clone(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for file in [
            &mut config.data_dir,
            &mut config.fares_file,
            &mut config.issuer_keys_file,
            &mut config.backup_dir,
            &mut config.settlement.key_file,
            &mut config.bundle.key_file,
        ]
        .into_iter()
        .chain(config.tls.iter_mut().flat_map(|tls| {
            [&mut tls.cert_file, &mut tls.key_file]
                .into_iter()
                .chain(tls.client_ca_file.as_mut())
        }))
        .chain(
            config
                .cluster
                .iter_mut()
                .filter_map(|cluster| cluster.nats_ca_file.as_mut()),
        ) {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        Ok(config)
    }

    /// Parses and checks a configuration's text.
    pub fn from_toml(text: &str) -> Result<ServerConfig, ConfigError> {
        let config: ServerConfig = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: String::new(),
            message: err.to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    /// Checks every setting's range.
    pub fn check(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        for (name, value) in [
            (
                "limits.requests_in_flight_max",
                limits.requests_in_flight_max,
            ),
            (
                "limits.ledger_queue_depth_max",
                limits.ledger_queue_depth_max,
            ),
            (
                "limits.ledger_group_commit_requests_max",
                limits.ledger_group_commit_requests_max,
            ),
            (
                "limits.stream_taps_in_flight_max",
                limits.stream_taps_in_flight_max,
            ),
            (
                "limits.connection_requests_in_flight_max",
                limits.connection_requests_in_flight_max,
            ),
            ("limits.block_cache_mib", limits.block_cache_mib),
            ("limits.write_buffers_mib", limits.write_buffers_mib),
            ("limits.settlement_jobs_max", limits.settlement_jobs_max),
            ("limits.connections_max", limits.connections_max),
            (
                "limits.handshake_timeout_ms",
                limits.handshake_timeout_ms as usize,
            ),
            (
                "limits.streams_per_connection_max",
                limits.streams_per_connection_max as usize,
            ),
            (
                "limits.request_timeout_ms",
                limits.request_timeout_ms as usize,
            ),
            ("limits.pull_stall_ms", limits.pull_stall_ms as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        let currency = &self.settlement.currency;
        if currency.len() != 3 || !currency.bytes().all(|byte| byte.is_ascii_uppercase()) {
            return Err(ConfigError::Invalid(format!(
                "settlement.currency {currency:?} must be an ISO 4217 code: three capital letters"
            )));
        }
        if self.taps.journey_sweep_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "taps.journey_sweep_interval_ms must be at least 1".into(),
            ));
        }
        self.check_relationships()?;
        let mut hashes = std::collections::HashSet::new();
        for (index, token) in self.token.iter().enumerate() {
            // One token, one role: the same hash twice would give one token whichever
            // role the file listed last.
            if !hashes.insert(token.sha256.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "token {index} ({}): the same token hash is listed twice; a token has one role",
                    token.name
                )));
            }
            let hex_ok = token.sha256.len() == 64
                && token
                    .sha256
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
            if !hex_ok {
                return Err(ConfigError::Invalid(format!(
                    "token {index} ({}): sha256 must be 64 lowercase hex digits",
                    token.name
                )));
            }
        }
        Ok(())
    }

    /// Checks the settings that only make sense together, each for its reason.
    fn check_relationships(&self) -> Result<(), ConfigError> {
        let (limits, taps) = (&self.limits, &self.taps);
        let rules = [
            (
                taps.id_retention_ms > taps.scan_time_past_max_ms,
                "taps.id_retention_ms must be longer than taps.scan_time_past_max_ms: a gate \
                 may retry a tap that long after its scan, and a retry whose id was forgotten \
                 would be charged a second time",
            ),
            (
                taps.id_retention_ms > taps.offline_age_max_ms.saturating_add(86_400_000),
                "taps.id_retention_ms must be longer than taps.offline_age_max_ms and a day: a \
                 gate may upload an offline tap that long after its scan, and retry the upload \
                 (a retry whose id was forgotten would be charged a second time), and the tap \
                 re-prices its whole service day, whose steps are pruned with their ids",
            ),
            (
                taps.id_retention_ms > taps.code_retry_window_ms,
                "taps.id_retention_ms must be longer than taps.code_retry_window_ms: a gate's \
                 retry within the window must find its original answer",
            ),
            (
                limits.stream_taps_in_flight_max <= limits.connection_requests_in_flight_max,
                "limits.stream_taps_in_flight_max must not exceed \
                 limits.connection_requests_in_flight_max: every tap of a stream also holds \
                 one of its connection's requests in flight",
            ),
            (
                limits.connection_requests_in_flight_max <= limits.requests_in_flight_max,
                "limits.connection_requests_in_flight_max must not exceed \
                 limits.requests_in_flight_max: a connection's share is part of the whole",
            ),
            (
                limits.ledger_group_commit_requests_max <= limits.ledger_queue_depth_max,
                "limits.ledger_group_commit_requests_max must not exceed \
                 limits.ledger_queue_depth_max: a group commit takes its requests from the \
                 queue",
            ),
        ];
        match rules.into_iter().find(|(holds, _)| !holds) {
            Some((_, reason)) => Err(ConfigError::Invalid(reason.to_string())),
            None => Ok(()),
        }
    }

    /// Makes the plan of `[cpus]` on this machine, and moves the calling thread, and so
    /// every thread it starts from now on, off the ledger's CPUs. Call it before the
    /// process starts any other thread (the runtime, the ledger): a thread started before
    /// stays where it was.
    pub fn claim_ledger_cpus(&mut self) -> Result<(), CpuPlanError> {
        self.cpus.plan = CpuPlan::new(&self.cpus.ledger)?;
        match &self.cpus.plan {
            Some(plan) => plan.keep_this_thread_off_ledger(),
            None => Ok(()),
        }
    }

    /// The ledger's settings.
    pub fn ledger_config(&self) -> LedgerConfig {
        let mut config = LedgerConfig {
            queue_depth_max: self.limits.ledger_queue_depth_max,
            group_commit_requests_max: self.limits.ledger_group_commit_requests_max,
            id_retention_ms: self.taps.id_retention_ms,
            cpus: self.cpus.plan,
            ..LedgerConfig::default()
        };
        config.store.block_cache_bytes = self.limits.block_cache_mib << 20;
        config.store.write_buffers_bytes = self.limits.write_buffers_mib << 20;
        config
    }

    /// The verifier's settings.
    pub fn verifier_config(&self) -> VerifierConfig {
        VerifierConfig {
            code_validity_ms: self.verifier.code_validity_ms,
            clock_skew_ms: self.verifier.clock_skew_ms,
            credential_cache_entries_max: self.verifier.credential_cache_entries_max,
        }
    }

    /// The scan time limits.
    pub fn scan_time_limits(&self) -> ScanTimeLimits {
        ScanTimeLimits {
            future_max_ms: self.taps.scan_time_future_max_ms,
            past_max_ms: self.taps.scan_time_past_max_ms,
            offline_past_max_ms: self.taps.offline_age_max_ms,
        }
    }
}

/// The SHA-256 of a bearer token, as hex: what the configuration lists.
pub fn token_sha256_hex(token: &str) -> String {
    crate::hex::encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_every_default() {
        assert_eq!(
            ServerConfig::from_toml("").unwrap(),
            ServerConfig::default()
        );
    }

    #[test]
    fn unknown_settings_and_bad_values_are_refused_with_their_names() {
        let unknown = ServerConfig::from_toml("listen_port = 5").unwrap_err();
        assert!(unknown.to_string().contains("listen_port"), "{unknown}");
        let zero = ServerConfig::from_toml("[limits]\nrequests_in_flight_max = 0").unwrap_err();
        assert!(
            zero.to_string().contains("limits.requests_in_flight_max"),
            "{zero}"
        );
        let bad_hash =
            ServerConfig::from_toml("[[token]]\nrole = \"gate\"\nsha256 = \"abc\"").unwrap_err();
        assert!(bad_hash.to_string().contains("sha256"), "{bad_hash}");
        let bad_role =
            ServerConfig::from_toml("[[token]]\nrole = \"root\"\nsha256 = \"abc\"").unwrap_err();
        assert!(bad_role.to_string().contains("root"), "{bad_role}");
        let bad_currency =
            ServerConfig::from_toml("[settlement]\ncurrency = \"euro\"").unwrap_err();
        assert!(
            bad_currency.to_string().contains("settlement.currency"),
            "{bad_currency}"
        );
    }

    #[test]
    fn relative_paths_are_read_from_the_configuration_files_folder() {
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("server.toml");
        std::fs::write(
            &file,
            "data_dir = \"data\"\nbackup_dir = \"/var/backups/fareway\"\n\
             [tls]\ncert_file = \"tls/server.pem\"\nkey_file = \"tls/server.key\"\n\
             client_ca_file = \"tls/gates-ca.pem\"\n",
        )
        .unwrap();
        let config = ServerConfig::load(&file).unwrap();
        assert_eq!(config.data_dir, folder.path().join("data"));
        assert_eq!(config.backup_dir, PathBuf::from("/var/backups/fareway"));
        assert_eq!(config.fares_file, folder.path().join("fares.toml"));
        let tls = config.tls.unwrap();
        assert_eq!(tls.cert_file, folder.path().join("tls/server.pem"));
        assert_eq!(tls.key_file, folder.path().join("tls/server.key"));
        assert_eq!(
            tls.client_ca_file,
            Some(folder.path().join("tls/gates-ca.pem"))
        );
        let missing_key = ServerConfig::from_toml("[tls]\ncert_file = \"a.pem\"").unwrap_err();
        assert!(
            missing_key.to_string().contains("key_file"),
            "{missing_key}"
        );
    }

    #[test]
    fn metrics_are_off_unless_metrics_listen_is_set() {
        assert_eq!(ServerConfig::from_toml("").unwrap().metrics_listen, None);
        let on = ServerConfig::from_toml("metrics_listen = \"127.0.0.1:9464\"").unwrap();
        assert_eq!(
            on.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
    }

    #[test]
    fn limits_that_contradict_each_other_are_refused_with_the_reason() {
        let forgets_retries = ServerConfig::from_toml(
            "[taps]\nid_retention_ms = 60000\nscan_time_past_max_ms = 600000",
        )
        .unwrap_err();
        assert!(
            forgets_retries
                .to_string()
                .contains("charged a second time"),
            "{forgets_retries}"
        );
        let stream_over_connection = ServerConfig::from_toml(
            "[limits]\nconnection_requests_in_flight_max = 10\nstream_taps_in_flight_max = 11",
        )
        .unwrap_err();
        assert!(
            stream_over_connection
                .to_string()
                .contains("limits.stream_taps_in_flight_max"),
            "{stream_over_connection}"
        );
        let connection_over_all = ServerConfig::from_toml(
            "[limits]\nrequests_in_flight_max = 600\nstream_taps_in_flight_max = 500",
        )
        .unwrap_err();
        assert!(
            connection_over_all
                .to_string()
                .contains("limits.connection_requests_in_flight_max"),
            "{connection_over_all}"
        );
        let group_over_queue = ServerConfig::from_toml(
            "[limits]\nledger_queue_depth_max = 8\nledger_group_commit_requests_max = 9",
        )
        .unwrap_err();
        assert!(
            group_over_queue
                .to_string()
                .contains("ledger_group_commit_requests_max"),
            "{group_over_queue}"
        );
        // The old name of the group commit limit is still read.
        let old_name = ServerConfig::from_toml("[limits]\nledger_batch_size_max = 64").unwrap();
        assert_eq!(old_name.limits.ledger_group_commit_requests_max, 64);
    }

    #[test]
    fn the_ledger_cpus_reach_the_ledger_once_claimed() {
        let first = crate::cpus::this_thread_cpu_list()[0];
        let config = ServerConfig::from_toml(&format!("[cpus]\nledger = [{first}]")).unwrap();
        assert_eq!(config.cpus.ledger, vec![first]);
        // Read, not yet planned: a plan is made on the machine, by the process that runs.
        assert_eq!(config.ledger_config().cpus, None);
        let misspelt = ServerConfig::from_toml("[cpus]\nledgers = [0]").unwrap_err();
        assert!(
            misspelt.to_string().contains("unknown field `ledgers`"),
            "{misspelt}"
        );

        // Claimed on a thread of its own: claiming moves the calling thread.
        let claimed = std::thread::spawn(move || {
            let mut config = config;
            config
                .claim_ledger_cpus()
                .map(|()| config.ledger_config().cpus)
        })
        .join()
        .unwrap();
        if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
            let refused = claimed.unwrap_err().to_string();
            assert!(refused.contains("leave at least one"), "{refused}");
            return;
        }
        let plan = claimed.unwrap().expect("a plan for the ledger");
        assert_eq!(plan.ledger.is_set(first), Ok(true));
        assert_eq!(plan.others.is_set(first), Ok(false));
    }

    #[test]
    fn one_token_hash_under_two_roles_is_refused() {
        let hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let text = format!(
            "[[token]]\nrole = \"gate\"\nsha256 = \"{hash}\"\n\
             [[token]]\nrole = \"admin\"\nsha256 = \"{hash}\"\n"
        );
        let twice = ServerConfig::from_toml(&text).unwrap_err();
        assert!(twice.to_string().contains("listed twice"), "{twice}");
    }

    #[test]
    fn a_configuration_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("server.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = ServerConfig::load(&zero).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn token_hashes_are_sha256_hex() {
        // SHA-256("abc"), from FIPS 180-2.
        assert_eq!(
            token_sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
