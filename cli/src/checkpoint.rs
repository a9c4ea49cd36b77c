//! `fareway checkpoint`: asks a running engine for a consistent copy of its ledger (a
//! RocksDB checkpoint in its backup folder) while taps go on. `docs/operations.md` says
//! what to do with it.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use fareway_proto::v1 as pb;

use crate::connection::Connection;

/// Arguments of `fareway checkpoint`.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    connection: Connection,
    /// The checkpoint's folder name under the server's `backup_dir` (1 to 64 of
    /// A-Z a-z 0-9 . _ -), e.g. the date.
    #[arg(long)]
    name: String,
}

/// Makes the checkpoint and prints where the server wrote it.
pub fn run(args: CheckpointArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (channel, bearer) = args.connection.open().await?;
        let mut admin =
            pb::admin_service_client::AdminServiceClient::with_interceptor(channel, bearer);
        let checkpoint = admin
            .create_checkpoint(pb::CreateCheckpointRequest { name: args.name })
            .await
            .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))?
            .into_inner();
        println!("checkpoint written to {}", checkpoint.path);
        Ok(ExitCode::SUCCESS)
    })
}
