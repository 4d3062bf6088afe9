//! Which parts of the map a set of boxes occupies, on a coarse grid, so
//! that "does any of them touch this rectangle?" costs O(1): the fan-out
//! asks it once per subscription per tick to decide which connections
//! to wake.
//!
//! The grid covers the boxes' joined extent with at most a given number of
//! cells, starting at a quarter of the Z-order leaf size
//! ([`crate::zorder`]) and coarsening while there are too many. A summed-area table over "some box
//! touches this cell" answers a rectangle with four reads. The answer may
//! be yes for a rectangle that only shares a cell with a box (at most one
//! cell's width off), never no for one a box touches.
//!
//! ```
//! use beeld_layers::occupancy::Occupancy;
//! use geo::{Rect, coord};
//!
//! let point = |x: f64, y: f64| Rect::new(coord! { x: x, y: y }, coord! { x: x, y: y });
//! let grid = Occupancy::new(&[point(5.12, 52.09), point(5.95, 50.88)], 1 << 14).unwrap();
//! let utrecht = Rect::new(coord! { x: 5.0, y: 52.0 }, coord! { x: 5.2, y: 52.2 });
//! let groningen = Rect::new(coord! { x: 6.4, y: 53.1 }, coord! { x: 6.7, y: 53.3 });
//! assert!(grid.touches(&utrecht));
//! assert!(!grid.touches(&groningen));
//! ```

use geo::Rect;

/// A coarse grid of where boxes are.
#[derive(Debug, Clone)]
pub struct Occupancy {
    west: f64,
    south: f64,
    cell_w: f64,
    cell_h: f64,
    cols: usize,
    rows: usize,
    /// `sums[(row) * (cols + 1) + col]`: occupied cells below `row` and
    /// left of `col` (a summed-area table with a zero first row and column).
    sums: Vec<u32>,
}

impl Occupancy {
    /// The grid of `boxes`, with at most `max_cells` cells; `None` when
    /// there are none (or none with finite coordinates).
    pub fn new(boxes: &[Rect<f64>], max_cells: usize) -> Option<Occupancy> {
        let finite = |r: &&Rect<f64>| {
            r.min().x.is_finite()
                && r.min().y.is_finite()
                && r.max().x.is_finite()
                && r.max().y.is_finite()
        };
        let extent = boxes
            .iter()
            .filter(finite)
            .copied()
            .reduce(crate::change::union)?;
        let (west, south) = (extent.min().x, extent.min().y);
        // A quarter of a Z-order leaf (about 1.5 km in the Netherlands) at
        // the finest.
        let mut cell_w = 360.0 / f64::from(1u32 << (crate::zorder::LEVELS + 2));
        let mut cell_h = cell_w / 2.0;
        let count = |size: f64, cell: f64| (size / cell).floor() as usize + 1;
        let (mut cols, mut rows) = (
            count(extent.width(), cell_w),
            count(extent.height(), cell_h),
        );
        while cols.saturating_mul(rows) > max_cells.max(1) {
            cell_w *= 2.0;
            cell_h *= 2.0;
            (cols, rows) = (
                count(extent.width(), cell_w),
                count(extent.height(), cell_h),
            );
        }
        let mut grid = Occupancy {
            west,
            south,
            cell_w,
            cell_h,
            cols,
            rows,
            sums: Vec::new(),
        };
        // A difference array marks each box's cells in O(1); prefix sums
        // then give how many boxes touch each cell.
        let stride = cols + 1;
        let mut marks = vec![0i32; stride * (rows + 1)];
        for r in boxes.iter().filter(finite) {
            let (x0, x1) = (grid.col(r.min().x), grid.col(r.max().x));
            let (y0, y1) = (grid.row(r.min().y), grid.row(r.max().y));
            marks[y0 * stride + x0] += 1;
            marks[y0 * stride + x1 + 1] -= 1;
            marks[(y1 + 1) * stride + x0] -= 1;
            marks[(y1 + 1) * stride + x1 + 1] += 1;
        }
        for y in 0..rows {
            for x in 0..cols {
                let left = if x > 0 { marks[y * stride + x - 1] } else { 0 };
                let below = if y > 0 {
                    marks[(y - 1) * stride + x]
                } else {
                    0
                };
                let corner = if x > 0 && y > 0 {
                    marks[(y - 1) * stride + x - 1]
                } else {
                    0
                };
                marks[y * stride + x] += left + below - corner;
            }
        }
        // Summed-area table of occupied cells, shifted by one.
        let mut sums = vec![0u32; stride * (rows + 1)];
        for y in 0..rows {
            for x in 0..cols {
                let occupied = u32::from(marks[y * stride + x] > 0);
                sums[(y + 1) * stride + x + 1] =
                    occupied + sums[y * stride + x + 1] + sums[(y + 1) * stride + x]
                        - sums[y * stride + x];
            }
        }
        grid.sums = sums;
        Some(grid)
    }

