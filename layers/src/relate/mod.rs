//! Spatial relations kept current as the picture changes: region and
//! municipality attribution, units inside hazard areas (with `enter` and
//! `exit` events), counts per region and per H3 cell, nearest available
//! units, and coverage rules that raise and clear alerts.
//!
//! # Layout
//!
//! * [`Locator`]: prepared point-in-area tests (regions, municipalities and
//!   each hazard polygon); exact on edges, vertices and invalid shapes.
//! * [`HazardSet`]: the hazard polygons, prepared, behind a grid of
//!   0.05° cells; answers "which hazards cover this point".
//! * [`Relations`]: the engine the [`Store`](crate::Store) drives with every
//!   change (`old → new` of one feature). Nothing is recomputed for the whole
//!   picture on a change: a unit move touches its own hazard candidates, its
//!   grid bucket, its H3 cells and its region counters; a hazard change
//!   touches the units in its bounding box.
//! * [`EventLog`]: bounded, numbered `enter`/`exit`/alert events for
//!   streaming (like [`ChangeLog`](crate::ChangeLog), with its own numbers).
//!
//! # Invariants
//!
//! * For every hazard `h` and unit `u`: `u ∈ h.units ⇔ h ∈ u.hazards ⇔ h`
//!   covers `u`'s position ([`Locator`] semantics). Property-tested against
//!   a brute-force model.
//! * Every change of that relation emits exactly one event, in apply order.
//! * Region and H3 counters equal a recount from scratch.
//!
//! Distances are great-circle (haversine, mean Earth radius 6,371,008.8 m).

mod locator;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::num::NonZeroU16;

use geo::{BooleanOps, ChamberlainDuquetteArea, Coord, Geometry, MultiPolygon, Rect};
use h3o::{CellIndex, LatLng, Resolution};
use hashbrown::{HashMap, HashSet};

pub use self::locator::{Locator, covers_brute};
use crate::attrs::{Attrs, IncidentType, RegionCode, UnitStatus, UnitType};
use crate::change::Seq;
use crate::collection::Collection;
use crate::feature::{FeatureId, Shape};
use crate::time::Timestamp;

/// Property names the server writes from [`Place`] on incidents, units and
/// hazards; a feed sending them is ignored for these fields.
pub const ATTRIBUTION_PROPERTIES: &[&str] = &["region", "municipality", "regions"];

/// Where a feature is: filled in by the store on every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Place {
    /// The veiligheidsregio covering a point (the lowest code on a shared border).
    pub region: Option<RegionCode>,
    /// The gemeente covering a point, as its number (`GM0852` → 852).
    pub municipality: Option<NonZeroU16>,
    /// For areas: every region the area overlaps, as bit `n - 1` for `VRnn`.
    pub regions: u32,
}

impl Place {
    /// The `GMxxxx` code of the municipality.
    pub fn municipality_code(&self) -> Option<String> {
        self.municipality.map(|n| format!("GM{n:04}"))
    }

    /// The regions of an area, ascending.
    pub fn region_codes(&self) -> Vec<RegionCode> {
        (1..=25u8)
            .filter(|n| self.regions & (1 << (n - 1)) != 0)
            .filter_map(|n| RegionCode::parse(&format!("VR{n:02}")))
            .collect()
    }
}

/// Parses `GM0852` into 852.
pub fn parse_municipality(code: &str) -> Option<NonZeroU16> {
    let digits = code.get(2..)?;
    if !code.get(..2)?.eq_ignore_ascii_case("gm") {
        return None;
    }
    NonZeroU16::new(digits.parse().ok()?)
}

/// What is counted: units by type and status, incidents by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Category(u8);

const N_UNIT_CATEGORIES: usize = 6 * 4;
/// Number of categories (units 6 types × 4 statuses, incidents 10 types).
pub const N_CATEGORIES: usize = N_UNIT_CATEGORIES + 10;

fn position<T: PartialEq>(all: &[T], value: &T) -> u8 {
    all.iter()
        .position(|v| v == value)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(0)
}

impl Category {
    /// The category of a feature's typed properties, if it is counted.
    pub fn of(attrs: &Attrs) -> Option<Category> {
        match attrs {
            Attrs::Unit {
                unit_type, status, ..
            } => Some(Category(
                position(UnitType::ALL, unit_type) * 4 + position(UnitStatus::ALL, status),
            )),
            Attrs::Incident { incident_type, .. } => Some(Category(
                N_UNIT_CATEGORIES as u8 + position(IncidentType::ALL, incident_type),
            )),
            _ => None,
        }
    }

    /// Every category, in order.
    pub fn all() -> impl Iterator<Item = Category> {
        (0..N_CATEGORIES as u8).map(Category)
    }

    /// `units` or `incidents`.
    pub fn collection(self) -> Collection {
        if usize::from(self.0) < N_UNIT_CATEGORIES {
            Collection::Units
        } else {
            Collection::Incidents
        }
    }

    /// The `type` value.
    pub fn type_str(self) -> &'static str {
        let i = usize::from(self.0);
        if i < N_UNIT_CATEGORIES {
            UnitType::ALL[i / 4].as_str()
        } else {
            IncidentType::ALL[i - N_UNIT_CATEGORIES].as_str()
        }
    }

    /// The `status` value (units only).
    pub fn status_str(self) -> Option<&'static str> {
        let i = usize::from(self.0);
        (i < N_UNIT_CATEGORIES).then(|| UnitStatus::ALL[i % 4].as_str())
    }

    /// Whether a unit of this category matches a type and status filter.
    pub fn matches_unit(self, unit_type: Option<UnitType>, status: Option<UnitStatus>) -> bool {
        let i = usize::from(self.0);
        i < N_UNIT_CATEGORIES
            && unit_type.is_none_or(|t| UnitType::ALL[i / 4] == t)
            && status.is_none_or(|s| UnitStatus::ALL[i % 4] == s)
    }
}

/// H3 resolutions that are counted. A point is counted in its resolution-9
/// cell and in that cell's ancestors (H3's logical hierarchy, as
/// `cellToParent` roll-ups do), so a parent's count is the sum of its
/// children's, and a move costs one coordinate-to-cell conversion. Near a
/// cell edge the ancestor can differ from the resolution-r cell that
/// geometrically contains the point; that is inherent to H3's aperture 7.
pub const H3_RESOLUTIONS: std::ops::RangeInclusive<u8> = 4..=9;

fn h3_cell(p: Coord<f64>) -> Option<CellIndex> {
    LatLng::new(p.y, p.x)
        .ok()
        .map(|ll| ll.to_cell(Resolution::Nine))
}

/// Bits 56–63 of an H3 cell index are the fixed mode (1 = cell) and
/// reserved zeros; [`h3_key`] stores the category there instead.
const H3_LOW: u64 = (1 << 56) - 1;

/// One `u64` for (cell, category).
fn h3_key(cell: CellIndex, category: Category) -> u64 {
    (u64::from(cell) & H3_LOW) | (u64::from(category.0) << 56)
}

/// The inverse of [`h3_key`].
fn h3_unkey(key: u64) -> (u64, Category) {
    ((key & H3_LOW) | (1 << 59), Category((key >> 56) as u8))
}

/// Grid cell size of the unit and hazard buckets, in degrees (about 5 km).
const GRID_DEG: f64 = 0.05;

