//! `fareway token`: mint, inspect, and the published test vectors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use fareway::clock::{Clock as _, SystemClock, UnixMillis};
use fareway::files::write_atomically;
use fareway::hex::{self, HexError};
use fareway::token::keys::encode_public_key;
use fareway::token::mint::{Device, Issuer};
use fareway::token::{Decision, IssuerRegistry, Verifier, VerifierConfig, format, vectors};

const HOUR_MS: u64 = 3_600_000;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a credential and one code, for testing and support. Prints the code's text.
    Mint {
        /// The issuer private key file (from `fareway keys new-issuer`).
        #[arg(long)]
        issuer_key: PathBuf,
        /// The rider's account id.
        #[arg(long)]
        account: u64,
        /// How long the credential is valid, in hours.
        #[arg(long, default_value_t = 168)]
        valid_hours: u64,
        /// The code's sequence number.
        #[arg(long, default_value_t = 0)]
        sequence: u32,
        /// The device key's seed as 64 hex digits (default: a new random key).
        #[arg(long)]
        device_seed: Option<String>,
        /// The code's generation time in ms since the epoch (default: now).
        #[arg(long)]
        at_ms: Option<u64>,
        /// The credential's flags byte.
        #[arg(long, default_value_t = 0)]
        flags: u8,
    },
    /// Decode a code, print every field, and say whether it verifies and if not, why.
    /// Exits 0 when the code verifies, 1 when it is rejected. A code's text may begin or
    /// end with a space or `-` (both are Base45 digits): quote it, and never trim it.
    Inspect {
        /// The code's text exactly as scanned. It may begin or end with a space or `-`
        /// and is never trimmed; quote it (`--` before it also works).
        #[arg(allow_hyphen_values = true)]
        text: String,
        /// The issuer key registry file (TOML).
        #[arg(long)]
        keys: PathBuf,
        /// The verification time in ms since the epoch (default: now).
        #[arg(long)]
        at_ms: Option<u64>,
        /// A deny-listed account id (repeatable).
        #[arg(long)]
        deny: Vec<u64>,
    },
    /// Regenerate the published test vectors (deterministic: same bytes every run).
    Vectors {
        /// Where to write them.
        #[arg(long, default_value = "tests/vectors/qr-v1.json")]
        out: PathBuf,
    },
}

pub fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Mint {
            issuer_key,
            account,
            valid_hours,
            sequence,
            device_seed,
            at_ms,
            flags,
        } => mint(
            &issuer_key,
            account,
            valid_hours,
            sequence,
            device_seed.as_deref(),
            at_ms,
            flags,
        ),
        TokenCommand::Inspect {
            text,
            keys,
            at_ms,
            deny,
        } => inspect(&text, &keys, at_ms, deny),
        TokenCommand::Vectors { out } => write_vectors(&out),
    }
}

