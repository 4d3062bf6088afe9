//! Views: what one live subscriber sees of the picture, and the diffs that
//! keep it exact.
//!
//! A [`View`] remembers which version (`seq`) of which feature its client
//! holds. Everything a client is sent comes from here: the snapshot, the
//! items of each tick, the enter/leave items of a viewport move, and the
//! catch-up of a resume. The core invariant, checked by the property test
//! below: a client that applies the snapshot and every item it was sent
//! holds exactly what a fresh snapshot of its viewport would hold at the
//! view's `seq`.
//!
//! Items are idempotent (an upsert of a version the client has, a remove of
//! an id it lacks, change nothing), which is what makes resume and
//! over-delivery safe.

use std::sync::Arc;

use geo::{Intersects, Rect};

use crate::change::{ChangeCause, Seq};
use crate::collection::Collection;
use crate::feature::{Feature, FeatureId};
use crate::query::{Query, properties_match};
use crate::store::Store;

/// The version of every feature a client holds, one table per collection:
/// entries of 24 bytes instead of 32 with the collection in the key, which
/// matters with 1,000 clients holding thousands of features each (the CPU
/// per delivery measured the same). foldhash rather than SipHash: these
/// tables are touched once per delivery per client on the fan-out path.
#[derive(Debug, Clone, Default)]
struct Known([hashbrown::HashMap<FeatureId, Seq>; Collection::ALL.len()]);

impl Known {
    fn len(&self) -> usize {
        self.0.iter().map(hashbrown::HashMap::len).sum()
    }

    fn clear(&mut self) {
        self.0.iter_mut().for_each(hashbrown::HashMap::clear);
    }

    fn table(&mut self, collection: Collection) -> &mut hashbrown::HashMap<FeatureId, Seq> {
        &mut self.0[collection.index()]
    }

