//! GeoJSON geometry → [`Shape`], with the checks a feed operator needs.
//!
//! Parsing works on `serde_json::Value` rather than through a GeoJSON crate
//! so that every problem can name the exact JSON pointer of the offending
//! position (`/coordinates/0/17`). Positions are RFC 7946 `[lon, lat]` or
//! `[lon, lat, alt]`; altitude is accepted and dropped, as the picture is 2-D.
//!
//! Two kinds of "invalid" are kept apart on purpose:
//! * structurally broken input (unclosed rings, out-of-range or RD New
//!   coordinates, empty geometries) is rejected with a [`GeometryError`];
//! * polygons that are only invalid in the OGC Simple Features sense
//!   (self-touching rings, tiny self-intersections, as in the real CBS
//!   boundaries) are accepted and marked with [`Area::invalid_reason`], and
//!   every spatial operation on them keeps working.

use geo::{BoundingRect, Coord, Geometry, LineString, MultiPolygon, Polygon, Rect, Validation};
use serde_json::Value;

use crate::collection::GeometryRule;

/// A feature's geometry as the store keeps it.
///
/// Points are inline (they are most of the picture and move all the time);
/// areas are boxed with their bounding box and validity so a unit costs no
/// more than it must.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A point, `x` = lon, `y` = lat.
    Point(Coord<f64>),
    /// A polygon or multipolygon.
    Area(Box<Area>),
}

/// A polygonal geometry with what the store needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Area {
    /// A `Polygon` or `MultiPolygon`, as the feed sent it.
    pub geometry: Geometry<f64>,
    /// Bounding box, precomputed: queries and the R-tree need it constantly.
    pub bbox: Rect<f64>,
    /// Why the area is invalid in the OGC sense, if it is.
    pub invalid_reason: Option<Box<str>>,
    /// Number of positions, as sent.
    pub n_vertices: usize,
}

impl Shape {
    /// The bounding box (degenerate for points).
    pub fn bbox(&self) -> Rect<f64> {
        match self {
            Shape::Point(c) => Rect::new(*c, *c),
            Shape::Area(area) => area.bbox,
        }
    }

    /// The shape as a `geo` geometry.
    pub fn to_geometry(&self) -> Geometry<f64> {
        match self {
            Shape::Point(c) => Geometry::Point((*c).into()),
            Shape::Area(area) => area.geometry.clone(),
        }
    }

    /// Whether the shape intersects `rect` (equivalent to `ST_Intersects`).
    pub fn intersects_rect(&self, rect: &Rect<f64>) -> bool {
        use geo::Intersects;
        match self {
            Shape::Point(c) => rect.intersects(c),
            Shape::Area(area) => area.bbox.intersects(rect) && area.geometry.intersects(rect),
        }
    }

    /// Builds an area shape from a polygon or multipolygon, checking OGC validity.
    pub fn area(geometry: Geometry<f64>, n_vertices: usize) -> Shape {
        let invalid_reason = match &geometry {
            Geometry::Polygon(p) => p.check_validation().err().map(|e| e.to_string()),
            Geometry::MultiPolygon(mp) => mp.check_validation().err().map(|e| e.to_string()),
            _ => None,
        };
        let bbox = geometry
            .bounding_rect()
            .unwrap_or_else(|| Rect::new(Coord::zero(), Coord::zero()));
        Shape::Area(Box::new(Area {
            geometry,
            bbox,
            invalid_reason: invalid_reason.map(String::into_boxed_str),
            n_vertices,
        }))
    }

    /// Why the shape is OGC-invalid, if it is.
    pub fn invalid_reason(&self) -> Option<&str> {
        match self {
            Shape::Point(_) => None,
            Shape::Area(area) => area.invalid_reason.as_deref(),
        }
    }
}

