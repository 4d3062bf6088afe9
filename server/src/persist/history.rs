//! History over the retained journal: the picture as it was at an instant,
//! and the changes between two instants with the feature states they left.
//!
//! This is the API for after-action review: `GET …/items?datetime=T` uses
//! [`picture_at`], and a WebSocket replay can stream [`changes_between`]
//! (every change, in seq order, exactly as it was journaled). Both read the
//! files only, never the live store, and work while the server is writing.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use beeld_layers::{ChangeCause, Seq, StoreConfig, Timestamp};

use super::codec::{Change, Record};
use super::journal::{ScanEnd, list_segments, scan_segment};
use super::recovery::{Rebuilt, Until, rebuild};
use super::snapshot;
use super::{Error, Layout};

/// One change from the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryChange {
    /// When the store applied it (the batch's `received_at`, or the expiry time).
    pub at: Timestamp,
    /// Feed write or expiry.
    pub cause: ChangeCause,
    /// What changed: the full feature after an upsert, or the removed id.
    pub change: Change,
}

/// The earliest instant history can show: the base snapshot's time, or the
/// first journaled change when the journal still starts at seq 1.
pub fn earliest(layout: &Layout) -> Result<Option<Timestamp>, Error> {
    if let Some(first) = snapshot::list(&layout.snapshots())?.first() {
        return Ok(Some(first.at));
    }
    let mut first_at = None;
    if let Some((_, path)) = list_segments(&layout.journal())?.first() {
        scan_file(path, true, |record, _| {
            first_at = Some(record.at());
            Ok(false)
        })?;
    }
    Ok(first_at)
}

/// The feed-written picture as it was at `at` (regions and municipalities
/// are not part of history: they are reference data).
pub fn picture_at(
    layout: &Layout,
    store_config: StoreConfig,
    at: Timestamp,
) -> Result<Rebuilt, Error> {
    rebuild(layout, store_config, Until::Time(at), false)
}

/// Calls `each` for every change made after `from` and at or before `to`,
/// in seq order, until it returns `false`. Starts reading at the newest
/// snapshot before `from`, so a late window does not read the whole journal.
pub fn changes_between(
    layout: &Layout,
    from: Timestamp,
    to: Timestamp,
    mut each: impl FnMut(HistoryChange) -> bool,
) -> Result<(), Error> {
    let start_seq = snapshot::list(&layout.snapshots())?
        .into_iter()
        .rev()
        .find(|m| m.at <= from)
        .map_or(Seq(0), |m| m.seq);
    let segments = list_segments(&layout.journal())?;
    let n = segments.len();
    for (index, (_, path)) in segments.iter().enumerate() {
        if let Some((next_first, _)) = segments.get(index + 1)
            && next_first.0 <= start_seq.0 + 1
        {
            continue;
        }
        let mut done = false;
        scan_file(path, index + 1 == n, |record, _| {
            let at = record.at();
            if at > to {
                done = true;
                return Ok(false);
            }
            if at <= from {
                return Ok(true);
            }
            if let Record::Changes { cause, changes, .. } = record {
                for change in changes {
                    if !each(HistoryChange {
                        at,
                        cause: cause.clone(),
                        change,
                    }) {
                        done = true;
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        })?;
        if done {
            break;
        }
    }
    Ok(())
}

fn scan_file(
    path: &Path,
    last: bool,
    each: impl FnMut(Record, u64) -> Result<bool, Error>,
) -> Result<ScanEnd, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    scan_segment(path, &bytes, last, each)
}

/// How far in the past an instant must be before its picture is cached: a
/// write received just before `at` may still be on its way into the journal.
const SETTLED_MS: i64 = 10_000;

/// The last picture rebuilt for an instant, so that paging through one
/// `datetime` (a request per page) rebuilds it once.
#[derive(Debug, Default)]
pub struct Cache {
    /// `std::sync::Mutex`: held only to look up or swap an `Arc`, never while
    /// rebuilding. One entry: a reviewer looks at one instant at a time, and
    /// each entry is a whole picture in memory.
    last: Mutex<Option<(Timestamp, Arc<Rebuilt>)>>,
}

impl Cache {
    /// [`picture_at`], from the cache when the same instant was asked last.
    pub fn picture_at(
        &self,
        layout: &Layout,
        store_config: StoreConfig,
        at: Timestamp,
    ) -> Result<Arc<Rebuilt>, Error> {
        if let Some((cached_at, rebuilt)) =
            &*self.last.lock().unwrap_or_else(PoisonError::into_inner)
            && *cached_at == at
        {
            return Ok(Arc::clone(rebuilt));
        }
        let rebuilt = Arc::new(picture_at(layout, store_config, at)?);
        if at.0 < crate::state::now().0.saturating_sub(SETTLED_MS) {
            *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((at, Arc::clone(&rebuilt)));
        }
        Ok(rebuilt)
    }
}
