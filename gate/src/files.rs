//! Files written whole: [`write_atomically`] replaces a file so that a crash or a full disk
//! leaves either the old file (or none) or the whole new one, never a torn mix. Key files,
//! the issuer key registry and the command line's outputs are written through it. Files
//! the operator controls are read through [`read_bounded`], and private folders made with
//! [`create_private_dir`].
//!
//! This module holds only the mechanics of a safe write. It must never know what a file
//! means (no formats, no domain types), never write in place over a file that a reader or
//! a restart depends on, and never widen a file's permissions after the fact: a file is
//! created with its final permissions, so a secret is never readable by others, even for a
//! moment.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Replaces the file at `path` with `bytes`, atomically: a crash leaves the old file (or
/// none) or the whole new one.
///
/// The bytes go to a new temporary file in the same folder (a rename is atomic only within
/// one file system), named `.NAME.XXXXXX.partial` and created with the permission bits
/// `mode` (less the process umask, as for any new file; `0o600` for a secret). The file is
/// synced, renamed over `path`, and then the folder is synced so that the rename itself
/// survives a crash. An error before the rename removes the temporary file and leaves
/// `path` as it was. An existing file at `path` is replaced, whatever its permissions.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let folder = folder_of(path);
    let prefix = format!(
        ".{}.",
        path.file_name()
            .map_or("file".into(), |name| name.to_string_lossy())
    );
    let mut file = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".partial")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(folder)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|err| err.error)?;
    std::fs::File::open(folder)?.sync_all()
}

/// Reads a text file the operator controls, refusing what would hang or exhaust the
/// engine: anything but a regular file (a FIFO blocks its reader, `/dev/zero` never ends;
/// symbolic links are followed to what they name) with `InvalidInput`, and a file larger
/// than `bytes_max` with `FileTooLarge`, after reading at most `bytes_max + 1` bytes
/// whatever the file claims its size is.
pub fn read_bounded(path: &Path, bytes_max: u64) -> std::io::Result<String> {
    use std::io::Read as _;
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(bytes_max.saturating_add(1))
        .read_to_string(&mut text)?;
    if text.len() as u64 > bytes_max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{} is larger than {bytes_max} bytes", path.display()),
        ));
    }
    Ok(text)
}

/// Makes `dir` (and its missing parents) readable by its owner only: the ledger's data
/// directory and its backups hold every rider's balance and history, which no other user
/// of the machine should read. (RocksDB, or `create_dir_all`, would use the process's
/// umask instead.) An existing folder is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The folder that holds `path`: its parent, or the current folder for a bare file name.
fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_file_is_replaced_whole_with_its_mode_and_no_temporary_file_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        write_atomically(&path, b"first\n", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        write_atomically(&path, b"second\n", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second\n");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_failed_rename_leaves_what_was_there_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A file cannot be renamed over a folder that holds something.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(
            blocked.join("inside"),
            b"kept
",
        )
        .unwrap();
        assert!(
            write_atomically(
                &blocked, b"new
", 0o644
            )
            .is_err()
        );
        assert_eq!(
            std::fs::read(blocked.join("inside")).unwrap(),
            b"kept
"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_bounded_read_refuses_devices_fifos_and_files_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.toml");
        std::fs::write(&small, "a = 1\n").unwrap();
        assert_eq!(read_bounded(&small, 6).unwrap(), "a = 1\n");
        let large = read_bounded(&small, 5).unwrap_err();
        assert_eq!(large.kind(), std::io::ErrorKind::FileTooLarge);
        // A link to a device that never ends is refused before a byte is read.
        let zero = dir.path().join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(
            read_bounded(&zero, 1 << 20).unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
        // A FIFO would block the reader until a writer came: refused, not opened.
        let fifo = dir.path().join("fifo.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(
            read_bounded(&fifo, 1 << 20).unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
    }
}
