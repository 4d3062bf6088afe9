//! The HTTP surface: OGC API Features (Part 1 reads, Part 4 style writes),
//! `/feeds`, `/healthz` and the web client (`web`). `app(state)` builds the router; handlers live in
//! one module per concern.

pub(crate) mod ingest;
pub(crate) mod joins;
mod ogc;
mod openapi;
mod ops;
mod params;
mod web;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth;
use crate::problem::Problem;
use crate::state::StateHandle;

/// Builds the router over `state`.
pub fn app(state: StateHandle) -> Router {
    Router::new()
        .route("/", get(web::root))
        .route("/app/{*path}", get(web::asset))
        .route("/basemap/{name}", get(web::basemap))
        .route("/conformance", get(ogc::conformance))
        .route("/api", get(openapi::document))
        .route("/collections", get(ogc::collections))
        .route("/collections/{collection}", get(ogc::collection))
        .route(
            "/collections/{collection}/items",
            get(ogc::items).post(ingest::post_items),
        )
        .route(
            "/collections/{collection}/items/{id}",
            get(ogc::item)
                .put(ingest::put_item)
                .delete(ingest::delete_item),
        )
        .route("/ws", get(crate::live::ws::upgrade))
        .route("/events", get(crate::live::sse::events))
        // Spatial joins (issue 4).
        .route("/joins/hazards/{id}/units", get(joins::units_in_hazard))
        .route("/joins/units/{id}/hazards", get(joins::hazards_of_unit))
        .route("/joins/regions/{code}", get(joins::region_summary))
        .route("/joins/nearest", get(joins::nearest))
        .route("/joins/h3", get(joins::h3))
        .route("/joins/events", get(joins::events))
        .route(
            "/joins/rules",
            get(joins::list_rules).post(joins::create_rule),
        )
        .route(
            "/joins/rules/{id}",
            get(joins::get_rule).delete(joins::delete_rule),
        )
        .route("/joins/alerts", get(joins::alerts))
        .route("/feeds", get(ops::feeds))
        .route("/healthz", get(ops::healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), read_access))
        // Ingest enforces its own limit so that the 413 is problem+json.
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(60),
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let path = request
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map_or_else(
                        || request.uri().path().to_owned(),
                        |p| p.as_str().to_owned(),
                    );
                tracing::info_span!("request", method = %request.method(), path)
            }),
        )
        .with_state(state)
}

async fn read_access(State(state): State<StateHandle>, request: Request, next: Next) -> Response {
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    // The web client's shell, bundle and base map are public; its data
    // requests carry the token (`?access_token=` on the page URL).
    let path = request.uri().path();
    let public = path == "/healthz"
        || path.starts_with("/app/")
        || path.starts_with("/basemap/")
        || (path == "/" && web::prefers_html(request.headers()));
    if is_read
        && !public
        && let Err(problem) = auth::authorize_read(&state, request.headers(), request.uri().query())
    {
        return problem.into_response();
    }
    next.run(request).await
}

async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!(
            "nothing at {}; start at / (the OGC API landing page) or /api (OpenAPI)",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Problem {
    let detail = if uri.path().starts_with("/collections/regions")
        || uri.path().starts_with("/collections/municipalities")
    {
        format!(
            "{method} is not allowed on {}: regions and municipalities are reference data loaded from the CBS/PDOK boundary files and cannot be written over HTTP",
            uri.path()
        )
    } else {
        format!("{method} is not allowed on {}", uri.path())
    };
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        detail,
    )
}

/// The base URL for links: the configured public URL, or the request's host.
fn base_url(state: &StateHandle, headers: &HeaderMap) -> String {
    if let Some(url) = &state.config().public_url {
        return url.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c))
        })
        .map_or_else(|| state.config().listen.to_string(), ToOwned::to_owned);
    format!("http://{host}")
}
