//! Snapshots: the feed-written picture at one seq, so that start-up replays
//! only the journal after it, and so that old journal segments can go.
//!
//! A snapshot is built *off the live store*: a background thread loads the
//! previous snapshot, replays the closed journal segments after it into a
//! private [`Store`], and writes the result. The live store's lock is never
//! taken, so snapshots cost ingest nothing but CPU.
//!
//! File: `DATA_DIR/snapshots/{seq:020}.snap`: [`SNAPSHOT_MAGIC`], a frame
//! with `(seq, at, n_features)`, then frames of up to [`CHUNK`] features.
//! Written to a temporary name, synced, renamed and the directory synced, so
//! a snapshot is either complete or absent. Reference data (regions,
//! municipalities) is not included: it is reloaded from its files.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use beeld_layers::{Collection, Seq, Store, StoreConfig, Timestamp};

use super::codec::{self, Framed};
use super::journal::{list_segments, sync_dir};
use super::recovery::{Until, rebuild};
use super::{Error, Layout};

/// First bytes of every snapshot: name and format version 1.
pub const SNAPSHOT_MAGIC: &[u8; 12] = b"BEELDSNP\x01\x00\x00\x00";

/// Features per frame: large enough that framing costs nothing, small
/// enough that one frame stays a few hundred kilobytes.
pub const CHUNK: usize = 2048;

/// A snapshot on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Every change up to this seq is in it.
    pub seq: Seq,
    /// When the last of those changes was made.
    pub at: Timestamp,
    /// Features in it.
    pub n_features: u64,
    /// The file.
    pub path: PathBuf,
}

/// The snapshots in `dir`, oldest first, with their headers.
pub fn list(dir: &Path) -> Result<Vec<Meta>, Error> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("snap") {
            out.push(read_meta(&path)?);
        }
    }
    out.sort_by_key(|m| m.seq);
    Ok(out)
}

fn read_meta(path: &Path) -> Result<Meta, Error> {
    use std::io::Read as _;
    let mut head = [0u8; SNAPSHOT_MAGIC.len() + codec::FRAME_HEADER + 24];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| Error::io(path, e))?;
    parse_meta(path, &head).map(|(meta, _)| meta)
}

fn parse_meta(path: &Path, bytes: &[u8]) -> Result<(Meta, usize), Error> {
    let corrupt = |reason: &str| Error::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason: reason.to_owned(),
    };
    if bytes.get(..SNAPSHOT_MAGIC.len()) != Some(SNAPSHOT_MAGIC) {
        return Err(corrupt("not a beeld snapshot (bad header)"));
    }
    let Framed::Ok(meta, len) = codec::unframe(&bytes[SNAPSHOT_MAGIC.len()..]) else {
        return Err(corrupt("bad snapshot header frame"));
    };
    let number = |i: usize| {
        meta.get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| corrupt("short snapshot header"))
    };
    Ok((
        Meta {
            seq: Seq(number(0)?),
            at: Timestamp(i64::from_le_bytes(number(1)?.to_le_bytes())),
            n_features: number(2)?,
            path: path.to_path_buf(),
        },
        SNAPSHOT_MAGIC.len() + len,
    ))
}

/// Loads a snapshot into `store` (state only: no change records).
pub fn load(path: &Path, store: &mut Store) -> Result<Meta, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (meta, mut offset) = parse_meta(path, &bytes)?;
    let mut n = 0u64;
    while offset < bytes.len() {
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let Framed::Ok(payload, len) = codec::unframe(&bytes[offset..]) else {
            return Err(corrupt("checksum mismatch in snapshot".to_owned()));
        };
        for (collection, feature) in
            codec::decode_entries(payload).map_err(|e| corrupt(e.to_string()))?
        {
            store.restore(collection, feature, None);
            n += 1;
        }
        offset += len;
    }
    if n != meta.n_features {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason: format!(
                "snapshot holds {n} features, its header says {}",
                meta.n_features
            ),
        });
    }
    store.advance_seq(meta.seq);
    Ok(meta)
}

