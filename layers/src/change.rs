//! Change records and the in-memory log of recent changes.
//!
//! Every accepted write, and every expiry, becomes one [`ChangeRecord`] with
//! its own [`Seq`]. Live diffs and persistence consume the log; it is bounded,
//! and a consumer that falls behind its start must resynchronise from the
//! store rather than miss changes silently.

use std::collections::VecDeque;
use std::fmt;

use geo::Rect;

use crate::collection::Collection;
use crate::feature::{FeatureId, FeedName};
use crate::time::Timestamp;

/// The global change sequence number: strictly increasing over the whole
/// store, one per change. `Seq(0)` means "before any change".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// The next sequence number.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What happened to the feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// Created or replaced.
    Upsert,
    /// Removed.
    Delete,
}

/// Why it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeCause {
    /// A feed wrote it (or boundaries were loaded, with the loader's name).
    Write {
        /// The feed.
        feed: FeedName,
    },
    /// Its `expires` time, or the collection's time-to-live, passed.
    Expired,
}

/// One change: `(seq, collection, id, upsert | delete)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    /// Sequence number of this change.
    pub seq: Seq,
    /// The collection.
    pub collection: Collection,
    /// The feature.
    pub id: FeatureId,
    /// Upsert or delete.
    pub op: ChangeOp,
    /// Feed write or expiry.
    pub cause: ChangeCause,
    /// When the store applied it.
    pub at: Timestamp,
    /// The bounding box of the feature before and after the change, joined:
    /// every viewport that could have seen either state intersects it. Live
    /// diffs route changes to subscriptions by it.
    pub touched: Rect<f64>,
}

/// The smallest box holding both.
pub fn union(a: Rect<f64>, b: Rect<f64>) -> Rect<f64> {
    Rect::new(
        geo::coord! { x: a.min().x.min(b.min().x), y: a.min().y.min(b.min().y) },
        geo::coord! { x: a.max().x.max(b.max().x), y: a.max().y.max(b.max().y) },
    )
}

/// The most recent changes, oldest first, bounded by a capacity.
///
/// Invariant: the records are exactly the changes `base + 1 ..= last`, with
/// no gap. A consumer at a seq below `base` has missed changes the log never
/// held (dropped when full, or before a restart that loaded a snapshot) and
/// must resynchronise; an empty log says so too, rather than "nothing new".
#[derive(Debug, Clone)]
pub struct ChangeLog {
    records: VecDeque<ChangeRecord>,
    capacity: usize,
    /// The seq just before the oldest change the log can answer for.
    base: Seq,
}

impl ChangeLog {
    /// An empty log keeping at most `capacity` records (at least one).
    pub fn new(capacity: usize) -> Self {
        ChangeLog {
            records: VecDeque::new(),
            capacity: capacity.max(1),
            base: Seq(0),
        }
    }

    /// Forgets every record: from now on the log answers for changes after
    /// `base` only.
    pub fn reset(&mut self, base: Seq) {
        self.records.clear();
        self.base = base;
    }

    /// Appends a record, dropping the oldest when full. A record that does
    /// not follow the last one (seqs skipped) restarts the log at it.
    pub fn push(&mut self, record: ChangeRecord) {
        let last = self.records.back().map_or(self.base, |r| r.seq);
        if record.seq.0 != last.0 + 1 {
            self.reset(Seq(record.seq.0.saturating_sub(1)));
        }
        if self.records.len() == self.capacity
            && let Some(dropped) = self.records.pop_front()
        {
            self.base = dropped.seq;
        }
        self.records.push_back(record);
    }

    /// Every record after `seq`, or `None` when some of them are no longer
    /// held (the consumer must then resynchronise from the store).
    pub fn since(&self, seq: Seq) -> Option<impl Iterator<Item = &ChangeRecord>> {
        if seq < self.base {
            return None;
        }
        let first = self.records.front().map_or(Seq(u64::MAX), |r| r.seq);
        let last = self.records.back().map_or(self.base, |r| r.seq);
        if seq >= last {
            return Some(self.records.range(self.records.len()..));
        }
        if seq.0 + 1 < first.0 {
            return None;
        }
        // Records are contiguous in seq, so the position is arithmetic.
        let start = usize::try_from(seq.0 + 1 - first.0).ok()?;
        Some(self.records.range(start..))
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The oldest record still held.
    pub fn oldest(&self) -> Option<&ChangeRecord> {
        self.records.front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> ChangeRecord {
        ChangeRecord {
            seq: Seq(seq),
            collection: Collection::Units,
            id: "u".into(),
            op: ChangeOp::Upsert,
            cause: ChangeCause::Expired,
            at: Timestamp(0),
            touched: Rect::new(
                geo::coord! { x: 0.0, y: 0.0 },
                geo::coord! { x: 0.0, y: 0.0 },
            ),
        }
    }

    #[test]
    fn since_returns_exactly_the_missed_records_or_none() {
        let mut log = ChangeLog::new(3);
        for seq in 1..=5 {
            log.push(record(seq));
        }
        let seqs = |s| {
            log.since(Seq(s))
                .map(|it| it.map(|r| r.seq.0).collect::<Vec<_>>())
        };
        assert_eq!(seqs(2), Some(vec![3, 4, 5]));
        assert_eq!(seqs(4), Some(vec![5]));
        assert_eq!(seqs(5), Some(vec![]));
        assert_eq!(seqs(9), Some(vec![]));
        assert_eq!(seqs(1), None);
    }

    #[test]
    fn an_empty_log_after_a_restart_does_not_claim_nothing_changed() {
        // A store loaded from a snapshot at seq 100 holds no records: a
        // consumer at 40 missed 60 changes and must hear so.
        let mut log = ChangeLog::new(8);
        log.reset(Seq(100));
        let seqs = |log: &ChangeLog, s| {
            log.since(Seq(s))
                .map(|it| it.map(|r| r.seq.0).collect::<Vec<_>>())
        };
        assert_eq!(seqs(&log, 40), None);
        assert_eq!(seqs(&log, 0), None);
        assert_eq!(seqs(&log, 100), Some(vec![]));
        log.push(record(101));
        assert_eq!(seqs(&log, 100), Some(vec![101]));
        assert_eq!(seqs(&log, 99), None);
        // Skipped seqs restart the log at the new record.
        log.push(record(105));
        assert_eq!(seqs(&log, 101), None);
        assert_eq!(seqs(&log, 104), Some(vec![105]));
    }

    #[test]
    fn a_full_log_that_dropped_records_stays_exact() {
        let mut log = ChangeLog::new(2);
        for seq in 1..=4 {
            log.push(record(seq));
        }
        // Holds 3 and 4: a consumer at 2 can continue, one at 1 cannot.
        assert!(log.since(Seq(2)).is_some());
        assert!(log.since(Seq(1)).is_none());
    }
}
