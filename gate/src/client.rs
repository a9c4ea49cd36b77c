//! The client side of the engine's gRPC API, for gates, the simulator, the CLI and the
//! tests: the engine's address (or a cluster's nodes'), connections, and one way to
//! present a caller's token.

use fareway_proto::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The client side: adds `authorization: Bearer <token>` to every call (or nothing, for a
/// client without a token).
#[derive(Debug, Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// With this token, or none. A token that is not visible ASCII cannot be sent.
    pub fn new(
        token: Option<&str>,
    ) -> Result<Bearer, tonic::metadata::errors::InvalidMetadataValue> {
        token
            .map(|token| format!("Bearer {token}").parse())
            .transpose()
            .map(Bearer)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A gate client.
pub type GateClient =
    pb::gate_service_client::GateServiceClient<InterceptedService<Channel, Bearer>>;
/// An admin client.
pub type AdminClient =
    pb::admin_service_client::AdminServiceClient<InterceptedService<Channel, Bearer>>;
/// A settlement client.
pub type SettlementClient =
    pb::settlement_service_client::SettlementServiceClient<InterceptedService<Channel, Bearer>>;

/// The engine's address (or a cluster's nodes' addresses) and the tokens of the three
/// roles.
#[derive(Debug, Clone)]
pub struct Engine {
    /// `http://HOST:PORT`.
    pub url: String,
    /// A cluster's other nodes, `http://HOST:PORT` each: gates spread their connections
    /// over `url` and these, and a retried tap goes to the next node.
    pub more_urls: Vec<String>,
    /// A gate token.
    pub gate_token: String,
    /// An admin token.
    pub admin_token: String,
    /// A finance token.
    pub finance_token: String,
    /// `HOST:PORT` of the engine's metrics listener, for server-side latency in the
    /// report; `None` leaves it out.
    pub metrics_addr: Option<String>,
}

impl Engine {
    /// How many nodes the engine has (1 unless it is a cluster).
    pub fn nodes(&self) -> usize {
        1 + self.more_urls.len()
    }

    /// Node `node`'s address (counting round the nodes).
    fn url_of(&self, node: usize) -> &str {
        match node % self.nodes() {
            0 => &self.url,
            other => &self.more_urls[other - 1],
        }
    }

    /// A new connection (HTTP/2 multiplexes many calls on it).
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        self.channel_to(0).await
    }

    /// A new connection to node `node` (counting round the nodes).
    pub async fn channel_to(&self, node: usize) -> anyhow::Result<Channel> {
        let url = self.url_of(node);
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(5));
        endpoint
            .connect()
            .await
            .map_err(|err| anyhow::anyhow!("cannot connect to {url}: {err}"))
    }

    /// A gate client on a new connection to node `node` (counting round the nodes).
    pub async fn gate_on(&self, node: usize) -> anyhow::Result<GateClient> {
        Ok(
            pb::gate_service_client::GateServiceClient::with_interceptor(
                self.channel_to(node).await?,
                Bearer::new(Some(&self.gate_token))?,
            ),
        )
    }

    /// A gate client on a new connection.
    pub async fn gate(&self) -> anyhow::Result<GateClient> {
        self.gate_on(0).await
    }

    /// An admin client on a new connection.
    pub async fn admin(&self) -> anyhow::Result<AdminClient> {
        Ok(
            pb::admin_service_client::AdminServiceClient::with_interceptor(
                self.channel().await?,
                Bearer::new(Some(&self.admin_token))?,
            ),
        )
    }

    /// A settlement client on a new connection.
    pub async fn settlement(&self) -> anyhow::Result<SettlementClient> {
        Ok(
            pb::settlement_service_client::SettlementServiceClient::with_interceptor(
                self.channel().await?,
                Bearer::new(Some(&self.finance_token))?,
            ),
        )
    }
}
