//! Views: what one live subscriber sees of the picture, and the diffs that
//! keep it exact.
//!
//! A [`View`] is a viewport and the store `seq` the client's state is
//! consistent with. It keeps no table of what the client holds: the
//! invariant below says what that is, so the view derives it.
//!
//! # Invariant
//!
//! A client holds exactly the features its viewport shows in the store as of
//! the view's seq, each in its version at that seq. The property test below
//! checks it against a fresh snapshot after every step of random sequences
//! of writes, deletes, expiries, routed and merged ticks, viewport moves and
//! resumes.
//!
//! From it, each routed change is decided with comparisons, not lookups:
//! a feature the viewport shows whose version is no newer than the view's
//! seq is held already; whether the client held a changed feature is what
//! the viewport made of its version *before* the change (the hub passes
//! that version along). With 1,000 clients, a per-client table of held
//! features cost two cache misses per delivery and most of the server's
//! memory (BENCHMARKS.md, fan-out).
//!
//! Where the version before is not known (a view that read the store in the
//! middle of a tick, or merged ticks), an item may be sent that changes
//! nothing: items are idempotent (an upsert of a version the client has, a
//! remove of an id it lacks, change nothing), which is also what makes
//! resume and over-delivery safe.

use hashbrown::HashMap;
use hashbrown::hash_map::Entry;

use geo::{Intersects, Rect};

use crate::change::{ChangeCause, Seq};
use crate::collection::Collection;
use crate::feature::{Feature, FeatureId};
use crate::query::{Query, properties_match};
use crate::store::Store;

/// What a subscription looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Viewport {
    /// The collections it shows.
    pub collections: Vec<Collection>,
    /// The box, lon/lat.
    pub bbox: Rect<f64>,
    /// `property = value` filters, all of which must hold.
    pub filters: Vec<(String, String)>,
}

impl Viewport {
    /// Whether the viewport shows `feature` of `collection`.
    pub fn shows(&self, collection: Collection, feature: &Feature) -> bool {
        self.collections.contains(&collection)
            && feature.shape.intersects_rect(&self.bbox)
            && properties_match(&self.filters, feature)
    }

    /// Whether a change that touched `touched` in `collection` may concern
    /// this viewport (the routing test; exactness comes from [`Viewport::shows`]).
    pub fn may_concern(&self, collection: Collection, touched: &Rect<f64>) -> bool {
        self.collections.contains(&collection) && self.bbox.intersects(touched)
    }

    /// Why a feature this viewport does not show (`None`: gone, for
    /// `gone`) must be dropped by a client that holds it.
    fn reason(&self, current: Option<&Feature>, gone: RemoveReason) -> RemoveReason {
        match current {
            None => gone,
            Some(f) if !f.shape.intersects_rect(&self.bbox) => RemoveReason::LeftViewport,
            Some(_) => RemoveReason::Filtered,
        }
    }
}

/// Why a client must drop a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    /// A feed deleted it.
    Deleted,
    /// Its expiry passed.
    Expired,
    /// It moved out of the viewport, or the viewport moved away from it.
    LeftViewport,
    /// It no longer matches the subscription's property filters.
    Filtered,
}

impl RemoveReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RemoveReason::Deleted => "deleted",
            RemoveReason::Expired => "expired",
            RemoveReason::LeftViewport => "left_viewport",
            RemoveReason::Filtered => "filtered",
        }
    }

    /// The reason for a feature that is gone from the store.
    pub fn gone(cause: &ChangeCause) -> RemoveReason {
        match cause {
            ChangeCause::Expired => RemoveReason::Expired,
            ChangeCause::Write { .. } => RemoveReason::Deleted,
        }
    }
}

