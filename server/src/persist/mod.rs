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
