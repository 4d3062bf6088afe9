//! The web client: `GET /` serves the built map app (`index.html`) to
//! browsers and the OGC landing page JSON to everyone else; `/app/...` are the
//! app's bundled assets from `--frontend-dir`; `/basemap/{name}.geojson` are
//! the static base-map layers (the Netherlands outline and the provinces)
//! read from the boundaries directory, so the map needs nothing from the
//! internet.
//!
//! Files are read from disk per request (the bundle is small and the OS
//! caches it); paths are checked against a strict character set so nothing
//! outside the two directories can be named.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;
use crate::state::StateHandle;

/// Base-map layers: URL name → file in the boundaries directory.
const BASEMAP: &[(&str, &str)] = &[
    ("nederland.geojson", "nederland_2023_wgs84.geojson"),
    (
        "provincies.geojson",
        "provincies_kadaster_simplified25m_wgs84.geojson",
    ),
];

/// Whether the request's `Accept` header prefers HTML over JSON: a browser
/// navigating to `/`. GDAL, curl and other clients get the landing page JSON.
pub(super) fn prefers_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let quality = |wanted: &str| -> Option<(usize, f32)> {
        accept.split(',').enumerate().find_map(|(i, part)| {
            let mut bits = part.split(';');
            let media = bits.next()?.trim();
            if !media.eq_ignore_ascii_case(wanted) {
                return None;
            }
            let q = bits
                .filter_map(|b| b.trim().strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            Some((i, q))
        })
    };
    match (quality("text/html"), quality("application/json")) {
        (Some((_, qh)), None) => qh > 0.0,
        (Some((ih, qh)), Some((ij, qj))) => qh > qj || (qh == qj && qh > 0.0 && ih < ij),
        _ => false,
    }
}

/// `GET /`: the web client for browsers, the OGC landing page otherwise.
pub(super) async fn root(state: State<StateHandle>, headers: HeaderMap) -> Response {
    if prefers_html(&headers) {
        let path = state.config().frontend_dir.join("index.html");
        return match read(path.clone()).await {
            Ok(bytes) => file_response(&path, bytes, "no-cache"),
            Err(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "web-client-missing",
                "Web client not built",
                format!(
                    "{} not found: build the web client with scripts/run.sh (or `npm ci && npm run build` in frontend/), or set --frontend-dir",
                    path.display()
                ),
            )
            .into_response(),
        };
    }
    super::ogc::landing(state, headers).await
}

/// `GET /app/{*path}`: a file of the built web client.
pub(super) async fn asset(
    State(state): State<StateHandle>,
    UrlPath(path): UrlPath<String>,
) -> Response {
    let Some(rel) = safe_relative(&path) else {
        return not_found(&path);
    };
    let full = state.config().frontend_dir.join(rel);
    match read(full.clone()).await {
        // Vite names bundled assets by content hash: cache them for long.
        Ok(bytes) if path.starts_with("assets/") => {
            file_response(&full, bytes, "public, max-age=31536000, immutable")
        }
        Ok(bytes) => file_response(&full, bytes, "no-cache"),
        Err(_) => not_found(&path),
    }
}

/// `GET /basemap/{name}`: a static base-map layer from the boundaries folder.
pub(super) async fn basemap(
    State(state): State<StateHandle>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let Some((_, file)) = BASEMAP.iter().find(|(n, _)| *n == name) else {
        return not_found(&name);
    };
    let full = state.config().boundaries_dir.join(file);
    match read(full.clone()).await {
        Ok(bytes) => file_response(&full, bytes, "public, max-age=3600"),
        Err(_) => not_found(&name),
    }
}

/// Reads a file off the async runtime.
async fn read(path: PathBuf) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// `path` as a relative path without `..`, hidden names or odd characters.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let ok = !path.is_empty()
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && !seg.starts_with('.'))
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
    ok.then(|| PathBuf::from(path))
}

fn file_response(path: &Path, bytes: Vec<u8>, cache: &'static str) -> Response {
    let mime = match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("geojson") => "application/geo+json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        Some("pbf") => "application/x-protobuf",
        _ => "application/octet-stream",
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        bytes,
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no web client file {what}"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn browsers_get_html_and_tools_get_json() {
        assert!(prefers_html(&accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!prefers_html(&accept("application/json")));
        assert!(!prefers_html(&accept("*/*")));
        assert!(!prefers_html(&HeaderMap::new()));
        assert!(!prefers_html(&accept("application/json, text/html;q=0.5")));
        assert!(!prefers_html(&accept("text/html;q=0")));
    }

    #[test]
    fn asset_paths_stay_inside() {
        assert!(safe_relative("assets/index-abc.js").is_some());
        assert!(safe_relative("../secret").is_none());
        assert!(safe_relative("a/../../b").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert!(safe_relative(".env").is_none());
        assert!(safe_relative("a%2f..").is_none());
    }
}
