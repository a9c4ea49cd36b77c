//! How the command line reaches a running engine: its address and a role's bearer token.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use fareway::grpc::auth::Bearer;
use tonic::transport::Channel;

/// How to reach the engine.
#[derive(Debug, Args)]
pub struct Connection {
    /// The engine's gRPC address.
    #[arg(long, env = "FAREWAY_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// A file holding the role's token (finance for `settle`, admin for `checkpoint`), or
    /// set FAREWAY_TOKEN.
    #[arg(long, env = "FAREWAY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

impl Connection {
    /// A connection to the engine and the token to send on every call.
    pub async fn open(&self) -> anyhow::Result<(Channel, Bearer)> {
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read token file {}", path.display()))?
                .trim()
                .to_string(),
            None => std::env::var("FAREWAY_TOKEN")
                .context("give the token with --token-file or FAREWAY_TOKEN")?,
        };
        let bearer = Bearer::new(Some(&token)).context("the token must be visible ASCII")?;
        let channel = tonic::transport::Endpoint::from_shared(self.server.clone())
            .with_context(|| format!("{:?} is not a server address", self.server))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", self.server))?;
        Ok((channel, bearer))
    }
}