fn grid_cell(p: Coord<f64>) -> (i32, i32) {
    // Saturating casts: coordinates are range-checked on ingest anyway.
    (
        (p.x / GRID_DEG).floor() as i32,
        (p.y / GRID_DEG).floor() as i32,
    )
}

/// Points by 0.05° bucket, with their position inline so that a join reads
/// a bucket's points from one contiguous block: `(point id, position)`.
pub type PointBuckets = HashMap<(i32, i32), Vec<(u32, Coord<f64>)>>;

/// Buckets points (`(id, position)`) for [`HazardSet::join`].
pub fn bucket_points(points: impl IntoIterator<Item = (u32, Coord<f64>)>) -> PointBuckets {
    let mut buckets = PointBuckets::new();
    for (id, p) in points {
        buckets.entry(grid_cell(p)).or_default().push((id, p));
    }
    buckets
}

/// Mean Earth radius (IUGG), metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres (haversine).
///
/// ```
/// use beeld_layers::relate::haversine_m;
/// use geo::coord;
/// // Maastricht to Valkenburg aan de Geul: about 11 km.
/// let d = haversine_m(coord! { x: 5.6909, y: 50.8514 }, coord! { x: 5.8326, y: 50.8652 });
/// assert!((9_000.0..11_000.0).contains(&d));
/// ```
pub fn haversine_m(a: Coord<f64>, b: Coord<f64>) -> f64 {
    let (la1, la2) = (a.y.to_radians(), b.y.to_radians());
    let dla = la2 - la1;
    let dlo = (b.x - a.x).to_radians();
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Metres per degree of latitude on the mean sphere.
const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

/// The hazard polygons, prepared, behind a grid of 0.05° buckets.
#[derive(Debug, Clone, Default)]
pub struct HazardSet {
    slots: Vec<Option<PreparedHazard>>,
    free: Vec<u32>,
    grid: HashMap<(i32, i32), Vec<u32>>,
    /// Hazards spanning more than [`MAX_BUCKETS`] buckets (a continent-sized
    /// polygon) are checked for every point instead of filling the grid.
    large: Vec<u32>,
}

/// Most grid buckets one hazard is entered in (about 1,000 km × 1,000 km).
const MAX_BUCKETS: i64 = 40_000;

fn bucket_count(((x0, y0), (x1, y1)): ((i32, i32), (i32, i32))) -> i64 {
    (i64::from(x1) - i64::from(x0) + 1) * (i64::from(y1) - i64::from(y0) + 1)
}

#[derive(Debug, Clone)]
struct PreparedHazard {
    locator: Locator,
    bbox: Rect<f64>,
    geometry: Geometry<f64>,
}

fn grid_range(bbox: &Rect<f64>) -> ((i32, i32), (i32, i32)) {
    (grid_cell(bbox.min()), grid_cell(bbox.max()))
}

impl HazardSet {
    /// Adds a polygon; returns its slot.
    pub fn insert(&mut self, geometry: Geometry<f64>, bbox: Rect<f64>) -> u32 {
        let hazard = PreparedHazard {
            locator: Locator::new(std::slice::from_ref(&geometry)),
            bbox,
            geometry,
        };
        let slot = if let Some(slot) = self.free.pop() {
            self.slots[slot as usize] = Some(hazard);
            slot
        } else {
            self.slots.push(Some(hazard));
            u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
        };
        let range = grid_range(&bbox);
        if bucket_count(range) > MAX_BUCKETS {
            self.large.push(slot);
            return slot;
        }
        let ((x0, y0), (x1, y1)) = range;
        for x in x0..=x1 {
            for y in y0..=y1 {
                self.grid.entry((x, y)).or_default().push(slot);
            }
        }
        slot
    }

    /// Removes a polygon.
    pub fn remove(&mut self, slot: u32) {
        let Some(hazard) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        let range = grid_range(&hazard.bbox);
        self.free.push(slot);
        if bucket_count(range) > MAX_BUCKETS {
            self.large.retain(|s| *s != slot);
            return;
        }
        let ((x0, y0), (x1, y1)) = range;
        for x in x0..=x1 {
            for y in y0..=y1 {
                if let Some(bucket) = self.grid.get_mut(&(x, y)) {
                    bucket.retain(|s| *s != slot);
                    if bucket.is_empty() {
                        self.grid.remove(&(x, y));
                    }
                }
            }
        }
    }

    /// Calls `found` for every hazard covering `p`, in slot order of its bucket.
    #[inline]
    pub fn for_each_covering(&self, p: Coord<f64>, mut found: impl FnMut(u32)) {
        let bucket = self.grid.get(&grid_cell(p)).map_or(&[][..], Vec::as_slice);
        for slot in bucket.iter().chain(&self.large) {
            let Some(hazard) = &self.slots[*slot as usize] else {
                continue;
            };
            let (lo, hi) = (hazard.bbox.min(), hazard.bbox.max());
            if p.x >= lo.x && p.x <= hi.x && p.y >= lo.y && p.y <= hi.y && hazard.locator.covers(p)
            {
                found(*slot);
            }
        }
    }

    /// Every `(point, hazard)` pair where the hazard covers the point: the
    /// snapshot join. Hazard by hazard, it reads only the point buckets under
    /// the hazard's bounding box, so points far from any hazard cost nothing,
    /// and each hazard's prepared grid is loaded into cache once (visiting
    /// buckets first and hazards second was 3× slower from cache misses).
    pub fn join(&self, points: &PointBuckets, mut found: impl FnMut(u32, u32)) {
        for (slot, hazard) in self.slots.iter().enumerate() {
            let Some(hazard) = hazard else {
                continue;
            };
            let slot = u32::try_from(slot).unwrap_or(u32::MAX);
            let range = grid_range(&hazard.bbox);
            let (lo, hi) = (hazard.bbox.min(), hazard.bbox.max());
            let mut test = |bucket: &[(u32, Coord<f64>)]| {
                for (id, p) in bucket {
                    if p.x >= lo.x
                        && p.x <= hi.x
                        && p.y >= lo.y
                        && p.y <= hi.y
                        && hazard.locator.covers(*p)
                    {
                        found(*id, slot);
                    }
                }
            };
            if bucket_count(range) > MAX_BUCKETS {
                points.values().for_each(|bucket| test(bucket));
                continue;
            }
            let ((x0, y0), (x1, y1)) = range;
            for y in y0..=y1 {
                for x in x0..=x1 {
                    if let Some(bucket) = points.get(&(x, y)) {
                        test(bucket);
                    }
                }
            }
        }
    }

    /// Whether hazard `slot` covers `p`.
    pub fn covers(&self, slot: u32, p: Coord<f64>) -> bool {
        self.slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|h| h.locator.covers(p))
    }

    /// Great-circle distance in metres from `p` to the hazard (0 inside),
    /// or `None` when it is more than `limit_m` away. Edges are measured in
    /// a local equirectangular frame around `p`, accurate to well under 0.1%
    /// at the tens of kilometres coverage rules use.
    pub fn distance_m(&self, slot: u32, p: Coord<f64>, limit_m: f64) -> Option<f64> {
        let hazard = self.slots.get(slot as usize)?.as_ref()?;
        let k = p.y.to_radians().cos().max(1e-6);
        let (dlat, dlon) = (limit_m / M_PER_DEG, limit_m / (M_PER_DEG * k));
        let (lo, hi) = (hazard.bbox.min(), hazard.bbox.max());
        if p.x < lo.x - dlon || p.x > hi.x + dlon || p.y < lo.y - dlat || p.y > hi.y + dlat {
            return None;
        }
        if hazard.locator.covers(p) {
            return Some(0.0);
        }
        let local = |c: Coord<f64>| ((c.x - p.x) * M_PER_DEG * k, (c.y - p.y) * M_PER_DEG);
        let mut best = f64::INFINITY;
        let polygons: Vec<&geo::Polygon<f64>> = match &hazard.geometry {
            Geometry::Polygon(polygon) => vec![polygon],
            Geometry::MultiPolygon(mp) => mp.0.iter().collect(),
            _ => Vec::new(),
        };
        for polygon in polygons {
            for ring in std::iter::once(polygon.exterior()).chain(polygon.interiors()) {
                for w in ring.0.windows(2) {
                    let (ax, ay) = local(w[0]);
                    let (bx, by) = local(w[1]);
                    let (ex, ey) = (bx - ax, by - ay);
                    let len2 = ex * ex + ey * ey;
                    let t = if len2 > 0.0 {
                        (-(ax * ex + ay * ey) / len2).clamp(0.0, 1.0)
                    } else {
                        0.0
                    };
                    let (cx, cy) = (ax + t * ex, ay + t * ey);
                    best = best.min((cx * cx + cy * cy).sqrt());
                }
            }
        }
        (best <= limit_m).then_some(best)
    }

    /// The bounding box of hazard `slot`.
    pub fn bbox(&self, slot: u32) -> Option<Rect<f64>> {
        self.slots.get(slot as usize)?.as_ref().map(|h| h.bbox)
    }

    /// Number of hazards.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A standing coverage rule: alert while fewer than `min_units` units
/// (of a type and status) are at the target.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Where the units must be.
    pub target: RuleTarget,
    /// Only units of this type count (any type when `None`).
    pub unit_type: Option<UnitType>,
    /// Only units with this status count (any status when `None`).
    pub status: Option<UnitStatus>,
    /// The alert is active while the count is below this (1 = "no unit").
    pub min_units: u32,
}

