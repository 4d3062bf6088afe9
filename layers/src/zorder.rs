//! Z-order (Morton) cells: the order in which the fan-out keeps a tick's
//! changes so that the changes inside any viewport come out as a few
//! contiguous runs, not one by one.
//!
//! The world (longitude −180…180, latitude −90…90) is a quadtree of
//! [`LEVELS`] levels: 4,096 × 4,096 cells of 0.088° × 0.044° (about
//! 6 × 5 km in the Netherlands). Sorted by [`Cell`], the items of every
//! quadtree node are contiguous, so a node that lies wholly inside a
//! viewport is one range of the sorted items, however many it holds. Only
//! nodes on the viewport's edge are looked at item by item.
//!
//! An item belongs to a cell only when its whole box lies in that cell
//! ([`Cell::holding`]); a change that crosses a cell boundary (a unit that
//! moved across one, a large hazard area) has none and must be tested on
//! its own by the caller.
//!
//! ```
//! use beeld_layers::zorder::{Cell, Found, search};
//! use geo::{Rect, coord};
//!
//! let point = |x: f64, y: f64| Rect::new(coord! { x: x, y: y }, coord! { x: x, y: y });
//! let mut cells: Vec<Cell> = [point(5.1, 52.1), point(5.9, 50.9), point(4.9, 52.37)]
//!     .iter()
//!     .filter_map(Cell::holding)
//!     .collect();
//! cells.sort_unstable();
//! // Utrecht province, roughly: two of the three are inside.
//! let viewport = Rect::new(coord! { x: 4.7, y: 51.8 }, coord! { x: 5.6, y: 52.4 });
//! let mut inside = 0;
//! search(&cells, &viewport, 0, |found| match found {
//!     Found::Inside(run) => inside += run.len(),
//!     Found::Edge(_) => {}
//! });
//! assert_eq!(inside, 2);
//! ```

use std::ops::Range;

use geo::Rect;

/// Depth of the quadtree.
pub const LEVELS: u32 = 12;

const SIDE: u32 = 1 << LEVELS;

/// Slack for rounding between a coordinate and the cell it was put in:
/// a node counts as inside or outside a box only with this much to spare.
const SLACK: f64 = 1e-9;

/// A quadtree cell at the finest level, as its Morton code: sorting by it
/// sorts by every coarser level too. The default is the south-west corner
/// of the world.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell(u32);

fn column(x: f64) -> u32 {
    // Saturating cast: −180 and below give 0, 180 and above the last.
    (((x + 180.0) / 360.0 * f64::from(SIDE)) as u32).min(SIDE - 1)
}

fn row(y: f64) -> u32 {
    (((y + 90.0) / 180.0 * f64::from(SIDE)) as u32).min(SIDE - 1)
}

/// Spreads the low 16 bits of `v` to the even bit positions.
fn spread(v: u32) -> u32 {
    let mut v = v & 0xFFFF;
    v = (v | (v << 8)) & 0x00FF_00FF;
    v = (v | (v << 4)) & 0x0F0F_0F0F;
    v = (v | (v << 2)) & 0x3333_3333;
    (v | (v << 1)) & 0x5555_5555
}

/// The inverse of [`spread`].
fn gather(v: u32) -> u32 {
    let mut v = v & 0x5555_5555;
    v = (v | (v >> 1)) & 0x3333_3333;
    v = (v | (v >> 2)) & 0x0F0F_0F0F;
    v = (v | (v >> 4)) & 0x00FF_00FF;
    (v | (v >> 8)) & 0xFFFF
}

impl Cell {
    /// The cell that holds all of `rect`, if one does.
    pub fn holding(rect: &Rect<f64>) -> Option<Cell> {
        let (min, max) = (rect.min(), rect.max());
        if !(min.x.is_finite() && min.y.is_finite() && max.x.is_finite() && max.y.is_finite()) {
            return None;
        }
        let (x, y) = (column(min.x), row(min.y));
        (x == column(max.x) && y == row(max.y)).then(|| Cell(spread(x) | (spread(y) << 1)))
    }
}

