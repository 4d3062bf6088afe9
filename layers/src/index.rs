//! Spatial indexes over slot numbers, one per collection.
//!
//! Both kinds are an rstar R-tree; they differ in what the tree's entries are:
//!
//! * **Areas** (regions, municipalities, hazards): one entry per feature, its
//!   bounding box. Few features, large and irregular: the R-tree's home turf.
//! * **Points** (units, incidents): one entry per *occupied grid bucket* of
//!   [`CELL_DEG`] degrees, each bucket listing its members. Units move every
//!   few seconds; a move that stays inside its bucket (most of them, at a
//!   ~100 m step and ~4 km buckets) touches no index at all, and a unit costs
//!   4 bytes of index instead of the ~80 bytes of an R-tree leaf entry.
//!   Measured in `BENCHMARKS.md`: this is what brings point upserts above
//!   300,000/s per core and the store under 200 bytes per unit.
//!
//! Queries return *candidates*: every member of a matching bucket or every
//! area whose box intersects. The caller tests the exact geometry.

use std::collections::HashMap;

use geo::Rect;
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RTree};

/// Grid bucket size for point collections, in degrees (about 3.5 km east-west
/// and 5.5 km north-south in the Netherlands).
pub const CELL_DEG: f64 = 0.05;

type BoxEntry<T> = GeomWithData<Rectangle<[f64; 2]>, T>;

fn rectangle(rect: &Rect<f64>) -> Rectangle<[f64; 2]> {
    Rectangle::from_corners([rect.min().x, rect.min().y], [rect.max().x, rect.max().y])
}

fn aabb(rect: &Rect<f64>) -> AABB<[f64; 2]> {
    AABB::from_corners([rect.min().x, rect.min().y], [rect.max().x, rect.max().y])
}

/// A grid bucket, packed `(column, row)` of [`CELL_DEG`] cells.
type Cell = u64;

fn cell_of(x: f64, y: f64) -> Cell {
    // Coordinates are validated to ±180/±90, so the casts cannot overflow.
    let col = (x / CELL_DEG).floor() as i32;
    let row = (y / CELL_DEG).floor() as i32;
    (u64::from(col as u32) << 32) | u64::from(row as u32)
}

fn cell_rect(cell: Cell) -> Rectangle<[f64; 2]> {
    let col = f64::from((cell >> 32) as u32 as i32);
    let row = f64::from(cell as u32 as i32);
    Rectangle::from_corners(
        [col * CELL_DEG, row * CELL_DEG],
        [(col + 1.0) * CELL_DEG, (row + 1.0) * CELL_DEG],
    )
}

/// One collection's spatial index.
#[derive(Debug, Clone)]
pub(crate) enum SpatialIndex {
    /// One R-tree entry per feature.
    Areas(RTree<BoxEntry<u32>>),
    /// Grid buckets, with an R-tree over the occupied ones.
    Points {
        /// Members of each occupied bucket.
        buckets: HashMap<Cell, Vec<u32>>,
        /// The occupied buckets; changes only when a bucket fills or empties.
        occupied: RTree<BoxEntry<Cell>>,
    },
}

impl SpatialIndex {
    pub(crate) fn for_areas() -> Self {
        SpatialIndex::Areas(RTree::new())
    }

    pub(crate) fn for_points() -> Self {
        SpatialIndex::Points {
            buckets: HashMap::new(),
            occupied: RTree::new(),
        }
    }

    /// Adds `slot` with bounding box `bbox` (a point's box is degenerate).
    pub(crate) fn insert(&mut self, slot: u32, bbox: &Rect<f64>) {
        match self {
            SpatialIndex::Areas(rtree) => rtree.insert(GeomWithData::new(rectangle(bbox), slot)),
            SpatialIndex::Points { buckets, occupied } => {
                let cell = cell_of(bbox.min().x, bbox.min().y);
                let members = buckets.entry(cell).or_default();
                if members.is_empty() {
                    occupied.insert(GeomWithData::new(cell_rect(cell), cell));
                }
                members.push(slot);
            }
        }
    }

    /// Removes `slot`, which was inserted with `bbox`.
    pub(crate) fn remove(&mut self, slot: u32, bbox: &Rect<f64>) {
        match self {
            SpatialIndex::Areas(rtree) => {
                rtree.remove(&GeomWithData::new(rectangle(bbox), slot));
            }
            SpatialIndex::Points { buckets, occupied } => {
                let cell = cell_of(bbox.min().x, bbox.min().y);
                if let Some(members) = buckets.get_mut(&cell) {
                    if let Some(pos) = members.iter().position(|s| *s == slot) {
                        members.swap_remove(pos);
                    }
                    if members.is_empty() {
                        buckets.remove(&cell);
                        occupied.remove(&GeomWithData::new(cell_rect(cell), cell));
                    }
                }
            }
        }
    }

    /// Moves `slot` from `old` to `new`; free when both fall in one bucket.
    pub(crate) fn update(&mut self, slot: u32, old: &Rect<f64>, new: &Rect<f64>) {
        if old == new {
            return;
        }
        if let SpatialIndex::Points { .. } = self
            && cell_of(old.min().x, old.min().y) == cell_of(new.min().x, new.min().y)
        {
            return;
        }
        self.remove(slot, old);
        self.insert(slot, new);
    }

    /// Slots that may intersect `bbox`.
    pub(crate) fn candidates(&self, bbox: &Rect<f64>, out: &mut Vec<u32>) {
        let env = aabb(bbox);
        match self {
            SpatialIndex::Areas(rtree) => {
                out.extend(rtree.locate_in_envelope_intersecting(&env).map(|e| e.data));
            }
            SpatialIndex::Points { buckets, occupied } => {
                for entry in occupied.locate_in_envelope_intersecting(&env) {
                    if let Some(members) = buckets.get(&entry.data) {
                        out.extend_from_slice(members);
                    }
                }
            }
        }
    }

    /// Number of indexed slots (for invariant checks).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self {
            SpatialIndex::Areas(rtree) => rtree.size(),
            SpatialIndex::Points { buckets, .. } => buckets.values().map(Vec::len).sum(),
        }
    }
}