/// Where a [`Rule`] counts units.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleTarget {
    /// Within `radius_km` of any point of the hazard (inside it included).
    NearHazard {
        /// The hazard's id.
        hazard: FeatureId,
        /// Kilometres, great-circle.
        radius_km: f64,
    },
    /// Inside the region.
    InRegion {
        /// The region.
        region: RegionCode,
    },
}

/// Why a rule was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// The radius is not a positive number of at most 500 km.
    #[error("radius_km must be a number above 0 and at most 500, got {0}")]
    Radius(f64),
    /// `min_units` is zero: such a rule could never alert.
    #[error("min_units must be at least 1; a rule with 0 can never alert")]
    MinUnits,
    /// Already [`MAX_RULES`] rules: every rule is evaluated on every
    /// change it may concern, so their number is bounded.
    #[error("there are already {MAX_RULES} rules; delete rules that are no longer needed")]
    TooMany,
}

/// The most coverage rules registered at once.
pub const MAX_RULES: usize = 1_000;

/// A registered rule and its live state.
#[derive(Debug, Clone)]
pub struct RuleState {
    /// The rule's id.
    pub id: u64,
    /// The rule.
    pub rule: Rule,
    /// Units counted now.
    pub count: u32,
    /// Whether the alert is raised.
    pub alert: bool,
    /// Since when the alert is raised (or was last cleared).
    pub since: Timestamp,
    /// Unit slots within reach, for hazard targets.
    members: HashSet<u32>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// A unit came inside a hazard (it moved, or the hazard did).
    Enter {
        /// The unit.
        unit: FeatureId,
        /// The hazard.
        hazard: FeatureId,
    },
    /// A unit left a hazard (or one of them was removed).
    Exit {
        /// The unit.
        unit: FeatureId,
        /// The hazard.
        hazard: FeatureId,
    },
    /// A coverage rule's count fell below its minimum.
    AlertRaised {
        /// The rule.
        rule: u64,
        /// Units counted.
        count: u32,
    },
    /// A coverage rule is satisfied again (or was deleted).
    AlertCleared {
        /// The rule.
        rule: u64,
        /// Units counted.
        count: u32,
    },
}

/// One event, numbered in its own sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event number: strictly increasing, one per event, starting at 1.
    pub n: u64,
    /// The store change that caused it.
    pub cause: Seq,
    /// When.
    pub at: Timestamp,
    /// What.
    pub kind: EventKind,
}

/// The most recent events, bounded, oldest first.
#[derive(Debug, Clone)]
pub struct EventLog {
    events: VecDeque<Event>,
    capacity: usize,
    last: u64,
}

impl EventLog {
    /// An empty log keeping at most `capacity` events.
    pub fn new(capacity: usize) -> EventLog {
        EventLog {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            last: 0,
        }
    }

    fn push(&mut self, cause: Seq, at: Timestamp, kind: EventKind) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.last += 1;
        self.events.push_back(Event {
            n: self.last,
            cause,
            at,
            kind,
        });
    }

    /// Events after number `after`, or `None` when some of them are no
    /// longer held (the consumer must resynchronise from the relations).
    pub fn since(&self, after: u64) -> Option<impl Iterator<Item = &Event>> {
        let first = self.events.front().map_or(self.last + 1, |e| e.n);
        // Saturating: `after` comes from a query string and may be u64::MAX.
        let next = after.saturating_add(1);
        if next < first {
            return None;
        }
        let start = usize::try_from(next.saturating_sub(first))
            .unwrap_or(usize::MAX)
            .min(self.events.len());
        Some(self.events.range(start..))
    }

    /// The number of the last event (0 before any).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Forgets every event and numbers the next one 1 again. Only for a
    /// log nobody has read yet: a consumer that had read up to some number
    /// would take later events under it for old ones.
    pub fn reset(&mut self) {
        self.events.clear();
        self.last = 0;
    }

    /// The number of the oldest event held.
    pub fn oldest(&self) -> Option<u64> {
        self.events.front().map(|e| e.n)
    }
}

/// A tracked point (unit or incident).
#[derive(Debug, Clone)]
struct PointRec {
    id: FeatureId,
    at: Coord<f64>,
    category: Category,
    is_unit: bool,
    place: Place,
    /// H3 cell at resolution 9 (parents are derived).
    cell9: Option<CellIndex>,
    /// Hazard slots covering the point, ascending (units only).
    hazards: Vec<u32>,
    /// Position in its `unit_grid` bucket (units only), for O(1) updates.
    bucket_pos: u32,
    /// The region and municipality locator cells `place` was found in, when
    /// no boundary crosses them (else `u32::MAX`): a move within both cells
    /// keeps its place without reading the locators.
    place_cells: (u32, u32),
}

/// A tracked hazard.
#[derive(Debug, Clone)]
struct HazardRec {
    id: FeatureId,
    /// Unit slots inside.
    units: HashSet<u32>,
    /// Overlap per region, km², ascending by region.
    regions: Vec<(RegionCode, f64)>,
}

/// Counts of one category in one place.
pub type Counts = Vec<(Category, u32)>;

/// A region's dashboard.
#[derive(Debug, Clone)]
pub struct RegionSummary {
    /// Units and incidents inside, per category (non-zero only).
    pub counts: Counts,
    /// Hazards overlapping the region, with the overlap in km².
    pub hazards: Vec<(FeatureId, f64)>,
}

