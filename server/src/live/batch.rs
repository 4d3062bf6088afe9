//! One tick's changes as every connection receives them: one [`Delivery`]
//! per changed feature (coalesced, encoded once), kept in Z-order
//! ([`beeld_layers::zorder`]) so that a subscription finds what its
//! viewport shows as a few runs of shared, already-joined bytes.
//!
//! The hub builds one [`Batch`] per tick and hands the same `Arc` to every
//! connection that may be concerned. Each session then searches it with
//! its own viewports, so routing costs the hub O(changes + subscriptions)
//! and a session O(edge of its viewport), not O(deliveries): a change in
//! a cell wholly inside a viewport is never looked at on its own. Before
//! this, the hub pushed one `(subscription, Arc<Delivery>)` per delivery
//! to every connection, and each session tested each one: with 1,000
//! clients at 10,000 moves/s that was 420,000 deliveries per tick, each
//! with an `Arc` increment, a queue push and a view test (BENCHMARKS.md).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use beeld_layers::occupancy::Occupancy;
use beeld_layers::view::{Before, Change, RemoveReason};
use beeld_layers::zorder::{self, Cell, Found};
use beeld_layers::{Collection, Feature, FeatureId, Seq};
use geo::{Intersects, Rect};
use serde_json::value::RawValue;

use crate::output::{Precision, push_feature_with, push_geometry, push_json_str, push_properties};

/// One changed feature in one tick, shared by every connection that gets it.
#[derive(Debug)]
pub struct Delivery {
    /// The collection.
    pub collection: Collection,
    /// The id.
    pub id: FeatureId,
    /// The box of the feature before and after the tick's changes, joined:
    /// every viewport that could have seen either state touches it.
    pub touched: Rect<f64>,
    /// Its state at the tick's seq; `None` when gone.
    pub feature: Option<Arc<Feature>>,
    /// The seq of the first change after `previous`: `previous` is the
    /// feature's state from its own seq up to this one. The first change
    /// the tick covers, unless `previous` is from within the tick
    /// (`first_change_after`).
    pub first: Seq,
    /// The newest version the hub knew before this tick (routed, or
    /// encoded for a snapshot since): the feature's state just before
    /// `first` when older than it, and so what every client that kept up
    /// holds and the base of the shared field-level delta.
    pub previous: Option<Arc<Feature>>,
    /// Why it is gone, when it is.
    pub gone: RemoveReason,
    /// The feature as GeoJSON at full precision, encoded once.
    pub json: Option<Arc<str>>,
    /// Other encodings (a coordinate precision, a delta from `previous`),
    /// made by the first connection that needs one and shared with the rest.
    /// Without this every delta subscriber re-encoded and re-parsed every
    /// feature it received, which made the low-bandwidth option the most
    /// expensive one on the server. One slot per option, set once, so that
    /// the connections that follow read without a lock (a `Mutex` here cost
    /// about 0.25 µs per delivery with 1,000 clients); the table itself is
    /// only allocated when some connection asks. Shared by the deliveries
    /// of the same version from the same base in every phase group's batch.
    pub(super) variants: Arc<Variants>,
}

/// A feature version's encodings other than the full one: one slot per
/// coordinate precision, whole or as a delta ([`Delivery::variant`]).
pub type Variants = OnceLock<Box<[OnceLock<Box<str>>; VARIANTS]>>;

/// Coordinate precisions 0–15 and full, each whole or as a delta.
const VARIANTS: usize = 2 * (MAX_PRECISION as usize + 2);

/// The most decimals a subscription may ask for.
pub const MAX_PRECISION: u8 = 15;

