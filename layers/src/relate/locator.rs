//! Prepared point-in-area location: which of a fixed set of areas (the 25
//! veiligheidsregio's, the gemeenten, one hazard polygon) cover a point.
//!
//! # Technique (chosen from measurements, see BENCHMARKS.md)
//!
//! A uniform grid over the areas' bounding box, with about four cells per
//! polygon edge. Every cell knows the areas that cover it entirely and the
//! polygons whose boundary passes through it. Most points fall in a cell
//! without boundary, and are answered by one array read. In a boundary cell
//! each listed polygon is tested exactly with a horizontal ray, against only
//! the edges of that polygon that span the point's latitude (its edges are
//! bucketed in horizontal stripes, as tidwall/tg does).
//!
//! # Semantics (exact, also for OGC-invalid shapes)
//!
//! A point is covered by an area when it lies in its interior or on its
//! boundary (PostGIS `ST_Covers(area, point)`, geo's `Intersects`). The
//! interior of one polygon is defined by the even-odd rule over all its rings,
//! which is the OGC interior for valid polygons and stays well defined for
//! self-intersecting ones (VR02 2019, VR11/GM0852 2023). A multipolygon
//! covers a point when any of its polygons does, so overlapping parts of an
//! invalid multipolygon do not cancel out. Orientation tests use Shewchuk's
//! adaptive predicates (`robust`), so points on edges and vertices are
//! classified exactly. [`covers_brute`] is the reference implementation the
//! property tests compare against.

use geo::{Coord, Geometry, LineString, Polygon, Rect};

/// One edge of a ring.
#[derive(Debug, Clone, Copy)]
struct Edge {
    a: Coord<f64>,
    b: Coord<f64>,
}

impl Edge {
    /// Whether `p` is on the edge, or the rightward horizontal ray from `p`
    /// crosses it (half-open in y so that a vertex is counted once).
    /// Returns `None` when `p` is on the edge, else whether the ray crosses.
    #[inline]
    fn ray(&self, p: Coord<f64>) -> Option<bool> {
        let (a, b) = (self.a, self.b);
        if p.y < a.y.min(b.y) || p.y > a.y.max(b.y) || p.x > a.x.max(b.x) {
            return Some(false);
        }
        let straddles = (a.y > p.y) != (b.y > p.y);
        if p.x < a.x.min(b.x) {
            // Strictly left of the whole edge: not on it; any crossing is to the right.
            return Some(straddles);
        }
        let o = robust::orient2d(
            robust::Coord { x: a.x, y: a.y },
            robust::Coord { x: b.x, y: b.y },
            robust::Coord { x: p.x, y: p.y },
        );
        if o == 0.0 {
            // Collinear and inside the edge's bounding box: on the edge.
            return None;
        }
        // An upward edge is right of `p` when `p` is on its left side.
        Some(straddles && ((o > 0.0) == (b.y > a.y)))
    }
}

/// One polygon (all of its rings) with its edges bucketed in horizontal
/// stripes, so a ray test reads only the edges spanning the point's y.
#[derive(Debug, Clone)]
struct Part {
    /// The area this polygon belongs to.
    area: u32,
    bbox: Rect<f64>,
    stripe_y0: f64,
    stripe_inv_h: f64,
    /// `edges[offsets[s]..offsets[s + 1]]` are the edges of stripe `s`.
    offsets: Vec<u32>,
    edges: Vec<Edge>,
    n_edges: usize,
}

fn ring_edges(ring: &LineString<f64>, out: &mut Vec<Edge>) {
    for w in ring.0.windows(2) {
        out.push(Edge { a: w[0], b: w[1] });
    }
    // Rings from the store are closed; close any that are not, so the
    // even-odd rule stays meaningful.
    if let (Some(first), Some(last)) = (ring.0.first(), ring.0.last())
        && first != last
    {
        out.push(Edge {
            a: *last,
            b: *first,
        });
    }
}

fn polygon_edges(polygon: &Polygon<f64>) -> Vec<Edge> {
    let mut edges = Vec::new();
    ring_edges(polygon.exterior(), &mut edges);
    for ring in polygon.interiors() {
        ring_edges(ring, &mut edges);
    }
    edges
}

