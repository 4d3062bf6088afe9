//! Query-string parameters of `/collections/{id}/items`.

use beeld_layers::{Interval, Query, Timestamp};
use geo::{Rect, coord};

use crate::problem::Problem;

/// Output format of items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/geo+json` (default).
    GeoJson,
    /// `application/flatgeobuf`.
    FlatGeobuf,
}

/// Default and largest page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size; larger requests are clamped, as OGC API Features allows.
pub const MAX_LIMIT: usize = 10_000;

/// Parsed items parameters.
#[derive(Debug, Clone)]
pub struct ItemsParams {
    /// The store query.
    pub query: Query,
    /// Whether `limit` was given explicitly.
    pub limit_given: bool,
    /// Requested format, if `f` was given.
    pub format: Option<Format>,
    /// Parameters to repeat in `next` links (all but the cursor).
    pub keep: Vec<(String, String)>,
}

fn bad(detail: impl Into<String>) -> Problem {
    Problem::bad_request("invalid-parameter", detail)
}

/// Parses the raw query string.
pub fn parse(raw: Option<&str>) -> Result<ItemsParams, Problem> {
    let mut query = Query {
        limit: DEFAULT_LIMIT,
        ..Query::default()
    };
    let mut limit_given = false;
    let mut format = None;
    let mut keep = Vec::new();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let (key, value) = (key.into_owned(), value.into_owned());
        match key.as_str() {
            "bbox" => query.bbox = Some(parse_bbox(&value)?),
            "bbox-crs" | "crs" => {
                if !value.ends_with("/OGC/1.3/CRS84") {
                    return Err(bad(format!(
                        "{key} {value} is not supported; beeld serves WGS84 lon/lat (http://www.opengis.net/def/crs/OGC/1.3/CRS84) only"
                    )));
                }
            }
            "limit" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| bad(format!("limit '{value}' is not a positive integer")))?;
                if n == 0 {
                    return Err(bad("limit must be at least 1"));
                }
                query.limit = n.min(MAX_LIMIT);
                limit_given = true;
            }
            "cursor" => {
                query.after = Some(value);
                continue;
            }
            "datetime" => query.datetime = Some(parse_datetime(&value)?),
            "f" => {
                format = Some(match value.as_str() {
                    "json" | "geojson" => Format::GeoJson,
                    "fgb" | "flatgeobuf" => Format::FlatGeobuf,
                    other => {
                        return Err(bad(format!(
                            "f={other} is not a format beeld serves; use f=json or f=fgb"
                        )));
                    }
                });
            }
            name if !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                query.filters.push((key.clone(), value.clone()));
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter '{other}'; use bbox, limit, datetime, f, cursor or a property name"
                )));
            }
        }
        keep.push((key, value));
    }
    Ok(ItemsParams {
        query,
        limit_given,
        format,
        keep,
    })
}

fn parse_bbox(text: &str) -> Result<Rect<f64>, Problem> {
    let numbers: Result<Vec<f64>, _> = text.split(',').map(|n| n.trim().parse::<f64>()).collect();
    let numbers = numbers
        .ok()
        .filter(|n| n.iter().all(|v| v.is_finite()))
        .ok_or_else(|| {
            bad(format!(
                "bbox '{text}' must be four numbers minLon,minLat,maxLon,maxLat"
            ))
        })?;
    let (min_x, min_y, max_x, max_y) = match numbers.as_slice() {
        [a, b, c, d] | [a, b, _, c, d, _] => (*a, *b, *c, *d),
        _ => {
            return Err(bad(format!(
                "bbox '{text}' must be four numbers minLon,minLat,maxLon,maxLat"
            )));
        }
    };
    if min_y > max_y {
        return Err(bad(format!("bbox '{text}': minLat is above maxLat")));
    }
    if min_x > max_x {
        return Err(bad(format!(
            "bbox '{text}': a box crossing the antimeridian is not supported"
        )));
    }
    if !(-180.0..=180.0).contains(&min_x)
        || !(-180.0..=180.0).contains(&max_x)
        || !(-90.0..=90.0).contains(&min_y)
        || !(-90.0..=90.0).contains(&max_y)
    {
        return Err(bad(format!(
            "bbox '{text}' is outside WGS84 lon/lat range; RD New coordinates are not accepted"
        )));
    }
    Ok(Rect::new(
        coord! { x: min_x, y: min_y },
        coord! { x: max_x, y: max_y },
    ))
}

fn parse_instant(text: &str, open: Timestamp) -> Result<Timestamp, Problem> {
    if text.is_empty() || text == ".." {
        return Ok(open);
    }
    Timestamp::parse_rfc3339(text).ok_or_else(|| {
        bad(format!(
            "datetime '{text}' is not RFC 3339, e.g. 2021-07-14T21:30:00Z"
        ))
    })
}

fn parse_datetime(text: &str) -> Result<Interval, Problem> {
    match text.split_once('/') {
        Some((start, end)) => {
            let interval = Interval {
                start: parse_instant(start, Timestamp::MIN)?,
                end: parse_instant(end, Timestamp::MAX)?,
            };
            if interval.start > interval.end {
                return Err(bad(format!("datetime '{text}': start is after end")));
            }
            Ok(interval)
        }
        None => {
            let t = parse_instant(text, Timestamp::MIN)?;
            Ok(Interval { start: t, end: t })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_reserved_parameters() {
        let p = parse(Some(
            "bbox=5,50,6,51&limit=20000&status=available&datetime=2021-07-14T00:00:00Z/..",
        ))
        .unwrap();
        assert_eq!(p.query.limit, MAX_LIMIT);
        assert_eq!(
            p.query.filters,
            vec![("status".to_owned(), "available".to_owned())]
        );
        assert_eq!(p.query.datetime.unwrap().end, Timestamp::MAX);
        assert!(parse(Some("bbox=155000,463000,156000,464000")).is_err());
        assert!(parse(Some("limit=-1")).is_err());
        assert!(parse(Some("f=shp")).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn arbitrary_query_strings_never_panic(query in "[a-z=&,.:/0-9%+-]{0,80}") {
            let _ = super::parse(Some(&query));
        }

        #[test]
        fn valid_bboxes_round_trip(a in -180.0f64..180.0, b in -90.0f64..90.0, w in 0.0f64..10.0, h in 0.0f64..10.0) {
            let (c, d) = ((a + w).min(180.0), (b + h).min(90.0));
            let parsed = super::parse(Some(&format!("bbox={a},{b},{c},{d}"))).unwrap();
            let rect = parsed.query.bbox.unwrap();
            prop_assert_eq!((rect.min().x, rect.min().y, rect.max().x, rect.max().y), (a, b, c, d));
        }
    }
}