/// A unit found by [`Relations::nearest`].
#[derive(Debug, Clone, PartialEq)]
pub struct Nearby {
    /// The unit.
    pub id: FeatureId,
    /// Where it is.
    pub at: Coord<f64>,
    /// Its category.
    pub category: Category,
    /// Its region, if in one.
    pub region: Option<RegionCode>,
    /// Great-circle distance, metres.
    pub distance_m: f64,
}

/// The relations engine; see the module documentation.
#[derive(Debug, Clone)]
pub struct Relations {
    regions: Locator,
    region_codes: Vec<RegionCode>,
    region_shapes: Vec<(RegionCode, MultiPolygon<f64>, Rect<f64>)>,
    municipalities: Locator,
    municipality_codes: Vec<NonZeroU16>,
    /// Units and incidents, by slot.
    points: Vec<Option<PointRec>>,
    free_points: Vec<u32>,
    /// Id → slot, for units (0) and incidents (1).
    point_ids: [HashMap<FeatureId, u32>; 2],
    /// Unit slots by 0.05° bucket, for hazard changes, rules and nearest.
    unit_grid: PointBuckets,
    /// Extent of `unit_grid` keys ever used, bounding the nearest search.
    unit_grid_extent: Option<((i32, i32), (i32, i32))>,
    hazards: HazardSet,
    hazard_recs: Vec<Option<HazardRec>>,
    hazard_ids: HashMap<FeatureId, u32>,
    /// Counts per region (index = region number, 0 = outside) and category.
    region_counts: Vec<[u32; N_CATEGORIES]>,
    /// Counts per H3 cell and category, one table per resolution 4–9.
    /// Keys are [`h3_key`]s: cell and category in one `u64`, so an entry
    /// is 12 bytes instead of 24 (these tables are most of the relations'
    /// memory: about one entry per unit at resolutions 8 and 9).
    h3: [HashMap<u64, u32>; 6],
    rules: BTreeMap<u64, RuleState>,
    next_rule: u64,
    events: EventLog,
    /// Scratch for hazard membership, reused to keep moves allocation-free.
    scratch: Vec<u32>,
}

impl Default for Relations {
    fn default() -> Self {
        Relations::new(65_536)
    }
}

/// Index into `point_ids` for a collection.
fn kind_index(is_unit: bool) -> usize {
    usize::from(!is_unit)
}

impl Relations {
    /// An empty engine whose event log keeps `event_capacity` events.
    pub fn new(event_capacity: usize) -> Relations {
        Relations {
            regions: Locator::new(&[]),
            region_codes: Vec::new(),
            region_shapes: Vec::new(),
            municipalities: Locator::new(&[]),
            municipality_codes: Vec::new(),
            points: Vec::new(),
            free_points: Vec::new(),
            point_ids: [HashMap::new(), HashMap::new()],
            unit_grid: HashMap::new(),
            unit_grid_extent: None,
            hazards: HazardSet::default(),
            hazard_recs: Vec::new(),
            hazard_ids: HashMap::new(),
            region_counts: vec![[0; N_CATEGORIES]; 26],
            h3: Default::default(),
            rules: BTreeMap::new(),
            next_rule: 1,
            events: EventLog::new(event_capacity),
            scratch: Vec::new(),
        }
    }