fn edges_bbox(edges: &[Edge]) -> Option<Rect<f64>> {
    let first = edges.first()?;
    let (mut lo, mut hi) = (first.a, first.a);
    for e in edges {
        for c in [e.a, e.b] {
            lo.x = lo.x.min(c.x);
            lo.y = lo.y.min(c.y);
            hi.x = hi.x.max(c.x);
            hi.y = hi.y.max(c.y);
        }
    }
    Some(Rect::new(lo, hi))
}

impl Part {
    fn new(area: u32, edges: Vec<Edge>) -> Option<Part> {
        let bbox = edges_bbox(&edges)?;
        let n_edges = edges.len();
        // About four edges per stripe keeps a test at a handful of edges
        // while an edge spans few stripes.
        let n_stripes = (n_edges / 4).clamp(1, 65_536);
        let height = bbox.height();
        let stripe_inv_h = if height > 0.0 {
            n_stripes as f64 / height
        } else {
            0.0
        };
        let stripe_y0 = bbox.min().y;
        let stripe = |y: f64| -> usize {
            (((y - stripe_y0) * stripe_inv_h).max(0.0) as usize).min(n_stripes - 1)
        };
        let mut counts = vec![0u32; n_stripes + 1];
        for e in &edges {
            for s in stripe(e.a.y.min(e.b.y))..=stripe(e.a.y.max(e.b.y)) {
                counts[s + 1] += 1;
            }
        }
        for s in 0..n_stripes {
            counts[s + 1] += counts[s];
        }
        let mut fill = counts.clone();
        let mut sorted = vec![edges[0]; counts[n_stripes] as usize];
        for e in &edges {
            for s in stripe(e.a.y.min(e.b.y))..=stripe(e.a.y.max(e.b.y)) {
                sorted[fill[s] as usize] = *e;
                fill[s] += 1;
            }
        }
        Some(Part {
            area,
            bbox,
            stripe_y0,
            stripe_inv_h,
            offsets: counts,
            edges: sorted,
            n_edges,
        })
    }

    fn stripe(&self, y: f64) -> usize {
        let n = self.offsets.len() - 1;
        (((y - self.stripe_y0) * self.stripe_inv_h).max(0.0) as usize).min(n - 1)
    }

    /// Exact: interior (even-odd) or boundary.
    #[inline]
    fn covers(&self, p: Coord<f64>) -> bool {
        let (lo, hi) = (self.bbox.min(), self.bbox.max());
        if !(p.x >= lo.x && p.x <= hi.x && p.y >= lo.y && p.y <= hi.y) {
            return false;
        }
        let s = self.stripe(p.y);
        let edges = &self.edges[self.offsets[s] as usize..self.offsets[s + 1] as usize];
        let mut inside = false;
        for e in edges {
            match e.ray(p) {
                None => return true,
                Some(crosses) => inside ^= crosses,
            }
        }
        inside
    }

    /// X positions where the horizontal line at `y` crosses the polygon's
    /// edges (half-open rule), for the cover scan of the grid.
    fn crossings(&self, y: f64, out: &mut Vec<f64>) {
        out.clear();
        let s = self.stripe(y);
        for e in &self.edges[self.offsets[s] as usize..self.offsets[s + 1] as usize] {
            if (e.a.y > y) != (e.b.y > y) {
                out.push(e.a.x + (y - e.a.y) * (e.b.x - e.a.x) / (e.b.y - e.a.y));
            }
        }
        out.sort_unstable_by(f64::total_cmp);
    }
}

/// The polygons of a polygonal geometry (other geometry types have none).
fn polygons(geometry: &Geometry<f64>) -> Vec<&Polygon<f64>> {
    match geometry {
        Geometry::Polygon(p) => vec![p],
        Geometry::MultiPolygon(mp) => mp.0.iter().collect(),
        Geometry::GeometryCollection(gc) => gc.0.iter().flat_map(polygons).collect(),
        _ => Vec::new(),
    }
}