/// One thing to tell a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'f> {
    /// New, changed, or newly visible; `previous` is the version the client
    /// is known to hold, if any (the base of a field-level delta).
    Upsert {
        /// The collection.
        collection: Collection,
        /// The feature in its current version.
        feature: &'f Feature,
        /// The version the client holds, when known.
        previous: Option<Seq>,
    },
    /// To be dropped.
    Remove {
        /// The collection.
        collection: Collection,
        /// The id.
        id: FeatureId,
        /// Why.
        reason: RemoveReason,
    },
}

/// What a feature was just before the first change a [`Change`] covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Before<'f> {
    /// Not known (the fan-out had not seen the feature yet).
    Unknown,
    /// It did not exist.
    Absent,
    /// This version.
    Was(&'f Feature),
}

/// One changed feature as the fan-out routes it: every change to it after
/// one tick up to the next, coalesced.
#[derive(Debug, Clone, Copy)]
pub struct Change<'f> {
    /// The collection.
    pub collection: Collection,
    /// The id.
    pub id: &'f FeatureId,
    /// The seq of the tick that routed it; `current` is the feature's
    /// state at that seq.
    pub routed: Seq,
    /// Its state at `routed`; `None` when gone.
    pub current: Option<&'f Feature>,
    /// Why it is gone, when it is.
    pub gone: RemoveReason,
    /// The seq of the first change after `before`: `before` is the
    /// feature's state from its own seq up to this one. Usually the first
    /// change the delivery covers; later when `before` is a version from
    /// within them (one a snapshot read meanwhile).
    pub first: Seq,
    /// What the feature was up to `first`.
    pub before: Before<'f>,
}

/// The seq of a feature's first change after version `before`, given the
/// first, second and last of the changes a tick covers (the second is the
/// first when there is one): [`Change::first`]. `before` is the newest
/// version the fan-out knew; when a snapshot read it from within the
/// tick's changes, the change after it is known only if it is the first or
/// the last of them (`Seq(u64::MAX)`: nothing after it, it is current).
///
/// ```
/// use beeld_layers::Seq;
/// use beeld_layers::view::first_change_after;
///
/// let seqs = [Seq(10), Seq(12), Seq(15)];
/// assert_eq!(first_change_after(Some(Seq(4)), seqs), Seq(10));
/// assert_eq!(first_change_after(Some(Seq(10)), seqs), Seq(12));
/// assert_eq!(first_change_after(Some(Seq(15)), seqs), Seq(u64::MAX));
/// // Read between the second and the last: not known; `first` makes the
/// // version useless to every view, which is safe.
/// assert_eq!(first_change_after(Some(Seq(12)), seqs), Seq(10));
/// ```
pub fn first_change_after(before: Option<Seq>, [first, second, last]: [Seq; 3]) -> Seq {
    match before {
        Some(seq) if seq >= last => Seq(u64::MAX),
        Some(seq) if seq == first => second,
        _ => first,
    }
}

impl<'f> Change<'f> {
    /// The version in effect at `seq`, where the change says: `Some(None)`
    /// when the feature did not exist then, `None` when not known.
    fn at(&self, seq: Seq) -> Option<Option<&'f Feature>> {
        // Nothing changed the feature in [before's seq, first): `before` is
        // its state throughout, and only there.
        if seq >= self.first {
            return None;
        }
        match self.before {
            Before::Absent => Some(None),
            Before::Was(f) if f.seq <= seq => Some(Some(f)),
            Before::Was(_) | Before::Unknown => None,
        }
    }
}

/// One subscriber's view.
#[derive(Debug, Clone)]
pub struct View {
    viewport: Viewport,
    /// The store seq the client's state is consistent with.
    seq: Seq,
}

impl View {
    /// A view of `viewport` holding nothing yet, at seq 0.
    pub fn new(viewport: Viewport) -> View {
        View {
            viewport,
            seq: Seq(0),
        }
    }

    /// The viewport.
    pub fn viewport(&self) -> &Viewport {
        &self.viewport
    }