impl Delivery {
    /// The feature at `precision`, as a delta from `previous` when `delta`,
    /// encoded once per tick for every connection that asks the same.
    pub fn variant(&self, precision: Precision, delta: bool) -> Option<Cow<'_, str>> {
        let feature = self.feature.as_deref()?;
        if precision.is_none() && !delta {
            return self.json.as_deref().map(Cow::Borrowed);
        }
        let encode = || -> Box<str> {
            match self.previous.as_deref().filter(|_| delta) {
                Some(base) => encode_delta(base, feature, precision).into(),
                None => {
                    let mut json = String::with_capacity(320);
                    push_feature_with(&mut json, feature, precision);
                    json.into()
                }
            }
        };
        let Some(slot) = variant_slot(precision, delta) else {
            return Some(Cow::Owned(encode().into()));
        };
        let table = self
            .variants
            .get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
        Some(Cow::Borrowed(table[slot].get_or_init(encode)))
    }

    /// The seq of the version [`Delivery::variant`] diffs against.
    pub fn previous_seq(&self) -> Option<Seq> {
        self.previous.as_ref().map(|f| f.seq)
    }

    /// The delivery as the view decides it, for a batch routed at `routed`.
    pub fn change(&self, routed: Seq) -> Change<'_> {
        Change {
            collection: self.collection,
            id: &self.id,
            routed,
            current: self.feature.as_deref(),
            gone: self.gone,
            first: self.first,
            // A feature the hub has no version of may well have existed (it
            // has not changed since the server started).
            before: self
                .previous
                .as_deref()
                .map_or(Before::Unknown, Before::Was),
        }
    }
}

/// Only what changed from `old` to `new`:
/// `{"id", "delta": true, "geometry"?, "set", "unset"?}` (docs/protocol.md).
pub fn encode_delta(old: &Feature, new: &Feature, precision: Precision) -> String {
    let mut geometry = String::new();
    push_geometry(&mut geometry, &new.shape, precision);
    let mut old_geometry = String::new();
    push_geometry(&mut old_geometry, &old.shape, precision);
    let mut old_properties = String::new();
    push_properties(&mut old_properties, old);
    let mut new_properties = String::new();
    push_properties(&mut new_properties, new);
    // Values are compared as text, not parsed: our own encoder wrote both,
    // so equal values read the same (building `serde_json::Value` trees
    // made deltas the hub's largest cost). A failure to parse would only
    // make the delta larger, never wrong, as `set` then carries every field.
    type Fields<'a> = BTreeMap<String, &'a RawValue>;
    let old: Fields<'_> = serde_json::from_str(&old_properties).unwrap_or_default();
    let new_fields: Fields<'_> = serde_json::from_str(&new_properties).unwrap_or_default();
    let mut json = String::from("{\"id\":");
    push_json_str(&mut json, &new.id);
    json.push_str(",\"delta\":true");
    if old_geometry != geometry {
        json.push_str(",\"geometry\":");
        json.push_str(&geometry);
    }
    json.push_str(",\"set\":{");
    let mut first = true;
    for (key, value) in &new_fields {
        if old.get(key).map(|v| v.get()) == Some(value.get()) {
            continue;
        }
        if !first {
            json.push(',');
        }
        first = false;
        push_json_str(&mut json, key);
        json.push(':');
        json.push_str(value.get());
    }
    json.push('}');
    let mut unset = old
        .keys()
        .filter(|k| !new_fields.contains_key(*k))
        .peekable();
    if unset.peek().is_some() {
        json.push_str(",\"unset\":[");
        for (i, key) in unset.enumerate() {
            if i > 0 {
                json.push(',');
            }
            push_json_str(&mut json, key);
        }
        json.push(']');
    }
    json.push('}');
    json
}

/// Nodes of the Z-order search with at most this many changes on a
/// viewport's edge are tested change by change rather than split further.
const SMALL: usize = 4;

/// Sections with fewer bound deliveries are searched by a scan: testing
/// each box costs less than walking the cells (short ticks make small
/// batches, searched by every connection 100 times a second).
const SCAN_BELOW: usize = 256;

/// Whether `inner` lies within `outer`, edges included.
fn contains(outer: &Rect<f64>, inner: &Rect<f64>) -> bool {
    outer.min().x <= inner.min().x
        && outer.min().y <= inner.min().y
        && inner.max().x <= outer.max().x
        && inner.max().y <= outer.max().y
}

/// One tick, shared by every connection.
#[derive(Debug)]
pub struct Batch {
    /// The tick's seq: every delivery's state is consistent with it.
    pub seq: Seq,
    /// The seq of the hub's tick before this one. A view at exactly this
    /// seq holds every delivery's `previous` that is no newer, which lets
    /// it take shared runs of deltas.
    pub from: Seq,
    /// Per collection: the deliveries with a cell, sorted by it, then the
    /// rest (gone, or across a cell boundary).
    deliveries: Vec<Delivery>,
    /// The cell of each delivery that has one, at the same index.
    cells: Vec<Cell>,
    sections: Vec<Section>,
    /// The bound deliveries joined, per encoding: made by the hub for the
    /// encodings its subscriptions take runs in ([`Batch::prepare`]),
    /// otherwise by the first connection that asks.
    runs: [OnceLock<Joined>; VARIANTS],
}

