//! Features → FlatGeobuf, for bulk pulls by GIS tools (QGIS, GDAL).
//!
//! FlatGeobuf needs a fixed column schema; feeds send free properties, so the
//! schema is the union of the property names in the result, each typed by
//! the values it holds (integers only → Long, numbers → Double, booleans →
//! Bool, strings → String, anything mixed or nested → Json).

use std::collections::BTreeMap;

use beeld_layers::{Collection, Feature, Shape};
use flatgeobuf::{ColumnType, FgbCrs, FgbWriter, FgbWriterOptions, GeometryType};
use geozero::{ColumnValue, PropertyProcessor};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Long,
    Double,
    Bool,
    Text,
    Json,
}

impl Kind {
    fn of(value: &Value) -> Option<Kind> {
        match value {
            Value::Null => None,
            Value::Bool(_) => Some(Kind::Bool),
            Value::Number(n) if n.is_i64() => Some(Kind::Long),
            Value::Number(_) => Some(Kind::Double),
            Value::String(_) => Some(Kind::Text),
            Value::Array(_) | Value::Object(_) => Some(Kind::Json),
        }
    }

    fn merge(self, other: Kind) -> Kind {
        match (self, other) {
            (a, b) if a == b => a,
            (Kind::Long, Kind::Double) | (Kind::Double, Kind::Long) => Kind::Double,
            _ => Kind::Json,
        }
    }

    fn column_type(self) -> ColumnType {
        match self {
            Kind::Long => ColumnType::Long,
            Kind::Double => ColumnType::Double,
            Kind::Bool => ColumnType::Bool,
            Kind::Text => ColumnType::String,
            Kind::Json => ColumnType::Json,
        }
    }
}

/// Server-set columns, after the feed's own.
const SERVER_COLUMNS: &[(&str, ColumnType)] = &[
    ("feed", ColumnType::String),
    ("observed_at", ColumnType::DateTime),
    ("received_at", ColumnType::DateTime),
    ("expires", ColumnType::DateTime),
    ("seq", ColumnType::ULong),
];

/// Errors while writing FlatGeobuf.
#[derive(Debug, thiserror::Error)]
#[error("flatgeobuf encoding failed: {0}")]
pub struct Error(String);