    fn keys(&self) -> Vec<(Collection, FeatureId)> {
        Collection::ALL
            .iter()
            .flat_map(|c| self.0[c.index()].keys().map(|id| (*c, Arc::clone(id))))
            .collect()
    }
}

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
    /// holds, if any (for field-level deltas).
    Upsert {
        /// The collection.
        collection: Collection,
        /// The feature in its current version.
        feature: &'f Feature,
        /// The version the client had.
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

/// One subscriber's view.
#[derive(Debug, Clone)]
pub struct View {
    viewport: Viewport,
    /// The version of every feature the client holds.
    known: Known,
    /// The store seq the client's state is consistent with.
    seq: Seq,
}

impl View {
    /// A view of `viewport` holding nothing yet, at seq 0.
    pub fn new(viewport: Viewport) -> View {
        View {
            viewport,
            known: Known::default(),
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

    /// How many features the client holds.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether the client holds nothing.
    pub fn is_empty(&self) -> bool {
        self.known.len() == 0
    }

    /// Every feature the viewport shows now, in collection then id order;
    /// the client is assumed to replace its state with them.
    pub fn snapshot<'s>(&mut self, store: &'s Store) -> Vec<(Collection, &'s Feature)> {
        self.known.clear();
        let shown = shown(store, &self.viewport);
        for (collection, feature) in &shown {
            self.known
                .table(*collection)
                .insert(Arc::clone(&feature.id), feature.seq);
        }
        self.seq = store.seq();
        shown
    }

    /// Starts a tick whose feature states are consistent with `tick_seq`.
    /// Returns false, and the tick must be skipped, when the view is already
    /// at or past it (a viewport move or resume read a newer store).
    pub fn begin_tick(&mut self, tick_seq: Seq) -> bool {
        if tick_seq <= self.seq {
            return false;
        }
        self.seq = tick_seq;
        true
    }

    /// Brings one changed feature up to date: `current` is its state at the
    /// tick's seq (`None` when gone, with `gone` saying why).
    pub fn update<'f>(
        &mut self,
        collection: Collection,
        id: &FeatureId,
        current: Option<&'f Feature>,
        gone: RemoveReason,
    ) -> Option<Item<'f>> {
        // Updated in place when held, so the common case clones no id: the
        // same `Arc` is shared by every client's table.
        let known = self.known.table(collection);
        match current {
            Some(feature) if self.viewport.shows(collection, feature) => {
                let previous = match known.get_mut(id) {
                    Some(seq) => Some(std::mem::replace(seq, feature.seq)),
                    None => known.insert(Arc::clone(id), feature.seq),
                };
                (previous != Some(feature.seq)).then_some(Item::Upsert {
                    collection,
                    feature,
                    previous,
                })
            }
            _ => {
                known.remove(id)?;
                let reason = match current {
                    None => gone,
                    Some(f) if !f.shape.intersects_rect(&self.viewport.bbox) => {
                        RemoveReason::LeftViewport
                    }
                    Some(_) => RemoveReason::Filtered,
                };
                Some(Item::Remove {
                    collection,
                    id: Arc::clone(id),
                    reason,
                })
            }
        }
    }

    /// Brings the client up to the store's current seq from what it holds:
    /// the collapsed form of every diff it missed (used when a client fell
    /// behind and its ticks were dropped).
    pub fn catch_up<'s>(&mut self, store: &'s Store) -> Vec<Item<'s>> {
        let viewport = self.viewport.clone();
        self.move_to(store, viewport)
    }

    /// Moves the view to `viewport` at the store's current seq: the items
    /// are what enters, what leaves, and what changed meanwhile.
    pub fn move_to<'s>(&mut self, store: &'s Store, viewport: Viewport) -> Vec<Item<'s>> {
        self.viewport = viewport;
        let mut items = Vec::new();
        let held = self.known.keys();
        for (collection, id) in held {
            let current = store.get(collection, &id);
            if let Some(item) = self.update(collection, &id, current, RemoveReason::Deleted) {
                items.push(item);
            }
        }
        // Held features were brought up to date above; add what enters.
        for (collection, feature) in shown(store, &self.viewport) {
            if let hashbrown::hash_map::Entry::Vacant(entry) =
                self.known.table(collection).entry(Arc::clone(&feature.id))
            {
                entry.insert(feature.seq);
                items.push(Item::Upsert {
                    collection,
                    feature,
                    previous: None,
                });
            }
        }
        self.seq = store.seq();
        items
    }

    /// Resumes a client that holds a snapshot of this view's viewport as of
    /// `since`: the items bring it to the store's current seq. `None` when
    /// the change log no longer reaches back to `since`; the client then
    /// needs a fresh snapshot.
    pub fn resume<'s>(&mut self, store: &'s Store, since: Seq) -> Option<Vec<Item<'s>>> {
        if since > store.seq() {
            return None;
        }
        let mut candidates: Vec<(Collection, FeatureId, RemoveReason)> = store
            .log()
            .since(since)?
            .filter(|r| self.viewport.may_concern(r.collection, &r.touched))
            .map(|r| {
                (
                    r.collection,
                    Arc::clone(&r.id),
                    RemoveReason::gone(&r.cause),
                )
            })
            .collect();
        // The last change of each feature decides its removal reason.
        candidates.reverse();
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|(c, id, _)| seen.insert((*c, Arc::clone(id))));
        self.snapshot(store);
        let mut items = Vec::new();
        for (collection, id, gone) in candidates {
            match store.get(collection, &id) {
                Some(feature) if self.viewport.shows(collection, feature) => {
                    items.push(Item::Upsert {
                        collection,
                        feature,
                        previous: None,
                    });
                }
                current => items.push(Item::Remove {
                    collection,
                    id,
                    reason: match current {
                        None => gone,
                        Some(f) if !f.shape.intersects_rect(&self.viewport.bbox) => {
                            RemoveReason::LeftViewport
                        }
                        Some(_) => RemoveReason::Filtered,
                    },
                }),
            }
        }
        Some(items)
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
        /// queued tick at once (merged, as `hub::Tick::absorb_queued` does).
        Tick(bool),
        Move(f64, f64, f64, bool),
        Fork,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u8..30, 4.9f64..5.3, 50.9f64..51.3, any::<bool>(), any::<bool>())
                .prop_map(|(i, x, y, a, e)| Step::Unit(i, x, y, a, e)),
            2 => (0u8..6, 4.9f64..5.3, 50.9f64..51.3, 0.0f64..0.15).prop_map(|(i, x, y, s)| Step::Hazard(i, x, y, s)),
            2 => (0u8..30).prop_map(Step::Delete),
            1 => (0i64..100).prop_map(Step::Expire),
            4 => any::<bool>().prop_map(Step::Tick),
            2 => (4.9f64..5.3, 50.9f64..51.3, 0.01f64..0.3, any::<bool>()).prop_map(|(x, y, s, f)| Step::Move(x, y, s, f)),
            1 => Just(Step::Fork),
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn snapshot_plus_diffs_equals_a_fresh_snapshot(steps in proptest::collection::vec(step(), 1..80)) {
            let mut store = Store::new(StoreConfig::default());
            let mut now = 0i64;
            let mut view = View::new(viewport(5.0, 51.0, 0.15, false));
            let mut client: Client = view.snapshot(&store).into_iter().map(|(c, f)| ((c, f.id.to_string()), f.seq)).collect();
            let mut routed_up_to = store.seq();
            // Ticks routed but not yet taken by the session.
            type Routed = Vec<((Collection, FeatureId), (Seq, Option<Feature>, RemoveReason))>;
            let mut queued: Vec<Routed> = Vec::new();
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
                        // The hub routes every change since its last tick that may concern
                        // the viewport, coalesced per feature, with the feature's state at
                        // the tick, and queues it for the session.
                        let tick_seq = store.seq();
                        let mut latest: BTreeMap<(Collection, FeatureId), RemoveReason> = BTreeMap::new();
                        for record in store.log().since(routed_up_to).expect("log holds everything") {
                            if view.viewport().may_concern(record.collection, &record.touched) {
                                latest.insert((record.collection, Arc::clone(&record.id)), RemoveReason::gone(&record.cause));
                            }
                        }
                        routed_up_to = tick_seq;
                        queued.push(
                            latest
                                .into_iter()
                                .map(|((c, id), gone)| {
                                    let state = store.get(c, &id).cloned();
                                    ((c, id), (tick_seq, state, gone))
                                })
                                .collect::<Vec<_>>(),
                        );
                        if deliver {
                            // The session takes every queued tick as one: each feature
                            // once, its latest delivery; items from ticks the view has
                            // already passed (a viewport move read the store after
                            // they were routed) are skipped.
                            let mut merged: BTreeMap<(Collection, FeatureId), (Seq, Option<Feature>, RemoveReason)> = BTreeMap::new();
                            for tick in queued.drain(..) {
                                merged.extend(tick);
                            }
                            let from = view.seq();
                            if view.begin_tick(tick_seq) {
                                let items: Vec<Item<'_>> = merged
                                    .iter()
                                    .filter(|(_, (routed_at, _, _))| *routed_at > from)
                                    .filter_map(|((c, id), (_, state, gone))| view.update(*c, id, state.as_ref(), *gone))
                                    .collect();
                                apply(&mut client, &items);
                            }
                            prop_assert_eq!(&client, &fresh(&store, view.viewport()));
                        }
                        None
                    }
                    Step::Move(x, y, s, f) => {
                        // A move first brings the routing up to date (the server
                        // updates its router before it reads the store).
                        let items = view.move_to(&store, viewport(x, y, s, f));
                        apply(&mut client, &items);
                        prop_assert_eq!(&client, &fresh(&store, view.viewport()));
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
