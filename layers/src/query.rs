//! Read queries over one collection: bbox, time and property filters, with
//! paging in id order.
//!
//! Paging is by cursor (the last id of the previous page), not by offset, so
//! a client paging through units that move and appear meanwhile neither skips
//! nor repeats a feature that exists throughout.

use geo::Rect;
use serde_json::Value;

use crate::feature::{Feature, FeatureId};
use crate::time::Timestamp;

/// A closed time interval; open ends are [`Timestamp::MIN`] / [`Timestamp::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// Start, inclusive.
    pub start: Timestamp,
    /// End, inclusive.
    pub end: Timestamp,
}

impl Interval {
    /// Whether `[a, b]` overlaps this interval.
    pub fn overlaps(&self, a: Timestamp, b: Timestamp) -> bool {
        a <= self.end && b >= self.start
    }
}

/// What to return from a collection.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only features intersecting this box (lon/lat).
    pub bbox: Option<Rect<f64>>,
    /// Only features whose time overlaps: incidents from `started_at` on,
    /// hazards over their validity, units at `observed_at` (intervals only;
    /// an instant keeps every unit); boundaries always.
    pub datetime: Option<Interval>,
    /// `property = value` filters, all of which must hold.
    pub filters: Vec<(String, String)>,
    /// Start after this id (the cursor of the previous page).
    pub after: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// One page of a query result.
#[derive(Debug)]
pub struct Page<'a> {
    /// The features, in id order.
    pub features: Vec<&'a Feature>,
    /// How many features match the query in all.
    pub number_matched: usize,
    /// The cursor for the next page, if there is one.
    pub next: Option<FeatureId>,
}

impl Query {
    /// Whether `feature` passes the non-spatial filters.
    pub fn matches_filters(&self, feature: &Feature) -> bool {
        if let Some(interval) = self.datetime {
            let (a, b) = feature
                .attrs
                .valid_time()
                .or(match feature.attrs {
                    // An instant asks for the picture at that moment (the
                    // server answers it from history), where every unit
                    // present counts; an interval filters on observation.
                    crate::Attrs::Unit { .. } if interval.start != interval.end => {
                        Some((feature.observed_at, feature.observed_at))
                    }
                    _ => None,
                })
                .unwrap_or((Timestamp::MIN, Timestamp::MAX));
            if !interval.overlaps(a, b) {
                return false;
            }
        }
        properties_match(&self.filters, feature)
    }
}

/// Whether `feature` passes every `property = value` filter. Typed
/// properties and `feed` are compared without parsing the property text.
pub fn properties_match(filters: &[(String, String)], feature: &Feature) -> bool {
    if filters.is_empty() {
        return true;
    }
    let mut parsed: Option<Value> = None;
    filters.iter().all(|(field, wanted)| {
        if field == "feed" {
            return &*feature.feed == wanted;
        }
        // Attribution (issue 4) is the server's, kept in `place`.
        match (field.as_str(), &feature.attrs) {
            ("region", crate::Attrs::Unit { .. } | crate::Attrs::Incident { .. }) => {
                return feature
                    .place
                    .region
                    .is_some_and(|r| r.to_string() == *wanted);
            }
            ("municipality", crate::Attrs::Unit { .. } | crate::Attrs::Incident { .. }) => {
                return feature.place.municipality_code().as_deref() == Some(wanted.as_str());
            }
            ("regions", crate::Attrs::Hazard { .. }) => {
                return feature
                    .place
                    .region_codes()
                    .iter()
                    .any(|r| r.to_string() == *wanted);
            }
            _ => {}
        }
        if let Some(text) = feature.attrs.text_of(field) {
            return &text == wanted;
        }
        let properties = parsed.get_or_insert_with(|| {
            serde_json::from_str(&feature.properties).unwrap_or(Value::Null)
        });
        match properties.get(field) {
            Some(Value::String(s)) => s == wanted,
            Some(Value::Number(n)) => {
                n.to_string() == *wanted
                    || matches!((n.as_f64(), wanted.parse::<f64>()), (Some(a), Ok(b)) if a == b)
            }
            Some(Value::Bool(b)) => b.to_string() == *wanted,
            _ => false,
        }
    })
}
