//! OGC API Features reads: landing page, conformance, OpenAPI, collections,
//! items with paging, bbox, property and datetime filters, FlatGeobuf, read
//! tokens, and the real CBS boundaries including their invalid shapes.

// Helpers in a test file panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use beeld_tests::{TOKEN_VR24, TestServer, collection, hazard, shared_data, unit};
use serde_json::{Value, json};

#[tokio::test]
async fn landing_conformance_and_openapi_describe_the_service() {
    let server = TestServer::start().await;
    let (status, landing) = server.get_json("/").await;
    assert_eq!(status, 200);
    let rels: BTreeSet<_> = landing["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["rel"].as_str().unwrap().to_owned())
        .collect();
    for rel in ["self", "service-desc", "conformance", "data"] {
        assert!(rels.contains(rel), "landing page lacks rel={rel}");
    }
    assert!(landing["attribution"].as_str().unwrap().contains("CBS"));
    let (_, conformance) = server.get_json("/conformance").await;
    assert!(
        conformance["conformsTo"]
            .as_array()
            .unwrap()
            .contains(&json!(
                "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core"
            ))
    );
    let r = server.http.get(server.url("/api")).send().await.unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oai.openapi+json;version=3.0"
    );
    let api: Value = r.json().await.unwrap();
    assert_eq!(api["openapi"], "3.0.3");
    assert!(api["paths"]["/collections/{collectionId}/items"]["post"].is_object());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_25_regions_and_342_municipalities_are_loaded_from_cbs_files() {
    let server = TestServer::start().await;
    let (_, collections) = server.get_json("/collections").await;
    let ids: Vec<_> = collections["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        ["regions", "municipalities", "incidents", "units", "hazards"]
    );
    let bbox = &collections["collections"][0]["extent"]["spatial"]["bbox"][0];
    assert!(
        bbox[0].as_f64().unwrap() > 3.0 && bbox[2].as_f64().unwrap() < 7.5,
        "NL extent: {bbox}"
    );

    let (_, regions) = server
        .get_json("/collections/regions/items?limit=100")
        .await;
    assert_eq!(regions["numberMatched"], 25);
    let codes: Vec<_> = regions["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<_> = (1..=25).map(|n| format!("VR{n:02}")).collect();
    assert_eq!(codes, expected);
    let (_, vr24) = server.get_json("/collections/regions/items/VR24").await;
    assert_eq!(vr24["properties"]["name"], "Zuid-Limburg");
    // The quantised CBS outline of Zaanstreek-Waterland self-intersects (SOURCES.md): kept, marked.
    let (_, vr11) = server.get_json("/collections/regions/items/VR11").await;
    assert_eq!(vr11["properties"]["ogc_valid"], false);

    let (_, municipalities) = server
        .get_json("/collections/municipalities/items?region=VR24&limit=1000")
        .await;
    assert!(municipalities["numberMatched"].as_u64().unwrap() >= 15);
    assert!(
        municipalities["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["properties"]["name"] == "Valkenburg aan de Geul")
    );
    assert_eq!(
        server
            .get_json("/collections/municipalities/items?limit=1")
            .await
            .1["numberMatched"],
        342
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_invalid_2019_fryslan_multipolygon_loads_and_answers_spatial_queries() {
    let file = shared_data().join("boundaries/veiligheidsregios_2019_cbs_wgs84_woki74.geojson");
    let server = TestServer::start_with(|c| c.regions_file = file).await;
    let (_, vr02) = server.get_json("/collections/regions/items/VR02").await;
    assert_eq!(vr02["properties"]["name"], "Fryslân");
    assert_eq!(vr02["properties"]["ogc_valid"], false);
    assert!(vr02["properties"]["ogc_invalid_reason"].is_string());
    // Leeuwarden lies in Fryslân.
    let (_, hits) = server
        .get_json("/collections/regions/items?bbox=5.79,53.19,5.81,53.21")
        .await;
    let ids: Vec<_> = hits["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].clone())
        .collect();
    assert_eq!(ids, [json!("VR02")]);
    assert_eq!(
        server.get_json("/collections/regions/items").await.1["numberMatched"],
        25
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn paging_follows_next_links_over_every_feature_once() {
    let server = TestServer::start().await;
    let features: Vec<Value> = (0..250)
        .map(|i| {
            unit(
                &format!("u{i:03}"),
                5.0 + f64::from(i) * 0.001,
                51.0,
                "available",
            )
        })
        .collect();
    server
        .post("units", TOKEN_VR24, &collection(features))
        .await;
    let mut url = server.url("/collections/units/items?limit=100");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page: Value = server
            .http
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        assert_eq!(page["numberMatched"], 250);
        assert_eq!(
            page["numberReturned"].as_u64().unwrap() as usize,
            page["features"].as_array().unwrap().len()
        );
        seen.extend(
            page["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].as_str().unwrap().to_owned()),
        );
        match page["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["rel"] == "next")
        {
            Some(next) => url = next["href"].as_str().unwrap().to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 250);
    let (status, default_page) = server.get_json("/collections/units/items").await;
    assert_eq!(status, 200);
    assert_eq!(default_page["numberReturned"], 100, "default limit");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bbox_property_and_datetime_filters_select_features() {
    let server = TestServer::start().await;
    server
        .post(
            "units",
            TOKEN_VR24,
            &collection(vec![
                unit("valkenburg", 5.83, 50.865, "available"),
                unit("maastricht", 5.69, 50.85, "on_scene"),
                unit("utrecht", 5.12, 52.09, "available"),
            ]),
        )
        .await;
    let ids = |v: &Value| {
        v["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let (_, limburg) = server
        .get_json("/collections/units/items?bbox=5.6,50.7,6.2,51.0")
        .await;
    assert_eq!(ids(&limburg), ["maastricht", "valkenburg"]);
    let (_, available) = server
        .get_json("/collections/units/items?bbox=5.6,50.7,6.2,51.0&status=available")
        .await;
    assert_eq!(ids(&available), ["valkenburg"]);
    let (_, by_call_sign) = server
        .get_json("/collections/units/items?call_sign=utrecht")
        .await;
    assert_eq!(ids(&by_call_sign), ["utrecht"]);

    let mut later = hazard("later", 5.8, 50.8, 0.1);
    later["properties"]["valid_from"] = json!("2021-07-15T06:00:00Z");
    server
        .post(
            "hazards",
            TOKEN_VR24,
            &collection(vec![hazard("early", 5.8, 50.8, 0.1), later]),
        )
        .await;
    let (_, at) = server
        .get_json("/collections/hazards/items?datetime=2021-07-14T18:00:00Z")
        .await;
    assert_eq!(ids(&at), ["early"]);
    let (_, open) = server
        .get_json("/collections/hazards/items?datetime=2021-07-15T00:00:00Z/..")
        .await;
    assert_eq!(ids(&open), ["early", "later"]);

    for bad in [
        "bbox=1,2,3",
        "bbox=155000,463000,156000,464000",
        "limit=0",
        "datetime=yesterday",
        "f=shp",
        "bbox=6,50,5,51",
    ] {
        let r = server
            .http
            .get(server.url(&format!("/collections/units/items?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    assert_eq!(server.get_json("/collections/nothing/items").await.0, 404);
    assert_eq!(
        server.get_json("/collections/units/items/nobody").await.0,
        404
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn flatgeobuf_is_served_by_parameter_and_by_accept_header() {
    let server = TestServer::start().await;
    let r = server
        .http
        .get(server.url("/collections/regions/items?f=fgb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/flatgeobuf");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(&bytes[..3], b"fgb", "FlatGeobuf magic");
    let r = server
        .http
        .get(server.url("/collections/regions/items"))
        .header("accept", "application/flatgeobuf")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/flatgeobuf");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reads_can_require_a_token() {
    let server = TestServer::start_with(|c| {
        c.require_read_token = true;
        c.read_tokens = vec!["wall-display-token".to_owned()];
    })
    .await;
    let r = server
        .http
        .get(server.url("/collections"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = server
        .http
        .get(server.url("/collections"))
        .bearer_auth("wall-display-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = server
        .http
        .get(server.url("/collections"))
        .bearer_auth(TOKEN_VR24)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "feed tokens may read");
    assert_eq!(
        server
            .http
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "probes need no token"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn missing_boundary_files_stop_the_server_with_a_clear_error() {
    let server =
        TestServer::spawn(|c| c.regions_file = "/nonexistent/regions.geojson".into()).await;
    let error = server.join().await.unwrap_err().to_string();
    assert!(error.contains("/nonexistent/regions.geojson"), "{error}");
    assert!(error.contains("BEELD_BOUNDARIES"), "{error}");
}
