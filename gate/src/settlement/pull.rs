//! Pulling a batch over `SettlementService.PullBatch` into a folder, checked before it
//! is kept: the client side of settlement, which the CLI, the simulator and the tests use.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use fareway_proto::v1 as pb;

use super::manifest::Manifest;
use super::manifest_name;
use crate::token::format::PUBLIC_KEY_LEN;

/// Why a pull to a folder failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The server answered with an error.
    #[error("the server refused or failed: {0}")]
    Status(#[from] tonic::Status),
    /// The stream does not start with a manifest, or the manifest is not valid.
    #[error("the server's answer is not a settlement batch: {0}")]
    Protocol(String),
    /// Writing the files failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not check against its manifest and the key.
    #[error("the pulled file does not check, so it was not kept: {0}")]
    Verify(#[from] super::verify::VerifyError),
}

/// Where a pull put a batch.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The CSV file.
    pub file: PathBuf,
    /// The manifest beside it.
    pub manifest_file: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
}

/// Writes a pulled batch into `folder`: each file under a temporary name, synced, checked
/// (length, SHA-256, content, and the manifest's signature by `public_key`), then renamed
/// into place, so that the folder never holds a partial or unchecked file under a
/// batch's name. `progress(received, total)` is called after each chunk, in bytes.
///
/// The manifest is renamed into place before the CSV file: a CSV file under a batch's name
/// always has its manifest beside it. Temporary files are removed when the pull fails.
pub async fn pull_to_folder(
    stream: tonic::Streaming<pb::BatchChunk>,
    batch_id: u64,
    folder: &Path,
    public_key: &[u8; PUBLIC_KEY_LEN],
    progress: impl FnMut(u64, u64),
) -> Result<Pulled, PullError> {
    let mut partials = Vec::new();
    let pulled = pull_into(
        stream,
        batch_id,
        folder,
        public_key,
        progress,
        &mut partials,
    )
    .await;
    if pulled.is_err() {
        for partial in partials {
            let _ = std::fs::remove_file(partial);
        }
    }
    pulled
}

async fn pull_into(
    mut stream: tonic::Streaming<pb::BatchChunk>,
    batch_id: u64,
    folder: &Path,
    public_key: &[u8; PUBLIC_KEY_LEN],
    mut progress: impl FnMut(u64, u64),
    partials: &mut Vec<PathBuf>,
) -> Result<Pulled, PullError> {
    let protocol = |message: &str| PullError::Protocol(message.to_string());
    let manifest_bytes = match stream.message().await? {
        Some(pb::BatchChunk {
            part: Some(pb::batch_chunk::Part::Manifest(bytes)),
        }) => bytes,
        _ => return Err(protocol("the first message is not the manifest")),
    };
    let manifest = Manifest::from_bytes(&manifest_bytes)
        .map_err(|err| PullError::Protocol(format!("the manifest does not parse: {err}")))?;
    // The name comes from the server: it must be the requested batch's, which is also a
    // plain file name (no folders).
    let expected_name = super::file_name(manifest.provider_id, batch_id);
    if manifest.batch_id != batch_id || manifest.file_name != expected_name {
        return Err(PullError::Protocol(format!(
            "asked for batch {batch_id}, got a manifest for batch {} named {:?}",
            manifest.batch_id, manifest.file_name
        )));
    }
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| PullError::Io { path, source }
    };
    let file = folder.join(&manifest.file_name);
    let manifest_file = folder.join(manifest_name(&manifest.file_name));
    let partial_file = folder.join(format!(".{}.partial", manifest.file_name));
    let partial_manifest = folder.join(format!(".{}.partial", manifest_name(&manifest.file_name)));

    partials.extend([partial_file.clone(), partial_manifest.clone()]);
    let mut out = std::fs::File::create(&partial_file).map_err(io(&partial_file))?;
    let mut received = 0u64;
    while let Some(chunk) = stream.message().await? {
        let Some(pb::batch_chunk::Part::FileData(data)) = chunk.part else {
            return Err(protocol("a second manifest in the stream"));
        };
        received += data.len() as u64;
        if received > manifest.file_bytes {
            return Err(protocol("the file is longer than its manifest says"));
        }
        out.write_all(&data).map_err(io(&partial_file))?;
        progress(received, manifest.file_bytes);
    }
    out.sync_all().map_err(io(&partial_file))?;
    drop(out);
    let written = std::fs::File::open(&partial_file).map_err(io(&partial_file))?;
    super::verify::verify(&manifest, std::io::BufReader::new(written), public_key)?;
    std::fs::write(&partial_manifest, manifest.to_bytes()).map_err(io(&partial_manifest))?;
    std::fs::File::open(&partial_manifest)
        .and_then(|file| file.sync_all())
        .map_err(io(&partial_manifest))?;
    std::fs::rename(&partial_manifest, &manifest_file).map_err(io(&manifest_file))?;
    std::fs::rename(&partial_file, &file).map_err(io(&file))?;
    std::fs::File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(io(folder))?;
    Ok(Pulled {
        file,
        manifest_file,
        manifest,
    })
}