#[derive(Debug)]
struct Section {
    collection: Collection,
    /// Deliveries with a cell (so with a current state), sorted by cell.
    bound: Range<usize>,
    /// Deliveries without: gone, or crossing a cell boundary.
    loose: Range<usize>,
    /// Every delivery's `touched`, joined.
    bbox: Rect<f64>,
    /// Where they are, coarsely: which subscriptions they may concern.
    occupancy: Option<Occupancy>,
}

/// Cells of a section's [`Occupancy`]: the Netherlands at its finest is
/// about 45,000 (building them took about 0.3 ms per tick in perf).
const OCCUPANCY_CELLS: usize = 1 << 16;

/// Every bound delivery in one encoding, each followed by a comma: a run
/// of adjacent deliveries is one slice.
#[derive(Debug)]
struct Joined {
    text: String,
    /// Where each delivery starts; one more at the end.
    starts: Vec<usize>,
}

impl Joined {
    /// The deliveries `range` (adjacent, bound) as one run of encoding
    /// `slot`.
    fn run(&self, slot: usize, range: Range<usize>) -> Run<'_> {
        // Without the comma after the last.
        let bytes = self.starts[range.start]..self.starts[range.end] - 1;
        Run {
            text: &self.text[bytes.clone()],
            count: range.len(),
            slot,
            bytes,
        }
    }
}

/// A run of upserts in one of a batch's joined encodings.
#[derive(Debug, Clone)]
pub struct Run<'b> {
    /// The features, comma-separated.
    pub text: &'b str,
    /// How many.
    pub count: usize,
    slot: usize,
    bytes: Range<usize>,
}

impl Batch {
    /// The run's bytes, sharing the batch's own: a large run goes to the
    /// socket without being copied into the message.
    pub fn share(self: &Arc<Batch>, run: &Run<'_>) -> bytes::Bytes {
        bytes::Bytes::from_owner(SharedRun {
            batch: Arc::clone(self),
            slot: run.slot,
            bytes: run.bytes.clone(),
        })
    }
}

/// The owner of a shared run's bytes.
struct SharedRun {
    batch: Arc<Batch>,
    slot: usize,
    bytes: Range<usize>,
}

impl AsRef<[u8]> for SharedRun {
    fn as_ref(&self) -> &[u8] {
        // Set before the run was found, so always there.
        self.batch.runs[self.slot]
            .get()
            .and_then(|joined| joined.text.as_bytes().get(self.bytes.clone()))
            .unwrap_or_default()
    }
}

/// How a subscription searches a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// Every delivery whose box touches the viewport, one by one (the
    /// naive baseline of the fan-out benchmark).
    Naive,
    /// By cell, but one by one: for subscriptions whose upserts depend on
    /// more than position (filters), or views not at the batch's `from`.
    OneByOne,
    /// By cell, with the changes of cells wholly inside the viewport as
    /// runs of shared text in this encoding (precision, deltas).
    Runs(Precision, bool),
}