/// `token mint`: issues a credential for `account` with the issuer's key and makes one
/// code from it at `at_ms` (default now). Prints the code's text on standard output, alone,
/// and what it holds on standard error.
fn mint(
    issuer_key: &Path,
    account: u64,
    valid_hours: u64,
    sequence: u32,
    device_seed: Option<&str>,
    at_ms: Option<u64>,
    flags: u8,
) -> anyhow::Result<ExitCode> {
    let (issuer, provider) = Issuer::read_key_file(issuer_key)?;
    let device_key = match device_seed {
        Some(hex) => Device::key_from_seed(&parse_seed(hex)?),
        None => Device::generate_key()?,
    };
    let at = at_ms.map(UnixMillis).unwrap_or_else(|| SystemClock.now());
    let expires_at = at.saturating_add(valid_hours.saturating_mul(HOUR_MS));
    let device_public_key = Device::public_key_of(&device_key);
    let credential = issuer.issue(account, expires_at, flags, device_public_key);
    let mut device = Device::new(device_key, credential, sequence);
    let text = device.code_text(at);
    println!("{text}");
    eprintln!(
        "provider {provider} ({}), key {}, account {account}, sequence {sequence}, made at {}, credential expires at {}, {} characters",
        issuer.provider_id(),
        issuer.key_id(),
        at.0,
        expires_at.0,
        text.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `token inspect`: prints every field of the code that can be read, then whether it
/// verifies at `at_ms` (default now) and if not, why. `text` is used exactly as given:
/// a space or `-` at either end is part of the code.
fn inspect(
    text: &str,
    keys: &Path,
    at_ms: Option<u64>,
    deny: Vec<u64>,
) -> anyhow::Result<ExitCode> {
    let registry = IssuerRegistry::load(keys)?;
    let at = at_ms.map(UnixMillis).unwrap_or_else(|| SystemClock.now());
    print_fields(text);
    let verifier = Verifier::new(VerifierConfig::default(), registry);
    for account in deny {
        verifier.set_denied(account, true);
    }
    match verifier.verify_text(text, at) {
        Decision::Accepted(_) => {
            println!("verdict:               accepted at {}", at.0);
            Ok(ExitCode::SUCCESS)
        }
        Decision::Rejected(reason) => {
            println!(
                "verdict:               rejected at {}: {} ({})",
                at.0,
                reason.code(),
                reason.describe()
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// `token vectors`: writes the published test vectors to `out`, whole (readable by all,
/// 0644), so that an interrupted run never leaves a half-written vector file.
fn write_vectors(out: &Path) -> anyhow::Result<ExitCode> {
    let text = vectors::generate_json();
    write_atomically(out, text.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} vectors to {}",
        vectors::generate().vectors.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints whatever fields can be read, even from a code that will not verify.
fn print_fields(text: &str) {
    println!("text length:           {} characters", text.len());
    let bytes = match format::decode_text(text) {
        Ok(bytes) => bytes,
        Err(reason) => {
            println!("decode:                failed: {}", reason.describe());
            return;
        }
    };
    println!("bytes:                 {}", bytes.len());
    match format::parse(&bytes) {
        Ok(code) => {
            let credential = code.credential;
            println!("format version:        {}", format::FORMAT_VERSION);
            println!("flags:                 {:#04x}", credential.flags);
            println!("provider id:           {}", credential.provider_id);
            println!("issuer key id:         {}", credential.issuer_key_id);
            println!("account id:            {}", credential.account_id);
            println!("credential expires at: {}", credential.expires_at.0);
            println!(
                "device public key:     {}",
                encode_public_key(&credential.device_public_key)
            );
            println!("sequence:              {}", code.code.sequence);
            println!("generated at:          {}", code.code.generated_at.0);
        }
        Err(reason) => println!("layout:                unreadable: {}", reason.describe()),
    }
}

fn parse_seed(text: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode_32(text).map_err(|err| match err {
        HexError::Length(length) => anyhow::anyhow!("a device seed is 64 hex digits, got {length}"),
        HexError::Digit(position) => {
            anyhow::anyhow!("device seed has a non-hex digit near position {position}")
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::TokenCommand;
    use crate::{Cli, Command};

    /// Base45 digits include `-` and the space, so a code's text may begin with a hyphen
    /// (even two) or begin or end with a space: the command line must take it whole, and
    /// still read the options after it.
    #[test]
    fn inspect_takes_a_text_that_begins_with_a_hyphen_or_a_space_whole() {
        for text in ["-8F/ ", "--Q.A", "-H", " -A- ", "-"] {
            let cli = Cli::try_parse_from([
                "fareway",
                "token",
                "inspect",
                text,
                "--keys",
                "keys.toml",
                "--at-ms",
                "7",
            ])
            .unwrap();
            let Command::Token(TokenCommand::Inspect {
                text: parsed,
                keys,
                at_ms,
                ..
            }) = cli.command
            else {
                panic!("{text:?} was not parsed as token inspect");
            };
            assert_eq!(parsed, text);
            assert_eq!(keys, std::path::Path::new("keys.toml"));
            assert_eq!(at_ms, Some(7));
        }
    }
}