/// Encodes `features` of `collection` as a FlatGeobuf file.
pub fn encode(collection: Collection, features: &[Feature]) -> Result<Vec<u8>, Error> {
    let parsed: Vec<Map<String, Value>> = features
        .iter()
        .map(|f| serde_json::from_str(&f.properties).unwrap_or_default())
        .collect();
    let mut columns: Vec<(String, Kind)> = Vec::new();
    let mut position: BTreeMap<String, usize> = BTreeMap::new();
    for props in &parsed {
        for (name, value) in props {
            let Some(kind) = Kind::of(value) else {
                continue;
            };
            match position.get(name) {
                Some(&i) => columns[i].1 = columns[i].1.merge(kind),
                None => {
                    position.insert(name.clone(), columns.len());
                    columns.push((name.clone(), kind));
                }
            }
        }
    }
    let is_area = matches!(
        collection.geometry_rule(),
        beeld_layers::collection::GeometryRule::Area
    );
    let geometry_type = if is_area {
        GeometryType::MultiPolygon
    } else {
        GeometryType::Point
    };
    let options = FgbWriterOptions {
        write_index: true,
        promote_to_multi: true,
        crs: FgbCrs {
            code: 4326,
            ..Default::default()
        },
        title: Some(collection.title()),
        ..Default::default()
    };
    let err = |e: &dyn std::fmt::Display| Error(e.to_string());
    let mut fgb = FgbWriter::create_with_options(collection.as_str(), geometry_type, options)
        .map_err(|e| err(&e))?;
    fgb.add_column("id", ColumnType::String, |_, _| {});
    for (name, kind) in &columns {
        fgb.add_column(name, kind.column_type(), |_, col| col.nullable = true);
    }
    for (name, column_type) in SERVER_COLUMNS {
        fgb.add_column(name, *column_type, |_, col| col.nullable = true);
    }
    if is_area {
        fgb.add_column("ogc_valid", ColumnType::Bool, |_, _| {});
    }
    // Attribution (issue 4), after the fixed columns: points get `region`
    // and `municipality`, hazards `regions` (JSON list of VR codes).
    let place_columns: &[&str] = match collection {
        Collection::Units | Collection::Incidents => &["region", "municipality"],
        Collection::Hazards => &["regions"],
        Collection::Regions | Collection::Municipalities => &[],
    };
    for name in place_columns {
        let column_type = if *name == "regions" {
            ColumnType::Json
        } else {
            ColumnType::String
        };
        fgb.add_column(name, column_type, |_, col| col.nullable = true);
    }
    let n_user = columns.len();
    for (feature, props) in features.iter().zip(&parsed) {
        let geometry = feature.shape.to_geometry();
        let mut failure = None;
        fgb.add_feature_geom(geometry, |out| {
            let mut put = |i: usize, name: &str, value: &ColumnValue| {
                if let Err(e) = out.property(i, name, value) {
                    failure.get_or_insert(e.to_string());
                }
            };
            put(0, "id", &ColumnValue::String(&feature.id));
            for (i, (name, kind)) in columns.iter().enumerate() {
                let Some(value) = props.get(name).filter(|v| !v.is_null()) else {
                    continue;
                };
                let json_text;
                let column_value = match (kind, value) {
                    (Kind::Long, Value::Number(n)) => {
                        ColumnValue::Long(n.as_i64().unwrap_or_default())
                    }
                    (Kind::Double, Value::Number(n)) => {
                        ColumnValue::Double(n.as_f64().unwrap_or_default())
                    }
                    (Kind::Bool, Value::Bool(b)) => ColumnValue::Bool(*b),
                    (Kind::Text, Value::String(s)) => ColumnValue::String(s),
                    _ => {
                        json_text = value.to_string();
                        ColumnValue::Json(&json_text)
                    }
                };
                put(i + 1, name, &column_value);
            }
            let base = n_user + 1;
            let observed = feature.observed_at.to_rfc3339();
            let received = feature.received_at.to_rfc3339();
            let expires = feature.expires_at.map(beeld_layers::Timestamp::to_rfc3339);
            put(base, "feed", &ColumnValue::String(&feature.feed));
            put(base + 1, "observed_at", &ColumnValue::DateTime(&observed));
            put(base + 2, "received_at", &ColumnValue::DateTime(&received));
            if let Some(expires) = &expires {
                put(base + 3, "expires", &ColumnValue::DateTime(expires));
            }
            put(base + 4, "seq", &ColumnValue::ULong(feature.seq.0));
            if let Shape::Area(area) = &feature.shape {
                put(
                    base + 5,
                    "ogc_valid",
                    &ColumnValue::Bool(area.invalid_reason.is_none()),
                );
            }
            let place_base = base + 5 + usize::from(is_area);
            let region = feature.place.region.map(|r| r.to_string());
            let municipality = feature.place.municipality_code();
            let regions = serde_json::to_string(
                &feature
                    .place
                    .region_codes()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_default();
            for (i, name) in place_columns.iter().enumerate() {
                let value = match *name {
                    "region" => region.as_deref().map(ColumnValue::String),
                    "municipality" => municipality.as_deref().map(ColumnValue::String),
                    _ => Some(ColumnValue::Json(&regions)),
                };
                if let Some(value) = value {
                    put(place_base + i, name, &value);
                }
            }
        })
        .map_err(|e| err(&e))?;
        if let Some(message) = failure {
            return Err(Error(message));
        }
    }
    let mut out = Vec::new();
    fgb.write(&mut out).map_err(|e| err(&e))?;
    Ok(out)
}
