//! `fareway keys`: make issuer key pairs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use fareway::token::keys::{PROVIDER_NAME_LEN_MAX, encode_public_key, is_valid_provider_name};
use fareway::token::mint::Issuer;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new issuer key pair to FILE (owner-only permissions) and print its key id
    /// and the entry to add to the issuer key registry.
    NewIssuer {
        /// The provider's name (a-z, 0-9, _ and -).
        #[arg(long)]
        provider: String,
        /// The provider's numeric id, as carried in credentials.
        #[arg(long, default_value_t = 1)]
        provider_id: u16,
        /// Where to write the private key file; it must not exist yet.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::NewIssuer {
            provider,
            provider_id,
            out,
        } => {
            anyhow::ensure!(
                is_valid_provider_name(&provider),
                "provider name {provider:?} must be 1 to {PROVIDER_NAME_LEN_MAX} characters of a-z, 0-9, _ or -"
            );
            let issuer = Issuer::generate(provider_id).context("generating an issuer key")?;
            issuer
                .write_key_file(&provider, &out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("key_id = {}", issuer.key_id());
            println!();
            println!("# Add to the issuer key registry:");
            println!("[[issuer_key]]");
            println!("provider_id = {provider_id}");
            println!("key_id = {}", issuer.key_id());
            println!(
                "public_key = \"{}\"",
                encode_public_key(&issuer.public_key())
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