/// What is wrong with a geometry.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeometryErrorKind {
    /// No geometry, or `null`.
    #[error("geometry is missing; every feature in beeld needs a location")]
    Missing,
    /// Not a JSON object.
    #[error("geometry must be a GeoJSON geometry object")]
    NotAnObject,
    /// `type` is not a GeoJSON geometry type.
    #[error("'{0}' is not a GeoJSON geometry type")]
    UnknownType(String),
    /// The collection does not store this type.
    #[error("{found} is not accepted here; this collection takes {expected}")]
    WrongType {
        /// The type sent.
        found: String,
        /// What the collection takes.
        expected: &'static str,
    },
    /// No `coordinates` array.
    #[error("'coordinates' is missing or not an array")]
    MissingCoordinates,
    /// A position is not an array of numbers.
    #[error("a position must be an array of 2 or 3 numbers [lon, lat(, alt)]")]
    NotAPosition,
    /// A coordinate is NaN or infinite.
    #[error("coordinate is not a finite number")]
    NotFinite,
    /// Outside -180..180 / -90..90.
    #[error(
        "position [{lon}, {lat}] is out of range: longitude must be within -180..180 and latitude within -90..90 (RFC 7946: WGS84 lon/lat order)"
    )]
    OutOfRange {
        /// First number sent.
        lon: f64,
        /// Second number sent.
        lat: f64,
    },
    /// Metres in the Dutch national grid, sent where degrees belong.
    #[error(
        "position [{x}, {y}] looks like Dutch RD New metres (Amersfoort / RD New, EPSG:28992), not WGS84 degrees; reproject to EPSG:4326 lon/lat before sending (RFC 7946)"
    )]
    LooksLikeRdNew {
        /// Easting as sent.
        x: f64,
        /// Northing as sent.
        y: f64,
    },
    /// First and last position of a ring differ.
    #[error("linear ring is not closed: first position {first:?} differs from last {last:?}")]
    RingNotClosed {
        /// First position.
        first: [f64; 2],
        /// Last position.
        last: [f64; 2],
    },
    /// A ring with fewer than four positions.
    #[error("linear ring has {0} positions; a closed ring needs at least 4")]
    RingTooShort(usize),
    /// Empty coordinates.
    #[error("geometry is empty")]
    Empty,
    /// More positions than allowed.
    #[error(
        "geometry has more than {limit} positions; simplify it or split it into several features"
    )]
    TooManyVertices {
        /// The limit.
        limit: usize,
    },
    /// A `GeometryCollection` holding something other than polygons.
    #[error(
        "a GeometryCollection is only accepted when it holds only polygons (it becomes a MultiPolygon)"
    )]
    MixedCollection,
}

/// A geometry problem at a place inside the geometry object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}")]
pub struct GeometryError {
    /// JSON pointer relative to the geometry object, e.g. `/coordinates/0/3`.
    pub pointer: String,
    /// What is wrong.
    pub kind: GeometryErrorKind,
}

fn err<T>(pointer: impl Into<String>, kind: GeometryErrorKind) -> Result<T, GeometryError> {
    Err(GeometryError {
        pointer: pointer.into(),
        kind,
    })
}

