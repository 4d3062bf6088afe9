//! Feed writes in OGC API Features Part 4 style: `POST` a Feature or a
//! FeatureCollection (upsert by id), `PUT` one feature, `DELETE` one feature.
//!
//! Order of checks: collection (404/405) → store loaded (503) → token
//! (401/403) → body size (413) → JSON (400) → batch size (413) → every
//! feature (422). All features are checked before the store is touched, and
//! the store applies the batch under one write lock: a rejected batch
//! changes nothing, and readers see all of an accepted batch or none of it.
//! The response is sent only once the batch is durable in the journal.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use beeld_layers::prepare::{id_text, prepare};
use beeld_layers::{Batch, BatchError, ChangeCause, Collection, Op};
use serde_json::{Value, json};
use tracing::Instrument;

use super::base_url;
use super::ogc::collection_of;
use crate::auth;
use crate::feeds::FeedIndex;
use crate::persist::JournalFailed;
use crate::problem::{MAX_LISTED_ERRORS, Problem};
use crate::state::{LoadStatus, StateHandle, now};

/// Bodies above this size are parsed off the async runtime.
const PARSE_INLINE_BYTES: usize = 64 * 1024;

fn writable(
    state: &StateHandle,
    name: &str,
    headers: &HeaderMap,
) -> Result<(Collection, FeedIndex), Problem> {
    let collection = collection_of(name)?;
    if !collection.is_feed_writable() {
        return Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "read-only-collection",
            "Collection is read-only",
            format!("{collection} is reference data loaded from the CBS/PDOK boundary files and cannot be written over HTTP; feeds write incidents, units and hazards"),
        )
        .with_header(header::ALLOW, "GET"));
    }
    if state.status() != LoadStatus::Ready {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "loading",
            "Store is loading",
            "the server is still loading its state; nothing was written; retry in a moment",
        )
        .with_header(header::RETRY_AFTER, "1"));
    }
    let feed = auth::authorize_write(state, headers, collection)?;
    Ok((collection, feed))
}

/// Reports a rejection to the feed book and passes it on.
pub(crate) fn reject(state: &StateHandle, feed: FeedIndex, problem: Problem) -> Problem {
    // The operator wants the first concrete reason, not the generic summary.
    let message = match problem.errors.first() {
        Some(first) => format!(
            "{}: feature {} ({}) at {}: {}",
            problem.title,
            first["index"],
            first["id"].as_str().unwrap_or("no id"),
            first["pointer"].as_str().unwrap_or(""),
            first["detail"].as_str().unwrap_or("")
        ),
        None => format!("{}: {}", problem.title, problem.detail),
    };
    state.feeds().record_error(feed, &message, now());
    tracing::info!(status = problem.status.as_u16(), kind = problem.kind, detail = %problem.detail, "feed write rejected");
    problem
}