/// What a search found.
#[derive(Debug)]
pub enum Hit<'b> {
    /// Upserts, already encoded and joined by commas, each in the viewport
    /// now and (for deltas) before.
    Run(Run<'b>),
    /// A change that may concern the viewport; the view decides.
    One(&'b Delivery),
}

impl Batch {
    /// A batch of `deliveries` (one per feature) for the tick `(from, seq]`.
    pub fn new(seq: Seq, from: Seq, deliveries: Vec<Delivery>) -> Batch {
        let mut keyed: Vec<(Collection, Option<Cell>, Delivery)> = deliveries
            .into_iter()
            .map(|d| {
                let cell = d.feature.as_ref().and_then(|_| Cell::holding(&d.touched));
                (d.collection, cell, d)
            })
            .collect();
        // `None` sorts first; loose ones go after the bound ones below.
        keyed.sort_unstable_by_key(|(collection, cell, _)| (*collection, cell.is_none(), *cell));
        let mut sections: Vec<Section> = Vec::new();
        let mut cells = Vec::with_capacity(keyed.len());
        let mut ordered = Vec::with_capacity(keyed.len());
        for (i, (collection, cell, delivery)) in keyed.into_iter().enumerate() {
            match sections.last_mut() {
                Some(s) if s.collection == collection => {
                    s.bbox = beeld_layers::change::union(s.bbox, delivery.touched);
                    if cell.is_some() {
                        s.bound.end = i + 1;
                    }
                    s.loose = s.bound.end..i + 1;
                }
                _ => {
                    let bound = i..i + usize::from(cell.is_some());
                    sections.push(Section {
                        collection,
                        loose: bound.end..i + 1,
                        bound,
                        bbox: delivery.touched,
                        occupancy: None,
                    });
                }
            }
            // Loose deliveries get a placeholder: only bound ranges are searched.
            cells.push(cell.unwrap_or_default());
            ordered.push(delivery);
        }
        for section in &mut sections {
            let boxes: Vec<Rect<f64>> = ordered[section.bound.start..section.loose.end]
                .iter()
                .map(|d| d.touched)
                .collect();
            section.occupancy = Occupancy::new(&boxes, OCCUPANCY_CELLS);
        }
        Batch {
            seq,
            from,
            deliveries: ordered,
            cells,
            sections,
            runs: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Number of changed features.
    pub fn len(&self) -> usize {
        self.deliveries.len()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    /// The deliveries, in no particular order.
    #[cfg(test)]
    pub fn deliveries(&self) -> &[Delivery] {
        &self.deliveries
    }

    /// Whether any change may concern a viewport of `collections` over
    /// `bbox` (true for some viewports within a few km of a change, never
    /// false for one a change touches). O(1) per collection, so the hub
    /// can ask for every subscription each tick and wake only the
    /// connections a change is near.
    pub fn may_concern(&self, collections: &[Collection], bbox: &Rect<f64>) -> bool {
        self.sections.iter().any(|s| {
            collections.contains(&s.collection)
                && s.bbox.intersects(bbox)
                && s.occupancy.as_ref().is_none_or(|o| o.touches(bbox))
        })
    }

    /// Finds the changes of `collection` that may concern a viewport over
    /// `bbox`: each exactly once, as a run or on its own.
    pub fn search<'b>(
        &'b self,
        collection: Collection,
        bbox: &Rect<f64>,
        how: Search,
        hit: impl FnMut(Hit<'b>),
    ) {
        self.search_by(collection, bbox, how, None, hit);
    }

    /// [`Batch::search`], by a scan of the section (`Some(true)`), by cell
    /// (`Some(false)`), or by whichever costs less for its size (`None`).
    fn search_by<'b>(
        &'b self,
        collection: Collection,
        bbox: &Rect<f64>,
        how: Search,
        scan: Option<bool>,
        mut hit: impl FnMut(Hit<'b>),
    ) {
        let Some(section) = self.sections.iter().find(|s| s.collection == collection) else {
            return;
        };
        if !section.bbox.intersects(bbox) {
            return;
        }
        let one = |i: usize, hit: &mut dyn FnMut(Hit<'b>)| {
            let delivery = &self.deliveries[i];
            if delivery.touched.intersects(bbox) {
                hit(Hit::One(delivery));
            }
        };
        let joined = match how {
            Search::Naive => {
                for i in section.bound.start..section.loose.end {
                    one(i, &mut hit);
                }
                return;
            }
            Search::OneByOne => None,
            Search::Runs(precision, delta) => variant_slot(precision, delta)
                .map(|slot| (slot, self.joined(slot, precision, delta))),
        };
        if scan.unwrap_or(section.bound.len() < SCAN_BELOW)
            && let Some((slot, joined)) = joined
        {
            // A change whose box lies inside the viewport is an upsert, as
            // in a cell inside it; consecutive ones are one run.
            let mut inside: Option<usize> = None;
            for i in section.bound.clone() {
                let touched = &self.deliveries[i].touched;
                if contains(bbox, touched) {
                    inside.get_or_insert(i);
                    continue;
                }
                if let Some(start) = inside.take() {
                    hit(Hit::Run(joined.run(slot, start..i)));
                }
                one(i, &mut hit);
            }
            if let Some(start) = inside {
                hit(Hit::Run(joined.run(slot, start..section.bound.end)));
            }
            for i in section.loose.clone() {
                one(i, &mut hit);
            }
            return;
        }
        let offset = section.bound.start;
        zorder::search(
            &self.cells[section.bound.clone()],
            bbox,
            SMALL,
            |found| match found {
                Found::Inside(run) => {
                    let run = offset + run.start..offset + run.end;
                    match joined {
                        Some((slot, joined)) => hit(Hit::Run(joined.run(slot, run))),
                        None => {
                            for i in run {
                                hit(Hit::One(&self.deliveries[i]));
                            }
                        }
                    }
                }
                Found::Edge(i) => one(offset + i, &mut hit),
            },
        );
        for i in section.loose.clone() {
            one(i, &mut hit);
        }
    }

    /// Joins the deliveries in an encoding now, before sessions ask.
    pub fn prepare(&self, precision: Precision, delta: bool) {
        if let Some(slot) = variant_slot(precision, delta) {
            self.joined(slot, precision, delta);
        }
    }

    /// The bound deliveries joined in one encoding: at `precision`, and as
    /// deltas where `delta` and a view at [`Batch::from`] holds the base.
    fn joined(&self, slot: usize, precision: Precision, delta: bool) -> &Joined {
        self.runs[slot].get_or_init(|| {
            let mut text = String::new();
            // Loose deliveries are never in a run: they start where the
            // next bound one does, with no text.
            let mut starts = vec![0; self.deliveries.len() + 1];
            for section in &self.sections {
                for i in section.bound.clone() {
                    starts[i] = text.len();
                    let delivery = &self.deliveries[i];
                    // Held by a view at `from` exactly when no newer than
                    // it (`Change::at`): the choice `View::update` makes.
                    let delta =
                        delta && delivery.previous_seq().is_some_and(|seq| seq <= self.from);
                    if let Some(json) = delivery.variant(precision, delta) {
                        text.push_str(&json);
                        text.push(',');
                    }
                }
                for i in section.loose.clone() {
                    starts[i] = text.len();
                }
            }
            starts[self.deliveries.len()] = text.len();
            Joined { text, starts }
        })
    }
}

/// The slot of an encoding in a table of [`VARIANTS`]; `None` for
/// precisions too fine to keep (never asked: subscriptions are checked).
fn variant_slot(precision: Precision, delta: bool) -> Option<usize> {
    let digits = match precision {
        Some(p) if p > MAX_PRECISION => return None,
        Some(p) => usize::from(p),
        None => usize::from(MAX_PRECISION) + 1,
    };
    Some(2 * digits + usize::from(delta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::push_feature;
    use beeld_layers::attrs::{Attrs, RegionCode, UnitStatus, UnitType};
    use beeld_layers::{Shape, Timestamp};
    use geo::Coord;
    use serde_json::Value;

    fn unit(x: f64, status: &str, seq: u64) -> Feature {
        let properties = format!(r#"{{"status":"{status}","call_sign":"A-1"}}"#);
        unit_at("u1", x, 52.1, &properties, seq)
    }

    /// An ambulance of VR09 at `(x, y)` with these properties.
    pub(super) fn unit_at(id: &str, x: f64, y: f64, properties: &str, seq: u64) -> Feature {
        Feature {
            id: id.into(),
            shape: Shape::Point(Coord { x, y }),
            properties: properties.into(),
            attrs: Attrs::Unit {
                unit_type: UnitType::Ambulance,
                status: UnitStatus::Available,
                home_region: RegionCode::parse("VR09").expect("code"),
            },
            feed: "vr09".into(),
            observed_at: Timestamp(1_000),
            received_at: Timestamp(2_000),
            expires_at: None,
            seq: Seq(seq),
            place: beeld_layers::relate::Place::default(),
        }
    }

    fn delivery(previous: Feature, feature: Feature) -> Delivery {
        let mut json = String::new();
        push_feature(&mut json, &feature);
        Delivery {
            touched: feature.shape.bbox(),
            collection: Collection::Units,
            id: "u1".into(),
            first: feature.seq,
            feature: Some(Arc::new(feature)),
            previous: Some(Arc::new(previous)),
            gone: RemoveReason::Deleted,
            json: Some(json.into()),
            variants: Arc::default(),
        }
    }

    #[test]
    fn a_delta_is_encoded_once_and_shared() {
        let d = delivery(unit(5.1, "available", 7), unit(5.1, "en_route", 9));
        let first = d.variant(Some(6), true).expect("delta");
        let second = d.variant(Some(6), true).expect("delta");
        assert!(
            std::ptr::eq(first.as_ptr(), second.as_ptr()),
            "second client reuses it"
        );
        let delta: Value = serde_json::from_str(&first).expect("json");
        assert_eq!(delta["delta"], true);
        assert!(delta.get("geometry").is_none(), "did not move: {delta}");
        assert_eq!(delta["set"]["status"], "en_route");
        assert_eq!(delta["set"]["seq"], 9);
        assert!(delta["set"].get("call_sign").is_none(), "{delta}");
        // Other options get their own encodings; full precision, no delta,
        // is the hub's shared GeoJSON itself.
        let whole = d.variant(Some(6), false).expect("whole");
        assert!(whole.contains("\"type\":\"Feature\""), "{whole}");
        let full = d.variant(None, false).expect("full");
        assert!(std::ptr::eq(
            full.as_ptr(),
            d.json.as_ref().expect("json").as_ptr()
        ));
    }

    #[test]
    fn a_removed_property_is_unset_and_a_changed_one_set() {
        let mut old = unit(5.1, "available", 7);
        old.properties = r#"{"status":"available","note":"a \"quoted\" note","crew":4}"#.into();
        let mut new = unit(5.1, "available", 9);
        new.properties = r#"{"status":"available","crew":5}"#.into();
        let delta: Value = serde_json::from_str(&encode_delta(&old, &new, None)).expect("json");
        assert_eq!(delta["unset"], serde_json::json!(["note"]));
        assert_eq!(delta["set"]["crew"], 5);
        assert!(delta["set"].get("status").is_none(), "{delta}");
        assert_eq!(delta["set"]["seq"], 9);
    }

    #[test]
    fn a_moved_feature_carries_its_geometry_at_the_precision() {
        let d = delivery(
            unit(5.1, "available", 7),
            unit(5.123_456_789, "available", 8),
        );
        let delta: Value =
            serde_json::from_str(&d.variant(Some(3), true).expect("delta")).expect("json");
        assert_eq!(delta["geometry"]["coordinates"][0], 5.123);
        // Below the precision a move is no move.
        let d = delivery(unit(5.1, "available", 7), unit(5.100_01, "available", 8));
        let delta: Value =
            serde_json::from_str(&d.variant(Some(3), true).expect("delta")).expect("json");
        assert!(delta.get("geometry").is_none(), "{delta}");
    }
}

/// A batch's runs and one-by-one hits against what the view decides for
/// every delivery on its own: the same upserts, in the same encodings, and
/// the same removes.
#[cfg(test)]
mod search {
    use std::collections::BTreeMap;

    use beeld_layers::view::{Item, View, Viewport};
    use geo::coord;
    use proptest::prelude::*;

    use super::*;
    use crate::output::push_feature;
    use serde_json::Value;

    fn unit(id: &str, x: f64, y: f64, status: &str, seq: u64) -> Feature {
        super::tests::unit_at(id, x, y, &format!(r#"{{"status":"{status}"}}"#), seq)
    }

    /// One changed unit: where it was (and at which seq, relative to the
    /// batch's `from` = 100), where it is now, or gone.
    #[derive(Debug, Clone)]
    struct Move {
        before: Option<(f64, f64, u64)>,
        after: Option<(f64, f64)>,
        status_changed: bool,
    }

    fn moves() -> impl Strategy<Value = Vec<Move>> {
        let spot = (4.0..5.0f64, 51.5..52.2f64);
        let step = (-0.02..0.02f64, -0.02..0.02f64);
        proptest::collection::vec(
            (
                spot,
                step,
                0u8..10,
                // The version before: mostly up to `from`; sometimes one a
                // snapshot read within the tick (after `from`).
                prop_oneof![8 => 1u64..=100, 1 => 101u64..110],
                any::<bool>(),
            )
                .prop_map(|((x, y), (dx, dy), kind, seq, status_changed)| Move {
                    before: (kind != 0).then_some((x, y, seq)),
                    after: (kind != 1).then_some((x + dx, y + dy)),
                    status_changed,
                }),
            0..120,
        )
    }

    fn batch(moves: &[Move]) -> Batch {
        let deliveries = moves
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let id = format!("u{i}");
                let previous = m
                    .before
                    .map(|(x, y, seq)| Arc::new(unit(&id, x, y, "available", seq)));
                let status = if m.status_changed {
                    "en_route"
                } else {
                    "available"
                };
                let feature = m.after.map(|(x, y)| Arc::new(unit(&id, x, y, status, 120)));
                let boxes = previous.iter().chain(&feature).map(|f| f.shape.bbox());
                let touched = boxes.reduce(beeld_layers::change::union).expect("a state");
                let json = feature.as_ref().map(|f| {
                    let mut json = String::new();
                    push_feature(&mut json, f);
                    Arc::from(json)
                });
                let first = Seq(111);
                Delivery {
                    collection: Collection::Units,
                    id: id.into(),
                    touched,
                    first: beeld_layers::view::first_change_after(
                        previous.as_ref().map(|f| f.seq),
                        [first, first, Seq(120)],
                    ),
                    feature,
                    previous,
                    gone: RemoveReason::Deleted,
                    json,
                    variants: Arc::default(),
                }
            })
            .collect();
        Batch::new(Seq(120), Seq(100), deliveries)
    }

    /// Upserts (as parsed JSON, by id) and removes a client is sent.
    type Told = (BTreeMap<String, Value>, BTreeMap<String, String>);

    fn tell(
        batch: &Arc<Batch>,
        viewport: &Viewport,
        (how, scan): (Search, Option<bool>),
        precision: Precision,
        deltas: bool,
    ) -> Told {
        let mut view = View::new(viewport.clone());
        view.quiet_until(batch.from);
        let from = view.begin_tick(batch.seq).expect("a newer tick");
        let (mut upserts, mut removes) = (BTreeMap::new(), BTreeMap::new());
        let mut upsert = |json: &str| {
            let v: Value = serde_json::from_str(json).expect("json");
            let id = v["id"].as_str().expect("id").to_owned();
            assert!(upserts.insert(id, v).is_none(), "told twice: {json}");
        };
        batch.search_by(
            Collection::Units,
            &viewport.bbox,
            how,
            scan,
            |hit| match hit {
                Hit::Run(run) => {
                    let items: Vec<Value> = serde_json::from_str(&format!("[{}]", run.text))
                        .expect("a run is a JSON list");
                    assert_eq!(items.len(), run.count);
                    assert_eq!(&batch.share(&run)[..], run.text.as_bytes());
                    for item in items {
                        upsert(&item.to_string());
                    }
                }
                Hit::One(d) => match view.update(from, &d.change(batch.seq), deltas) {
                    Some(Item::Upsert { previous, .. }) => {
                        let delta = deltas && previous.is_some() && previous == d.previous_seq();
                        upsert(&d.variant(precision, delta).expect("a feature"));
                    }
                    Some(Item::Remove { id, reason, .. }) => {
                        assert!(
                            removes
                                .insert(id.to_string(), reason.as_str().to_owned())
                                .is_none()
                        );
                    }
                    None => {}
                },
            },
        );
        (upserts, removes)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn runs_tell_a_view_at_from_what_one_by_one_does(
            moves in moves(),
            (x, y, w, h) in (3.9..5.0f64, 51.4..52.2f64, 0.0..0.8f64, 0.0..0.6f64),
            precision in prop_oneof![Just(None), Just(Some(6u8)), Just(Some(3u8))],
            deltas in any::<bool>(),
        ) {
            let batch = Arc::new(batch(&moves));
            let viewport = Viewport {
                collections: vec![Collection::Units],
                bbox: Rect::new(coord! { x: x, y: y }, coord! { x: x + w, y: y + h }),
                filters: Vec::new(),
            };
            let naive = tell(&batch, &viewport, (Search::Naive, None), precision, deltas);
            let indexed = tell(&batch, &viewport, (Search::OneByOne, Some(false)), precision, deltas);
            let runs = (Search::Runs(precision, deltas), Some(false));
            let runs = tell(&batch, &viewport, runs, precision, deltas);
            let scanned = (Search::Runs(precision, deltas), Some(true));
            let scanned = tell(&batch, &viewport, scanned, precision, deltas);
            prop_assert_eq!(&naive, &indexed);
            prop_assert_eq!(&naive, &runs);
            prop_assert_eq!(&naive, &scanned);
            // Every viewport a change touches is woken.
            if batch.deliveries().iter().any(|d| d.touched.intersects(&viewport.bbox)) {
                prop_assert!(batch.may_concern(&viewport.collections, &viewport.bbox));
            }
        }
    }
}