/// Parses and checks a GeoJSON geometry for a collection with `rule`.
///
/// ```
/// use beeld_layers::collection::GeometryRule;
/// use beeld_layers::geometry::{parse, GeometryErrorKind};
/// use serde_json::json;
///
/// let ok = parse(&json!({"type": "Point", "coordinates": [5.69, 50.86]}), GeometryRule::Point, 100);
/// assert!(ok.is_ok());
///
/// let rd = parse(&json!({"type": "Point", "coordinates": [155000.0, 463000.0]}), GeometryRule::Point, 100);
/// assert!(matches!(rd.unwrap_err().kind, GeometryErrorKind::LooksLikeRdNew { .. }));
/// ```
pub fn parse(
    value: &Value,
    rule: GeometryRule,
    max_vertices: usize,
) -> Result<Shape, GeometryError> {
    let object = match value {
        Value::Null => return err("", GeometryErrorKind::Missing),
        Value::Object(o) => o,
        _ => return err("", GeometryErrorKind::NotAnObject),
    };
    let Some(kind) = object.get("type").and_then(Value::as_str) else {
        return err("/type", GeometryErrorKind::NotAnObject);
    };
    let expected = match rule {
        GeometryRule::Point => "Point",
        GeometryRule::Area => "Polygon or MultiPolygon",
    };
    let wrong = || {
        err(
            "/type",
            GeometryErrorKind::WrongType {
                found: kind.to_owned(),
                expected,
            },
        )
    };
    let mut budget = Budget {
        left: max_vertices,
        limit: max_vertices,
    };
    let coordinates = || object.get("coordinates").ok_or(());
    match (kind, rule) {
        ("Point", GeometryRule::Point) => {
            let Ok(c) = coordinates() else {
                return err("/coordinates", GeometryErrorKind::MissingCoordinates);
            };
            position(c, "/coordinates").map(Shape::Point)
        }
        ("Polygon", GeometryRule::Area) => {
            let Ok(c) = coordinates() else {
                return err("/coordinates", GeometryErrorKind::MissingCoordinates);
            };
            let polygon = polygon(c, "/coordinates", &mut budget)?;
            Ok(Shape::area(Geometry::Polygon(polygon), budget.used()))
        }
        ("MultiPolygon", GeometryRule::Area) => {
            let Ok(c) = coordinates() else {
                return err("/coordinates", GeometryErrorKind::MissingCoordinates);
            };
            let polygons = array(c, "/coordinates")?
                .iter()
                .enumerate()
                .map(|(i, p)| polygon(p, &format!("/coordinates/{i}"), &mut budget))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Shape::area(
                Geometry::MultiPolygon(MultiPolygon(polygons)),
                budget.used(),
            ))
        }
        ("GeometryCollection", GeometryRule::Area) => {
            let Some(members) = object.get("geometries").and_then(Value::as_array) else {
                return err("/geometries", GeometryErrorKind::MissingCoordinates);
            };
            if members.is_empty() {
                return err("/geometries", GeometryErrorKind::Empty);
            }
            let mut polygons = Vec::new();
            for (i, member) in members.iter().enumerate() {
                let at = format!("/geometries/{i}");
                let member_type = member.get("type").and_then(Value::as_str);
                let coords = member.get("coordinates");
                match (member_type, coords) {
                    (Some("Polygon"), Some(c)) => {
                        polygons.push(polygon(c, &format!("{at}/coordinates"), &mut budget)?);
                    }
                    (Some("MultiPolygon"), Some(c)) => {
                        for (j, p) in array(c, &format!("{at}/coordinates"))?.iter().enumerate() {
                            polygons.push(polygon(
                                p,
                                &format!("{at}/coordinates/{j}"),
                                &mut budget,
                            )?);
                        }
                    }
                    _ => return err(at, GeometryErrorKind::MixedCollection),
                }
            }
            Ok(Shape::area(
                Geometry::MultiPolygon(MultiPolygon(polygons)),
                budget.used(),
            ))
        }
        (
            "Point" | "MultiPoint" | "LineString" | "MultiLineString" | "Polygon" | "MultiPolygon"
            | "GeometryCollection",
            _,
        ) => wrong(),
        (other, _) => err("/type", GeometryErrorKind::UnknownType(other.to_owned())),
    }
}

struct Budget {
    left: usize,
    limit: usize,
}

impl Budget {
    fn take(&mut self, n: usize, pointer: &str) -> Result<(), GeometryError> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => err(
                pointer,
                GeometryErrorKind::TooManyVertices { limit: self.limit },
            ),
        }
    }

    fn used(&self) -> usize {
        self.limit - self.left
    }
}

fn array<'a>(value: &'a Value, pointer: &str) -> Result<&'a Vec<Value>, GeometryError> {
    match value.as_array() {
        Some(a) if a.is_empty() => err(pointer, GeometryErrorKind::Empty),
        Some(a) => Ok(a),
        None => err(pointer, GeometryErrorKind::MissingCoordinates),
    }
}

fn polygon(
    value: &Value,
    pointer: &str,
    budget: &mut Budget,
) -> Result<Polygon<f64>, GeometryError> {
    let rings = array(value, pointer)?;
    let mut parsed = Vec::with_capacity(rings.len());
    for (i, ring) in rings.iter().enumerate() {
        parsed.push(linear_ring(ring, &format!("{pointer}/{i}"), budget)?);
    }
    let mut parsed = parsed.into_iter();
    let exterior = parsed.next().unwrap_or_else(|| LineString(Vec::new()));
    Ok(Polygon::new(exterior, parsed.collect()))
}