async fn read_body(
    state: &StateHandle,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes::Bytes, Problem> {
    let limit = state.config().max_body_bytes;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("the body exceeds {limit} bytes; split the batch into smaller requests"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    to_bytes(body, limit).await.map_err(|e| {
        let is_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if is_limit {
            too_large()
        } else {
            Problem::bad_request(
                "unreadable-body",
                format!("the request body could not be read: {e}"),
            )
        }
    })
}

async fn parse_json(bytes: bytes::Bytes) -> Result<Value, Problem> {
    let inline = bytes.len() <= PARSE_INLINE_BYTES;
    let parse = move || {
        serde_json::from_slice::<Value>(&bytes).map_err(|e| {
            Problem::bad_request("malformed-json", format!("the body is not valid JSON: {e}"))
        })
    };
    if inline {
        parse()
    } else {
        tokio::task::spawn_blocking(parse)
            .await
            .map_err(|e| Problem::internal(&e))?
    }
}

/// Checks every feature; returns the batch or a 422 listing each problem.
pub(crate) fn check_features(
    collection: Collection,
    features: Vec<(String, Value)>,
    forced_id: Option<&str>,
    state: &StateHandle,
    feed_name: Arc<str>,
) -> Result<Batch, Problem> {
    let limits = state.config().limits;
    let received_at = now();
    let n = features.len();
    let mut errors = Vec::new();
    let mut n_bad = 0usize;
    let mut n_errors = 0usize;
    let mut ops = Vec::with_capacity(n);
    for (index, (prefix, mut feature)) in features.into_iter().enumerate() {
        if let (Some(forced), Some(object)) = (forced_id, feature.as_object_mut()) {
            match object.get("id").map(|v| id_text(&json!({"id": v}))) {
                Some(Some(body_id)) if body_id != forced => {
                    n_bad += 1;
                    n_errors += 1;
                    errors.push(json!({"index": index, "id": body_id, "pointer": "/id", "detail": format!("id '{body_id}' in the body differs from '{forced}' in the URL")}));
                    continue;
                }
                _ => {
                    object.insert("id".to_owned(), Value::String(forced.to_owned()));
                }
            }
        }
        let id = id_text(&feature);
        match prepare(collection, feature, &limits, received_at) {
            Ok(draft) => ops.push(Op::Upsert { collection, draft }),
            Err(feature_errors) => {
                n_bad += 1;
                for e in feature_errors {
                    n_errors += 1;
                    if errors.len() < MAX_LISTED_ERRORS {
                        errors.push(json!({
                            "index": index,
                            "id": id,
                            "pointer": format!("{prefix}{}", e.pointer),
                            "detail": e.kind.to_string(),
                        }));
                    }
                }
            }
        }
    }
    if n_bad > 0 {
        let not_listed = n_errors - errors.len();
        let mut problem = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-features",
            format!("{n_bad} of {n} features rejected"),
            "nothing was written: the batch is all or nothing; fix the features listed in 'errors' (index, id, JSON pointer) and send the whole batch again",
        );
        problem.errors = errors;
        problem.errors_not_listed = not_listed;
        return Err(problem);
    }
    Ok(Batch {
        feed: feed_name,
        received_at,
        ops,
    })
}

fn split_body(mut value: Value, max_batch: usize) -> Result<(bool, Vec<(String, Value)>), Problem> {
    match value.get("type").and_then(Value::as_str) {
        Some("Feature") => Ok((false, vec![(String::new(), value)])),
        Some("FeatureCollection") => {
            let features = value.as_object_mut().and_then(|o| o.remove("features"));
            let Some(Value::Array(features)) = features else {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "not-geojson",
                    "Not a FeatureCollection",
                    "a FeatureCollection needs a 'features' array",
                ));
            };
            if features.len() > max_batch {
                return Err(Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "batch-too-large",
                    "Batch too large",
                    format!(
                        "the batch has {} features; at most {max_batch} are accepted per request; split it",
                        features.len()
                    ),
                ));
            }
            Ok((
                true,
                features
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| (format!("/features/{i}"), f))
                    .collect(),
            ))
        }
        _ => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not-geojson",
            "Not a GeoJSON Feature or FeatureCollection",
            "the body must be a GeoJSON Feature or FeatureCollection (RFC 7946) with a \"type\" member",
        )),
    }
}

pub(crate) fn feed_name(state: &StateHandle, feed: FeedIndex) -> Arc<str> {
    state.feeds().entry(feed).name.as_str().into()
}

/// Applies the batch, waits until it is durable, and reports
/// `(created_single, last seq, ids)`. Nothing is acknowledged before the
/// journal has the batch on disk (see `persist::journal`).
pub(crate) async fn apply(
    state: &StateHandle,
    collection: Collection,
    feed: FeedIndex,
    batch: Batch,
) -> Result<(bool, u64, Vec<Arc<str>>), Problem> {
    let Some(journal) = state.journal().cloned() else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "loading",
            "Store is loading",
            "the server is still loading its state; nothing was written; retry in a moment",
        ));
    };
    let not_durable = |e: JournalFailed| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-durable",
            "Write not durable",
            format!("{e}; the server must be restarted by its operator"),
        )
    };
    journal.admit().await.map_err(not_durable)?;
    let received_at = batch.received_at;
    let single_new = match batch.ops.as_slice() {
        [Op::Upsert { draft, .. }] => draft
            .id
            .as_ref()
            .is_none_or(|id| state.read().get(collection, id).is_none()),
        _ => false,
    };
    let cause = ChangeCause::Write {
        feed: Arc::clone(&batch.feed),
    };
    let applied = {
        let mut store = state.write();
        store.apply(batch).map(|applied| {
            let ticket = journal.append_applied(&store, &applied, &cause, received_at);
            (applied, ticket)
        })
    };
    match applied {
        Ok((applied, ticket)) => {
            journal.wait(ticket).await.map_err(not_durable)?;
            let ids: Vec<Arc<str>> = applied.changes.iter().map(|c| Arc::clone(&c.1)).collect();
            state.feeds().record_write(feed, ids.len(), received_at);
            // Debug: per-feed totals go to the log once a minute
            // (`feeds::watch`) and live on `/feeds`.
            tracing::debug!(
                n_changes = ids.len(),
                seq = applied.seq.0,
                "feed batch applied"
            );
            Ok((single_new, applied.seq.0, ids))
        }
        Err(BatchError::NotFound { collection, id, .. }) => {
            Err(Problem::unknown_feature(collection.as_str(), &id))
        }
        Err(e) => Err(Problem::internal(&e)),
    }
}

