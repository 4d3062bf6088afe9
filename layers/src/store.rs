//! The store: every feature of every collection, with an R-tree and an id
//! map per collection, the expiry queue and the change log.
//!
//! # Invariants
//!
//! * A [`Batch`] is applied entirely or not at all: [`Store::apply`] checks
//!   every operation first and only then mutates, and no step after the
//!   checks can fail.
//! * Every change gets the next [`Seq`] and one [`ChangeRecord`]; the seq of
//!   a feature is the seq of its last change.
//! * For every collection, the id map, the slot table and the R-tree hold
//!   exactly the same features (checked by the property tests below).

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::Arc;

use geo::Rect;
use hashbrown::{DefaultHashBuilder, HashTable};

use crate::change::{ChangeCause, ChangeLog, ChangeOp, ChangeRecord, Seq, union};
use crate::collection::{Collection, GeometryRule};
use crate::feature::{Feature, FeatureId, FeedName};
use crate::index::SpatialIndex;
use crate::prepare::Draft;
use crate::query::{Page, Query};
use crate::relate::Relations;
use crate::time::Timestamp;

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Default time-to-live per collection (index [`Collection::index`]), in
    /// milliseconds, for features written without `expires`.
    pub ttl_ms: [Option<i64>; 5],
    /// How many recent changes the log keeps.
    pub change_log_capacity: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            ttl_ms: [None; 5],
            change_log_capacity: 262_144,
        }
    }
}

/// One operation of a batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create or replace a feature.
    Upsert {
        /// Where.
        collection: Collection,
        /// What.
        draft: Draft,
    },
    /// Remove a feature.
    Delete {
        /// Where.
        collection: Collection,
        /// Which.
        id: FeatureId,
    },
}

/// Operations from one feed, applied atomically.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Who writes.
    pub feed: FeedName,
    /// When beeld received it.
    pub received_at: Timestamp,
    /// What to do, in order.
    pub ops: Vec<Op>,
}

/// Why a batch was refused; nothing was changed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The collection is reference data that feeds cannot write.
    #[error("collection '{collection}' is read-only")]
    ReadOnly {
        /// The collection.
        collection: Collection,
        /// Position of the operation in the batch.
        index: usize,
    },
    /// Deleting a feature that does not exist.
    #[error("no feature '{id}' in collection '{collection}'")]
    NotFound {
        /// The collection.
        collection: Collection,
        /// The id.
        id: FeatureId,
        /// Position of the operation in the batch.
        index: usize,
    },
}

/// What an applied batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The changes, in order (their seqs are consecutive).
    pub changes: Vec<(Collection, FeatureId, ChangeOp, Seq)>,
    /// The store's seq after the batch.
    pub seq: Seq,
}

fn empty_rect() -> Rect<f64> {
    Rect::new(
        geo::coord! { x: 0.0, y: 0.0 },
        geo::coord! { x: 0.0, y: 0.0 },
    )
}

/// Slots per slab chunk: growth allocates one chunk, never copies features,
/// and leaves at most one chunk of slack.
const CHUNK: usize = 1024;

/// One collection's features and indexes.
#[derive(Debug, Clone)]
struct Layer {
    /// Features by slot, in fixed-size chunks; `None` slots are on `free`.
    /// Slots keep index entries small (a `u32`).
    chunks: Vec<Box<[Option<Feature>]>>,
    /// Slots ever used; slots at or above it are untouched.
    used: u32,
    /// Reusable slots.
    free: Vec<u32>,
    /// Id → slot. A table of bare slot numbers hashed by the feature's id
    /// (4 bytes per feature, instead of a second copy of the id as a key).
    ids: HashTable<u32>,
    /// Hashes ids for `ids`.
    hasher: DefaultHashBuilder,
    /// Where the features are.
    index: SpatialIndex,
}

impl Layer {
    fn new(collection: Collection) -> Layer {
        Layer {
            chunks: Vec::new(),
            used: 0,
            free: Vec::new(),
            ids: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            index: match collection.geometry_rule() {
                GeometryRule::Point => SpatialIndex::for_points(),
                GeometryRule::Area => SpatialIndex::for_areas(),
            },
        }
    }

