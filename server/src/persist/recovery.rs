//! Rebuilding the picture from disk: the newest usable snapshot, then every
//! journal record after it, in seq order.
//!
//! Used at start (where a torn journal tail is truncated), by the snapshot
//! thread and by history queries (both read-only, and able to stop at a seq
//! or an instant). Seqs must follow on without gaps from the snapshot
//! through every record; a gap or a corrupt group in the middle is an error
//! naming the file and offset, never silently skipped.

use std::time::{Duration, Instant};

use beeld_layers::{Seq, Store, StoreConfig, Timestamp};

use super::codec::{Change, Record};
use super::journal::{ScanEnd, Tail, list_segments, scan_segment};
use super::snapshot;
use super::{Error, Layout};

/// Where to stop replaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Everything there is.
    End,
    /// The last record whose changes are all at or before this seq.
    Seq(Seq),
    /// The last record made at or before this instant.
    Time(Timestamp),
}

/// The rebuilt picture.
#[derive(Debug)]
pub struct Rebuilt {
    /// The store (feed-written collections only).
    pub store: Store,
    /// The seq of the last change replayed.
    pub seq: Seq,
    /// When the last replayed record was made.
    pub at: Timestamp,
    /// Journal records replayed (after the snapshot).
    pub n_records: u64,
    /// Where the writer continues (meaningful when repairing).
    pub tail: Tail,
    /// The snapshot used, if any.
    pub snapshot: Option<snapshot::Meta>,
}

/// Applies one journal record to `store`.
pub fn apply(store: &mut Store, record: Record, after: Seq) {
    match record {
        Record::Changes { at, cause, changes } => {
            for change in changes {
                if change.seq() <= after {
                    continue;
                }
                match change {
                    Change::Upsert(collection, feature) => {
                        store.restore(collection, feature, Some(cause.clone()));
                    }
                    Change::Delete(collection, id, seq) => {
                        store.restore_delete(collection, &id, seq, cause.clone(), at);
                    }
                    Change::Superseded(_, _, seq) => store.advance_seq(seq),
                }
            }
        }
        Record::Reserved { last, .. } => store.advance_seq(last),
    }
}

/// Rebuilds the picture from the snapshot and journal in `layout`.
///
/// With `repair`, a torn tail of the newest segment is truncated (with a
/// warning), and the result says where the writer continues. Without it,
/// the newest segment may be growing: its incomplete end is simply where
/// reading stops.
pub fn rebuild(
    layout: &Layout,
    store_config: StoreConfig,
    until: Until,
    repair: bool,
) -> Result<Rebuilt, Error> {
    let snapshots = snapshot::list(&layout.snapshots())?;
    let usable = snapshots.into_iter().rev().find(|m| match until {
        Until::End => true,
        Until::Seq(seq) => m.seq <= seq,
        Until::Time(t) => m.at <= t,
    });
    let mut store = Store::new(store_config);
    let (base, mut at) = match &usable {
        Some(meta) => {
            snapshot::load(&meta.path, &mut store)?;
            (meta.seq, meta.at)
        }
        None => (Seq(0), Timestamp::MIN),
    };
    let segments = list_segments(&layout.journal())?;
    let total_bytes: u64 = segments
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let mut last_seq = base;
    let mut n_records = 0u64;
    let mut tail_segment = None;
    let mut stopped = false;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut bytes_done = 0u64;
    let n_segments = segments.len();
    for (index, (first, path)) in segments.iter().enumerate() {
        let is_last = index + 1 == n_segments;
        // Skip segments wholly covered by the snapshot.
        if let Some((next_first, _)) = segments.get(index + 1)
            && next_first.0 <= base.0 + 1
        {
            continue;
        }
        if stopped {
            break;
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let end = scan_segment(path, &bytes, is_last, |record, offset| {
            let Some((first_seq, record_last)) = record.seqs() else {
                return Ok(true);
            };
            if record_last <= base {
                return Ok(true);
            }
            if first_seq != last_seq.next() && first_seq > base {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    offset,
                    reason: format!(
                        "seq gap: expected {} next, found {first_seq} (a journal segment is missing or damaged)",
                        last_seq.next()
                    ),
                });
            }
            let stop = match until {
                Until::End => false,
                Until::Seq(seq) => record_last > seq,
                Until::Time(t) => record.at() > t,
            };
            if stop {
                stopped = true;
                return Ok(false);
            }
            at = at.max(record.at());
            apply(&mut store, record, base);
            last_seq = record_last;
            n_records += 1;
            if last_progress.elapsed() > Duration::from_secs(2) {
                last_progress = Instant::now();
                tracing::info!(
                    seq = last_seq.0,
                    n_records,
                    percent = (bytes_done + offset) * 100 / total_bytes.max(1),
                    "replaying journal"
                );
            }
            Ok(true)
        })?;
        bytes_done += bytes.len() as u64;
        if let ScanEnd::Torn { offset } = end {
            if repair {
                tracing::warn!(
                    segment = %path.display(),
                    offset,
                    dropped_bytes = bytes.len() as u64 - offset,
                    "torn journal tail (a write interrupted by a crash; never acknowledged); truncating"
                );
            }
            tail_segment = Some((path.clone(), offset));
        } else if is_last {
            tail_segment = Some((path.clone(), bytes.len() as u64));
        }
        let _ = first;
    }
    if repair && let Some((path, len)) = &tail_segment {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        file.set_len(*len).map_err(|e| Error::io(path, e))?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
    }
    if n_records > 0 && started.elapsed() > Duration::from_secs(1) {
        tracing::info!(
            n_records,
            seq = last_seq.0,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "journal replayed"
        );
    }
    Ok(Rebuilt {
        store,
        seq: last_seq,
        at,
        n_records,
        tail: Tail {
            segment: tail_segment,
            seq: last_seq,
        },
        snapshot: usable,
    })
}