/// `POST /collections/{collection}/items`
pub async fn post_items(
    State(state): State<StateHandle>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, Problem> {
    let (collection, feed) = writable(&state, &name, &headers)?;
    let feed_label = feed_name(&state, feed);
    let span = tracing::info_span!("feed_batch", feed = %feed_label, collection = %collection, n_features = tracing::field::Empty);
    async move {
        let result = async {
            let bytes = read_body(&state, &headers, body).await?;
            let large = bytes.len() > PARSE_INLINE_BYTES;
            let value = parse_json(bytes).await?;
            let (is_collection, features) = split_body(value, state.config().max_batch_features)?;
            tracing::Span::current().record("n_features", features.len());
            let check_state = state.clone();
            let label = Arc::clone(&feed_label);
            let batch = if large {
                tokio::task::spawn_blocking(move || {
                    check_features(collection, features, None, &check_state, label)
                })
                .await
                .map_err(|e| Problem::internal(&e))??
            } else {
                check_features(collection, features, None, &state, label)?
            };
            let sent_ids: Vec<Option<Arc<str>>> = batch
                .ops
                .iter()
                .map(|op| match op {
                    Op::Upsert { draft, .. } => draft.id.clone(),
                    Op::Delete { id, .. } => Some(Arc::clone(id)),
                })
                .collect();
            let (created, seq, ids) = apply(&state, collection, feed, batch).await?;
            let base = base_url(&state, &headers);
            if !is_collection {
                let id = ids.first().map(|i| i.to_string()).unwrap_or_default();
                let encoded: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
                let location = format!("{base}/collections/{name}/items/{encoded}");
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                let mut response = (
                    status,
                    axum::Json(json!({"id": id, "seq": seq, "created": created})),
                )
                    .into_response();
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                return Ok(response);
            }
            // Feeds know the ids they sent; only ids the server chose are listed.
            let assigned: Vec<&str> = ids
                .iter()
                .zip(&sent_ids)
                .filter(|(_, sent)| sent.is_none())
                .map(|(id, _)| id.as_ref())
                .collect();
            Ok((
                StatusCode::OK,
                axum::Json(json!({"written": ids.len(), "seq": seq, "assigned_ids": assigned})),
            )
                .into_response())
        }
        .await;
        result.map_err(|p| reject(&state, feed, p))
    }
    .instrument(span)
    .await
}

/// `PUT /collections/{collection}/items/{id}`
pub async fn put_item(
    State(state): State<StateHandle>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    body: Body,
) -> Result<Response, Problem> {
    let (collection, feed) = writable(&state, &name, &headers)?;
    let feed_label = feed_name(&state, feed);
    let span = tracing::info_span!("feed_batch", feed = %feed_label, collection = %collection, n_features = 1);
    async move {
        let result = async {
            let bytes = read_body(&state, &headers, body).await?;
            let value = parse_json(bytes).await?;
            if value.get("type").and_then(Value::as_str) != Some("Feature") {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "not-geojson",
                    "Not a GeoJSON Feature",
                    "PUT takes one GeoJSON Feature",
                ));
            }
            let batch = check_features(
                collection,
                vec![(String::new(), value)],
                Some(&id),
                &state,
                Arc::clone(&feed_label),
            )?;
            let (created, seq, _) = apply(&state, collection, feed, batch).await?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((
                status,
                axum::Json(json!({"id": id, "seq": seq, "created": created})),
            )
                .into_response())
        }
        .await;
        result.map_err(|p| reject(&state, feed, p))
    }
    .instrument(span)
    .await
}

/// `DELETE /collections/{collection}/items/{id}`
pub async fn delete_item(
    State(state): State<StateHandle>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let (collection, feed) = writable(&state, &name, &headers)?;
    let feed_label = feed_name(&state, feed);
    let span = tracing::info_span!("feed_batch", feed = %feed_label, collection = %collection, n_features = 1);
    let batch = Batch {
        feed: feed_label,
        received_at: now(),
        ops: vec![Op::Delete {
            collection,
            id: id.as_str().into(),
        }],
    };
    match apply(&state, collection, feed, batch)
        .instrument(span)
        .await
    {
        Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(p) => Err(reject(&state, feed, p)),
    }
}