/// Writes the feed-written features of `store` as the snapshot at `seq`.
pub fn write(dir: &Path, store: &Store, seq: Seq, at: Timestamp) -> Result<Meta, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    let collections = Collection::ALL.into_iter().filter(|c| c.is_feed_writable());
    let n_features: usize = collections.clone().map(|c| store.len(c)).sum();
    let mut out = Vec::with_capacity(n_features * 160 + 64);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    codec::frame(&mut out, |b| {
        codec::put_u64(b, seq.0);
        codec::put_u64(b, u64::from_le_bytes(at.0.to_le_bytes()));
        codec::put_u64(b, n_features as u64);
    });
    for collection in collections {
        let features: Vec<_> = store.iter(collection).collect();
        for chunk in features.chunks(CHUNK) {
            codec::frame(&mut out, |b| {
                for feature in chunk {
                    codec::encode_entry(b, collection, feature);
                }
            });
        }
    }
    let path = dir.join(format!("{:020}.snap", seq.0));
    let tmp = path.with_extension("snap.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(&out).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    Ok(Meta {
        seq,
        at,
        n_features: n_features as u64,
        path,
    })
}

/// The snapshot thread: owned by the server's persistence; it ends when the
/// journal writer (the only sender) is gone.
///
/// For every closed segment it builds a snapshot at the segment's last seq
/// and then applies retention: snapshots and segments older than
/// `retention` go, except the newest snapshot before the horizon (the base
/// of the retained history) and segments not yet copied to PostGIS
/// (`pinned`: the last seq the PostGIS writer has stored, or `u64::MAX`).
pub fn spawn(
    layout: Layout,
    store_config: StoreConfig,
    retention: Duration,
    closed: std::sync::mpsc::Receiver<Seq>,
    pinned: Arc<AtomicU64>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("snapshotter".to_owned())
        .spawn(move || {
            while let Ok(mut upto) = closed.recv() {
                // Several segments may have closed meanwhile: one snapshot covers them.
                while let Ok(later) = closed.try_recv() {
                    upto = later;
                }
                let started = std::time::Instant::now();
                match snapshot_at(&layout, store_config.clone(), upto) {
                    Ok(meta) => tracing::info!(
                        seq = meta.seq.0,
                        n_features = meta.n_features,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "snapshot written"
                    ),
                    Err(e) => tracing::error!(error = %e, "snapshot failed; the journal keeps growing until one succeeds"),
                }
                let horizon = Timestamp(crate::state::now().0.saturating_sub(
                    i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
                ));
                if let Err(e) = apply_retention(&layout, horizon, Seq(pinned.load(Ordering::Acquire))) {
                    tracing::warn!(error = %e, "journal retention failed");
                }
            }
        })
}

fn snapshot_at(layout: &Layout, store_config: StoreConfig, upto: Seq) -> Result<Meta, Error> {
    let rebuilt = rebuild(layout, store_config, Until::Seq(upto), false)?;
    write(&layout.snapshots(), &rebuilt.store, rebuilt.seq, rebuilt.at)
}

/// Deletes snapshots and closed segments that lie wholly before `horizon`
/// and are covered by a kept snapshot and by `pinned`.
pub fn apply_retention(layout: &Layout, horizon: Timestamp, pinned: Seq) -> Result<(), Error> {
    let snapshots = list(&layout.snapshots())?;
    // The base: the newest snapshot made before the horizon.
    let Some(base_index) = snapshots.iter().rposition(|m| m.at < horizon) else {
        return Ok(());
    };
    let base = &snapshots[base_index];
    for old in &snapshots[..base_index] {
        std::fs::remove_file(&old.path).map_err(|e| Error::io(&old.path, e))?;
    }
    let segments = list_segments(&layout.journal())?;
    for pair in segments.windows(2) {
        let (_, path) = &pair[0];
        let last_seq = Seq(pair[1].0.0.saturating_sub(1));
        if last_seq <= base.seq && last_seq <= pinned {
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
            tracing::info!(segment = %path.display(), "journal segment compacted away");
        }
    }
    Ok(())
}
