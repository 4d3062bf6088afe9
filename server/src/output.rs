//! Features → GeoJSON text (RFC 7946), written by hand into one buffer.
//!
//! Feature properties are stored as compact JSON text, so writing a feature
//! is string concatenation plus number formatting; no intermediate
//! `serde_json::Value` is built. Server-set fields (provenance, freshness,
//! validity) are appended to the feed's properties so that every GIS client
//! sees them as ordinary attributes.

use std::fmt::Write as _;

use beeld_layers::{Feature, Shape};
use geo::{Geometry, LineString, Polygon};

/// Appends `text` as a JSON string.
pub fn push_json_str(out: &mut String, text: &str) {
    // serde_json's escaping is correct and fast; it cannot fail on a str.
    out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned()));
}

/// Decimal places for coordinates; `None` writes full `f64` precision.
/// Six decimals are about 10 cm, plenty for a map on a mobile link.
pub type Precision = Option<u8>;

fn push_number(out: &mut String, v: f64, precision: Precision) {
    match precision {
        None => {
            let _ = write!(out, "{v}");
        }
        Some(digits) => {
            let start = out.len();
            let _ = write!(out, "{v:.prec$}", prec = usize::from(digits));
            // Trailing zeros carry no information and cost bytes on the wire.
            if out[start..].contains('.') {
                let trimmed = out.trim_end_matches('0').trim_end_matches('.').len();
                out.truncate(trimmed);
            }
            if &out[start..] == "-0" {
                out.truncate(start);
                out.push('0');
            }
        }
    }
}

fn push_coord(out: &mut String, x: f64, y: f64, precision: Precision) {
    out.push('[');
    push_number(out, x, precision);
    out.push(',');
    push_number(out, y, precision);
    out.push(']');
}

fn push_ring(out: &mut String, ring: &LineString<f64>, precision: Precision) {
    out.push('[');
    for (i, c) in ring.0.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_coord(out, c.x, c.y, precision);
    }
    out.push(']');
}

fn push_polygon_coords(out: &mut String, polygon: &Polygon<f64>, precision: Precision) {
    out.push('[');
    push_ring(out, polygon.exterior(), precision);
    for ring in polygon.interiors() {
        out.push(',');
        push_ring(out, ring, precision);
    }
    out.push(']');
}

/// Appends a GeoJSON geometry object.
pub fn push_geometry(out: &mut String, shape: &Shape, precision: Precision) {
    match shape {
        Shape::Point(c) => {
            out.push_str("{\"type\":\"Point\",\"coordinates\":");
            push_coord(out, c.x, c.y, precision);
            out.push('}');
        }
        Shape::Area(area) => match &area.geometry {
            Geometry::Polygon(p) => {
                out.push_str("{\"type\":\"Polygon\",\"coordinates\":");
                push_polygon_coords(out, p, precision);
                out.push('}');
            }
            Geometry::MultiPolygon(mp) => {
                out.push_str("{\"type\":\"MultiPolygon\",\"coordinates\":[");
                for (i, p) in mp.0.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_polygon_coords(out, p, precision);
                }
                out.push_str("]}");
            }
            // The store only keeps polygons in areas (see `geometry::parse`).
            _ => out.push_str("null"),
        },
    }
}

/// Appends one GeoJSON Feature at full precision.
pub fn push_feature(out: &mut String, feature: &Feature) {
    push_feature_with(out, feature, None);
}

/// Appends one GeoJSON Feature with coordinates at `precision`.
pub fn push_feature_with(out: &mut String, feature: &Feature, precision: Precision) {
    out.push_str("{\"type\":\"Feature\",\"id\":");
    push_json_str(out, &feature.id);
    out.push_str(",\"geometry\":");
    push_geometry(out, &feature.shape, precision);
    out.push_str(",\"properties\":");
    push_properties(out, feature);
    out.push('}');
}

/// Appends the properties object: the feed's plus the server's fields.
pub fn push_properties(out: &mut String, feature: &Feature) {
    let props = feature.properties.trim_end();
    // `props` is a JSON object's text: reopen it to append server fields.
    let inner = props.strip_suffix('}').unwrap_or("{");
    out.push_str(inner);
    if inner.len() > 1 {
        out.push(',');
    }
    out.push_str("\"feed\":");
    push_json_str(out, &feature.feed);
    let _ = write!(
        out,
        ",\"observed_at\":\"{}\",\"received_at\":\"{}\"",
        feature.observed_at.to_rfc3339(),
        feature.received_at.to_rfc3339()
    );
    if let Some(expires) = feature.expires_at {
        let _ = write!(out, ",\"expires\":\"{}\"", expires.to_rfc3339());
    }
    let _ = write!(out, ",\"seq\":{}", feature.seq);
    push_place(out, feature);
    if let Shape::Area(area) = &feature.shape {
        let _ = write!(out, ",\"ogc_valid\":{}", area.invalid_reason.is_none());
        if let Some(reason) = &area.invalid_reason {
            out.push_str(",\"ogc_invalid_reason\":");
            push_json_str(out, reason);
        }
    }
    out.push('}');
}

/// Appends the attribution (issue 4): `region` and `municipality` on points,
/// `regions` (VR codes) on hazards.
fn push_place(out: &mut String, feature: &Feature) {
    let place = &feature.place;
    match (&feature.shape, &feature.attrs) {
        (Shape::Point(_), _) => {
            if let Some(region) = place.region {
                let _ = write!(out, ",\"region\":\"{region}\"");
            }
            if let Some(code) = place.municipality_code() {
                let _ = write!(out, ",\"municipality\":\"{code}\"");
            }
        }
        (Shape::Area(_), beeld_layers::Attrs::Hazard { .. }) => {
            out.push_str(",\"regions\":[");
            for (i, code) in place.region_codes().iter().enumerate() {
                let sep = if i > 0 { "," } else { "" };
                let _ = write!(out, "{sep}\"{code}\"");
            }
            out.push(']');
        }
        (Shape::Area(_), _) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beeld_layers::{Attrs, Seq, Timestamp};
    use serde_json::Value;

    #[test]
    fn feature_text_is_valid_geojson_with_server_fields() {
        let feature = Feature {
            id: "u\"1".into(),
            shape: Shape::Point(geo::coord! { x: 5.5, y: 51.25 }),
            properties: "{\"call_sign\":\"23-4531\"}".into(),
            attrs: Attrs::Boundary,
            feed: "vr23".into(),
            observed_at: Timestamp(0),
            received_at: Timestamp(1000),
            expires_at: None,
            seq: Seq(7),
            place: beeld_layers::Place::default(),
        };
        let mut out = String::new();
        push_feature(&mut out, &feature);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["id"], "u\"1");
        assert_eq!(v["geometry"]["coordinates"][1], 51.25);
        assert_eq!(v["properties"]["call_sign"], "23-4531");
        assert_eq!(v["properties"]["seq"], 7);
        assert_eq!(v["properties"]["received_at"], "1970-01-01T00:00:01.000Z");
    }

    #[test]
    fn precision_rounds_and_trims() {
        let mut out = String::new();
        push_geometry(
            &mut out,
            &Shape::Point(geo::coord! { x: 5.123_456_789, y: 51.5 }),
            Some(6),
        );
        assert_eq!(out, r#"{"type":"Point","coordinates":[5.123457,51.5]}"#);
        out.clear();
        push_geometry(
            &mut out,
            &Shape::Point(geo::coord! { x: -0.000_000_1, y: 52.0 }),
            Some(3),
        );
        assert_eq!(out, r#"{"type":"Point","coordinates":[0,52]}"#);
    }
}