    fn slot_mut(&mut self, slot: u32) -> &mut Option<Feature> {
        let slot = slot as usize;
        &mut self.chunks[slot / CHUNK][slot % CHUNK]
    }

    fn feature(&self, slot: u32) -> &Feature {
        let slot = slot as usize;
        // Slots in `ids` and the index always hold a feature (invariant).
        self.chunks[slot / CHUNK][slot % CHUNK]
            .as_ref()
            .expect("indexed slot holds a feature")
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn slot_of(&self, id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        self.ids
            .find(hash, |slot| &*self.feature(*slot).id == id)
            .copied()
    }

    fn get(&self, id: &str) -> Option<&Feature> {
        self.slot_of(id).map(|slot| self.feature(slot))
    }

    fn allocate(&mut self) -> u32 {
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        if self.used as usize == self.chunks.len() * CHUNK {
            self.chunks.push((0..CHUNK).map(|_| None).collect());
        }
        self.used += 1;
        self.used - 1
    }

    /// Inserts or replaces; returns the replaced feature.
    fn upsert(&mut self, feature: Feature) -> Option<Feature> {
        let bbox = feature.shape.bbox();
        if let Some(slot) = self.slot_of(&feature.id) {
            let old = self.slot_mut(slot).replace(feature);
            if let Some(old_bbox) = old.as_ref().map(|f| f.shape.bbox()) {
                self.index.update(slot, &old_bbox, &bbox);
            }
            return old;
        }
        let hash = self.hasher.hash_one(&*feature.id);
        let slot = self.allocate();
        *self.slot_mut(slot) = Some(feature);
        let Layer {
            ids,
            chunks,
            hasher,
            ..
        } = self;
        ids.insert_unique(hash, slot, |s| {
            let s = *s as usize;
            let id = chunks[s / CHUNK][s % CHUNK].as_ref().map_or("", |f| &*f.id);
            hasher.hash_one(id)
        });
        self.index.insert(slot, &bbox);
        None
    }

    fn remove(&mut self, id: &str) -> Option<Feature> {
        let hash = self.hasher.hash_one(id);
        let Layer { ids, chunks, .. } = &mut *self;
        let entry = ids
            .find_entry(hash, |s| {
                let s = *s as usize;
                chunks[s / CHUNK][s % CHUNK]
                    .as_ref()
                    .is_some_and(|f| &*f.id == id)
            })
            .ok()?;
        let (slot, _) = entry.remove();
        let feature = self.slot_mut(slot).take()?;
        self.index.remove(slot, &feature.shape.bbox());
        self.free.push(slot);
        Some(feature)
    }

    /// Every feature, in id order.
    fn sorted(&self) -> Vec<&Feature> {
        let mut all: Vec<&Feature> = self.ids.iter().map(|slot| self.feature(*slot)).collect();
        all.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

/// The live picture.
#[derive(Debug, Clone)]
pub struct Store {
    layers: [Layer; 5],
    /// Features with an expiry, in expiry order.
    expiry: BTreeSet<(Timestamp, Collection, FeatureId)>,
    seq: Seq,
    log: ChangeLog,
    config: StoreConfig,
    /// Attribution, units in hazards, counts, rules (issue 4): fed with
    /// every change below, so it is always as current as the layers.
    relations: Relations,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(StoreConfig::default())
    }
}

impl Store {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        Store {
            layers: Collection::ALL.map(Layer::new),
            expiry: BTreeSet::new(),
            seq: Seq(0),
            log: ChangeLog::new(config.change_log_capacity),
            config,
            relations: Relations::default(),
        }
    }

    /// The seq of the last change.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// The recent changes.
    pub fn log(&self) -> &ChangeLog {
        &self.log
    }

    /// Number of features in a collection.
    pub fn len(&self, collection: Collection) -> usize {
        self.layers[collection.index()].len()
    }

    /// Whether the store holds no features at all.
    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(|l| l.len() == 0)
    }