/// Reference implementation of [`Locator`]'s semantics, by brute force over
/// every edge: whether `geometry` covers `p` (interior by the even-odd rule
/// per polygon, or boundary; any polygon of a multipolygon).
pub fn covers_brute(geometry: &Geometry<f64>, p: Coord<f64>) -> bool {
    polygons(geometry).into_iter().any(|polygon| {
        let mut inside = false;
        for e in polygon_edges(polygon) {
            match e.ray(p) {
                None => return true,
                Some(crosses) => inside ^= crosses,
            }
        }
        inside
    })
}

/// A prepared set of areas, answering "which areas cover this point".
///
/// Area ids are positions in the slice given to [`Locator::new`].
///
/// ```
/// use beeld_layers::relate::Locator;
/// use geo::{Geometry, Rect, coord};
/// let square = |x: f64| Geometry::Polygon(Rect::new(coord! { x: x, y: 0.0 }, coord! { x: x + 1.0, y: 1.0 }).to_polygon());
/// let locator = Locator::new(&[square(0.0), square(1.0)]);
/// assert_eq!(locator.first(coord! { x: 0.5, y: 0.5 }), Some(0));
/// // On the shared edge both cover the point; `first` is the lowest id.
/// assert_eq!(locator.all(coord! { x: 1.0, y: 0.5 }), vec![0, 1]);
/// assert_eq!(locator.first(coord! { x: 3.0, y: 0.5 }), None);
/// ```
#[derive(Debug, Clone)]
pub struct Locator {
    x0: f64,
    y0: f64,
    inv_dx: f64,
    inv_dy: f64,
    nx: u32,
    ny: u32,
    /// Per cell, an offset into `pool` where its list starts.
    cells: Vec<u32>,
    /// Cell lists, deduplicated (most interior cells of one area share one):
    /// `[n_cover, n_parts, cover area ids (ascending)…, part ids (ascending)…]`.
    pool: Vec<u32>,
    parts: Vec<Part>,
    n_areas: usize,
}

impl Locator {
    /// Prepares `areas` (polygons and multipolygons; anything else covers
    /// nothing) with about four grid cells per edge.
    pub fn new(areas: &[Geometry<f64>]) -> Locator {
        Locator::with_cells_per_edge(areas, 4.0)
    }

    /// Prepares `areas` with a chosen grid density (cells per edge).
    pub fn with_cells_per_edge(areas: &[Geometry<f64>], cells_per_edge: f64) -> Locator {
        let mut parts = Vec::new();
        for (area, geometry) in areas.iter().enumerate() {
            for polygon in polygons(geometry) {
                let area = u32::try_from(area).unwrap_or(u32::MAX);
                if let Some(part) = Part::new(area, polygon_edges(polygon)) {
                    parts.push(part);
                }
            }
        }
        let n_edges: usize = parts.iter().map(|p| p.n_edges).sum();
        let mut bbox: Option<Rect<f64>> = None;
        for part in &parts {
            bbox = Some(bbox.map_or(part.bbox, |b| {
                Rect::new(
                    Coord {
                        x: b.min().x.min(part.bbox.min().x),
                        y: b.min().y.min(part.bbox.min().y),
                    },
                    Coord {
                        x: b.max().x.max(part.bbox.max().x),
                        y: b.max().y.max(part.bbox.max().y),
                    },
                )
            }));
        }
        let Some(bbox) = bbox else {
            return Locator {
                x0: 0.0,
                y0: 0.0,
                inv_dx: 0.0,
                inv_dy: 0.0,
                nx: 0,
                ny: 0,
                cells: Vec::new(),
                pool: vec![0, 0],
                parts,
                n_areas: areas.len(),
            };
        };
        // Pad so that degenerate (zero width or height) sets still get cells.
        let pad = 1e-9 * (1.0 + bbox.width().max(bbox.height()));
        let (x0, y0) = (bbox.min().x - pad, bbox.min().y - pad);
        let (w, h) = (bbox.width() + 2.0 * pad, bbox.height() + 2.0 * pad);
        let target = (n_edges as f64 * cells_per_edge).clamp(16.0, (1u32 << 22) as f64);
        let cell = (w * h / target).sqrt();
        let nx = ((w / cell).ceil() as u32).clamp(1, 1 << 14);
        let ny = ((h / cell).ceil() as u32).clamp(1, 1 << 14);
        let mut locator = Locator {
            x0,
            y0,
            inv_dx: f64::from(nx) / w,
            inv_dy: f64::from(ny) / h,
            nx,
            ny,
            cells: Vec::new(),
            pool: Vec::new(),
            parts,
            n_areas: areas.len(),
        };
        locator.build_cells();
        locator
    }

