//! One raw GeoJSON feature → a validated [`Draft`], or every reason it was
//! refused.
//!
//! This is the only place where ingest input is judged. It is a pure
//! function of the JSON, the collection, the limits and "now", so a batch
//! can be fully checked before anything in the store changes: that is what
//! makes batches atomic.

use serde_json::{Map, Value};

use crate::attrs::{AttrError, Attrs};
use crate::collection::Collection;
use crate::feature::FeatureId;
use crate::geometry::{self, GeometryErrorKind, Shape};
use crate::time::Timestamp;

/// Property names the server sets; a feed that sends them is ignored for
/// these fields (so a feature read back can be written back unchanged).
pub const SERVER_PROPERTIES: &[&str] = &[
    "feed",
    "received_at",
    "updated_at",
    "seq",
    "ogc_valid",
    "ogc_invalid_reason",
];

/// How far ahead of the server clock `observed_at` may be, to allow for
/// clock skew between a regional system and beeld.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// Size limits on one feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Positions in one geometry.
    pub max_vertices: usize,
    /// Bytes of compact property JSON.
    pub max_properties_bytes: usize,
    /// Characters in an id.
    pub max_id_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_vertices: 100_000,
            max_properties_bytes: 64 * 1024,
            max_id_chars: 256,
        }
    }
}

/// A checked feature, ready for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// The id the feed gave, if any; the store assigns one otherwise.
    pub id: Option<FeatureId>,
    /// Checked geometry.
    pub shape: Shape,
    /// Compact property JSON (see [`crate::Feature::properties`]).
    pub properties: Box<str>,
    /// Typed properties.
    pub attrs: Attrs,
    /// When the feed observed it.
    pub observed_at: Option<Timestamp>,
    /// When it stops being true, if the feed said so.
    pub expires_at: Option<Timestamp>,
}

/// What is wrong with one feature.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureErrorKind {
    /// Not a GeoJSON Feature object.
    #[error("expected a GeoJSON Feature object with \"type\": \"Feature\"")]
    NotAFeature,
    /// The id is not a usable string or integer.
    #[error("id {0}")]
    BadId(String),
    /// The geometry is unusable.
    #[error("{0}")]
    Geometry(GeometryErrorKind),
    /// `properties` is neither an object nor null.
    #[error("properties must be a JSON object or null")]
    PropertiesNotAnObject,
    /// The properties are larger than allowed.
    #[error("properties take {size} bytes; at most {limit} are accepted per feature")]
    PropertiesTooLarge {
        /// Compact size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A typed property is missing or wrong.
    #[error("{0}")]
    Attr(AttrError),
    /// A time property could not be parsed.
    #[error("property '{0}' must be an RFC 3339 time such as 2021-07-14T21:30:00+02:00")]
    BadTime(&'static str),
    /// `observed_at` lies in the future beyond clock skew.
    #[error("observed_at {0} is more than 5 minutes in the future; check the feed's clock")]
    ObservedInFuture(String),
    /// `expires` is not after now.
    #[error(
        "expires {0} is not in the future; a feature that has already expired cannot be written"
    )]
    ExpiresInPast(String),
}

/// A problem with one feature, with the JSON pointer (relative to the
/// feature object) of the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{pointer}: {kind}")]
pub struct FeatureError {
    /// JSON pointer relative to the feature, e.g. `/geometry/coordinates/0/3`.
    pub pointer: String,
    /// What is wrong.
    pub kind: FeatureErrorKind,
}

impl FeatureError {
    fn new(pointer: impl Into<String>, kind: FeatureErrorKind) -> Self {
        FeatureError {
            pointer: pointer.into(),
            kind,
        }
    }
}

