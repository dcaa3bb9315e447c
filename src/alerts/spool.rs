//! [`Spool`]: alerts that cannot wait for the store (it is the store that is down), kept as files in the
//! instance's journal directory and delivered from there.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Alert;
use crate::error::{Error, Result};

/// One spooled alert and the endpoints that have it already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spooled {
    /// The alert.
    pub alert: Alert,
    /// Endpoints that answered 2xx.
    #[serde(default)]
    pub delivered_to: Vec<String>,
    /// Attempts made (passes that tried at least one endpoint).
    #[serde(default)]
    pub attempts: u32,
}

/// A directory of spooled alerts, one file each (`<alert id>.json`, written atomically, mode 0600). One writer:
/// the instance that owns the journal directory.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// use keymeter::alerts::{Alert, Spool};
/// let spool = Spool::open(dir.path().join("alerts"))?;
/// let alert = Alert::dependency("store", false, "i-1", Some("connection refused"), keymeter::Utc::now());
/// spool.put(&alert)?;
/// spool.put(&alert)?; // the same id: one file
/// assert_eq!(spool.entries()?.len(), 1);
/// # Ok::<(), keymeter::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Config(format!("alert spool {}: {e}", path.display()))
}

impl Spool {
    /// The spool in `dir`, created (mode 0700) when missing.
    ///
    /// # Errors
    /// [`Error::Config`] when the directory cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir).map_err(|e| io(&dir, e))?;
        Ok(Spool { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        // Alert ids are `alr_` and hex; anything else is kept out of the path.
        let safe: String = id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        self.dir.join(format!("{safe}.json"))
    }

    /// Keeps `alert` (again: the same id replaces its file, keeping who has it).
    ///
    /// # Errors
    /// [`Error::Config`] for an I/O failure.
    pub fn put(&self, alert: &Alert) -> Result<()> {
        let path = self.path(&alert.id);
        if path.exists() {
            return Ok(());
        }
        self.write(&Spooled {
            alert: alert.clone(),
            delivered_to: Vec::new(),
            attempts: 0,
        })
    }

    /// Writes an entry's progress.
    ///
    /// # Errors
    /// [`Error::Config`] for an I/O failure.
    pub fn write(&self, entry: &Spooled) -> Result<()> {
        let path = self.path(&entry.alert.id);
        let bytes = serde_json::to_vec(entry).map_err(|e| Error::Internal(e.to_string()))?;
        crate::file::write_atomic(&path, &bytes).map_err(|e| io(&path, e))
    }

    /// Every spooled alert, oldest first. A file that does not parse (a crash cannot tear one: writes are atomic,
    /// so it was not written by keymeter) is logged and skipped.
    ///
    /// # Errors
    /// [`Error::Config`] when the directory cannot be read.
    pub fn entries(&self) -> Result<Vec<Spooled>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| io(&self.dir, e))? {
            let path = entry.map_err(|e| io(&self.dir, e))?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Spooled>(&b).ok())
            {
                Some(s) => out.push(s),
                None => {
                    tracing::warn!(path = %path.display(), "skipping an alert spool file that does not parse")
                }
            }
        }
        out.sort_by_key(|s| s.alert.created_at);
        Ok(out)
    }

    /// Forgets a delivered (or abandoned) alert.
    ///
    /// # Errors
    /// [`Error::Config`] for an I/O failure other than the file being gone.
    pub fn remove(&self, id: &str) -> Result<()> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path, e)),
            _ => Ok(()),
        }
    }
}