    fn col(&self, x: f64) -> i64 {
        ((x - self.x0) * self.inv_dx).floor() as i64
    }

    fn row(&self, y: f64) -> i64 {
        ((y - self.y0) * self.inv_dy).floor() as i64
    }

    fn build_cells(&mut self) {
        let (nx, ny) = (i64::from(self.nx), i64::from(self.ny));
        let (dx, dy) = (1.0 / self.inv_dx, 1.0 / self.inv_dy);
        // A margin far above float error in the clipping below, far below a cell.
        let (mx, my) = (dx * 1e-6, dy * 1e-6);
        // (cell, tag): tag = area id * 2 for "covers", part id * 2 + 1 for "boundary".
        let mut entries: Vec<(u32, u32)> = Vec::new();
        let mut crossings = Vec::new();
        for (part_id, part) in self.parts.iter().enumerate() {
            let part_tag = u32::try_from(part_id).unwrap_or(u32::MAX) * 2 + 1;
            let c0 = self.col(part.bbox.min().x - mx).clamp(0, nx - 1);
            let c1 = self.col(part.bbox.max().x + mx).clamp(0, nx - 1);
            let r0 = self.row(part.bbox.min().y - my).clamp(0, ny - 1);
            let r1 = self.row(part.bbox.max().y + my).clamp(0, ny - 1);
            let wc = (c1 - c0 + 1) as usize;
            let mut boundary = vec![false; wc * (r1 - r0 + 1) as usize];
            let mut edges_seen = 0;
            for s in 0..part.offsets.len() - 1 {
                for e in &part.edges[part.offsets[s] as usize..part.offsets[s + 1] as usize] {
                    edges_seen += 1;
                    let (ylo, yhi) = (e.a.y.min(e.b.y), e.a.y.max(e.b.y));
                    let ra = self.row(ylo - my).clamp(r0, r1);
                    let rb = self.row(yhi + my).clamp(r0, r1);
                    for r in ra..=rb {
                        let band_lo = (self.y0 + r as f64 * dy - my).max(ylo);
                        let band_hi = (self.y0 + (r + 1) as f64 * dy + my).min(yhi);
                        let (xlo, xhi) = if e.a.y == e.b.y {
                            (e.a.x.min(e.b.x), e.a.x.max(e.b.x))
                        } else {
                            let at =
                                |y: f64| e.a.x + (y - e.a.y) * (e.b.x - e.a.x) / (e.b.y - e.a.y);
                            let (xa, xb) = (at(band_lo), at(band_hi));
                            (xa.min(xb), xa.max(xb))
                        };
                        let ca = self.col(xlo - mx).clamp(c0, c1);
                        let cb = self.col(xhi + mx).clamp(c0, c1);
                        for c in ca..=cb {
                            boundary[(r - r0) as usize * wc + (c - c0) as usize] = true;
                        }
                    }
                }
            }
            debug_assert!(edges_seen >= part.n_edges);
            let area_tag = part.area * 2;
            for r in r0..=r1 {
                let yc = self.y0 + (r as f64 + 0.5) * dy;
                part.crossings(yc, &mut crossings);
                for c in c0..=c1 {
                    let cell = u32::try_from(r * nx + c).unwrap_or(u32::MAX);
                    if boundary[(r - r0) as usize * wc + (c - c0) as usize] {
                        entries.push((cell, part_tag));
                        continue;
                    }
                    let xc = self.x0 + (c as f64 + 0.5) * dx;
                    // No edge is in this cell, so the centre is far from every
                    // crossing and its parity holds for the whole cell.
                    let right = crossings.len() - crossings.partition_point(|x| *x <= xc);
                    if right % 2 == 1 {
                        entries.push((cell, area_tag));
                    }
                }
            }
        }
        entries.sort_unstable();
        entries.dedup();
        let n_cells = (nx * ny) as usize;
        let mut pool = vec![0u32, 0];
        let mut cells = vec![0u32; n_cells];
        let mut seen: hashbrown::HashMap<Vec<u32>, u32> = hashbrown::HashMap::new();
        let mut i = 0;
        let mut list = Vec::new();
        while i < entries.len() {
            let cell = entries[i].0;
            let mut j = i;
            while j < entries.len() && entries[j].0 == cell {
                j += 1;
            }
            let covers: Vec<u32> = entries[i..j]
                .iter()
                .filter(|(_, t)| t % 2 == 0)
                .map(|(_, t)| t / 2)
                .collect();
            let mut covers_sorted = covers.clone();
            covers_sorted.dedup();
            let parts: Vec<u32> = entries[i..j]
                .iter()
                .filter(|(_, t)| t % 2 == 1)
                .map(|(_, t)| t / 2)
                // A polygon of an area that already covers the cell adds nothing.
                .filter(|p| {
                    covers_sorted
                        .binary_search(&self.parts[*p as usize].area)
                        .is_err()
                })
                .collect();
            list.clear();
            list.push(u32::try_from(covers_sorted.len()).unwrap_or(u32::MAX));
            list.push(u32::try_from(parts.len()).unwrap_or(u32::MAX));
            list.extend_from_slice(&covers_sorted);
            list.extend_from_slice(&parts);
            let offset = *seen.entry(list.clone()).or_insert_with(|| {
                let offset = u32::try_from(pool.len()).unwrap_or(u32::MAX);
                pool.extend_from_slice(&list);
                offset
            });
            cells[cell as usize] = offset;
            i = j;
        }
        self.cells = cells;
        self.pool = pool;
    }