    /// The bounding box of a collection, if it has features.
    pub fn extent(&self, collection: Collection) -> Option<Rect<f64>> {
        let layer = &self.layers[collection.index()];
        let mut boxes = layer
            .ids
            .iter()
            .map(|slot| layer.feature(*slot).shape.bbox());
        let first = boxes.next()?;
        Some(boxes.fold(first, |acc, b| {
            Rect::new(
                geo::coord! { x: acc.min().x.min(b.min().x), y: acc.min().y.min(b.min().y) },
                geo::coord! { x: acc.max().x.max(b.max().x), y: acc.max().y.max(b.max().y) },
            )
        }))
    }

    /// One feature by id.
    pub fn get(&self, collection: Collection, id: &str) -> Option<&Feature> {
        self.layers[collection.index()].get(id)
    }

    /// Every feature of a collection, in id order.
    pub fn iter(&self, collection: Collection) -> impl Iterator<Item = &Feature> {
        self.layers[collection.index()].sorted().into_iter()
    }

    /// Applies a feed's batch atomically. Read-only collections are refused.
    pub fn apply(&mut self, batch: Batch) -> Result<Applied, BatchError> {
        self.check(&batch, true)?;
        Ok(self.apply_checked(batch))
    }

    /// Loads reference data (regions, municipalities) that feeds may not write.
    pub fn load(&mut self, batch: Batch) -> Result<Applied, BatchError> {
        self.check(&batch, false)?;
        let applied = self.apply_checked(batch);
        self.refresh_relations();
        Ok(applied)
    }

    fn check(&self, batch: &Batch, feeds_only: bool) -> Result<(), BatchError> {
        // Which ids exist after the ops so far, for ids the batch touches.
        let mut touched: hashbrown::HashMap<(Collection, &str), bool> =
            hashbrown::HashMap::with_capacity(batch.ops.len());
        for (index, op) in batch.ops.iter().enumerate() {
            let collection = match op {
                Op::Upsert { collection, .. } | Op::Delete { collection, .. } => *collection,
            };
            if feeds_only && !collection.is_feed_writable() {
                return Err(BatchError::ReadOnly { collection, index });
            }
            match op {
                Op::Upsert { draft, .. } => {
                    if let Some(id) = &draft.id {
                        touched.insert((collection, id), true);
                    }
                }
                Op::Delete { id, .. } => {
                    let exists = touched
                        .get(&(collection, &**id))
                        .copied()
                        .unwrap_or_else(|| self.get(collection, id).is_some());
                    if !exists {
                        return Err(BatchError::NotFound {
                            collection,
                            id: Arc::clone(id),
                            index,
                        });
                    }
                    touched.insert((collection, id), false);
                }
            }
        }
        Ok(())
    }

    fn apply_checked(&mut self, batch: Batch) -> Applied {
        let mut changes = Vec::with_capacity(batch.ops.len());
        let cause = ChangeCause::Write {
            feed: Arc::clone(&batch.feed),
        };
        for op in batch.ops {
            self.seq = self.seq.next();
            let seq = self.seq;
            let (collection, id, change_op, touched) = match op {
                Op::Upsert { collection, draft } => {
                    let id = draft
                        .id
                        .unwrap_or_else(|| self.fresh_id(collection, &batch.feed, seq));
                    let expires_at = draft.expires_at.or_else(|| {
                        self.config.ttl_ms[collection.index()]
                            .map(|ttl| batch.received_at.plus_millis(ttl))
                    });
                    let place = self.relations.upsert(
                        collection,
                        &id,
                        &draft.shape,
                        &draft.attrs,
                        seq,
                        batch.received_at,
                    );
                    let feature = Feature {
                        place,
                        id: Arc::clone(&id),
                        shape: draft.shape,
                        properties: draft.properties,
                        attrs: draft.attrs,
                        feed: Arc::clone(&batch.feed),
                        observed_at: draft.observed_at.unwrap_or(batch.received_at),
                        received_at: batch.received_at,
                        expires_at,
                        seq,
                    };
                    let touched = self.put(collection, feature);
                    (collection, id, ChangeOp::Upsert, touched)
                }
                Op::Delete { collection, id } => {
                    self.relations
                        .remove(collection, &id, seq, batch.received_at);
                    // `check` proved the feature exists; the fallback is never used.
                    let touched = self.take(collection, &id).unwrap_or_else(empty_rect);
                    (collection, id, ChangeOp::Delete, touched)
                }
            };
            self.log.push(ChangeRecord {
                seq,
                collection,
                id: Arc::clone(&id),
                op: change_op,
                cause: cause.clone(),
                at: batch.received_at,
                touched,
            });
            changes.push((collection, id, change_op, seq));
        }
        Applied {
            changes,
            seq: self.seq,
        }
    }