    fn col(&self, x: f64) -> usize {
        // Saturating: west of the grid is column 0, east of it the last.
        (((x - self.west) / self.cell_w).floor().max(0.0) as usize).min(self.cols - 1)
    }

    fn row(&self, y: f64) -> usize {
        (((y - self.south) / self.cell_h).floor().max(0.0) as usize).min(self.rows - 1)
    }

    /// Whether some box may touch `rect`: always when one does, and
    /// sometimes when one is within a cell of it.
    pub fn touches(&self, rect: &Rect<f64>) -> bool {
        let east = self.west + self.cell_w * self.cols as f64;
        let north = self.south + self.cell_h * self.rows as f64;
        if rect.max().x < self.west
            || rect.max().y < self.south
            || rect.min().x > east
            || rect.min().y > north
        {
            return false;
        }
        let (x0, x1) = (self.col(rect.min().x), self.col(rect.max().x) + 1);
        let (y0, y1) = (self.row(rect.min().y), self.row(rect.max().y) + 1);
        let stride = self.cols + 1;
        let at = |x: usize, y: usize| i64::from(self.sums[y * stride + x]);
        at(x1, y1) - at(x0, y1) - at(x1, y0) + at(x0, y0) > 0
    }
}

#[cfg(test)]
mod tests {
    use geo::{Intersects, coord};
    use proptest::prelude::*;

    use super::*;

    fn rect(x: f64, y: f64, w: f64, h: f64) -> Rect<f64> {
        Rect::new(coord! { x: x, y: y }, coord! { x: x + w, y: y + h })
    }

    fn boxes() -> impl Strategy<Value = Vec<Rect<f64>>> {
        proptest::collection::vec(
            (
                3.0..7.5f64,
                50.5..53.7f64,
                prop_oneof![3 => Just(0.0), 1 => 0.0..0.01f64, 1 => 0.0..1.0f64],
                prop_oneof![3 => Just(0.0), 1 => 0.0..0.01f64, 1 => 0.0..1.0f64],
            )
                .prop_map(|(x, y, w, h)| rect(x, y, w, h)),
            1..60,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Never says no to a rectangle a box touches; and on a fine grid
        /// with points only, says yes only within a cell of one.
        #[test]
        fn a_touched_rectangle_is_always_found(
            boxes in boxes(),
            (x, y, w, h) in (2.5..8.0f64, 50.0..54.0f64, 0.0..0.5f64, 0.0..0.5f64),
            max_cells in prop_oneof![Just(4usize), Just(100), Just(1 << 14)],
        ) {
            let grid = Occupancy::new(&boxes, max_cells).expect("boxes");
            let viewport = rect(x, y, w, h);
            if boxes.iter().any(|b| b.intersects(&viewport)) {
                prop_assert!(grid.touches(&viewport), "{viewport:?} misses one of {boxes:?}");
            }
            if grid.touches(&viewport) {
                let near = rect(
                    x - grid.cell_w, y - grid.cell_h, w + 2.0 * grid.cell_w, h + 2.0 * grid.cell_h,
                );
                prop_assert!(boxes.iter().any(|b| b.intersects(&near)));
            }
        }
    }

    #[test]
    fn no_boxes_no_grid() {
        assert!(Occupancy::new(&[], 100).is_none());
        assert!(Occupancy::new(&[rect(f64::NAN, 1.0, 0.0, 0.0)], 100).is_none());
    }
}
