//! OGC API Features Part 1 (Core) reads: landing page, conformance,
//! collections and items, as GeoJSON or FlatGeobuf.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use beeld_layers::{Collection, Feature};
use serde_json::{Value, json};

use super::base_url;
use super::params::{self, Format};
use crate::output::{push_feature, push_json_str};
use crate::problem::Problem;
use crate::state::StateHandle;
use crate::{ATTRIBUTION, fgb};

const GEOJSON: &str = "application/geo+json";
const FLATGEOBUF: &str = "application/flatgeobuf";
const CRS84: &str = "http://www.opengis.net/def/crs/OGC/1.3/CRS84";

/// The conformance classes beeld implements.
pub const CONFORMANCE: &[&str] = &[
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/create-replace-delete",
];

fn json_response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

pub(super) fn collection_of(name: &str) -> Result<Collection, Problem> {
    name.parse().map_err(|_| Problem::unknown_collection(name))
}

/// `GET /`
pub async fn landing(State(state): State<StateHandle>, headers: HeaderMap) -> Response {
    let base = base_url(&state, &headers);
    let body = json!({
        "title": "beeld — landelijk operationeel beeld",
        "description": "Live common operational picture of incidents, units, hazards and the Dutch veiligheidsregio's, as OGC API Features.",
        "attribution": ATTRIBUTION,
        "links": [
            {"href": format!("{base}/"), "rel": "self", "type": "application/json", "title": "This document"},
            {"href": format!("{base}/api"), "rel": "service-desc", "type": "application/vnd.oai.openapi+json;version=3.0", "title": "OpenAPI definition"},
            {"href": format!("{base}/conformance"), "rel": "conformance", "type": "application/json", "title": "Conformance classes"},
            {"href": format!("{base}/collections"), "rel": "data", "type": "application/json", "title": "Collections"},
            {"href": format!("{base}/feeds"), "rel": "status", "type": "application/json", "title": "Feed status"},
            {"href": format!("{base}/healthz"), "rel": "status", "type": "application/json", "title": "Health"}
        ]
    });
    json_response(StatusCode::OK, "application/json", body.to_string())
}

/// `GET /conformance`
pub async fn conformance() -> Response {
    json_response(
        StatusCode::OK,
        "application/json",
        json!({ "conformsTo": CONFORMANCE }).to_string(),
    )
}

fn collection_json(state: &StateHandle, base: &str, collection: Collection) -> Value {
    let (extent, count) = {
        let store = state.read();
        (store.extent(collection), store.len(collection))
    };
    let bbox = extent.map_or_else(
        || json!([[-180.0, -90.0, 180.0, 90.0]]),
        |r| json!([[r.min().x, r.min().y, r.max().x, r.max().y]]),
    );
    let id = collection.as_str();
    let description = match collection {
        Collection::Regions => {
            "The 25 veiligheidsregio's; id is the VR code (VR01–VR25). Reference data from CBS/PDOK, read-only."
        }
        Collection::Municipalities => {
            "The gemeenten with the VR code of their region (property 'region'). Reference data from CBS/PDOK, read-only."
        }
        Collection::Incidents => "Incidents: type, priority (1–3), started_at; points.",
        Collection::Units => "Units: type, status, home_region; points that move.",
        Collection::Hazards => {
            "Hazard areas (wildfire, flood, chemical, other) with valid_from/valid_until; polygons."
        }
    };
    json!({
        "id": id,
        "title": collection.title(),
        "description": description,
        "itemType": "feature",
        "crs": [CRS84],
        "storageCrs": CRS84,
        "numberOfFeatures": count,
        "writable": collection.is_feed_writable(),
        "extent": {"spatial": {"bbox": bbox, "crs": CRS84}},
        "links": [
            {"href": format!("{base}/collections/{id}"), "rel": "self", "type": "application/json", "title": collection.title()},
            {"href": format!("{base}/collections/{id}/items"), "rel": "items", "type": GEOJSON, "title": "Items as GeoJSON"},
            {"href": format!("{base}/collections/{id}/items?f=fgb"), "rel": "items", "type": FLATGEOBUF, "title": "Items as FlatGeobuf"}
        ]
    })
}

/// `GET /collections`
pub async fn collections(State(state): State<StateHandle>, headers: HeaderMap) -> Response {
    let base = base_url(&state, &headers);
    let list: Vec<Value> = Collection::ALL
        .iter()
        .map(|c| collection_json(&state, &base, *c))
        .collect();
    let body = json!({
        "links": [{"href": format!("{base}/collections"), "rel": "self", "type": "application/json"}],
        "collections": list,
    });
    json_response(StatusCode::OK, "application/json", body.to_string())
}

/// `GET /collections/{collection}`
pub async fn collection(
    State(state): State<StateHandle>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let collection = collection_of(&name)?;
    let base = base_url(&state, &headers);
    Ok(json_response(
        StatusCode::OK,
        "application/json",
        collection_json(&state, &base, collection).to_string(),
    ))
}

fn wants_flatgeobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains(FLATGEOBUF))
}

fn link_with(
    base: &str,
    path: &str,
    keep: &[(String, String)],
    extra: Option<(&str, &str)>,
) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in keep {
        query.append_pair(k, v);
    }
    if let Some((k, v)) = extra {
        query.append_pair(k, v);
    }
    let query = query.finish();
    if query.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{query}")
    }
}