    fn fresh_id(&self, collection: Collection, feed: &str, seq: Seq) -> FeatureId {
        let mut candidate = format!("{feed}-{seq}");
        while self.get(collection, &candidate).is_some() {
            candidate.push('+');
        }
        candidate.into()
    }

    /// Puts `feature` into its layer and keeps the expiry queue in step.
    /// Returns the box the change touched: the old and new shapes joined.
    fn put(&mut self, collection: Collection, feature: Feature) -> Rect<f64> {
        let (id, expires_at) = (Arc::clone(&feature.id), feature.expires_at);
        let mut touched = feature.shape.bbox();
        if let Some(old) = self.layers[collection.index()].upsert(feature) {
            touched = union(touched, old.shape.bbox());
            if let Some(t) = old.expires_at {
                self.expiry.remove(&(t, collection, Arc::clone(&id)));
            }
        }
        if let Some(t) = expires_at {
            self.expiry.insert((t, collection, id));
        }
        touched
    }

    /// Takes a feature out of its layer and the expiry queue; returns the
    /// box it occupied, or `None` when it was not there.
    fn take(&mut self, collection: Collection, id: &FeatureId) -> Option<Rect<f64>> {
        let old = self.layers[collection.index()].remove(id)?;
        if let Some(t) = old.expires_at {
            self.expiry.remove(&(t, collection, Arc::clone(id)));
        }
        Some(old.shape.bbox())
    }

    /// Recovery: puts `feature` back exactly as it was recorded (its own seq,
    /// times and expiry), as the change `feature.seq` with `cause`, or as
    /// bare state without a change record when `cause` is `None` (loading a
    /// snapshot). The store's seq becomes at least `feature.seq`. Only for
    /// replaying durable state; feeds go through [`Store::apply`].
    pub fn restore(
        &mut self,
        collection: Collection,
        feature: Feature,
        cause: Option<ChangeCause>,
    ) {
        let (seq, id, at) = (feature.seq, Arc::clone(&feature.id), feature.received_at);
        let touched = self.put(collection, feature);
        match cause {
            Some(cause) => {
                self.restored(seq, collection, id, ChangeOp::Upsert, cause, at, touched);
            }
            None => {
                // State without its change: the log cannot answer for
                // anything up to here, so consumers behind it resync.
                self.seq = self.seq.max(seq);
                self.log.reset(self.seq);
            }
        }
    }

    /// Recovery: removes a feature as the recorded change `seq` (a delete or
    /// an expiry). A missing feature is not an error: the record is the truth.
    pub fn restore_delete(
        &mut self,
        collection: Collection,
        id: &FeatureId,
        seq: Seq,
        cause: ChangeCause,
        at: Timestamp,
    ) {
        let touched = self.take(collection, id).unwrap_or_else(empty_rect);
        self.restored(
            seq,
            collection,
            Arc::clone(id),
            ChangeOp::Delete,
            cause,
            at,
            touched,
        );
    }

    /// Recovery: raises the seq to at least `seq`, for seqs that an earlier
    /// run used for data that is not replayed (reference data is reloaded
    /// from its files instead), so seqs never repeat across restarts.
    /// The change log cannot hold a gap (consumers find records by seq
    /// arithmetic), so skipping seqs empties it: its consumers resync.
    pub fn advance_seq(&mut self, seq: Seq) {
        if seq > self.seq {
            self.log.reset(seq);
        }
        self.seq = self.seq.max(seq);
    }

    #[allow(clippy::too_many_arguments)]
    fn restored(
        &mut self,
        seq: Seq,
        collection: Collection,
        id: FeatureId,
        op: ChangeOp,
        cause: ChangeCause,
        at: Timestamp,
        touched: Rect<f64>,
    ) {
        self.seq = self.seq.max(seq);
        self.log.push(ChangeRecord {
            seq,
            collection,
            id,
            op,
            cause,
            at,
            touched,
        });
    }