fn linear_ring(
    value: &Value,
    pointer: &str,
    budget: &mut Budget,
) -> Result<LineString<f64>, GeometryError> {
    let positions = array(value, pointer)?;
    budget.take(positions.len(), pointer)?;
    let coords = positions
        .iter()
        .enumerate()
        .map(|(i, p)| position(p, &format!("{pointer}/{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    if coords.len() < 4 {
        return err(pointer, GeometryErrorKind::RingTooShort(coords.len()));
    }
    let (first, last) = (coords[0], coords[coords.len() - 1]);
    if first != last {
        return err(
            pointer,
            GeometryErrorKind::RingNotClosed {
                first: [first.x, first.y],
                last: [last.x, last.y],
            },
        );
    }
    Ok(LineString(coords))
}

/// The rough extent of the RD New grid in metres (x, y), including the sea.
const RD_X: std::ops::RangeInclusive<f64> = -7_000.0..=300_000.0;
const RD_Y: std::ops::RangeInclusive<f64> = 289_000.0..=629_000.0;

fn position(value: &Value, pointer: &str) -> Result<Coord<f64>, GeometryError> {
    let Some(items) = value.as_array() else {
        return err(pointer, GeometryErrorKind::NotAPosition);
    };
    if !(2..=3).contains(&items.len()) {
        return err(pointer, GeometryErrorKind::NotAPosition);
    }
    let mut xy = [0.0; 2];
    for (slot, item) in xy.iter_mut().zip(items) {
        let Some(n) = item.as_f64() else {
            return err(pointer, GeometryErrorKind::NotAPosition);
        };
        if !n.is_finite() {
            return err(pointer, GeometryErrorKind::NotFinite);
        }
        *slot = n;
    }
    if items.len() == 3 && !items[2].is_number() {
        return err(pointer, GeometryErrorKind::NotAPosition);
    }
    let [x, y] = xy;
    if !(-180.0..=180.0).contains(&x) || !(-90.0..=90.0).contains(&y) {
        if RD_X.contains(&x) && RD_Y.contains(&y) {
            return err(pointer, GeometryErrorKind::LooksLikeRdNew { x, y });
        }
        return err(pointer, GeometryErrorKind::OutOfRange { lon: x, lat: y });
    }
    Ok(Coord { x, y })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn area(v: Value) -> Result<Shape, GeometryError> {
        parse(&v, GeometryRule::Area, 1000)
    }

    #[test]
    fn unclosed_ring_names_the_ring() {
        let e = area(json!({"type": "Polygon", "coordinates": [[[5.0, 51.0], [5.1, 51.0], [5.1, 51.1], [5.0, 51.1]]]})).unwrap_err();
        assert_eq!(e.pointer, "/coordinates/0");
        assert!(matches!(e.kind, GeometryErrorKind::RingNotClosed { .. }));
    }

    #[test]
    fn bow_tie_is_accepted_but_marked() {
        let shape = area(json!({"type": "Polygon", "coordinates": [[[5.0, 51.0], [5.1, 51.1], [5.1, 51.0], [5.0, 51.1], [5.0, 51.0]]]})).unwrap();
        assert!(shape.invalid_reason().is_some());
    }

    #[test]
    fn vertex_limit_is_enforced() {
        let ring: Vec<_> = (0..2000)
            .map(|i| json!([5.0 + f64::from(i) * 1e-4, 51.0]))
            .collect();
        let e = area(json!({"type": "Polygon", "coordinates": [ring]})).unwrap_err();
        assert!(matches!(
            e.kind,
            GeometryErrorKind::TooManyVertices { limit: 1000 }
        ));
    }

    #[test]
    fn point_in_area_collection_is_wrong_type() {
        let e = area(json!({"type": "Point", "coordinates": [5.0, 51.0]})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Point is not accepted here; this collection takes Polygon or MultiPolygon"
        );
    }

    #[test]
    fn empty_and_out_of_range() {
        let e = area(json!({"type": "MultiPolygon", "coordinates": []})).unwrap_err();
        assert_eq!(e.kind, GeometryErrorKind::Empty);
        let e = parse(
            &json!({"type": "Point", "coordinates": [200.0, 51.0]}),
            GeometryRule::Point,
            10,
        )
        .unwrap_err();
        assert!(matches!(e.kind, GeometryErrorKind::OutOfRange { .. }));
    }

    #[test]
    fn geometry_collection_of_polygons_becomes_multipolygon() {
        let poly = json!({"type": "Polygon", "coordinates": [[[5.0, 51.0, 0.0], [5.1, 51.0, 0.0], [5.1, 51.1, 0.0], [5.0, 51.0, 0.0]]]});
        let shape = area(json!({"type": "GeometryCollection", "geometries": [poly.clone(), poly]}))
            .unwrap();
        match shape {
            Shape::Area(a) => {
                assert!(matches!(a.geometry, Geometry::MultiPolygon(ref mp) if mp.0.len() == 2))
            }
            Shape::Point(_) => panic!("expected area"),
        }
    }
}
