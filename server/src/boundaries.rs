//! Loading the CBS/PDOK veiligheidsregio and gemeente boundaries at start.
//!
//! The files are read from `../shared/data/boundaries` (or the configured
//! paths) and go through the same checks as feed input, with one difference:
//! polygons that are only OGC-invalid (the real CBS data has a few, see
//! `SOURCES.md`) are kept and marked, never dropped. Source property names
//! differ between releases (`code` / `statcode`, `statnaam`, `vrcode`), so
//! each feature is normalised to `code`, `name` and, for municipalities,
//! `region`.

use std::path::Path;

use beeld_layers::prepare::{Limits, prepare};
use beeld_layers::{Batch, Collection, Op, Timestamp};
use serde_json::{Map, Value};

/// The feed name recorded on boundary features.
pub const BOUNDARY_FEED: &str = "cbs-pdok";

/// Why boundaries could not be loaded.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error(
        "cannot read boundary file {path}: {source} (set --boundaries or BEELD_BOUNDARIES to the folder with the CBS/PDOK files)"
    )]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a GeoJSON FeatureCollection.
    #[error("boundary file {path} is not a GeoJSON FeatureCollection: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A feature is unusable.
    #[error("boundary file {path}, feature {index}: {message}")]
    Feature {
        /// The file.
        path: String,
        /// Position in the file.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

/// Reads one boundary file into a batch of upserts for `collection`.
pub fn load_file(path: &Path, collection: Collection, now: Timestamp) -> Result<Vec<Op>, Error> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: shown.clone(),
        source,
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Format {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let Some(features) = value.get("features").and_then(Value::as_array) else {
        return Err(Error::Format {
            path: shown,
            message: "no 'features' array".to_owned(),
        });
    };
    let limits = Limits {
        max_vertices: usize::MAX,
        max_properties_bytes: usize::MAX,
        ..Limits::default()
    };
    let mut ops = Vec::with_capacity(features.len());
    for (index, feature) in features.iter().enumerate() {
        let fail = |message: String| Error::Feature {
            path: shown.clone(),
            index,
            message,
        };
        let props = feature
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let normalised = normalise(collection, &props)
            .ok_or_else(|| fail("no region or municipality code (code/statcode)".to_owned()))?;
        let id = normalised.get("code").cloned().unwrap_or(Value::Null);
        let mut feature = feature.clone();
        feature["id"] = id;
        feature["properties"] = Value::Object(normalised);
        let draft = prepare(collection, feature, &limits, now).map_err(|errors| {
            fail(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        if let Some(reason) = draft.shape.invalid_reason() {
            tracing::info!(file = %shown, id = ?draft.id, reason, "boundary is OGC-invalid; kept and marked");
        }
        ops.push(Op::Upsert { collection, draft });
    }
    Ok(ops)
}

fn text<'a>(props: &'a Map<String, Value>, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| props.get(*n).and_then(Value::as_str))
}

fn normalise(collection: Collection, props: &Map<String, Value>) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    let code = text(props, &["code", "statcode"])?;
    out.insert("code".to_owned(), code.into());
    if let Some(name) = text(props, &["statnaam", "name", "naam"]) {
        out.insert("name".to_owned(), name.into());
    }
    if collection == Collection::Municipalities {
        if let Some(region) = text(props, &["vrcode"]) {
            out.insert("region".to_owned(), region.into());
        }
        if let Some(name) = text(props, &["veiligheidsregio"]) {
            out.insert("region_name".to_owned(), name.into());
        }
    }
    Some(out)
}

/// Loads both boundary files into one batch.
pub fn load(regions: &Path, municipalities: &Path, now: Timestamp) -> Result<Batch, Error> {
    let mut ops = load_file(regions, Collection::Regions, now)?;
    ops.extend(load_file(municipalities, Collection::Municipalities, now)?);
    Ok(Batch {
        feed: BOUNDARY_FEED.into(),
        received_at: now,
        ops,
    })
}
