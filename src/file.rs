//! The crate's one atomic file writer: every file keymeter writes (the development secrets file, `.env` edits,
//! catalogs) goes through [`write_atomic`].

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` atomically: a temporary file with a random name in the same directory, created
/// with `O_CREAT|O_EXCL` (a planted file or symlink is never followed) and mode 0600 from the start, written,
/// fsynced, renamed over `path`, and the directory fsynced so the rename survives a crash. On failure the
/// temporary file is removed and `path` is untouched.
///
/// # Errors
/// The I/O error, for the caller to wrap with the path.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // `tempfile` creates with O_EXCL and mode 0600, and deletes the file if it is dropped unpersisted.
    let mut tmp = tempfile::Builder::new()
        .prefix(".keymeter-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