    /// When the next feature expires, if any does.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.expiry.first().map(|(t, _, _)| *t)
    }

    /// Removes every feature whose expiry is at or before `now`, as normal
    /// changes with cause [`ChangeCause::Expired`].
    pub fn expire(&mut self, now: Timestamp) -> Applied {
        let mut changes = Vec::new();
        while let Some((t, collection, id)) = self.expiry.first().cloned() {
            if t > now {
                break;
            }
            self.expiry.pop_first();
            let Some(touched) = self.take(collection, &id) else {
                continue;
            };
            self.seq = self.seq.next();
            self.relations.remove(collection, &id, self.seq, now);
            self.log.push(ChangeRecord {
                seq: self.seq,
                collection,
                id: Arc::clone(&id),
                op: ChangeOp::Delete,
                cause: ChangeCause::Expired,
                at: now,
                touched,
            });
            changes.push((collection, id, ChangeOp::Delete, self.seq));
        }
        Applied {
            changes,
            seq: self.seq,
        }
    }

    /// Runs a query over one collection.
    pub fn query(&self, collection: Collection, query: &Query) -> Page<'_> {
        let layer = &self.layers[collection.index()];
        let mut hits: Vec<&Feature> = match &query.bbox {
            Some(bbox) => {
                let mut slots = Vec::new();
                layer.index.candidates(bbox, &mut slots);
                let mut hits: Vec<&Feature> = slots
                    .into_iter()
                    .map(|slot| layer.feature(slot))
                    .filter(|f| f.shape.intersects_rect(bbox) && query.matches_filters(f))
                    .collect();
                hits.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                hits
            }
            None => {
                let mut all = layer.sorted();
                if !query.filters.is_empty() || query.datetime.is_some() {
                    all.retain(|f| query.matches_filters(f));
                }
                all
            }
        };
        let number_matched = hits.len();
        let start = query
            .after
            .as_deref()
            .map_or(0, |after| hits.partition_point(|f| &*f.id <= after));
        let end = start.saturating_add(query.limit).min(hits.len());
        let next = (end < hits.len() && end > start).then(|| Arc::clone(&hits[end - 1].id));
        hits.truncate(end);
        hits.drain(..start);
        Page {
            features: hits,
            number_matched,
            next,
        }
    }
}

// ---- Relations (issue 4): access, rules, and re-attribution on load. ----

impl Store {
    /// The relations: attribution, units in hazards, counts, rules, events.
    pub fn relations(&self) -> &Relations {
        &self.relations
    }

    /// Empties the relations' event log and restarts its numbering.
    /// Recovery replays history into a new store, and the enter/exit events
    /// that replay raises were told (or were due) in the run that made
    /// them: they are state now, not news, and must not reach clients as
    /// fresh events. Only before the log has consumers (at start).
    pub fn forget_events(&mut self) {
        self.relations.forget_events();
    }

    /// Registers a coverage rule (evaluated at once and on every change).
    pub fn add_rule(
        &mut self,
        rule: crate::relate::Rule,
        at: Timestamp,
    ) -> Result<u64, crate::relate::RuleError> {
        self.relations.add_rule(rule, self.seq, at)
    }

    /// Registers a coverage rule under a known id (recovery).
    pub fn restore_rule(
        &mut self,
        id: u64,
        rule: crate::relate::Rule,
        at: Timestamp,
    ) -> Result<(), crate::relate::RuleError> {
        self.relations.restore_rule(id, rule, self.seq, at)
    }

    /// Never hands out rule ids below `next` (recovery).
    pub fn reserve_rule_ids(&mut self, next: u64) {
        self.relations.reserve_rule_ids(next);
    }

    /// Deletes a coverage rule, clearing its alert; whether it existed.
    pub fn remove_rule(&mut self, id: u64, at: Timestamp) -> bool {
        self.relations.remove_rule(id, self.seq, at)
    }

