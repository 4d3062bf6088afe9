//! Operational endpoints: `/healthz` for probes and `/feeds` for the crisis
//! room's view of which regional feeds are alive.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use beeld_layers::Collection;
use serde_json::{Map, Value, json};

use crate::state::{LoadStatus, StateHandle, now};

/// `GET /healthz`: 200 when the store is loaded and serving (`ok`, or
/// `degraded` while PostGIS is unreachable), 503 otherwise.
pub async fn healthz(State(state): State<StateHandle>) -> Response {
    let status = state.status();
    let (counts, seq) = {
        let store = state.read();
        let counts: Map<String, Value> = Collection::ALL
            .iter()
            .map(|c| (c.as_str().to_owned(), json!(store.len(*c))))
            .collect();
        (counts, store.seq().0)
    };
    let postgis = state.postgis().map(|s| s.health());
    let degraded = postgis.as_ref().is_some_and(|h| !h.connected);
    let (code, label, error) = match &status {
        // Still serving (from memory, durable in the journal): 200, but say so.
        LoadStatus::Ready if degraded => (StatusCode::OK, "degraded", None),
        LoadStatus::Ready => (StatusCode::OK, "ok", None),
        LoadStatus::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading", None),
        LoadStatus::Failed(e) => (StatusCode::SERVICE_UNAVAILABLE, "failed", Some(e.clone())),
    };
    let hub = state.hub();
    let live = json!({
        "connections": hub.connections(),
        "ticks": hub.stats().ticks.load(std::sync::atomic::Ordering::Relaxed),
        "deliveries": hub.stats().deliveries.load(std::sync::atomic::Ordering::Relaxed),
        "dropped_ticks": hub.stats().dropped_ticks.load(std::sync::atomic::Ordering::Relaxed),
    });
    let body = json!({
        "status": label,
        "live": live,
        "loaded": status == LoadStatus::Ready,
        "error": error,
        "seq": seq,
        "epoch": state.epoch(),
        "run": state.run(),
        "features": counts,
        "uptime_s": state.uptime_s(),
        "durable_seq": state.journal().map(|j| j.durable().seq.0),
        "postgis": postgis.map(|h| json!({"connected": h.connected, "stored_seq": h.stored_seq, "error": h.error})),
        "version": env!("CARGO_PKG_VERSION"),
    });
    (code, Json(body)).into_response()
}

/// `GET /feeds`
pub async fn feeds(State(state): State<StateHandle>) -> Json<Value> {
    let silence = state.config().feed_silence;
    Json(state.feeds().to_json(now(), silence))
}