    /// The seq the client's state is consistent with.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// Every feature the viewport shows now, in collection then id order;
    /// the client is assumed to replace its state with them.
    pub fn snapshot<'s>(&mut self, store: &'s Store) -> Vec<(Collection, &'s Feature)> {
        self.seq = store.seq();
        shown(store, &self.viewport)
    }

    /// Starts a tick whose feature states are consistent with `tick_seq`,
    /// returning the seq the client was at (the `from` of
    /// [`View::update`]); `None`, and the tick must be skipped, when the
    /// view is already at or past it (a viewport move or resume read a
    /// newer store).
    pub fn begin_tick(&mut self, tick_seq: Seq) -> Option<Seq> {
        if tick_seq <= self.seq {
            return None;
        }
        Some(std::mem::replace(&mut self.seq, tick_seq))
    }

    /// Moves a view that was told of nothing since its seq up to `seq`: the
    /// fan-out routes every change that concerns a viewport, so a view
    /// that has taken every tick routed up to `seq` and was sent none of
    /// them holds the store's state at `seq` too. Keeps a quiet view
    /// within the change log's reach for its next move.
    pub fn quiet_until(&mut self, seq: Seq) {
        self.seq = self.seq.max(seq);
    }

    /// What the client, at `from` (from [`View::begin_tick`]), must be told
    /// of one routed change. `with_previous`: whether an upsert should say
    /// which version the client holds (for field-level deltas); working it
    /// out reads the version before the change, a cache miss per delivery
    /// that clients without deltas are spared (it was half of this
    /// function's time in the fan-out benchmark).
    pub fn update<'f>(
        &self,
        from: Seq,
        change: &Change<'f>,
        with_previous: bool,
    ) -> Option<Item<'f>> {
        if change.routed <= from {
            // Routed no later than the view's seq: the view read the store
            // since (a viewport move), so its state is newer. The server
            // skips whole ticks like this (`begin_tick`); a caller that
            // merges queued ticks meets it per change.
            return None;
        }
        let collection = change.collection;
        let held = || {
            change
                .at(from)
                .map(|version| version.filter(|f| self.viewport.shows(collection, f)))
        };
        match change.current {
            Some(feature) if self.viewport.shows(collection, feature) => {
                // Shown, and no newer than what the client read: held as is.
                if feature.seq <= from {
                    return None;
                }
                Some(Item::Upsert {
                    collection,
                    feature,
                    previous: if with_previous {
                        held().flatten().map(|f| f.seq)
                    } else {
                        None
                    },
                })
            }
            current => match held() {
                Some(None) => None,
                // Held, or maybe held: a remove of an id the client lacks is
                // harmless, a missed one is not.
                Some(Some(_)) | None => Some(Item::Remove {
                    collection,
                    id: std::sync::Arc::clone(change.id),
                    reason: self.viewport.reason(current, change.gone),
                }),
            },
        }
    }

    /// Brings the client up to the store's current seq from what it holds:
    /// the collapsed form of every diff it missed (used when a client fell
    /// behind and its ticks were dropped). `None` when the change log no
    /// longer reaches back to the view's seq; the client then needs a fresh
    /// snapshot ([`View::snapshot`]).
    pub fn catch_up<'s>(&mut self, store: &'s Store) -> Option<Vec<Item<'s>>> {
        let viewport = self.viewport.clone();
        self.move_to(store, viewport)
    }

    /// Moves the view to `viewport` at the store's current seq: the items
    /// are what enters, what leaves, and what changed meanwhile. `None`
    /// when the change log no longer reaches back to the view's seq (the
    /// view has then taken `viewport`, and needs [`View::snapshot`]).
    pub fn move_to<'s>(&mut self, store: &'s Store, viewport: Viewport) -> Option<Vec<Item<'s>>> {
        let old = std::mem::replace(&mut self.viewport, viewport);
        let from = self.seq;
        let new = &self.viewport;
        // Features changed since `from`: the client's version of them is
        // not known here, so what may have been held gets a remove and what
        // is shown gets its current version. Their first record after
        // `from` touched their box at `from`, so a feature the client holds
        // always has a record that concerns the old viewport.
        // Per feature, in the order first seen: the removal reason of its
        // last record, and whether any record concerned the old viewport.
        let mut changed: HashMap<(Collection, FeatureId), (RemoveReason, bool)> = HashMap::new();
        let mut order: Vec<(Collection, FeatureId)> = Vec::new();
        for record in store.log().since(from)? {
            let was = old.may_concern(record.collection, &record.touched);
            if !was && !new.may_concern(record.collection, &record.touched) {
                continue;
            }
            let gone = RemoveReason::gone(&record.cause);
            match changed.entry((record.collection, std::sync::Arc::clone(&record.id))) {
                Entry::Occupied(mut entry) => {
                    let (reason, maybe_held) = entry.get_mut();
                    *reason = gone;
                    *maybe_held |= was;
                }
                Entry::Vacant(entry) => {
                    order.push(entry.key().clone());
                    entry.insert((gone, was));
                }
            }
        }
        let mut items = Vec::new();
        for key in order {
            let Some(&(gone, maybe_held)) = changed.get(&key) else {
                continue;
            };
            let (collection, id) = key;
            match store.get(collection, &id) {
                Some(feature) if new.shows(collection, feature) => items.push(Item::Upsert {
                    collection,
                    feature,
                    previous: None,
                }),
                current if maybe_held => items.push(Item::Remove {
                    collection,
                    reason: new.reason(current, gone),
                    id,
                }),
                _ => {}
            }
        }
        // Features unchanged since `from` are held exactly where the old
        // viewport shows them; only a different viewport changes that.
        if old != *new {
            for (collection, feature) in shown(store, &old) {
                if feature.seq <= from && !new.shows(collection, feature) {
                    items.push(Item::Remove {
                        collection,
                        id: std::sync::Arc::clone(&feature.id),
                        reason: new.reason(Some(feature), RemoveReason::Deleted),
                    });
                }
            }
            for (collection, feature) in shown(store, new) {
                if feature.seq <= from && !old.shows(collection, feature) {
                    items.push(Item::Upsert {
                        collection,
                        feature,
                        previous: None,
                    });
                }
            }
        }
        self.seq = store.seq();
        Some(items)
    }

    /// Resumes a client that holds a snapshot of this view's viewport as of
    /// `since`: the items bring it to the store's current seq. `None` when
    /// the change log no longer reaches back to `since`; the client then
    /// needs a fresh snapshot.
    pub fn resume<'s>(&mut self, store: &'s Store, since: Seq) -> Option<Vec<Item<'s>>> {
        if since > store.seq() {
            return None;
        }
        self.seq = since;
        self.catch_up(store)
    }
}