    /// Rebuilds the region and municipality locators from the boundary
    /// layers and re-places every feature. Runs after `load` only, which is
    /// rare (start-up); feed writes never touch boundaries.
    fn refresh_relations(&mut self) {
        let Store {
            layers, relations, ..
        } = self;
        let boundaries = |c: Collection| {
            let layer = &layers[c.index()];
            layer.ids.iter().filter_map(move |s| {
                let f = layer.feature(*s);
                match &f.shape {
                    crate::Shape::Area(a) => Some((&*f.id, &a.geometry)),
                    crate::Shape::Point(_) => None,
                }
            })
        };
        relations.set_boundaries(
            boundaries(Collection::Regions),
            boundaries(Collection::Municipalities),
        );
        let seq = self.seq;
        for collection in [
            Collection::Hazards,
            Collection::Incidents,
            Collection::Units,
        ] {
            let Store {
                layers, relations, ..
            } = &mut *self;
            for chunk in &mut layers[collection.index()].chunks {
                for feature in chunk.iter_mut().flatten() {
                    feature.place = relations.upsert(
                        collection,
                        &feature.id,
                        &feature.shape,
                        &feature.attrs,
                        seq,
                        feature.received_at,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use geo::{Intersects, coord};
    use proptest::prelude::*;

    use super::*;
    use crate::attrs::Attrs;
    use crate::geometry::Shape;

    fn point_draft(id: &str, x: f64, y: f64) -> Draft {
        Draft {
            id: Some(id.into()),
            shape: Shape::Point(coord! { x: x, y: y }),
            properties: "{}".into(),
            attrs: Attrs::Boundary,
            observed_at: None,
            expires_at: None,
        }
    }

    fn square_draft(id: &str, x: f64, y: f64, size: f64) -> Draft {
        let polygon =
            geo::Rect::new(coord! { x: x, y: y }, coord! { x: x + size, y: y + size }).to_polygon();
        Draft {
            shape: Shape::area(geo::Geometry::Polygon(polygon), 5),
            ..point_draft(id, x, y)
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Point(u8, f64, f64),
        Area(u8, f64, f64, f64),
        DeletePoint(u8),
        DeleteArea(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        // Coordinates straddle grid bucket edges (multiples of 0.05) on purpose.
        let coord = || (4.9f64..5.2, 50.9f64..51.2);
        prop_oneof![
            4 => (0u8..40, coord()).prop_map(|(i, (x, y))| Step::Point(i, x, y)),
            2 => (0u8..10, coord(), 0.0f64..0.1).prop_map(|(i, (x, y), s)| Step::Area(i, x, y, s)),
            1 => (0u8..40).prop_map(Step::DeletePoint),
            1 => (0u8..10).prop_map(Step::DeleteArea),
        ]
    }

    fn batch(ops: Vec<Op>) -> Batch {
        Batch {
            feed: "test".into(),
            received_at: Timestamp(0),
            ops,
        }
    }

    proptest! {
        #[test]
        fn index_queries_agree_with_a_brute_force_scan(
            steps in proptest::collection::vec(step(), 1..120),
            boxes in proptest::collection::vec((4.85f64..5.25, 50.85f64..51.25, 0.0f64..0.3), 1..8),
        ) {
            let mut store = Store::default();
            let mut model: BTreeMap<(Collection, String), Shape> = BTreeMap::new();
            let mut last_seq = 0;
            for step in steps {
                let op = match step {
                    Step::Point(i, x, y) => Op::Upsert { collection: Collection::Units, draft: point_draft(&format!("u{i}"), x, y) },
                    Step::Area(i, x, y, s) => Op::Upsert { collection: Collection::Hazards, draft: square_draft(&format!("h{i}"), x, y, s) },
                    Step::DeletePoint(i) => Op::Delete { collection: Collection::Units, id: format!("u{i}").into() },
                    Step::DeleteArea(i) => Op::Delete { collection: Collection::Hazards, id: format!("h{i}").into() },
                };
                let key = match &op {
                    Op::Upsert { collection, draft } => (*collection, draft.id.as_deref().unwrap_or("").to_owned()),
                    Op::Delete { collection, id } => (*collection, id.to_string()),
                };
                let exists = model.contains_key(&key);
                let result = store.apply(batch(vec![op.clone()]));
                match op {
                    Op::Upsert { draft, .. } => {
                        prop_assert!(result.is_ok());
                        model.insert(key, draft.shape);
                    }
                    Op::Delete { .. } => {
                        prop_assert_eq!(result.is_ok(), exists, "delete of a missing feature must fail");
                        model.remove(&key);
                    }
                }
                if result.is_ok() {
                    prop_assert_eq!(store.seq().0, last_seq + 1, "one seq per change");
                    last_seq += 1;
                }
            }
            for collection in [Collection::Units, Collection::Hazards] {
                let layer = &store.layers[collection.index()];
                let expected_len = model.keys().filter(|(c, _)| *c == collection).count();
                prop_assert_eq!(layer.len(), expected_len);
                prop_assert_eq!(layer.index.len(), expected_len);
                for (x, y, size) in &boxes {
                    let rect = geo::Rect::new(coord! { x: *x, y: *y }, coord! { x: x + size, y: y + size });
                    let query = Query { bbox: Some(rect), limit: usize::MAX, ..Query::default() };
                    let got: Vec<String> = store.query(collection, &query).features.iter().map(|f| f.id.to_string()).collect();
                    let want: Vec<String> = model
                        .iter()
                        .filter(|((c, _), shape)| *c == collection && shape.to_geometry().intersects(&rect))
                        .map(|((_, id), _)| id.clone())
                        .collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }

    #[test]
    fn a_batch_with_a_missing_delete_changes_nothing() {
        let mut store = Store::default();
        store
            .apply(batch(vec![Op::Upsert {
                collection: Collection::Units,
                draft: point_draft("a", 5.0, 51.0),
            }]))
            .unwrap();
        let before = store.seq();
        let result = store.apply(batch(vec![
            Op::Upsert {
                collection: Collection::Units,
                draft: point_draft("b", 5.0, 51.0),
            },
            Op::Delete {
                collection: Collection::Units,
                id: "nobody".into(),
            },
        ]));
        assert!(matches!(result, Err(BatchError::NotFound { index: 1, .. })));
        assert_eq!(store.seq(), before);
        assert!(store.get(Collection::Units, "b").is_none());
    }

    #[test]
    fn feeds_cannot_write_regions_but_loading_can() {
        let mut store = Store::default();
        let op = || Op::Upsert {
            collection: Collection::Regions,
            draft: square_draft("VR24", 5.7, 50.7, 0.3),
        };
        assert!(matches!(
            store.apply(batch(vec![op()])),
            Err(BatchError::ReadOnly { .. })
        ));
        assert!(store.load(batch(vec![op()])).is_ok());
    }

    #[test]
    fn expiry_removes_in_time_order_as_changes() {
        let mut store = Store::default();
        let mut a = point_draft("a", 5.0, 51.0);
        a.expires_at = Some(Timestamp(100));
        let mut b = point_draft("b", 5.0, 51.0);
        b.expires_at = Some(Timestamp(200));
        store
            .apply(batch(vec![
                Op::Upsert {
                    collection: Collection::Units,
                    draft: a,
                },
                Op::Upsert {
                    collection: Collection::Units,
                    draft: b.clone(),
                },
            ]))
            .unwrap();
        // Re-writing b without expiry cancels its expiry.
        b.expires_at = None;
        store
            .apply(batch(vec![Op::Upsert {
                collection: Collection::Units,
                draft: b,
            }]))
            .unwrap();
        let applied = store.expire(Timestamp(1000));
        assert_eq!(applied.changes.len(), 1);
        assert_eq!(&*applied.changes[0].1, "a");
        assert!(store.get(Collection::Units, "b").is_some());
        assert_eq!(
            store.log().since(Seq(3)).unwrap().next().unwrap().cause,
            ChangeCause::Expired
        );
    }

    #[test]
    fn paging_by_cursor_visits_every_feature_once() {
        let mut store = Store::default();
        let ops = (0..25)
            .map(|i| Op::Upsert {
                collection: Collection::Units,
                draft: point_draft(&format!("u{i:02}"), 5.0, 51.0),
            })
            .collect();
        store.apply(batch(ops)).unwrap();
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let page = store.query(
                Collection::Units,
                &Query {
                    after: after.clone(),
                    limit: 10,
                    ..Query::default()
                },
            );
            assert_eq!(page.number_matched, 25);
            seen.extend(page.features.iter().map(|f| f.id.to_string()));
            match page.next {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
    }
}
