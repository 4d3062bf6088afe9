//! The web client routes: `GET /` by `Accept` (HTML for browsers, the OGC
//! landing page for tools), the bundle under `/app/`, the static base map
//! under `/basemap/`, and that neither can reach outside its directory or be
//! blocked by read tokens.

// Helpers in a test file panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use beeld_tests::{TestServer, scratch_dir};
use serde_json::Value;

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

async fn get(server: &TestServer, path: &str, accept: &str) -> (u16, String, String) {
    let r = server
        .http
        .get(server.url(path))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

#[tokio::test]
async fn browsers_get_the_app_and_tools_get_the_landing_page() {
    let dist = scratch_dir("web-dist");
    std::fs::create_dir_all(dist.join("assets")).unwrap();
    std::fs::write(
        dist.join("index.html"),
        "<!doctype html><title>beeld</title>",
    )
    .unwrap();
    std::fs::write(dist.join("assets/app-1234.js"), "console.log(1)").unwrap();
    let server = TestServer::start_with(|c| c.frontend_dir = dist.clone()).await;

    let (status, ct, body) = get(&server, "/", BROWSER_ACCEPT).await;
    assert_eq!((status, ct.as_str()), (200, "text/html; charset=utf-8"));
    assert!(body.contains("<title>beeld</title>"));
    for accept in [
        "application/json",
        "*/*",
        "application/json, text/html;q=0.5",
    ] {
        let (status, ct, body) = get(&server, "/", accept).await;
        assert_eq!(status, 200);
        assert!(ct.starts_with("application/json"), "{accept}: {ct}");
        let landing: Value = serde_json::from_str(&body).unwrap();
        assert!(landing["links"].as_array().unwrap().len() > 3);
    }

    let (status, ct, body) = get(&server, "/app/assets/app-1234.js", "*/*").await;
    assert_eq!(
        (status, ct.as_str(), body.as_str()),
        (200, "text/javascript; charset=utf-8", "console.log(1)")
    );
    for bad in [
        "/app/../Cargo.toml",
        "/app/%2e%2e/Cargo.toml",
        "/app/.hidden",
        "/app/assets/missing.js",
    ] {
        let (status, _, _) = get(&server, bad, "*/*").await;
        assert_eq!(status, 404, "{bad}");
    }
}

#[tokio::test]
async fn the_base_map_is_served_from_the_boundaries_folder() {
    let server = TestServer::start().await;
    for name in ["nederland", "provincies"] {
        let (status, ct, body) = get(&server, &format!("/basemap/{name}.geojson"), "*/*").await;
        assert_eq!(
            (status, ct.as_str()),
            (200, "application/geo+json"),
            "{name}"
        );
        let fc: Value = serde_json::from_str(&body).unwrap();
        assert!(!fc["features"].as_array().unwrap().is_empty(), "{name}");
    }
    let (status, _, _) = get(&server, "/basemap/gemeenten_2023_wgs84.geojson", "*/*").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_missing_build_is_a_clear_error_and_the_shell_needs_no_read_token() {
    let server = TestServer::start_with(|c| {
        c.frontend_dir = scratch_dir("web-missing").join("dist");
        c.require_read_token = true;
    })
    .await;
    let (status, ct, body) = get(&server, "/", BROWSER_ACCEPT).await;
    assert_eq!(status, 503);
    assert!(ct.starts_with("application/problem+json"));
    assert!(body.contains("scripts/run.sh"), "{body}");
    let (status, _, _) = get(&server, "/basemap/nederland.geojson", "*/*").await;
    assert_eq!(status, 200);
    // Data still needs the token.
    let (status, _, _) = get(&server, "/collections/regions/items", "application/json").await;
    assert_eq!(status, 401);
    let (status, _, _) = get(&server, "/", "application/json").await;
    assert_eq!(status, 401);
}