/// The feature's id as text, if it has a usable one; for error reports.
pub fn id_text(feature: &Value) -> Option<String> {
    match feature.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Checks one GeoJSON feature for `collection`.
///
/// ```
/// use beeld_layers::{prepare::prepare, Collection, Limits, Timestamp};
/// use serde_json::json;
///
/// let now = Timestamp::parse_rfc3339("2021-07-14T20:00:00Z").unwrap();
/// let unit = json!({
///     "type": "Feature", "id": "24-1231",
///     "geometry": {"type": "Point", "coordinates": [5.83, 50.86]},
///     "properties": {"type": "fire_engine", "status": "available", "home_region": "VR24"}
/// });
/// let draft = prepare(Collection::Units, unit, &Limits::default(), now).unwrap();
/// assert_eq!(draft.id.as_deref(), Some("24-1231"));
///
/// let bad = json!({"type": "Feature", "geometry": null, "properties": {}});
/// let errors = prepare(Collection::Units, bad, &Limits::default(), now).unwrap_err();
/// assert_eq!(errors[0].pointer, "/geometry");
/// ```
pub fn prepare(
    collection: Collection,
    feature: Value,
    limits: &Limits,
    now: Timestamp,
) -> Result<Draft, Vec<FeatureError>> {
    let Value::Object(mut object) = feature else {
        return Err(vec![FeatureError::new("", FeatureErrorKind::NotAFeature)]);
    };
    if object.get("type").and_then(Value::as_str) != Some("Feature") {
        return Err(vec![FeatureError::new(
            "/type",
            FeatureErrorKind::NotAFeature,
        )]);
    }
    let mut errors = Vec::new();

    let id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(value) => match id_from(value, limits.max_id_chars) {
            Ok(id) => Some(id),
            Err(problem) => {
                errors.push(FeatureError::new("/id", FeatureErrorKind::BadId(problem)));
                None
            }
        },
    };

    let shape = match geometry::parse(
        object.get("geometry").unwrap_or(&Value::Null),
        collection.geometry_rule(),
        limits.max_vertices,
    ) {
        Ok(shape) => Some(shape),
        Err(e) => {
            errors.push(FeatureError::new(
                format!("/geometry{}", e.pointer),
                FeatureErrorKind::Geometry(e.kind),
            ));
            None
        }
    };

    let mut properties = match object.remove("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => {
            errors.push(FeatureError::new(
                "/properties",
                FeatureErrorKind::PropertiesNotAnObject,
            ));
            Map::new()
        }
    };
    for name in SERVER_PROPERTIES {
        properties.remove(*name);
    }
    if collection.is_feed_writable() {
        // Attribution is the server's for feed layers (municipalities keep their `region`).
        for name in crate::relate::ATTRIBUTION_PROPERTIES {
            properties.remove(*name);
        }
    }

    let observed_at = optional_time(&mut properties, "observed_at", &mut errors);
    if let Some(t) = observed_at
        && t.millis() > now.millis().saturating_add(MAX_CLOCK_SKEW_MS)
    {
        errors.push(FeatureError::new(
            "/properties/observed_at",
            FeatureErrorKind::ObservedInFuture(t.to_rfc3339()),
        ));
    }
    let expires_at = optional_time(&mut properties, "expires", &mut errors);
    if let Some(t) = expires_at
        && t <= now
    {
        errors.push(FeatureError::new(
            "/properties/expires",
            FeatureErrorKind::ExpiresInPast(t.to_rfc3339()),
        ));
    }

    let attrs = match Attrs::extract(collection, &mut properties) {
        Ok(attrs) => Some(attrs),
        Err(attr_errors) => {
            errors.extend(attr_errors.into_iter().map(|e| {
                FeatureError::new(
                    format!("/properties/{}", e.field),
                    FeatureErrorKind::Attr(e),
                )
            }));
            None
        }
    };

    let text = Value::Object(properties).to_string();
    if text.len() > limits.max_properties_bytes {
        errors.push(FeatureError::new(
            "/properties",
            FeatureErrorKind::PropertiesTooLarge {
                size: text.len(),
                limit: limits.max_properties_bytes,
            },
        ));
    }

    match (shape, attrs) {
        (Some(shape), Some(attrs)) if errors.is_empty() => Ok(Draft {
            id,
            shape,
            properties: text.into_boxed_str(),
            attrs,
            observed_at,
            expires_at,
        }),
        _ => Err(errors),
    }
}

fn id_from(value: &Value, max_chars: usize) -> Result<FeatureId, String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        other => return Err(format!("is {other}; it must be a string or an integer")),
    };
    if text.is_empty() {
        return Err("is empty".to_owned());
    }
    if text.chars().count() > max_chars {
        return Err(format!("is longer than {max_chars} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err("contains control characters".to_owned());
    }
    Ok(text.into())
}

fn optional_time(
    properties: &mut Map<String, Value>,
    field: &'static str,
    errors: &mut Vec<FeatureError>,
) -> Option<Timestamp> {
    match properties.get_mut(field) {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_str().and_then(Timestamp::parse_rfc3339) {
            Some(t) => {
                *value = Value::String(t.to_rfc3339());
                Some(t)
            }
            None => {
                errors.push(FeatureError::new(
                    format!("/properties/{field}"),
                    FeatureErrorKind::BadTime(field),
                ));
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: Timestamp = Timestamp(1_626_292_800_000);

    #[test]
    fn all_problems_of_a_feature_are_reported_together() {
        let f = json!({"type": "Feature", "id": {"x": 1},
            "geometry": {"type": "Point", "coordinates": [155000.0, 463000.0]},
            "properties": {"type": "tank", "status": "available", "home_region": "VR01", "expires": "2000-01-01T00:00:00Z"}});
        let errors = prepare(Collection::Units, f, &Limits::default(), NOW).unwrap_err();
        let pointers: Vec<_> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/id",
                "/geometry/coordinates",
                "/properties/expires",
                "/properties/type"
            ]
        );
    }

    #[test]
    fn server_properties_are_dropped() {
        let f = json!({"type": "Feature", "id": 7,
            "geometry": {"type": "Point", "coordinates": [5.0, 51.0]},
            "properties": {"type": "fire", "priority": 1, "started_at": "2021-07-14T20:00:00Z", "seq": 99, "feed": "x", "note": "dijk"}});
        let d = prepare(Collection::Incidents, f, &Limits::default(), NOW).unwrap();
        assert_eq!(d.id.as_deref(), Some("7"));
        let props: Value = serde_json::from_str(&d.properties).unwrap();
        assert!(props.get("seq").is_none() && props.get("feed").is_none());
        assert_eq!(props["note"], "dijk");
    }
}