    /// The cell list of `p`: (covering area ids, candidate part ids).
    #[inline]
    fn list(&self, p: Coord<f64>) -> (&[u32], &[u32]) {
        let cx = (p.x - self.x0) * self.inv_dx;
        let cy = (p.y - self.y0) * self.inv_dy;
        // Written so that NaN falls out too.
        if !(cx >= 0.0 && cy >= 0.0 && cx < f64::from(self.nx) && cy < f64::from(self.ny)) {
            return (&[], &[]);
        }
        let cell = cy as usize * self.nx as usize + cx as usize;
        let offset = self.cells[cell] as usize;
        let n_cover = self.pool[offset] as usize;
        let n_parts = self.pool[offset + 1] as usize;
        let start = offset + 2;
        (
            &self.pool[start..start + n_cover],
            &self.pool[start + n_cover..start + n_cover + n_parts],
        )
    }

    /// The grid cell of `p`, by arithmetic only (no memory read).
    #[inline]
    pub fn cell(&self, p: Coord<f64>) -> Option<u32> {
        let cx = (p.x - self.x0) * self.inv_dx;
        let cy = (p.y - self.y0) * self.inv_dy;
        if !(cx >= 0.0 && cy >= 0.0 && cx < f64::from(self.nx) && cy < f64::from(self.ny)) {
            return None;
        }
        u32::try_from(cy as usize * self.nx as usize + cx as usize).ok()
    }

    /// Whether no boundary crosses `cell`, so every point in it has the
    /// same answer (a caller may then reuse an answer for the cell).
    pub fn is_uniform(&self, cell: u32) -> bool {
        self.cells
            .get(cell as usize)
            .and_then(|offset| self.pool.get(*offset as usize + 1))
            .is_some_and(|n_parts| *n_parts == 0)
    }

    /// The lowest id of the areas covering `p`, if any does. On a boundary
    /// shared by several areas this picks one deterministically.
    #[inline]
    pub fn first(&self, p: Coord<f64>) -> Option<u32> {
        let (covers, parts) = self.list(p);
        let mut best = covers.first().copied();
        for part_id in parts {
            let part = &self.parts[*part_id as usize];
            if best.is_none_or(|b| part.area < b) && part.covers(p) {
                best = Some(part.area);
            }
        }
        best
    }