/// Every feature `viewport` shows, in collection then id order.
pub fn shown<'s>(store: &'s Store, viewport: &Viewport) -> Vec<(Collection, &'s Feature)> {
    let query = Query {
        bbox: Some(viewport.bbox),
        filters: viewport.filters.clone(),
        limit: usize::MAX,
        ..Query::default()
    };
    let mut out = Vec::new();
    for collection in Collection::ALL {
        if viewport.collections.contains(&collection) {
            out.extend(
                store
                    .query(collection, &query)
                    .features
                    .into_iter()
                    .map(|f| (collection, f)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use geo::coord;
    use proptest::prelude::*;

    use super::*;
    use crate::Draft;
    use crate::attrs::{Attrs, RegionCode, UnitStatus, UnitType};
    use crate::geometry::Shape;
    use crate::store::{Batch, Op, StoreConfig};
    use crate::time::Timestamp;

    type Client = BTreeMap<(Collection, String), Seq>;

    fn unit(i: u8, x: f64, y: f64, available: bool, expires: Option<i64>) -> Op {
        let status = if available {
            UnitStatus::Available
        } else {
            UnitStatus::OnScene
        };
        Op::Upsert {
            collection: Collection::Units,
            draft: Draft {
                id: Some(format!("u{i}").into()),
                shape: Shape::Point(coord! { x: x, y: y }),
                properties: format!("{{\"status\":\"{}\"}}", status.as_str()).into(),
                attrs: Attrs::Unit {
                    unit_type: UnitType::Ambulance,
                    status,
                    home_region: RegionCode::parse("VR24").expect("valid"),
                },
                observed_at: None,
                expires_at: expires.map(Timestamp),
            },
        }
    }

    fn hazard(i: u8, x: f64, y: f64, size: f64) -> Op {
        let polygon =
            Rect::new(coord! { x: x, y: y }, coord! { x: x + size, y: y + size }).to_polygon();
        Op::Upsert {
            collection: Collection::Hazards,
            draft: Draft {
                id: Some(format!("h{i}").into()),
                shape: Shape::area(geo::Geometry::Polygon(polygon), 5),
                properties: "{}".into(),
                attrs: Attrs::Boundary,
                observed_at: None,
                expires_at: None,
            },
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Unit(u8, f64, f64, bool, bool),
        Hazard(u8, f64, f64, f64),
        Delete(u8),
        Expire(i64),
        /// The hub routes a tick; with `true` the session then takes every
        /// queued tick at once, merged. The server now takes them in order
        /// (one diff each); the view still decides merged changes right,
        /// and this keeps that tested.
        Tick(bool),
        Move(f64, f64, f64, bool),
        Fork,
        /// Another client's snapshot encodes unit `i` through the hub,
        /// which keeps the version if it is the newest it knows.
        Encode(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u8..10, 4.9f64..5.3, 50.9f64..51.3, any::<bool>(), any::<bool>())
                .prop_map(|(i, x, y, a, e)| Step::Unit(i, x, y, a, e)),
            2 => (0u8..6, 4.9f64..5.3, 50.9f64..51.3, 0.0f64..0.15).prop_map(|(i, x, y, s)| Step::Hazard(i, x, y, s)),
            2 => (0u8..10).prop_map(Step::Delete),
            1 => (0i64..100).prop_map(Step::Expire),
            4 => any::<bool>().prop_map(Step::Tick),
            2 => (4.9f64..5.3, 50.9f64..51.3, 0.01f64..0.3, any::<bool>()).prop_map(|(x, y, s, f)| Step::Move(x, y, s, f)),
            1 => Just(Step::Fork),
            2 => (0u8..10).prop_map(Step::Encode),
        ]
    }

    fn viewport(x: f64, y: f64, size: f64, only_available: bool) -> Viewport {
        Viewport {
            collections: vec![Collection::Units, Collection::Hazards],
            bbox: Rect::new(coord! { x: x, y: y }, coord! { x: x + size, y: y + size }),
            filters: if only_available {
                vec![("status".to_owned(), "available".to_owned())]
            } else {
                Vec::new()
            },
        }
    }

    fn apply(client: &mut Client, items: &[Item<'_>]) {
        for item in items {
            match item {
                Item::Upsert {
                    collection,
                    feature,
                    ..
                } => {
                    client.insert((*collection, feature.id.to_string()), feature.seq);
                }
                Item::Remove { collection, id, .. } => {
                    client.remove(&(*collection, id.to_string()));
                }
            }
        }
    }

    fn fresh(store: &Store, viewport: &Viewport) -> Client {
        shown(store, viewport)
            .into_iter()
            .map(|(c, f)| ((c, f.id.to_string()), f.seq))
            .collect()
    }

    /// One routed delivery, as the hub makes it.
    #[derive(Debug, Clone)]
    struct Routed {
        collection: Collection,
        id: FeatureId,
        routed: Seq,
        state: Option<Feature>,
        gone: RemoveReason,
        first: Seq,
        before: Option<Feature>,
    }

    impl Routed {
        fn change(&self) -> Change<'_> {
            Change {
                collection: self.collection,
                id: &self.id,
                routed: self.routed,
                current: self.state.as_ref(),
                gone: self.gone,
                first: self.first,
                before: self.before.as_ref().map_or(Before::Unknown, Before::Was),
            }
        }
    }

    /// What `hub.encoded` does for every upsert a session encodes outside
    /// ticks: it keeps the newer version.
    fn encoded(base: &mut BTreeMap<(Collection, FeatureId), Feature>, items: &[Item<'_>]) {
        for item in items {
            if let Item::Upsert {
                collection,
                feature,
                ..
            } = item
            {
                let key = (*collection, Arc::clone(&feature.id));
                if base.get(&key).is_none_or(|b| b.seq <= feature.seq) {
                    base.insert(key, (*feature).clone());
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn snapshot_plus_diffs_equals_a_fresh_snapshot(steps in proptest::collection::vec(step(), 1..80)) {
            let mut store = Store::new(StoreConfig::default());
            let mut now = 0i64;
            let mut view = View::new(viewport(5.0, 51.0, 0.15, false));
            let mut client: Client = view.snapshot(&store).into_iter().map(|(c, f)| ((c, f.id.to_string()), f.seq)).collect();
            let mut routed_up_to = store.seq();
            // Ticks routed but not yet taken by the session.
            let mut queued: Vec<Vec<Routed>> = Vec::new();
            // The hub's newest version of each feature (its `encodings`).
            let mut base: BTreeMap<(Collection, FeatureId), Feature> = BTreeMap::new();
            // A client that went away with its state and seq, to resume later.
            let mut forked: Option<(Client, Viewport, Seq)> = None;
            for step in steps {
                let op = match step {
                    Step::Unit(i, x, y, available, expiring) => Some(unit(i, x, y, available, expiring.then_some(now + 10))),
                    Step::Hazard(i, x, y, s) => Some(hazard(i, x, y, s)),
                    Step::Delete(i) => Some(Op::Delete { collection: Collection::Units, id: format!("u{i}").into() }),
                    Step::Expire(dt) => {
                        now += dt;
                        store.expire(Timestamp(now));
                        None
                    }
                    Step::Tick(deliver) => {
                        // The hub coalesces every change since its last tick per
                        // feature, with the feature's state at the tick, the seq of
                        // its first change and the version it last routed (or that a
                        // session encoded since: `hub.encoded` keeps the newest),
                        // and queues those that may concern the viewport.
                        let tick_seq = store.seq();
                        let mut touched: BTreeMap<(Collection, FeatureId), ([Seq; 3], RemoveReason, bool)> = BTreeMap::new();
                        for record in store.log().since(routed_up_to).expect("log holds everything") {
                            let concerns = view.viewport().may_concern(record.collection, &record.touched);
                            touched
                                .entry((record.collection, Arc::clone(&record.id)))
                                .and_modify(|([first, second, last], gone, c)| {
                                    if second == first {
                                        *second = record.seq;
                                    }
                                    *last = record.seq;
                                    *gone = RemoveReason::gone(&record.cause);
                                    *c |= concerns;
                                })
                                .or_insert(([record.seq; 3], RemoveReason::gone(&record.cause), concerns));
                        }
                        routed_up_to = tick_seq;
                        let mut routed = Vec::new();
                        for ((c, id), ([first, second, last], gone, concerns)) in touched {
                            let state = store.get(c, &id).cloned();
                            let before = match &state {
                                Some(f) => base.insert((c, Arc::clone(&id)), f.clone()),
                                None => base.remove(&(c, Arc::clone(&id))),
                            };
                            let first = first_change_after(before.as_ref().map(|b| b.seq), [first, second, last]);
                            if concerns {
                                routed.push(Routed { collection: c, id, routed: tick_seq, state, gone, first, before });
                            }
                        }
                        if !routed.is_empty() {
                            queued.push(routed);
                        }
                        if deliver {
                            // The session takes every queued tick as one: each feature
                            // once, its latest delivery.
                            let mut merged: BTreeMap<(Collection, FeatureId), Routed> = BTreeMap::new();
                            for tick in queued.drain(..) {
                                for r in tick {
                                    merged.insert((r.collection, Arc::clone(&r.id)), r);
                                }
                            }
                            let last = merged.values().map(|r| r.routed).max();
                            if let Some(from) = last.and_then(|seq| view.begin_tick(seq)) {
                                let items: Vec<Item<'_>> = merged
                                    .values()
                                    .filter_map(|r| view.update(from, &r.change(), true))
                                    .collect();
                                for item in &items {
                                    if let Item::Upsert { collection, feature, previous: Some(p) } = item {
                                        // A delta base must be exactly what the client holds.
                                        prop_assert_eq!(client.get(&(*collection, feature.id.to_string())), Some(p));
                                        let r = &merged[&(*collection, Arc::clone(&feature.id))];
                                        prop_assert_eq!(r.before.as_ref().map(|b| b.seq), Some(*p));
                                    }
                                }
                                apply(&mut client, &items);
                            }
                            // Every tick routed so far is taken: a quiet view may
                            // move up to the last one (the WebSocket loop does this).
                            view.quiet_until(routed_up_to);
                            prop_assert_eq!(&client, &fresh(&store, view.viewport()));
                        }
                        None
                    }
                    Step::Move(x, y, s, f) => {
                        // A move first brings the routing up to date (the server
                        // updates its router before it reads the store).
                        match view.move_to(&store, viewport(x, y, s, f)) {
                            Some(items) => {
                                encoded(&mut base, &items);
                                apply(&mut client, &items);
                            }
                            None => {
                                client = view.snapshot(&store).into_iter().map(|(c, f)| ((c, f.id.to_string()), f.seq)).collect();
                            }
                        }
                        // Ticks still queued were routed before the move read the store.
                        prop_assert_eq!(&client, &fresh(&store, view.viewport()));
                        None
                    }
                    Step::Encode(i) => {
                        if let Some(feature) = store.get(Collection::Units, &format!("u{i}")) {
                            let item = Item::Upsert { collection: Collection::Units, feature, previous: None };
                            encoded(&mut base, &[item]);
                        }
                        None
                    }
                    Step::Fork => {
                        if view.seq() == store.seq() {
                            forked = Some((client.clone(), view.viewport().clone(), view.seq()));
                        }
                        None
                    }
                };
                if let Some(op) = op {
                    let _ = store.apply(Batch { feed: "test".into(), received_at: Timestamp(now), ops: vec![op] });
                }
            }
            if let Some((mut resumed, viewport, since)) = forked {
                let mut view = View::new(viewport);
                let items = view.resume(&store, since).expect("log holds everything");
                encoded(&mut base, &items);
                apply(&mut resumed, &items);
                prop_assert_eq!(&resumed, &fresh(&store, view.viewport()));
                prop_assert_eq!(view.seq(), store.seq());
            }
        }
    }

    #[test]
    fn resume_from_beyond_the_log_needs_a_snapshot() {
        let mut store = Store::new(StoreConfig {
            change_log_capacity: 2,
            ..StoreConfig::default()
        });
        for i in 0..5 {
            store
                .apply(Batch {
                    feed: "t".into(),
                    received_at: Timestamp(0),
                    ops: vec![unit(i, 5.0, 51.0, true, None)],
                })
                .unwrap();
        }
        let mut view = View::new(viewport(4.9, 50.9, 0.3, false));
        assert!(view.resume(&store, Seq(1)).is_none());
        assert!(view.resume(&store, Seq(4)).is_some());
    }
}
