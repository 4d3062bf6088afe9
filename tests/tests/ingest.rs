//! Feed writes: acceptance, every documented rejection, atomicity, expiry and
//! the feed book, against the real server over HTTP.

// Helpers in a test file panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use beeld_layers::{Collection, Timestamp};
use beeld_tests::{TOKEN_VR23_UNITS, TOKEN_VR24, TestServer, collection, hazard, unit};
use reqwest::Method;
use serde_json::{Value, json};

fn assert_problem(status: u16, content_type: &str, body: &Value, expected: u16) {
    assert_eq!(status, expected, "body: {body}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["status"], expected);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

async fn seq(server: &TestServer) -> u64 {
    server.get_json("/healthz").await.1["seq"].as_u64().unwrap()
}

#[tokio::test]
async fn unit_written_by_a_feed_reads_back_with_provenance() {
    let server = TestServer::start().await;
    let (status, _, body) = server
        .post(
            "units",
            TOKEN_VR24,
            &unit("24-1231", 5.83, 50.86, "en route"),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], true);
    let (status, feature) = server.get_json("/collections/units/items/24-1231").await;
    assert_eq!(status, 200);
    let props = &feature["properties"];
    assert_eq!(props["status"], "en_route", "spelling normalised");
    assert_eq!(props["feed"], "vr24");
    assert_eq!(props["seq"], body["seq"]);
    assert!(props["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(props["observed_at"], props["received_at"]);
    assert_eq!(feature["geometry"]["coordinates"], json!([5.83, 50.86]));

    // Writing again replaces (200), with a higher seq.
    let (status, _, again) = server
        .post(
            "units",
            TOKEN_VR24,
            &unit("24-1231", 5.84, 50.87, "on_scene"),
        )
        .await;
    assert_eq!(status, 200);
    assert!(again["seq"].as_u64() > body["seq"].as_u64());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn put_creates_replaces_and_checks_the_id() {
    let server = TestServer::start().await;
    let path = "/collections/hazards/items/flood-geul";
    let (status, _, _) = server
        .send(
            Method::PUT,
            path,
            TOKEN_VR24,
            hazard("flood-geul", 5.8, 50.85, 0.05).to_string(),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _, _) = server
        .send(
            Method::PUT,
            path,
            TOKEN_VR24,
            hazard("flood-geul", 5.8, 50.85, 0.08).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let (status, ct, body) = server
        .send(
            Method::PUT,
            path,
            TOKEN_VR24,
            hazard("other-id", 5.8, 50.85, 0.08).to_string(),
        )
        .await;
    assert_problem(status, &ct, &body, 422);
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("differs")
    );
    let (_, feature) = server.get_json(path).await;
    assert_eq!(feature["geometry"]["coordinates"][0][1][0], json!(5.88));
    assert_eq!(feature["properties"]["ogc_valid"], true);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn delete_removes_and_a_second_delete_is_404() {
    let server = TestServer::start().await;
    server
        .post("units", TOKEN_VR24, &unit("u1", 5.0, 51.0, "available"))
        .await;
    let path = "/collections/units/items/u1";
    let (status, _, _) = server
        .send(Method::DELETE, path, TOKEN_VR24, String::new())
        .await;
    assert_eq!(status, 204);
    assert_eq!(server.get_json(path).await.0, 404);
    let (status, ct, body) = server
        .send(Method::DELETE, path, TOKEN_VR24, String::new())
        .await;
    assert_problem(status, &ct, &body, 404);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_json_is_a_400_problem() {
    let server = TestServer::start().await;
    let (status, ct, body) = server
        .send(
            Method::POST,
            "/collections/units/items",
            TOKEN_VR24,
            "{\"type\": \"Feature\", ".to_owned(),
        )
        .await;
    assert_problem(status, &ct, &body, 400);
    assert!(body["detail"].as_str().unwrap().contains("not valid JSON"));
    // A number too large for a double is malformed too (JSON has no NaN or infinity).
    let text = r#"{"type":"Feature","id":"u","geometry":{"type":"Point","coordinates":[1e999,51]},"properties":{}}"#;
    let (status, ct, body) = server
        .send(
            Method::POST,
            "/collections/units/items",
            TOKEN_VR24,
            text.to_owned(),
        )
        .await;
    assert_problem(status, &ct, &body, 400);
    server.stop().await.unwrap();
}

/// Posts a batch with one bad feature at index 1 and returns the first error.
async fn first_error(server: &TestServer, collection_id: &str, bad: Value) -> Value {
    let good = if collection_id == "hazards" {
        hazard("ok", 5.0, 51.0, 0.1)
    } else {
        unit("ok", 5.0, 51.0, "available")
    };
    let before = seq(server).await;
    let (status, ct, body) = server
        .post(collection_id, TOKEN_VR24, &collection(vec![good, bad]))
        .await;
    assert_problem(status, &ct, &body, 422);
    assert_eq!(
        seq(server).await,
        before,
        "a rejected batch changes nothing"
    );
    assert_eq!(body["errors"][0]["index"], 1, "{body}");
    body["errors"][0].clone()
}

#[tokio::test]
async fn every_geometry_error_names_feature_and_field() {
    let server = TestServer::start_with(|c| c.limits.max_vertices = 50).await;

    let mut wrong_type = hazard("h-as-unit", 5.0, 51.0, 0.1);
    wrong_type["properties"] =
        json!({"type": "police", "status": "available", "home_region": "VR24"});
    let e = first_error(&server, "units", wrong_type).await;
    assert_eq!(e["id"], "h-as-unit");
    assert_eq!(e["pointer"], "/features/1/geometry/type");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("Polygon is not accepted here")
    );

    let e = first_error(&server, "units", unit("far", 200.0, 95.0, "available")).await;
    assert!(
        e["detail"].as_str().unwrap().contains("out of range"),
        "{e}"
    );

    let e = first_error(
        &server,
        "units",
        unit("rd", 155_000.0, 463_000.0, "available"),
    )
    .await;
    assert!(e["detail"].as_str().unwrap().contains("EPSG:28992"), "{e}");
    assert_eq!(e["pointer"], "/features/1/geometry/coordinates");

    let mut unclosed = hazard("open-ring", 5.0, 51.0, 0.1);
    unclosed["geometry"]["coordinates"][0]
        .as_array_mut()
        .unwrap()
        .pop();
    let e = first_error(&server, "hazards", unclosed).await;
    assert_eq!(e["pointer"], "/features/1/geometry/coordinates/0");
    assert!(e["detail"].as_str().unwrap().contains("not closed"));

    let mut empty = hazard("empty", 5.0, 51.0, 0.1);
    empty["geometry"]["coordinates"] = json!([]);
    let e = first_error(&server, "hazards", empty).await;
    assert!(e["detail"].as_str().unwrap().contains("empty"));

    let mut big = hazard("big", 5.0, 51.0, 0.1);
    let ring: Vec<Value> = (0..60)
        .map(|i| json!([5.0 + f64::from(i) * 0.001, 51.0]))
        .chain([json!([5.0, 51.0])])
        .collect();
    big["geometry"]["coordinates"] = json!([ring]);
    let e = first_error(&server, "hazards", big).await;
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("more than 50 positions")
    );

    let mut no_geometry = unit("nowhere", 5.0, 51.0, "available");
    no_geometry["geometry"] = Value::Null;
    let e = first_error(&server, "units", no_geometry).await;
    assert_eq!(e["pointer"], "/features/1/geometry");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn typed_property_errors_list_the_accepted_values() {
    let server = TestServer::start().await;
    let mut bad = unit("u", 5.0, 51.0, "sleeping");
    bad["properties"]["home_region"] = json!("VR26");
    let before = seq(&server).await;
    let (status, ct, body) = server.post("units", TOKEN_VR24, &bad).await;
    assert_problem(status, &ct, &body, 422);
    let pointers: Vec<_> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pointers, ["/properties/status", "/properties/home_region"]);
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("available, en_route, on_scene, out_of_service")
    );
    assert_eq!(seq(&server).await, before);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn size_limits_answer_413() {
    let server = TestServer::start_with(|c| {
        c.max_body_bytes = 4096;
        c.max_batch_features = 3;
    })
    .await;
    let features: Vec<Value> = (0..4)
        .map(|i| unit(&format!("u{i}"), 5.0, 51.0, "available"))
        .collect();
    let (status, ct, body) = server
        .post("units", TOKEN_VR24, &collection(features))
        .await;
    assert_problem(status, &ct, &body, 413);
    assert!(body["detail"].as_str().unwrap().contains("at most 3"));
    let features: Vec<Value> = (0..40)
        .map(|i| unit(&format!("u{i}"), 5.0, 51.0, "available"))
        .collect();
    let (status, ct, body) = server
        .post("units", TOKEN_VR24, &collection(features))
        .await;
    assert_problem(status, &ct, &body, 413);
    assert_eq!(
        server.get_json("/collections/units/items").await.1["numberMatched"],
        0
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_and_collections_are_enforced() {
    let server = TestServer::start().await;
    let u = unit("u", 5.0, 51.0, "available");
    let r = server
        .http
        .post(server.url("/collections/units/items"))
        .body(u.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"beeld\"");
    let (status, ct, body) = server.post("units", "not-a-token", &u).await;
    assert_problem(status, &ct, &body, 401);
    let (status, ct, body) = server
        .post("hazards", TOKEN_VR23_UNITS, &hazard("h", 5.0, 51.0, 0.1))
        .await;
    assert_problem(status, &ct, &body, 403);
    assert!(body["detail"].as_str().unwrap().contains("vr23-units"));
    let (status, _, _) = server.post("units", TOKEN_VR23_UNITS, &u).await;
    assert_eq!(status, 201);
    let (status, ct, body) = server.post("volcanoes", TOKEN_VR24, &u).await;
    assert_problem(status, &ct, &body, 404);
    let (status, ct, body) = server
        .post("regions", TOKEN_VR24, &hazard("VR99", 5.0, 51.0, 0.1))
        .await;
    assert_problem(status, &ct, &body, 405);
    let (status, ct, body) = server
        .send(
            Method::DELETE,
            "/collections/regions/items/VR23",
            TOKEN_VR24,
            String::new(),
        )
        .await;
    assert_problem(status, &ct, &body, 405);
    assert_eq!(
        server.get_json("/collections/regions/items/VR23").await.0,
        200
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_batch_changes_nothing_and_readers_never_see_half_a_batch() {
    let server = TestServer::start().await;
    let mut features: Vec<Value> = (0..1000)
        .map(|i| {
            unit(
                &format!("u{i:04}"),
                5.0 + f64::from(i) * 1e-4,
                51.0,
                "available",
            )
        })
        .collect();
    features[999]["geometry"]["coordinates"] = json!([155_000.0, 463_000.0]);
    let (status, _, body) = server
        .post("units", TOKEN_VR24, &collection(features.clone()))
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["id"], "u0999");
    assert_eq!(
        server.get_json("/collections/units/items?limit=1").await.1["numberMatched"],
        0
    );

    // Concurrent writer of 1000-feature batches and a reader: counts are
    // always whole batches.
    let reader = {
        let http = server.http.clone();
        let url = server.url("/collections/units/items?limit=1");
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..60 {
                let v: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
                seen.push(v["numberMatched"].as_u64().unwrap());
            }
            seen
        })
    };
    for batch in 0..5 {
        let features: Vec<Value> = (0..1000)
            .map(|i| unit(&format!("b{batch}-{i:04}"), 5.0, 51.0, "available"))
            .collect();
        let (status, _, body) = server
            .post("units", TOKEN_VR24, &collection(features))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["written"], 1000);
    }
    for n in reader.await.unwrap() {
        assert_eq!(n % 1000, 0, "reader saw {n} units: a partial batch");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn expired_features_leave_the_picture_by_themselves() {
    let server =
        TestServer::start_with(|c| c.ttl_ms[Collection::Units.index()] = Some(1_500)).await;
    let mut incident = json!({"type": "Feature", "id": "evac-1",
        "geometry": {"type": "Point", "coordinates": [5.83, 50.86]},
        "properties": {"type": "evacuation", "priority": 1, "started_at": "2021-07-14T20:00:00Z"}});
    let soon = now_plus_ms(800);
    incident["properties"]["expires"] = json!(soon);
    let (status, _, _) = server.post("incidents", TOKEN_VR24, &incident).await;
    assert_eq!(status, 201);
    server
        .post(
            "units",
            TOKEN_VR24,
            &unit("ttl-unit", 5.8, 50.8, "available"),
        )
        .await;
    let (_, f) = server.get_json("/collections/units/items/ttl-unit").await;
    assert!(
        f["properties"]["expires"].is_string(),
        "collection TTL sets expires"
    );
    let before = seq(&server).await;
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert_eq!(
        server
            .get_json("/collections/incidents/items/evac-1")
            .await
            .0,
        404
    );
    assert_eq!(
        server.get_json("/collections/units/items/ttl-unit").await.0,
        404
    );
    assert_eq!(seq(&server).await, before + 2, "each expiry is a change");

    let mut past = unit("late", 5.0, 51.0, "available");
    past["properties"]["expires"] = json!("2020-01-01T00:00:00Z");
    let (status, _, body) = server.post("units", TOKEN_VR24, &past).await;
    assert_eq!(status, 422);
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("not in the future")
    );
    server.stop().await.unwrap();
}

fn now_plus_ms(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    Timestamp(i64::try_from(now.as_millis()).unwrap() + ms).to_rfc3339()
}

#[tokio::test]
async fn feeds_report_writes_errors_and_silence() {
    let server =
        TestServer::start_with(|c| c.feed_silence = std::time::Duration::from_secs(1)).await;
    server
        .post(
            "units",
            TOKEN_VR24,
            &collection(vec![
                unit("a", 5.0, 51.0, "available"),
                unit("b", 5.1, 51.0, "available"),
            ]),
        )
        .await;
    server
        .post(
            "units",
            TOKEN_VR24,
            &unit("bad", 155_000.0, 463_000.0, "available"),
        )
        .await;
    let (_, feeds) = server.get_json("/feeds").await;
    let vr24 = feeds["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "vr24")
        .unwrap()
        .clone();
    assert_eq!(vr24["writes"], 2);
    assert_eq!(vr24["batches"], 1);
    assert_eq!(vr24["errors"], 1);
    assert_eq!(vr24["state"], "active");
    assert!(
        vr24["last_error"]["detail"]
            .as_str()
            .unwrap()
            .contains("EPSG:28992"),
        "{vr24}"
    );
    let vr23 = feeds["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "vr23-units")
        .unwrap()
        .clone();
    assert_eq!(vr23["state"], "never_written");
    assert_eq!(vr23["collections"], json!(["units"]));
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let (_, feeds) = server.get_json("/feeds").await;
    assert_eq!(feeds["feeds"][0]["silent"], true);
    assert_eq!(feeds["feeds"][0]["state"], "silent");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn observed_at_is_kept_and_future_times_are_refused() {
    let server = TestServer::start().await;
    let mut u = unit("obs", 5.0, 51.0, "available");
    u["properties"]["observed_at"] = json!("2021-07-14T21:30:00+02:00");
    assert_eq!(server.post("units", TOKEN_VR24, &u).await.0, 201);
    let (_, f) = server.get_json("/collections/units/items/obs").await;
    assert_eq!(f["properties"]["observed_at"], "2021-07-14T19:30:00.000Z");
    u["properties"]["observed_at"] = json!("2999-01-01T00:00:00Z");
    let (status, _, body) = server.post("units", TOKEN_VR24, &u).await;
    assert_eq!(status, 422);
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("future")
    );
    server.stop().await.unwrap();
}