    /// Whether any area covers `p`.
    #[inline]
    pub fn covers(&self, p: Coord<f64>) -> bool {
        let (covers, parts) = self.list(p);
        !covers.is_empty() || parts.iter().any(|id| self.parts[*id as usize].covers(p))
    }

    /// Calls `found` once for every area covering `p`.
    pub fn for_each(&self, p: Coord<f64>, mut found: impl FnMut(u32)) {
        let (covers, parts) = self.list(p);
        for area in covers {
            found(*area);
        }
        let mut last = None;
        for part_id in parts {
            let part = &self.parts[*part_id as usize];
            // Parts are numbered area by area, so an area's parts are adjacent.
            if last != Some(part.area) && part.covers(p) {
                last = Some(part.area);
                found(part.area);
            }
        }
    }

    /// Every area covering `p`, ascending.
    pub fn all(&self, p: Coord<f64>) -> Vec<u32> {
        let mut out = Vec::new();
        self.for_each(p, |a| out.push(a));
        out.sort_unstable();
        out
    }

    /// Number of areas prepared.
    pub fn len(&self) -> usize {
        self.n_areas
    }

    /// Whether no area was prepared.
    pub fn is_empty(&self) -> bool {
        self.n_areas == 0
    }

    /// Grid size, for reports: (columns, rows, distinct cell lists).
    pub fn grid_stats(&self) -> (u32, u32, usize) {
        (self.nx, self.ny, self.pool.len())
    }
}

#[cfg(test)]
mod tests {
    use geo::{Intersects, MultiPolygon, coord};
    use proptest::prelude::*;

    use super::*;

    /// A star-shaped (so valid) ring around `c`, or a scribble (often
    /// self-intersecting) when `scramble` is set.
    fn ring(c: (f64, f64), radii: &[f64], scramble: bool) -> LineString<f64> {
        let n = radii.len();
        let mut pts: Vec<Coord<f64>> = (0..n)
            .map(|i| {
                let k = if scramble { (i * 7) % n } else { i };
                let t = std::f64::consts::TAU * k as f64 / n as f64;
                // Snap to a 1/64 grid so that vertices, collinear edges and
                // axis-parallel edges (exactly representable) are common.
                let snap = |v: f64| (v * 64.0).round() / 64.0;
                coord! { x: snap(c.0 + radii[i] * t.cos()), y: snap(c.1 + radii[i] * t.sin()) }
            })
            .collect();
        pts.push(pts[0]);
        LineString(pts)
    }

    fn shape() -> impl Strategy<Value = (Geometry<f64>, bool)> {
        let radii = || proptest::collection::vec(0.2f64..1.0, 3..24);
        (
            (-1.0f64..1.0, -1.0f64..1.0),
            radii(),
            proptest::option::of(proptest::collection::vec(0.05f64..0.19, 3..8)),
            proptest::option::of(((-1.0f64..1.0, -1.0f64..1.0), radii())),
            any::<bool>(),
        )
            .prop_map(|(c, r, hole, second, scramble)| {
                let exterior = ring(c, &r, scramble);
                let holes: Vec<_> = hole.iter().map(|h| ring(c, h, false)).collect();
                let first = Polygon::new(exterior, holes);
                let geometry = match second {
                    // Overlapping members: an invalid multipolygon on purpose.
                    Some((c2, r2)) => Geometry::MultiPolygon(MultiPolygon(vec![
                        first,
                        Polygon::new(ring(c2, &r2, false), vec![]),
                    ])),
                    None => Geometry::Polygon(first),
                };
                (geometry, scramble)
            })
    }