/// What [`search`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Items whose cells lie wholly inside the box, so their boxes do too.
    Inside(Range<usize>),
    /// An item in a cell on the box's edge: it may or may not touch it.
    Edge(usize),
}

/// Reports the items of `cells` (sorted) that may touch `rect`: runs of
/// items certainly inside it, and, one by one, items near its edge. Items
/// in cells that do not touch it are not reported; none is reported twice.
/// Nodes with at most `small` items on the edge are reported item by item
/// rather than split further (descending costs a few binary searches;
/// testing a handful of items is cheaper).
pub fn search(cells: &[Cell], rect: &Rect<f64>, small: usize, found: impl FnMut(Found)) {
    debug_assert!(cells.is_sorted(), "cells must be sorted");
    let mut search = Search {
        cells,
        rect,
        small,
        pending: 0..0,
        found,
    };
    search.visit(0, 0, 0..cells.len());
    search.flush();
}

struct Search<'a, F> {
    cells: &'a [Cell],
    rect: &'a Rect<f64>,
    small: usize,
    /// The run being gathered: adjacent inside nodes join into one.
    pending: Range<usize>,
    found: F,
}

impl<F: FnMut(Found)> Search<'_, F> {
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            (self.found)(Found::Inside(self.pending.clone()));
        }
        self.pending = 0..0;
    }

    /// Visits the node `prefix` at `depth` (its `depth` levels of Morton
    /// bits), holding `items`.
    fn visit(&mut self, depth: u32, prefix: u32, items: Range<usize>) {
        if items.is_empty() {
            return;
        }
        let shift = LEVELS - depth;
        let (x, y) = (gather(prefix), gather(prefix >> 1));
        let cell_w = 360.0 / f64::from(SIDE);
        let cell_h = 180.0 / f64::from(SIDE);
        let west = f64::from(x << shift) * cell_w - 180.0;
        let east = f64::from((x + 1) << shift) * cell_w - 180.0;
        let south = f64::from(y << shift) * cell_h - 90.0;
        let north = f64::from((y + 1) << shift) * cell_h - 90.0;
        let (min, max) = (self.rect.min(), self.rect.max());
        if east < min.x - SLACK
            || west > max.x + SLACK
            || north < min.y - SLACK
            || south > max.y + SLACK
        {
            return;
        }
        if min.x <= west - SLACK
            && east + SLACK <= max.x
            && min.y <= south - SLACK
            && north + SLACK <= max.y
        {
            if self.pending.end != items.start {
                self.flush();
                self.pending = items.start..items.start;
            }
            self.pending.end = items.end;
            return;
        }
        if depth == LEVELS || items.len() <= self.small {
            self.flush();
            for i in items {
                (self.found)(Found::Edge(i));
            }
            return;
        }
        let child_bits = 2 * (shift - 1);
        let mut start = items.start;
        for quadrant in 0..4 {
            let child = (prefix << 2) | quadrant;
            let end_code = (child + 1) << child_bits;
            let end = start + self.cells[start..items.end].partition_point(|c| c.0 < end_code);
            self.visit(depth + 1, child, start..end);
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use geo::coord;
    use proptest::prelude::*;

    use super::*;

    fn rect(x: f64, y: f64, w: f64, h: f64) -> Rect<f64> {
        Rect::new(coord! { x: x, y: y }, coord! { x: x + w, y: y + h })
    }

    #[test]
    fn a_box_across_a_cell_boundary_has_no_cell() {
        let w = 360.0 / f64::from(SIDE);
        assert!(Cell::holding(&rect(5.0 + w / 4.0, 52.0, w / 4.0, 0.0)).is_some());
        let edge = f64::from(column(5.0) + 1) * w - 180.0;
        assert!(Cell::holding(&rect(edge - 1e-6, 52.0, 2e-6, 0.0)).is_none());
        assert!(Cell::holding(&rect(f64::NAN, 52.0, 0.0, 0.0)).is_none());
        // The edges of the world belong to its outermost cells.
        assert!(Cell::holding(&rect(180.0, 90.0, 0.0, 0.0)).is_some());
        assert!(Cell::holding(&rect(-180.0, -90.0, 0.0, 0.0)).is_some());
    }

    #[test]
    fn morton_bits_round_trip() {
        for v in [0, 1, 2, 0xABC, SIDE - 1, 0xFFFF] {
            assert_eq!(gather(spread(v)), v);
            assert_eq!(gather(spread(v) << 1 >> 1), v);
        }
    }

    fn item() -> impl Strategy<Value = Rect<f64>> {
        // Dense (a few per cell) around Utrecht, mostly points; some boxes,
        // some exactly on cell edges.
        let w = 360.0 / f64::from(SIDE);
        (0u32..100, 0u32..100, 0.0..1.0f64, 0.0..1.0f64, 0u8..4).prop_map(
            move |(i, j, fx, fy, kind)| {
                let x = 4.0 + f64::from(i) * w / 8.0 + fx * 1e-3;
                let y = 51.5 + f64::from(j) * w / 16.0 + fy * 1e-3;
                match kind {
                    0 => rect(
                        4.0 + f64::from(i / 8) * w,
                        51.5 + f64::from(j / 8) * w / 2.0,
                        0.0,
                        0.0,
                    ),
                    1 => rect(x, y, 1e-3, 1e-3),
                    _ => rect(x, y, 0.0, 0.0),
                }
            },
        )
    }

    fn viewport() -> impl Strategy<Value = Rect<f64>> {
        (
            3.5..5.5f64,
            51.0..52.5f64,
            0.0..1.5f64,
            0.0..1.0f64,
            any::<bool>(),
        )
            .prop_map(|(x, y, w, h, on_grid)| {
                if on_grid {
                    // Corners exactly on cell boundaries.
                    let cw = 360.0 / f64::from(SIDE);
                    let snap = |v: f64, s: f64| (v / s).round() * s;
                    rect(
                        snap(x, cw),
                        snap(y, cw / 2.0),
                        snap(w, cw),
                        snap(h, cw / 2.0),
                    )
                } else {
                    rect(x, y, w, h)
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Everything that touches the box is reported, once; what is
        /// reported inside a run lies inside the box.
        #[test]
        fn search_finds_each_touching_item_once_and_runs_are_inside(
            items in proptest::collection::vec(item(), 0..300),
            viewport in viewport(),
            small in 0usize..4,
        ) {
            let mut bound: Vec<(Cell, Rect<f64>)> = items
                .iter()
                .filter_map(|r| Cell::holding(r).map(|c| (c, *r)))
                .collect();
            bound.sort_by_key(|(c, _)| *c);
            let cells: Vec<Cell> = bound.iter().map(|(c, _)| *c).collect();
            let mut seen = vec![0u8; cells.len()];
            search(&cells, &viewport, small, |found| match found {
                Found::Inside(run) => {
                    for i in run {
                        seen[i] += 1;
                        let r = bound[i].1;
                        assert!(
                            viewport.min().x <= r.min().x && r.max().x <= viewport.max().x
                                && viewport.min().y <= r.min().y && r.max().y <= viewport.max().y,
                            "{r:?} reported inside {viewport:?}"
                        );
                    }
                }
                Found::Edge(i) => seen[i] += 1,
            });
            for (i, (_, r)) in bound.iter().enumerate() {
                prop_assert!(seen[i] <= 1, "item {i} reported {} times", seen[i]);
                if geo::Intersects::intersects(r, &viewport) {
                    prop_assert_eq!(seen[i], 1, "{:?} touches {:?} but was not reported", r, viewport);
                }
            }
        }
    }
}