/// `GET /collections/{collection}/items`
pub async fn items(
    State(state): State<StateHandle>,
    headers: HeaderMap,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let collection = collection_of(&name)?;
    let mut params = params::parse(raw.as_deref())?;
    let format = params.format.unwrap_or(if wants_flatgeobuf(&headers) {
        Format::FlatGeobuf
    } else {
        Format::GeoJson
    });
    if format == Format::FlatGeobuf && !params.limit_given {
        // A FlatGeobuf pull is a bulk export: everything that matches.
        params.query.limit = usize::MAX;
    }
    // `datetime=INSTANT` in the past: the picture as it was then, from history.
    let as_of = params
        .query
        .datetime
        .filter(|i| {
            i.start == i.end && collection.is_feed_writable() && i.start < crate::state::now()
        })
        .map(|i| i.start);
    // Clone the page out of the read guard so encoding never blocks writers.
    let historic = match as_of {
        Some(at) => history_page(&state, collection, params.query.clone(), at).await?,
        None => None,
    };
    let (features, number_matched, next, seq) = match historic {
        Some(page) => page,
        None => {
            let store = state.read();
            let page = store.query(collection, &params.query);
            let features: Vec<Feature> = page.features.into_iter().cloned().collect();
            (features, page.number_matched, page.next, store.seq())
        }
    };
    if format == Format::FlatGeobuf {
        let bytes = tokio::task::spawn_blocking(move || fgb::encode(collection, &features))
            .await
            .map_err(|e| Problem::internal(&e))?
            .map_err(|e| Problem::internal(&e))?;
        return Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(FLATGEOBUF)),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_str(&format!("attachment; filename=\"{name}.fgb\""))
                        .unwrap_or(HeaderValue::from_static("attachment")),
                ),
            ],
            bytes,
        )
            .into_response());
    }
    let base = base_url(&state, &headers);
    let path = format!("/collections/{name}/items");
    let body = tokio::task::spawn_blocking(move || {
        let mut out = String::with_capacity(256 + features.len() * 320);
        out.push_str("{\"type\":\"FeatureCollection\",\"numberMatched\":");
        out.push_str(&number_matched.to_string());
        out.push_str(",\"numberReturned\":");
        out.push_str(&features.len().to_string());
        out.push_str(",\"timeStamp\":");
        push_json_str(&mut out, &crate::state::now().to_rfc3339());
        out.push_str(",\"seq\":");
        out.push_str(&seq.to_string());
        let mut links = vec![
            json!({"href": link_with(&base, &path, &params.keep, params.query.after.as_deref().map(|a| ("cursor", a))), "rel": "self", "type": GEOJSON}),
            json!({"href": link_with(&base, &path, &params.keep, Some(("f", "fgb"))), "rel": "alternate", "type": FLATGEOBUF}),
            json!({"href": format!("{base}/collections/{}", collection.as_str()), "rel": "collection", "type": "application/json"}),
        ];
        if let Some(next) = &next {
            links.push(json!({"href": link_with(&base, &path, &params.keep, Some(("cursor", next))), "rel": "next", "type": GEOJSON}));
        }
        out.push_str(",\"links\":");
        out.push_str(&Value::Array(links).to_string());
        out.push_str(",\"features\":[");
        for (i, feature) in features.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_feature(&mut out, feature);
        }
        out.push_str("]}");
        out
    })
    .await
    .map_err(|e| Problem::internal(&e))?;
    Ok(json_response(StatusCode::OK, GEOJSON, body))
}

/// `GET /collections/{collection}/items/{id}`
pub async fn item(
    State(state): State<StateHandle>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let collection = collection_of(&name)?;
    let feature = state
        .read()
        .get(collection, &id)
        .cloned()
        .ok_or_else(|| Problem::unknown_feature(&name, &id))?;
    let base = base_url(&state, &headers);
    let mut out = String::with_capacity(512);
    push_feature(&mut out, &feature);
    // Reopen the feature object to add OGC links.
    out.pop();
    let encoded_id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
    let links = json!([
        {"href": format!("{base}/collections/{name}/items/{encoded_id}"), "rel": "self", "type": GEOJSON},
        {"href": format!("{base}/collections/{name}"), "rel": "collection", "type": "application/json"}
    ]);
    out.push_str(",\"links\":");
    out.push_str(&links.to_string());
    out.push('}');
    let mut response = json_response(StatusCode::OK, GEOJSON, out);
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", feature.seq)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// Features, number matched, next cursor and seq of a historic page.
type HistoryPage = (
    Vec<Feature>,
    usize,
    Option<beeld_layers::FeatureId>,
    beeld_layers::Seq,
);

/// One page of the picture as it was at `at`, rebuilt from the retained
/// snapshots and journal off the async runtime (see `persist::history`).
/// `None` when `at` is before the retained history: then `datetime` only
/// filters the live picture by the features' own times, as for intervals.
async fn history_page(
    state: &StateHandle,
    collection: beeld_layers::Collection,
    query: beeld_layers::Query,
    at: beeld_layers::Timestamp,
) -> Result<Option<HistoryPage>, Problem> {
    let config = state.config();
    let layout = crate::persist::Layout::new(&config.data_dir);
    let store_config = beeld_layers::StoreConfig {
        ttl_ms: config.ttl_ms,
        change_log_capacity: 1,
    };
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let earliest =
            crate::persist::history::earliest(&layout).map_err(|e| Problem::internal(&e))?;
        if earliest.is_none_or(|first| at < first) {
            return Ok(None);
        }
        let rebuilt = state
            .history()
            .picture_at(&layout, store_config, at)
            .map_err(|e| Problem::internal(&e))?;
        let page = rebuilt.store.query(collection, &query);
        let features: Vec<Feature> = page.features.into_iter().cloned().collect();
        Ok(Some((
            features,
            page.number_matched,
            page.next,
            rebuilt.seq,
        )))
    })
    .await
    .map_err(|e| Problem::internal(&e))?
}