    /// Sets the boundaries. Regions are `(VR code, geometry)`, municipalities
    /// `(GM code, geometry)`; entries with other ids are ignored. The caller
    /// re-places existing features afterwards (see `Store::load`).
    pub fn set_boundaries<'a>(
        &mut self,
        regions: impl IntoIterator<Item = (&'a str, &'a Geometry<f64>)>,
        municipalities: impl IntoIterator<Item = (&'a str, &'a Geometry<f64>)>,
    ) {
        let mut geometries = Vec::new();
        self.region_codes.clear();
        self.region_shapes.clear();
        for (id, geometry) in regions {
            let Some(code) = RegionCode::parse(id) else {
                continue;
            };
            self.region_codes.push(code);
            geometries.push(geometry.clone());
            if let (Some(mp), Some(bbox)) = (
                to_multi(geometry),
                geo::BoundingRect::bounding_rect(geometry),
            ) {
                self.region_shapes.push((code, mp, bbox));
            }
        }
        self.regions = Locator::new(&geometries);
        let mut geometries = Vec::new();
        self.municipality_codes.clear();
        for (id, geometry) in municipalities {
            let Some(code) = parse_municipality(id) else {
                continue;
            };
            self.municipality_codes.push(code);
            geometries.push(geometry.clone());
        }
        self.municipalities = Locator::new(&geometries);
        // Cached locator cells refer to the old locators.
        for rec in self.points.iter_mut().flatten() {
            rec.place_cells = (u32::MAX, u32::MAX);
        }
    }

    /// The region and municipality of a point.
    #[inline]
    pub fn place_point(&self, p: Coord<f64>) -> Place {
        Place {
            region: self
                .regions
                .first(p)
                .and_then(|i| self.region_codes.get(i as usize).copied()),
            municipality: self
                .municipalities
                .first(p)
                .and_then(|i| self.municipality_codes.get(i as usize).copied()),
            regions: 0,
        }
    }

    /// Overlap of an area with every region, in km² (positive overlaps only).
    pub fn area_by_region(&self, geometry: &Geometry<f64>) -> Vec<(RegionCode, f64)> {
        let (Some(area), Some(bbox)) = (
            to_multi(geometry),
            geo::BoundingRect::bounding_rect(geometry),
        ) else {
            return Vec::new();
        };
        let mut out: Vec<(RegionCode, f64)> = self
            .region_shapes
            .iter()
            .filter(|(_, _, rb)| geo::Intersects::intersects(rb, &bbox))
            .filter_map(|(code, region, _)| {
                let km2 = area
                    .intersection(region)
                    .chamberlain_duquette_unsigned_area()
                    / 1e6;
                (km2 > 0.0).then_some((*code, km2))
            })
            .collect();
        out.sort_by_key(|(code, _)| *code);
        out
    }

    /// Applies one feature's new version; returns its place. Boundaries are
    /// not tracked here (see [`Relations::set_boundaries`]).
    pub fn upsert(
        &mut self,
        collection: Collection,
        id: &FeatureId,
        shape: &Shape,
        attrs: &Attrs,
        cause: Seq,
        at: Timestamp,
    ) -> Place {
        match (collection, shape) {
            (Collection::Units | Collection::Incidents, Shape::Point(p)) => {
                let Some(category) = Category::of(attrs) else {
                    return self.place_point(*p);
                };
                self.upsert_point(collection == Collection::Units, id, *p, category, cause, at)
            }
            (Collection::Hazards, Shape::Area(area)) => {
                self.upsert_hazard(id, &area.geometry, area.bbox, cause, at)
            }
            _ => Place::default(),
        }
    }

    /// Forgets a feature (deleted or expired).
    pub fn remove(&mut self, collection: Collection, id: &str, cause: Seq, at: Timestamp) {
        match collection {
            Collection::Units | Collection::Incidents => {
                let is_unit = collection == Collection::Units;
                if let Some(slot) = self.point_ids[kind_index(is_unit)].remove(id) {
                    self.remove_point(slot, cause, at);
                }
            }
            Collection::Hazards => {
                if let Some(slot) = self.hazard_ids.remove(id) {
                    self.remove_hazard(slot, cause, at);
                }
            }
            _ => {}
        }
    }

    fn count(
        &mut self,
        rec_place: Place,
        cell9: Option<CellIndex>,
        category: Category,
        delta: i32,
    ) {
        let region = rec_place.region.map_or(0, |r| usize::from(r.number()));
        let counter = &mut self.region_counts[region][usize::from(category.0)];
        *counter = counter.saturating_add_signed(delta);
        if let Some(cell9) = cell9 {
            self.count_h3(cell9, category, delta);
        }
    }

    fn count_h3(&mut self, cell9: CellIndex, category: Category, delta: i32) {
        for (table, res) in self.h3.iter_mut().zip(H3_RESOLUTIONS) {
            let Some(cell) = Resolution::try_from(res).ok().and_then(|r| cell9.parent(r)) else {
                continue;
            };
            let key = h3_key(cell, category);
            if delta > 0 {
                *table.entry(key).or_insert(0) += 1;
            } else if let Some(n) = table.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    table.remove(&key);
                }
            }
        }
    }

    /// Moves one count between two resolution-9 cells, touching only the
    /// resolutions where the ancestors differ (a short move usually changes
    /// the finest one or two), finest first.
    fn move_h3(&mut self, old: Option<CellIndex>, new: Option<CellIndex>, category: Category) {
        for i in (0..self.h3.len()).rev() {
            let Ok(r) = Resolution::try_from(*H3_RESOLUTIONS.start() + i as u8) else {
                continue;
            };
            let (a, b) = (old.and_then(|c| c.parent(r)), new.and_then(|c| c.parent(r)));
            if a == b {
                // Same ancestor here means the same at every coarser resolution.
                break;
            }
            let table = &mut self.h3[i];
            if let Some(a) = a {
                let key = h3_key(a, category);
                if let Some(n) = table.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        table.remove(&key);
                    }
                }
            }
            if let Some(b) = b {
                *table.entry(h3_key(b, category)).or_insert(0) += 1;
            }
        }
    }

    fn upsert_point(
        &mut self,
        is_unit: bool,
        id: &FeatureId,
        p: Coord<f64>,
        category: Category,
        cause: Seq,
        at: Timestamp,
    ) -> Place {
        let known = self.point_ids[kind_index(is_unit)].get(&**id).copied();
        // A report from the same spot (a status change, a repeated position)
        // keeps place, cell and hazards: all of them depend on position only.
        let same_spot = known
            .and_then(|slot| self.points[slot as usize].as_ref())
            .filter(|rec| rec.at == p)
            .map(|rec| rec.cell9);
        let cell9 = match same_spot {
            Some(cell9) => cell9,
            None => h3_cell(p),
        };
        let cells = (
            self.regions.cell(p).unwrap_or(u32::MAX),
            self.municipalities.cell(p).unwrap_or(u32::MAX),
        );
        let cached = known
            .and_then(|slot| self.points[slot as usize].as_ref())
            .filter(|rec| rec.place_cells == cells && cells.0 != u32::MAX && cells.1 != u32::MAX)
            .map(|rec| rec.place);
        let (place, place_cells) = match cached {
            Some(place) => (place, cells),
            None => {
                let uniform = |locator: &Locator, cell: u32| {
                    if locator.is_uniform(cell) {
                        cell
                    } else {
                        u32::MAX
                    }
                };
                (
                    self.place_point(p),
                    (
                        uniform(&self.regions, cells.0),
                        uniform(&self.municipalities, cells.1),
                    ),
                )
            }
        };
        let slot = match known {
            Some(slot) => slot,
            None => {
                let rec = PointRec {
                    id: FeatureId::clone(id),
                    at: p,
                    category,
                    is_unit,
                    place,
                    cell9,
                    hazards: Vec::new(),
                    bucket_pos: 0,
                    place_cells,
                };
                let slot = match self.free_points.pop() {
                    Some(slot) => {
                        self.points[slot as usize] = Some(rec);
                        slot
                    }
                    None => {
                        self.points.push(Some(rec));
                        u32::try_from(self.points.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                self.point_ids[kind_index(is_unit)].insert(FeatureId::clone(id), slot);
                self.count(place, cell9, category, 1);
                if is_unit {
                    self.grid_insert(slot, p);
                    self.update_membership(slot, p, cause, at);
                    self.update_rules_for_unit(slot, at, cause);
                }
                return place;
            }
        };
        let Some(old) = self.points[slot as usize].as_ref() else {
            return place;
        };
        let (old_at, old_place, old_cell, old_category) =
            (old.at, old.place, old.cell9, old.category);
        if old_place.region != place.region || old_category != category {
            let old_region = old_place.region.map_or(0, |r| usize::from(r.number()));
            let new_region = place.region.map_or(0, |r| usize::from(r.number()));
            self.region_counts[old_region][usize::from(old_category.0)] -= 1;
            self.region_counts[new_region][usize::from(category.0)] += 1;
        }
        if old_category != category {
            if let Some(c) = old_cell {
                self.count_h3(c, old_category, -1);
            }
            if let Some(c) = cell9 {
                self.count_h3(c, category, 1);
            }
        } else if old_cell != cell9 {
            self.move_h3(old_cell, cell9, category);
        }
        if let Some(rec) = self.points[slot as usize].as_mut() {
            rec.at = p;
            rec.place_cells = place_cells;
            rec.place = place;
            rec.cell9 = cell9;
            rec.category = category;
        }
        if is_unit {
            if same_spot.is_none() {
                if grid_cell(old_at) == grid_cell(p) {
                    self.grid_move_within(slot, p);
                } else {
                    self.grid_remove(slot, old_at);
                    self.grid_insert(slot, p);
                }
                self.update_membership(slot, p, cause, at);
            }
            if !self.rules.is_empty() {
                self.update_rules_for_unit(slot, at, cause);
            }
        }
        place
    }

    fn remove_point(&mut self, slot: u32, cause: Seq, at: Timestamp) {
        let Some(rec) = self.points.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.count(rec.place, rec.cell9, rec.category, -1);
        if rec.is_unit {
            self.grid_remove_at(slot, rec.at, rec.bucket_pos);
            for hazard in &rec.hazards {
                if let Some(h) = self.hazard_recs[*hazard as usize].as_mut() {
                    h.units.remove(&slot);
                    self.events.push(
                        cause,
                        at,
                        EventKind::Exit {
                            unit: FeatureId::clone(&rec.id),
                            hazard: FeatureId::clone(&h.id),
                        },
                    );
                }
            }
            for state in self.rules.values_mut() {
                state.members.remove(&slot);
            }
            self.evaluate_rules(cause, at);
        }
        self.free_points.push(slot);
    }

    fn grid_insert(&mut self, slot: u32, p: Coord<f64>) {
        let key = grid_cell(p);
        let bucket = self.unit_grid.entry(key).or_default();
        bucket.push((slot, p));
        let pos = u32::try_from(bucket.len() - 1).unwrap_or(u32::MAX);
        if let Some(rec) = self.points[slot as usize].as_mut() {
            rec.bucket_pos = pos;
        }
        self.unit_grid_extent = Some(match self.unit_grid_extent {
            None => (key, key),
            Some((lo, hi)) => (
                (lo.0.min(key.0), lo.1.min(key.1)),
                (hi.0.max(key.0), hi.1.max(key.1)),
            ),
        });
    }

    /// Index of `slot` in the bucket of `p`, trusting `pos` when it agrees.
    fn bucket_index(bucket: &[(u32, Coord<f64>)], slot: u32, pos: u32) -> Option<usize> {
        let pos = pos as usize;
        if bucket.get(pos).is_some_and(|e| e.0 == slot) {
            return Some(pos);
        }
        bucket.iter().position(|e| e.0 == slot)
    }

    fn grid_move_within(&mut self, slot: u32, p: Coord<f64>) {
        let Some(pos) = self.points[slot as usize].as_ref().map(|r| r.bucket_pos) else {
            return;
        };
        if let Some(bucket) = self.unit_grid.get_mut(&grid_cell(p))
            && let Some(i) = Self::bucket_index(bucket, slot, pos)
        {
            bucket[i].1 = p;
        }
    }

    fn grid_remove(&mut self, slot: u32, p: Coord<f64>) {
        let pos = self.points[slot as usize]
            .as_ref()
            .map_or(u32::MAX, |r| r.bucket_pos);
        self.grid_remove_at(slot, p, pos);
    }

    fn grid_remove_at(&mut self, slot: u32, p: Coord<f64>, pos: u32) {
        let key = grid_cell(p);
        let Some(bucket) = self.unit_grid.get_mut(&key) else {
            return;
        };
        let Some(i) = Self::bucket_index(bucket, slot, pos) else {
            return;
        };
        bucket.swap_remove(i);
        if let Some((moved, _)) = bucket.get(i).copied() {
            if let Some(rec) = self.points[moved as usize].as_mut() {
                rec.bucket_pos = u32::try_from(i).unwrap_or(u32::MAX);
            }
        } else if bucket.is_empty() {
            self.unit_grid.remove(&key);
        }
    }

    /// Every `(unit, hazard)` pair from the current state: the snapshot
    /// join, by bucket (see [`HazardSet::join`]). Ids are slots; use
    /// [`Relations::units_in_hazard`] for ids.
    pub fn snapshot_pairs(&self, found: impl FnMut(u32, u32)) {
        self.hazards.join(&self.unit_grid, found);
    }

    /// Recomputes the hazards of one unit and emits the differences.
    fn update_membership(&mut self, slot: u32, p: Coord<f64>, cause: Seq, at: Timestamp) {
        let mut now = std::mem::take(&mut self.scratch);
        now.clear();
        self.hazards.for_each_covering(p, |h| now.push(h));
        now.sort_unstable();
        let Some(rec) = self.points[slot as usize].as_mut() else {
            self.scratch = now;
            return;
        };
        if rec.hazards == now {
            self.scratch = now;
            return;
        }
        let unit = FeatureId::clone(&rec.id);
        let before = std::mem::replace(&mut rec.hazards, now.clone());
        for h in &before {
            if now.binary_search(h).is_err()
                && let Some(hazard) = self.hazard_recs[*h as usize].as_mut()
            {
                hazard.units.remove(&slot);
                self.events.push(
                    cause,
                    at,
                    EventKind::Exit {
                        unit: FeatureId::clone(&unit),
                        hazard: FeatureId::clone(&hazard.id),
                    },
                );
            }
        }
        for h in &now {
            if before.binary_search(h).is_err()
                && let Some(hazard) = self.hazard_recs[*h as usize].as_mut()
            {
                hazard.units.insert(slot);
                self.events.push(
                    cause,
                    at,
                    EventKind::Enter {
                        unit: FeatureId::clone(&unit),
                        hazard: FeatureId::clone(&hazard.id),
                    },
                );
            }
        }
        self.scratch = now;
    }

    /// Unit slots in the grid buckets overlapping `bbox`.
    fn units_in_bbox(&self, bbox: &Rect<f64>, out: &mut Vec<u32>) {
        let ((x0, y0), (x1, y1)) = grid_range(bbox);
        let Some(((ex0, ey0), (ex1, ey1))) = self.unit_grid_extent else {
            return;
        };
        for x in x0.max(ex0)..=x1.min(ex1) {
            for y in y0.max(ey0)..=y1.min(ey1) {
                if let Some(bucket) = self.unit_grid.get(&(x, y)) {
                    out.extend(bucket.iter().map(|(slot, _)| *slot));
                }
            }
        }
    }

    fn upsert_hazard(
        &mut self,
        id: &FeatureId,
        geometry: &Geometry<f64>,
        bbox: Rect<f64>,
        cause: Seq,
        at: Timestamp,
    ) -> Place {
        let regions = self.area_by_region(geometry);
        let mut mask = 0u32;
        for (code, _) in &regions {
            mask |= 1 << (code.number() - 1);
        }
        let (old_slot, old_units) = match self.hazard_ids.get(&**id) {
            Some(slot) => {
                let units = self.hazard_recs[*slot as usize]
                    .as_mut()
                    .map(|h| std::mem::take(&mut h.units))
                    .unwrap_or_default();
                self.hazards.remove(*slot);
                (Some(*slot), units)
            }
            None => (None, HashSet::new()),
        };
        let slot = self.hazards.insert(geometry.clone(), bbox);
        // The set reuses freed slots, so a replaced hazard keeps its slot.
        debug_assert!(old_slot.is_none_or(|s| s == slot));
        if self.hazard_recs.len() <= slot as usize {
            self.hazard_recs.resize(slot as usize + 1, None);
        }
        let mut candidates = Vec::new();
        self.units_in_bbox(&bbox, &mut candidates);
        let mut inside = HashSet::with_capacity(candidates.len());
        for unit in candidates {
            if let Some(rec) = &self.points[unit as usize]
                && self.hazards.covers(slot, rec.at)
            {
                inside.insert(unit);
            }
        }
        let mut exits: Vec<u32> = old_units.difference(&inside).copied().collect();
        let mut enters: Vec<u32> = inside.difference(&old_units).copied().collect();
        exits.sort_unstable();
        enters.sort_unstable();
        for unit in exits {
            if let Some(rec) = self.points[unit as usize].as_mut() {
                rec.hazards.retain(|h| *h != slot);
                self.events.push(
                    cause,
                    at,
                    EventKind::Exit {
                        unit: FeatureId::clone(&rec.id),
                        hazard: FeatureId::clone(id),
                    },
                );
            }
        }
        for unit in enters {
            if let Some(rec) = self.points[unit as usize].as_mut() {
                if let Err(i) = rec.hazards.binary_search(&slot) {
                    rec.hazards.insert(i, slot);
                }
                self.events.push(
                    cause,
                    at,
                    EventKind::Enter {
                        unit: FeatureId::clone(&rec.id),
                        hazard: FeatureId::clone(id),
                    },
                );
            }
        }
        self.hazard_recs[slot as usize] = Some(HazardRec {
            id: FeatureId::clone(id),
            units: inside,
            regions,
        });
        self.hazard_ids.insert(FeatureId::clone(id), slot);
        self.refresh_rules_for_hazard(id, cause, at);
        Place {
            region: None,
            municipality: None,
            regions: mask,
        }
    }

    fn remove_hazard(&mut self, slot: u32, cause: Seq, at: Timestamp) {
        let Some(hazard) = self
            .hazard_recs
            .get_mut(slot as usize)
            .and_then(Option::take)
        else {
            return;
        };
        self.hazards.remove(slot);
        let mut units: Vec<u32> = hazard.units.into_iter().collect();
        units.sort_unstable();
        for unit in units {
            if let Some(rec) = self.points[unit as usize].as_mut() {
                rec.hazards.retain(|h| *h != slot);
                self.events.push(
                    cause,
                    at,
                    EventKind::Exit {
                        unit: FeatureId::clone(&rec.id),
                        hazard: FeatureId::clone(&hazard.id),
                    },
                );
            }
        }
        let id = hazard.id;
        self.refresh_rules_for_hazard(&id, cause, at);
    }

    fn unit_counts_for(&self, rule: &Rule, slot: u32) -> bool {
        self.points[slot as usize].as_ref().is_some_and(|rec| {
            rec.is_unit && rec.category.matches_unit(rule.unit_type, rule.status)
        })
    }

    fn within_rule(&self, rule: &Rule, slot: u32) -> bool {
        let RuleTarget::NearHazard { hazard, radius_km } = &rule.target else {
            return false;
        };
        let (Some(h), Some(rec)) = (
            self.hazard_ids.get(&**hazard),
            self.points[slot as usize].as_ref(),
        ) else {
            return false;
        };
        self.unit_counts_for(rule, slot)
            && self
                .hazards
                .distance_m(*h, rec.at, radius_km * 1000.0)
                .is_some()
    }

    fn update_rules_for_unit(&mut self, slot: u32, at: Timestamp, cause: Seq) {
        let ids: Vec<u64> = self
            .rules
            .iter()
            .filter(|(_, s)| matches!(s.rule.target, RuleTarget::NearHazard { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(rule) = self.rules.get(&id).map(|s| s.rule.clone()) else {
                continue;
            };
            let within = self.within_rule(&rule, slot);
            if let Some(state) = self.rules.get_mut(&id) {
                if within {
                    state.members.insert(slot);
                } else {
                    state.members.remove(&slot);
                }
            }
        }
        self.evaluate_rules(cause, at);
    }

    fn members_from_scratch(&self, rule: &Rule) -> HashSet<u32> {
        let RuleTarget::NearHazard { hazard, radius_km } = &rule.target else {
            return HashSet::new();
        };
        let Some(bbox) = self
            .hazard_ids
            .get(&**hazard)
            .and_then(|h| self.hazards.bbox(*h))
        else {
            return HashSet::new();
        };
        let radius_m = radius_km * 1000.0;
        let lat = bbox.min().y.abs().max(bbox.max().y.abs()).min(89.0);
        let (dlat, dlon) = (
            radius_m / M_PER_DEG,
            radius_m / (M_PER_DEG * lat.to_radians().cos()),
        );
        let grown = Rect::new(
            Coord {
                x: bbox.min().x - dlon,
                y: bbox.min().y - dlat,
            },
            Coord {
                x: bbox.max().x + dlon,
                y: bbox.max().y + dlat,
            },
        );
        let mut candidates = Vec::new();
        self.units_in_bbox(&grown, &mut candidates);
        candidates
            .into_iter()
            .filter(|slot| self.within_rule(rule, *slot))
            .collect()
    }

    fn refresh_rules_for_hazard(&mut self, hazard: &str, cause: Seq, at: Timestamp) {
        let ids: Vec<u64> = self
            .rules
            .iter()
            .filter(|(_, s)| matches!(&s.rule.target, RuleTarget::NearHazard { hazard: h, .. } if &**h == hazard))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(rule) = self.rules.get(&id).map(|s| s.rule.clone()) {
                let members = self.members_from_scratch(&rule);
                if let Some(state) = self.rules.get_mut(&id) {
                    state.members = members;
                }
            }
        }
        if !self.rules.is_empty() {
            self.evaluate_rules(cause, at);
        }
    }

    /// The count a rule sees now, and whether its target exists.
    fn rule_count(&self, state: &RuleState) -> (u32, bool) {
        match &state.rule.target {
            RuleTarget::NearHazard { hazard, .. } => (
                u32::try_from(state.members.len()).unwrap_or(u32::MAX),
                self.hazard_ids.contains_key(&**hazard),
            ),
            RuleTarget::InRegion { region } => {
                let counts = &self.region_counts[usize::from(region.number())];
                let n = Category::all()
                    .filter(|c| c.matches_unit(state.rule.unit_type, state.rule.status))
                    .map(|c| counts[usize::from(c.0)])
                    .sum();
                (n, true)
            }
        }
    }

    fn evaluate_rules(&mut self, cause: Seq, at: Timestamp) {
        let mut changes = Vec::new();
        for (id, state) in &self.rules {
            let (count, exists) = self.rule_count(state);
            let alert = exists && count < state.rule.min_units;
            if alert != state.alert || count != state.count {
                changes.push((*id, count, alert));
            }
        }
        for (id, count, alert) in changes {
            let Some(state) = self.rules.get_mut(&id) else {
                continue;
            };
            state.count = count;
            if alert != state.alert {
                state.alert = alert;
                state.since = at;
                let kind = if alert {
                    EventKind::AlertRaised { rule: id, count }
                } else {
                    EventKind::AlertCleared { rule: id, count }
                };
                self.events.push(cause, at, kind);
            }
        }
    }

    /// Registers a rule and evaluates it at once; returns its id.
    pub fn add_rule(&mut self, rule: Rule, cause: Seq, at: Timestamp) -> Result<u64, RuleError> {
        let id = self.next_rule;
        self.restore_rule(id, rule, cause, at)?;
        Ok(id)
    }

    /// Registers a rule under a known id (recovery of durable rules): ids
    /// stay what clients were told, and new rules are numbered after it.
    /// An id already in use is replaced.
    pub fn restore_rule(
        &mut self,
        id: u64,
        rule: Rule,
        cause: Seq,
        at: Timestamp,
    ) -> Result<(), RuleError> {
        if let RuleTarget::NearHazard { radius_km, .. } = &rule.target
            && !(*radius_km > 0.0 && *radius_km <= 500.0)
        {
            return Err(RuleError::Radius(*radius_km));
        }
        if rule.min_units == 0 {
            return Err(RuleError::MinUnits);
        }
        if self.rules.len() >= MAX_RULES && !self.rules.contains_key(&id) {
            return Err(RuleError::TooMany);
        }
        self.next_rule = self.next_rule.max(id + 1);
        let members = self.members_from_scratch(&rule);
        self.rules.insert(
            id,
            RuleState {
                id,
                rule,
                count: 0,
                alert: false,
                since: at,
                members,
            },
        );
        // Force a first evaluation of this rule.
        if let Some(state) = self.rules.get_mut(&id) {
            state.count = u32::MAX;
        }
        self.evaluate_rules(cause, at);
        Ok(())
    }

    /// Deletes a rule, clearing its alert; whether it existed.
    pub fn remove_rule(&mut self, id: u64, cause: Seq, at: Timestamp) -> bool {
        match self.rules.remove(&id) {
            Some(state) => {
                if state.alert {
                    self.events.push(
                        cause,
                        at,
                        EventKind::AlertCleared {
                            rule: id,
                            count: state.count,
                        },
                    );
                }
                true
            }
            None => false,
        }
    }

    /// Every rule with its state, by id.
    pub fn rules(&self) -> impl Iterator<Item = &RuleState> {
        self.rules.values()
    }

    /// The id the next new rule gets.
    pub fn next_rule_id(&self) -> u64 {
        self.next_rule
    }

    /// Never hands out ids below `next` (recovery: ids of deleted rules
    /// are not reused).
    pub fn reserve_rule_ids(&mut self, next: u64) {
        self.next_rule = self.next_rule.max(next);
    }

    /// One rule.
    pub fn rule(&self, id: u64) -> Option<&RuleState> {
        self.rules.get(&id)
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Empties the event log (see [`crate::Store::forget_events`]).
    pub fn forget_events(&mut self) {
        self.events.reset();
    }

    /// The units inside a hazard, sorted by id; `None` for an unknown hazard.
    pub fn units_in_hazard(&self, hazard: &str) -> Option<Vec<FeatureId>> {
        let slot = self.hazard_ids.get(hazard)?;
        let rec = self.hazard_recs[*slot as usize].as_ref()?;
        let mut out: Vec<FeatureId> = rec
            .units
            .iter()
            .filter_map(|u| {
                self.points[*u as usize]
                    .as_ref()
                    .map(|r| FeatureId::clone(&r.id))
            })
            .collect();
        out.sort();
        Some(out)
    }

    /// The hazards a unit is in, sorted by id; `None` for an unknown unit.
    pub fn hazards_of_unit(&self, unit: &str) -> Option<Vec<FeatureId>> {
        let slot = self.point_ids[kind_index(true)].get(unit)?;
        let rec = self.points[*slot as usize].as_ref()?;
        let mut out: Vec<FeatureId> = rec
            .hazards
            .iter()
            .filter_map(|h| {
                self.hazard_recs[*h as usize]
                    .as_ref()
                    .map(|r| FeatureId::clone(&r.id))
            })
            .collect();
        out.sort();
        Some(out)
    }

    /// Overlap of a hazard with each region (km²); `None` for an unknown hazard.
    pub fn hazard_regions(&self, hazard: &str) -> Option<&[(RegionCode, f64)]> {
        let slot = self.hazard_ids.get(hazard)?;
        self.hazard_recs[*slot as usize]
            .as_ref()
            .map(|r| r.regions.as_slice())
    }

    /// Position and place of a tracked unit or incident.
    pub fn point(&self, collection: Collection, id: &str) -> Option<(Coord<f64>, Place)> {
        let is_unit = match collection {
            Collection::Units => true,
            Collection::Incidents => false,
            _ => return None,
        };
        let slot = self.point_ids[kind_index(is_unit)].get(id)?;
        self.points[*slot as usize]
            .as_ref()
            .map(|r| (r.at, r.place))
    }

    /// A region's counts and the hazards overlapping it.
    pub fn region_summary(&self, region: RegionCode) -> RegionSummary {
        let counts = &self.region_counts[usize::from(region.number())];
        let mut hazards: Vec<(FeatureId, f64)> = self
            .hazard_recs
            .iter()
            .flatten()
            .filter_map(|h| {
                h.regions
                    .iter()
                    .find(|(code, _)| *code == region)
                    .map(|(_, km2)| (FeatureId::clone(&h.id), *km2))
            })
            .collect();
        hazards.sort_by(|a, b| a.0.cmp(&b.0));
        RegionSummary {
            counts: Category::all()
                .map(|c| (c, counts[usize::from(c.0)]))
                .filter(|(_, n)| *n > 0)
                .collect(),
            hazards,
        }
    }

    /// Counts per H3 cell at `resolution` (4–9) for cells whose centre is in
    /// `bbox`: `(cell, category, count)`, sorted. `None` for another resolution.
    pub fn h3_counts(&self, resolution: u8, bbox: &Rect<f64>) -> Option<Vec<(u64, Category, u32)>> {
        let table = self.h3.get(usize::from(resolution.checked_sub(4)?))?;
        let mut out: Vec<(u64, Category, u32)> = table
            .iter()
            .map(|(key, n)| {
                let (cell, category) = h3_unkey(*key);
                ((cell, category), n)
            })
            .filter(|((cell, _), _)| {
                CellIndex::try_from(*cell).is_ok_and(|c| {
                    let ll = LatLng::from(c);
                    let (x, y) = (ll.lng(), ll.lat());
                    x >= bbox.min().x && x <= bbox.max().x && y >= bbox.min().y && y <= bbox.max().y
                })
            })
            .map(|((cell, category), n)| (cell, category, *n))
            .collect();
        out.sort_unstable();
        Some(out)
    }

    /// The `n` units nearest to `from` (great-circle) matching a type and
    /// status, optionally not located in `exclude_region`; nearest first.
    /// Searched ring by ring over the 0.05° unit buckets: a ring is only
    /// opened while it can still hold a unit nearer than the `n`-th found.
    pub fn nearest(
        &self,
        from: Coord<f64>,
        n: usize,
        unit_type: Option<UnitType>,
        status: Option<UnitStatus>,
        exclude_region: Option<RegionCode>,
    ) -> Vec<Nearby> {
        let mut found: Vec<Nearby> = Vec::new();
        let Some(((ex0, ey0), (ex1, ey1))) = self.unit_grid_extent else {
            return found;
        };
        if n == 0 {
            return found;
        }
        let (cx, cy) = grid_cell(from);
        let max_ring = [ex1 - cx, cx - ex0, ey1 - cy, cy - ey0]
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(0);
        for ring in 0..=max_ring {
            if found.len() >= n && ring > 0 {
                // Nearest possible point of this ring: `ring - 1` whole cells
                // away; longitude cells shrink towards the pole, so use the
                // narrowest latitude the ring reaches.
                let lat = (from.y.abs() + f64::from(ring) * GRID_DEG).min(89.9);
                let cell_m = GRID_DEG * M_PER_DEG * lat.to_radians().cos();
                let lower_bound = f64::from(ring - 1) * cell_m * 0.999;
                if lower_bound > found[n - 1].distance_m {
                    break;
                }
            }
            let visit = |x: i32, y: i32, found: &mut Vec<Nearby>| {
                let Some(bucket) = self.unit_grid.get(&(x, y)) else {
                    return;
                };
                for (slot, _) in bucket {
                    let Some(rec) = &self.points[*slot as usize] else {
                        continue;
                    };
                    if !rec.category.matches_unit(unit_type, status)
                        || (exclude_region.is_some() && rec.place.region == exclude_region)
                    {
                        continue;
                    }
                    let distance_m = haversine_m(from, rec.at);
                    if found.len() >= n && distance_m >= found[n - 1].distance_m {
                        continue;
                    }
                    let at =
                        found.partition_point(|f| (f.distance_m, &*f.id) < (distance_m, &*rec.id));
                    found.insert(
                        at,
                        Nearby {
                            id: FeatureId::clone(&rec.id),
                            at: rec.at,
                            category: rec.category,
                            region: rec.place.region,
                            distance_m,
                        },
                    );
                    found.truncate(n);
                }
            };
            if ring == 0 {
                visit(cx, cy, &mut found);
                continue;
            }
            for x in cx - ring..=cx + ring {
                visit(x, cy - ring, &mut found);
                visit(x, cy + ring, &mut found);
            }
            for y in cy - ring + 1..=cy + ring - 1 {
                visit(cx - ring, y, &mut found);
                visit(cx + ring, y, &mut found);
            }
        }
        found
    }

    /// Number of hazards tracked.
    pub fn n_hazards(&self) -> usize {
        self.hazards.len()
    }
}

fn to_multi(geometry: &Geometry<f64>) -> Option<MultiPolygon<f64>> {
    match geometry {
        Geometry::Polygon(p) => Some(MultiPolygon(vec![p.clone()])),
        Geometry::MultiPolygon(mp) => Some(mp.clone()),
        _ => None,
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status_str() {
            Some(status) => write!(f, "{}/{}/{status}", self.collection(), self.type_str()),
            None => write!(f, "{}/{}", self.collection(), self.type_str()),
        }
    }
}

#[cfg(test)]
mod tests;
