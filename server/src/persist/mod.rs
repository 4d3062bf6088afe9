//! Durable state: an embedded journal with snapshots (always), and PostGIS
//! (when `--database-url` is given).
//!
//! # Layout
//!
//! * [`codec`]: the binary record and feature format, and checksummed frames.
//! * [`journal`]: segment files and the group-commit writer thread; the
//!   durability policy is documented there.
//! * [`snapshot`]: compaction of closed segments into snapshots, retention.
//! * [`recovery`]: snapshot + journal → [`Store`], torn-tail repair.
//! * [`history`]: the picture at an instant, and the changes between two.
//! * [`postgis`]: migrations, loading, and the write-behind copier.
//! * [`rules`]: the coverage rules, one small file.
//!
//! The invariant that everything here serves: **an acknowledged write is
//! durable**. Ingest acknowledges only after the journal says the record is
//! on disk (see [`journal`]); PostGIS is fed from the journal, never from
//! memory, so it can lag or be down without losing anything.

pub mod codec;
pub mod history;
pub mod journal;
pub mod postgis;
pub mod recovery;
pub mod rules;
pub mod snapshot;

use std::path::{Path, PathBuf};

pub use journal::{Journal, JournalFailed, SyncPolicy};

/// Errors of the durable store.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, written or synced.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A journal segment or snapshot is damaged where a crash cannot explain it.
    #[error(
        "{path} is corrupt at byte offset {offset}: {reason}; refusing to start rather than drop acknowledged data (restore the file from a backup, or move it away to accept the loss)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad group or record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A PostGIS operation failed.
    #[error(transparent)]
    Postgis(#[from] postgis::Error),
    /// Another beeld process uses the data directory.
    #[error("data directory {0} is in use by another beeld process")]
    Locked(PathBuf),
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn is_epoch(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 64 bits from std's per-process random hash keys (seeded by the OS), the
/// clock and the process id, as 16 hex digits: epochs and server runs.
pub(crate) fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// Where the files live under the data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `--data-dir`.
    pub data_dir: PathBuf,
}

impl Layout {
    /// A layout under `data_dir`.
    pub fn new(data_dir: &Path) -> Layout {
        Layout {
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// `DATA_DIR/journal`.
    pub fn journal(&self) -> PathBuf {
        self.data_dir.join("journal")
    }

    /// `DATA_DIR/snapshots`.
    pub fn snapshots(&self) -> PathBuf {
        self.data_dir.join("snapshots")
    }

    /// `DATA_DIR/EPOCH`: names the history the seqs of this data directory
    /// belong to. A new one is made whenever the directory holds no journal
    /// and no snapshot (a fresh directory, or one whose history was
    /// deleted), because seqs then start over and a client's `since` from
    /// before would point into a different history. Call with the lock held.
    pub fn epoch(&self) -> Result<String, Error> {
        let path = self.data_dir.join("EPOCH");
        let has_files = |dir: PathBuf| {
            std::fs::read_dir(dir).is_ok_and(|mut entries| {
                entries.any(|e| e.is_ok_and(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
            })
        };
        let history = has_files(self.journal()) || has_files(self.snapshots());
        if history
            && let Ok(text) = std::fs::read_to_string(&path)
            && is_epoch(text.trim())
        {
            return Ok(text.trim().to_owned());
        }
        let epoch = random_id();
        let tmp = self.data_dir.join("EPOCH.tmp");
        std::fs::write(&tmp, format!("{epoch}\n")).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(epoch)
    }

    /// Takes the data directory's lock file for this process. The returned
    /// file holds the lock until it is dropped (or the process dies), so a
    /// second server cannot interleave its writes with ours.
    pub fn lock(&self) -> Result<std::fs::File, Error> {
        let path = self.data_dir.join("LOCK");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(self.data_dir.clone())),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}