    /// Points that hit vertices, edge midpoints and grid lines on purpose.
    fn probes(geometry: &Geometry<f64>, extra: &[(f64, f64)]) -> Vec<Coord<f64>> {
        let mut out: Vec<Coord<f64>> = extra.iter().map(|(x, y)| coord! { x: *x, y: *y }).collect();
        for polygon in polygons(geometry) {
            for e in polygon_edges(polygon) {
                out.push(e.a);
                out.push(coord! { x: (e.a.x + e.b.x) / 2.0, y: (e.a.y + e.b.y) / 2.0 });
                out.push(coord! { x: e.a.x + 1e-12, y: e.a.y });
                out.push(coord! { x: e.a.x, y: (e.a.y + e.b.y) / 2.0 });
            }
        }
        out
    }

    proptest! {
        #[test]
        fn locator_agrees_with_brute_force_on_random_areas(
            areas in proptest::collection::vec(shape(), 1..5),
            extra in proptest::collection::vec((-2.5f64..2.5, -2.5f64..2.5), 0..200),
            density in 0.5f64..16.0,
        ) {
            let geometries: Vec<Geometry<f64>> = areas.iter().map(|(g, _)| g.clone()).collect();
            let locator = Locator::with_cells_per_edge(&geometries, density);
            for (area_id, geometry) in geometries.iter().enumerate() {
                for p in probes(geometry, &extra) {
                    let want: Vec<u32> = (0..geometries.len() as u32).filter(|i| covers_brute(&geometries[*i as usize], p)).collect();
                    prop_assert_eq!(locator.all(p), want.clone(), "point {:?}, area {}", p, area_id);
                    prop_assert_eq!(locator.first(p), want.first().copied());
                    prop_assert_eq!(locator.covers(p), !want.is_empty());
                }
            }
        }

        #[test]
        fn brute_force_agrees_with_geo_on_valid_polygons(
            c in (-1.0f64..1.0, -1.0f64..1.0),
            r in proptest::collection::vec(0.2f64..1.0, 3..24),
            extra in proptest::collection::vec((-2.5f64..2.5, -2.5f64..2.5), 0..100),
        ) {
            // Star-shaped rings are simple, so the even-odd interior is the
            // OGC interior and geo's `Intersects` is a second reference.
            let geometry = Geometry::Polygon(Polygon::new(ring(c, &r, false), vec![]));
            for p in probes(&geometry, &extra) {
                prop_assert_eq!(covers_brute(&geometry, p), geometry.intersects(&geo::Point(p)), "point {:?}", p);
            }
        }
    }

    #[test]
    fn a_point_on_a_shared_edge_or_vertex_is_in_both_areas() {
        let square = |x: f64, y: f64| {
            Geometry::Polygon(
                Rect::new(coord! { x: x, y: y }, coord! { x: x + 1.0, y: y + 1.0 }).to_polygon(),
            )
        };
        let areas = [
            square(0.0, 0.0),
            square(1.0, 0.0),
            square(0.0, 1.0),
            square(1.0, 1.0),
        ];
        let locator = Locator::new(&areas);
        assert_eq!(locator.all(coord! { x: 1.0, y: 1.0 }), vec![0, 1, 2, 3]);
        assert_eq!(locator.all(coord! { x: 0.5, y: 1.0 }), vec![0, 2]);
        assert_eq!(locator.all(coord! { x: 2.0, y: 2.0 }), vec![3]);
        assert_eq!(
            locator.all(coord! { x: 2.0 + 1e-15, y: 2.0 }),
            Vec::<u32>::new()
        );
        assert_eq!(locator.first(coord! { x: f64::NAN, y: 0.5 }), None);
    }

    #[test]
    fn a_hole_is_outside_and_its_edge_is_inside() {
        let outer = Rect::new(coord! { x: 0.0, y: 0.0 }, coord! { x: 4.0, y: 4.0 }).to_polygon();
        let hole = Rect::new(coord! { x: 1.0, y: 1.0 }, coord! { x: 3.0, y: 3.0 }).to_polygon();
        let area = Geometry::Polygon(Polygon::new(
            outer.exterior().clone(),
            vec![hole.exterior().clone()],
        ));
        let locator = Locator::new(&[area]);
        assert!(!locator.covers(coord! { x: 2.0, y: 2.0 }));
        assert!(locator.covers(coord! { x: 1.0, y: 2.0 }));
        assert!(locator.covers(coord! { x: 0.5, y: 2.0 }));
    }
}
