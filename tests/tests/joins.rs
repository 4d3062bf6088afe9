//! Spatial joins (issue 4) against the real server: units in hazards with
//! enter/exit events, region summaries, nearest units, H3 aggregates,
//! coverage rules and alerts, attribution in GeoJSON and FlatGeobuf, and the
//! prepared locator on the real CBS boundaries (invalid shapes included).

// Helpers in a test file panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use beeld_layers::relate::{Locator, covers_brute};
use beeld_layers::{Collection, Shape, Timestamp};
use beeld_tests::{
    TOKEN_VR23_UNITS, TOKEN_VR24, TestServer, collection, hazard, shared_data, unit,
};
use serde_json::{Value, json};

/// Valkenburg aan de Geul (VR24 Limburg-Zuid).
const VALKENBURG: (f64, f64) = (5.8326, 50.8652);

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

async fn send_json(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: &Value,
) -> (u16, String, Value) {
    server.send(method, path, token, body.to_string()).await
}

/// Hazard `h1`: a 0.02° square around Valkenburg.
async fn post_hazard_h1(server: &TestServer) {
    let (x, y) = VALKENBURG;
    let (status, _, body) = server
        .post(
            "hazards",
            TOKEN_VR24,
            &hazard("h1", x - 0.01, y - 0.01, 0.02),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
}

/// `POST /joins/rules` with the VR24 feed's token.
async fn post_rule(server: &TestServer, rule: &Value) -> (u16, String, Value) {
    send_json(
        server,
        reqwest::Method::POST,
        "/joins/rules",
        TOKEN_VR24,
        rule,
    )
    .await
}

#[tokio::test]
async fn units_in_a_hazard_follow_moves_with_enter_and_exit_events() {
    let server = TestServer::start().await;
    let (x, y) = VALKENBURG;
    let (status, _, _) = server
        .post(
            "units",
            TOKEN_VR24,
            &collection(vec![
                unit("u1", x, y, "available"),
                unit("u2", x + 0.2, y, "available"),
            ]),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = server
        .post(
            "hazards",
            TOKEN_VR24,
            &hazard("h1", x - 0.01, y - 0.01, 0.02),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = server.get_json("/joins/hazards/h1/units").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body["units"]), ["u1"]);
    assert_eq!(body["regions"][0]["region"], "VR24");
    assert!(body["regions"][0]["area_km2"].as_f64().unwrap() > 1.0);
    let (_, body) = server.get_json("/joins/units/u1/hazards").await;
    assert_eq!(ids(&body["hazards"]), ["h1"]);
    // u2 drives in, u1 drives out.
    server
        .post("units", TOKEN_VR24, &unit("u2", x, y, "en_route"))
        .await;
    server
        .post("units", TOKEN_VR24, &unit("u1", x + 0.2, y, "available"))
        .await;
    let (_, body) = server.get_json("/joins/hazards/h1/units").await;
    assert_eq!(ids(&body["units"]), ["u2"]);
    let (_, body) = server.get_json("/joins/units/u1/hazards").await;
    assert_eq!(ids(&body["hazards"]), Vec::<String>::new());
    // Deleting the hazard ends u2's stay.
    let (status, _, _) = server
        .send(
            reqwest::Method::DELETE,
            "/collections/hazards/items/h1",
            TOKEN_VR24,
            String::new(),
        )
        .await;
    assert_eq!(status, 204);
    let (status, events) = server.get_json("/joins/events?after=0").await;
    assert_eq!(status, 200);
    let seen: Vec<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["type"].as_str().unwrap(),
                e["unit"].as_str().unwrap(),
                e["hazard"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        seen,
        ["enter u1 h1", "enter u2 h1", "exit u1 h1", "exit u2 h1"]
    );
    assert_eq!(events["last"], 4);
    // Paging: one at a time, resuming after the last number seen.
    let (_, page) = server.get_json("/joins/events?after=1&limit=2").await;
    let numbers: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["n"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 3]);
    assert_eq!(page["next_after"], 3);
    assert_eq!(page["more"], true);
    // Unknown ids are problems.
    let r = server
        .http
        .get(server.url("/joins/hazards/nope/units"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let (status, _) = server.get_json("/joins/units/nope/hazards").await;
    assert_eq!(status, 404);
    let (status, _) = server.get_json("/joins/events?after=x").await;
    assert_eq!(status, 400);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn points_and_hazards_carry_their_regions_in_geojson_and_flatgeobuf() {
    let server = TestServer::start().await;
    let (x, y) = VALKENBURG;
    let mut u = unit("u1", x, y, "available");
    // A feed's own `region` is the server's to set: it is replaced.
    u["properties"]["region"] = json!("VR01");
    server.post("units", TOKEN_VR24, &u).await;
    // A hazard straddling Limburg-Zuid (VR24) and Limburg-Noord (VR23).
    server
        .post("hazards", TOKEN_VR24, &hazard("h1", 5.85, 51.0, 0.1))
        .await;
    let (_, feature) = server.get_json("/collections/units/items/u1").await;
    assert_eq!(feature["properties"]["region"], "VR24");
    assert_eq!(feature["properties"]["municipality"], "GM0994");
    let (_, items) = server.get_json("/collections/units/items").await;
    assert_eq!(items["features"][0]["properties"]["region"], "VR24");
    let (_, feature) = server.get_json("/collections/hazards/items/h1").await;
    assert_eq!(feature["properties"]["regions"], json!(["VR23", "VR24"]));
    // The attribution filters like any property.
    let (_, found) = server
        .get_json("/collections/units/items?region=VR24&municipality=GM0994")
        .await;
    assert_eq!(found["numberMatched"], 1);
    let (_, found) = server
        .get_json("/collections/units/items?region=VR01")
        .await;
    assert_eq!(found["numberMatched"], 0);
    let (_, found) = server
        .get_json("/collections/hazards/items?regions=VR23")
        .await;
    assert_eq!(found["numberMatched"], 1);
    // FlatGeobuf: same attribution, as columns.
    use flatgeobuf::{FallibleStreamingIterator, FgbReader};
    use geozero::FeatureProperties;
    let bytes = server
        .http
        .get(server.url("/collections/units/items?f=fgb"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut cursor = std::io::Cursor::new(bytes.to_vec());
    let mut features = FgbReader::open(&mut cursor).unwrap().select_all().unwrap();
    let feature = features.next().unwrap().unwrap();
    assert_eq!(feature.property::<String>("region").unwrap(), "VR24");
    assert_eq!(
        feature.property::<String>("municipality").unwrap(),
        "GM0994"
    );
    let bytes = server
        .http
        .get(server.url("/collections/hazards/items?f=fgb"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut cursor = std::io::Cursor::new(bytes.to_vec());
    let mut features = FgbReader::open(&mut cursor).unwrap().select_all().unwrap();
    let feature = features.next().unwrap().unwrap();
    let regions: Value =
        serde_json::from_str(&feature.property::<String>("regions").unwrap()).unwrap();
    assert_eq!(regions, json!(["VR23", "VR24"]));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_region_summary_counts_by_type_and_status_and_lists_hazards() {
    let server = TestServer::start().await;
    let (x, y) = VALKENBURG;
    server
        .post(
            "units",
            TOKEN_VR24,
            &collection(vec![
                unit("a", x, y, "available"),
                unit("b", x + 0.01, y, "available"),
                unit("c", x, y + 0.01, "on_scene"),
                // Amsterdam: VR13, not counted in VR24.
                unit("d", 4.9, 52.37, "available"),
            ]),
        )
        .await;
    post_hazard_h1(&server).await;
    let (status, body) = server.get_json("/joins/regions/VR24").await;
    assert_eq!(status, 200);
    assert_eq!(body["units"], 3);
    let counts = body["counts"].as_array().unwrap();
    let available = counts.iter().find(|c| c["status"] == "available").unwrap();
    assert_eq!(
        (available["type"].as_str(), available["count"].as_u64()),
        (Some("fire_engine"), Some(2))
    );
    assert_eq!(body["hazards"][0]["id"], "h1");
    assert!(body["name"].is_string());
    let (status, _) = server.get_json("/joins/regions/VR99").await;
    assert_eq!(status, 404);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn nearest_available_units_for_an_incident_can_exclude_its_region() {
    let server = TestServer::start().await;
    let (x, y) = VALKENBURG;
    server
        .post(
            "units",
            TOKEN_VR24,
            &collection(vec![
                unit("near", x + 0.01, y, "available"),
                unit("busy", x + 0.001, y, "on_scene"),
                unit("far", x + 0.1, y + 0.05, "available"),
                // Limburg-Noord (VR23), north of Limburg-Zuid.
                unit("roermond", 5.99, 51.19, "available"),
            ]),
        )
        .await;
    let incident = json!({"type": "Feature", "id": "evac-1", "geometry": {"type": "Point", "coordinates": [x, y]},
        "properties": {"type": "evacuation", "priority": 1, "started_at": "2021-07-14T21:30:00+02:00"}});
    let (status, _, _) = server.post("incidents", TOKEN_VR24, &incident).await;
    assert_eq!(status, 201);
    let (status, body) = server.get_json("/joins/nearest?incident=evac-1&n=2").await;
    assert_eq!(status, 200);
    let found: Vec<&str> = body["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["near", "far"]);
    let d = body["units"][0]["distance_m"].as_f64().unwrap();
    assert!(
        (600.0..800.0).contains(&d),
        "0.01° of longitude at 50.9°N is about 700 m, got {d}"
    );
    assert_eq!(body["from"]["region"], "VR24");
    let (_, body) = server
        .get_json("/joins/nearest?incident=evac-1&n=5&exclude_own_region=true")
        .await;
    let found: Vec<&str> = body["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["roermond"]);
    let (_, body) = server
        .get_json(&format!(
            "/joins/nearest?lon={x}&lat={y}&n=1&status=on_scene&type=fire_engine"
        ))
        .await;
    assert_eq!(body["units"][0]["id"], "busy");
    for bad in [
        "/joins/nearest",
        "/joins/nearest?lon=5",
        "/joins/nearest?lon=5&lat=51&status=sleeping",
        "/joins/nearest?lon=5&lat=51&n=0",
    ] {
        let (status, _) = server.get_json(bad).await;
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _) = server.get_json("/joins/nearest?incident=nope").await;
    assert_eq!(status, 404);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn h3_aggregates_count_units_per_cell_inside_a_bbox() {
    let server = TestServer::start().await;
    let (x, y) = VALKENBURG;
    server
        .post(
            "units",
            TOKEN_VR24,
            &collection(vec![
                unit("a", x, y, "available"),
                unit("b", x + 0.0001, y, "available"),
                unit("c", 4.9, 52.37, "available"),
            ]),
        )
        .await;
    let (status, body) = server
        .get_json("/joins/h3?resolution=9&bbox=5.7,50.8,5.9,50.9")
        .await;
    assert_eq!(status, 200);
    let cells = body["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0]["counts"][0]["count"], 2);
    assert_eq!(cells[0]["counts"][0]["status"], "available");
    let (_, body) = server.get_json("/joins/h3?resolution=4").await;
    let total: u64 = body["cells"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["counts"].as_array().unwrap())
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 3);
    for bad in [
        "/joins/h3",
        "/joins/h3?resolution=10",
        "/joins/h3?resolution=5&bbox=1,2,3",
    ] {
        let (status, _) = server.get_json(bad).await;
        assert_eq!(status, 400, "{bad}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn coverage_rules_raise_and_clear_alerts_through_the_api() {
    let server = TestServer::start().await;
    let (x, y) = VALKENBURG;
    server
        .post("hazards", TOKEN_VR24, &hazard("plume", x, y, 0.01))
        .await;
    let rule = json!({"target": {"hazard": "plume", "radius_km": 10}, "type": "fire_engine", "status": "available", "min_units": 1});
    let (status, _, created) = post_rule(&server, &rule).await;
    assert_eq!(status, 201);
    let id = created["id"].as_u64().unwrap();
    assert_eq!(created["alert"], true);
    let (_, alerts) = server.get_json("/joins/alerts").await;
    assert_eq!(alerts["alerts"][0]["id"], id);
    // A unit 5 km away satisfies the rule; the alert clears.
    server
        .post("units", TOKEN_VR24, &unit("e1", x + 0.07, y, "available"))
        .await;
    let (_, alerts) = server.get_json("/joins/alerts").await;
    assert_eq!(alerts["alerts"], json!([]));
    let (_, one) = server.get_json(&format!("/joins/rules/{id}")).await;
    assert_eq!(
        (one["count"].as_u64(), one["alert"].as_bool()),
        (Some(1), Some(false))
    );
    let (_, events) = server.get_json("/joins/events").await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["alert_raised", "alert_cleared"]);
    // "No ambulance in Fryslân (VR02)": raised at once.
    let (status, _, region_rule) = post_rule(
        &server,
        &json!({"target": {"region": "VR02"}, "type": "ambulance"}),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(region_rule["alert"], true);
    let (_, list) = server.get_json("/joins/rules").await;
    assert_eq!(list["rules"].as_array().unwrap().len(), 2);
    // Writes need a token that may write hazards; bad rules are problems.
    let (status, _, _) = send_json(
        &server,
        reqwest::Method::POST,
        "/joins/rules",
        TOKEN_VR23_UNITS,
        &rule,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = post_rule(
        &server,
        &json!({"target": {"hazard": "plume", "radius_km": -3}}),
    )
    .await;
    assert_eq!(status, 422);
    let (status, _, _) = post_rule(&server, &json!({"target": {}})).await;
    assert_eq!(status, 400);
    let (status, _, _) = server
        .send(
            reqwest::Method::DELETE,
            &format!("/joins/rules/{id}"),
            TOKEN_VR24,
            String::new(),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = server.get_json(&format!("/joins/rules/{id}")).await;
    assert_eq!(status, 404);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn openapi_documents_the_join_endpoints() {
    let server = TestServer::start().await;
    let (_, api) = server.get_json("/api").await;
    for path in [
        "/joins/hazards/{hazardId}/units",
        "/joins/units/{unitId}/hazards",
        "/joins/regions/{regionCode}",
        "/joins/nearest",
        "/joins/h3",
        "/joins/events",
        "/joins/rules",
        "/joins/rules/{ruleId}",
        "/joins/alerts",
    ] {
        assert!(api["paths"][path].is_object(), "{path} is not documented");
    }
    assert!(api["paths"]["/joins/rules"]["post"].is_object());
    server.stop().await.unwrap();
}

/// Every area of a real boundary file, as geometries with their ids.
fn boundary_areas(file: &str, collection: Collection) -> Vec<(String, geo::Geometry<f64>)> {
    let path = shared_data().join("boundaries").join(file);
    beeld_server::boundaries::load_file(&path, collection, Timestamp(0))
        .unwrap()
        .into_iter()
        .filter_map(|op| match op {
            beeld_layers::Op::Upsert { draft, .. } => match draft.shape {
                Shape::Area(area) => Some((draft.id.unwrap().to_string(), area.geometry)),
                Shape::Point(_) => None,
            },
            beeld_layers::Op::Delete { .. } => None,
        })
        .collect()
}

#[test]
fn the_locator_matches_brute_force_on_real_cbs_boundaries_including_invalid_ones() {
    use geo::coord;
    let files = [
        (
            "veiligheidsregios_2023_wgs84.geojson",
            Collection::Regions,
            "VR11",
        ),
        (
            "veiligheidsregios_2019_cbs_wgs84_woki74.geojson",
            Collection::Regions,
            "VR02",
        ),
        (
            "gemeenten_2023_wgs84.geojson",
            Collection::Municipalities,
            "GM0852",
        ),
        (
            "gemeenten_cbs_2022_gegeneraliseerd_wgs84.geojson",
            Collection::Municipalities,
            "GM0852",
        ),
    ];
    for (file, collection, invalid) in files {
        let areas = boundary_areas(file, collection);
        assert!(
            areas.iter().any(|(id, _)| id == invalid),
            "{file} has {invalid}"
        );
        let geometries: Vec<geo::Geometry<f64>> = areas.iter().map(|(_, g)| g.clone()).collect();
        let locator = Locator::new(&geometries);
        let mut probes = Vec::new();
        // Random points over the country, deterministic.
        let mut rng = beeld_fixtures::Rng::new(4);
        for _ in 0..20_000 {
            probes.push(coord! { x: rng.range(3.3, 7.3), y: rng.range(50.7, 53.6) });
        }
        // Every vertex, edge midpoint and near-vertex point of the invalid
        // shape, plus vertices of all others (they lie on shared borders).
        for (id, geometry) in &areas {
            let step = if id == invalid { 1 } else { 7 };
            let coords: Vec<geo::Coord<f64>> = geo::CoordsIter::coords_iter(geometry).collect();
            for (i, w) in coords.windows(2).enumerate().step_by(step) {
                probes.push(w[0]);
                probes.push(coord! { x: (w[0].x + w[1].x) / 2.0, y: (w[0].y + w[1].y) / 2.0 });
                if i % 3 == 0 {
                    probes.push(coord! { x: w[0].x + 1e-9, y: w[0].y - 1e-9 });
                }
            }
        }
        // A bounding-box prefilter only skips areas that cannot cover the point.
        let boxes: Vec<geo::Rect<f64>> = geometries
            .iter()
            .map(|g| geo::BoundingRect::bounding_rect(g).unwrap())
            .collect();
        for p in probes {
            let want: Vec<u32> = (0..geometries.len() as u32)
                .filter(|i| {
                    let b = boxes[*i as usize];
                    p.x >= b.min().x && p.x <= b.max().x && p.y >= b.min().y && p.y <= b.max().y
                })
                .filter(|i| covers_brute(&geometries[*i as usize], p))
                .collect();
            assert_eq!(locator.all(p), want, "{file} at {p:?}");
        }
    }
}

#[tokio::test]
async fn a_restart_raises_no_events_for_memberships_that_already_existed() {
    let data_dir = beeld_tests::scratch_dir("joins-restart");
    let server = TestServer::start_in(&data_dir).await;
    let (x, y) = VALKENBURG;
    post_hazard_h1(&server).await;
    server
        .post("units", TOKEN_VR24, &unit("u1", x, y, "available"))
        .await;
    let (_, before) = server.get_json("/joins/events?after=0").await;
    assert_eq!(before["events"][0]["type"], "enter", "{before}");
    let old_run = before["run"].as_str().unwrap().to_owned();
    let old_last = before["last"].as_u64().unwrap();
    server.stop().await.unwrap();

    let server = TestServer::start_in(&data_dir).await;
    // The membership is back, without a second `enter`.
    let (_, body) = server.get_json("/joins/hazards/h1/units").await;
    assert_eq!(ids(&body["units"]), ["u1"]);
    let (status, after) = server.get_json("/joins/events?after=0").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["events"], json!([]), "replayed state is not news");
    assert_ne!(after["run"], old_run.as_str());
    // A poller still on the old run is told to resynchronise, not handed
    // new events under old numbers.
    let (status, problem) = server
        .get_json(&format!("/joins/events?after={old_last}&run={old_run}"))
        .await;
    assert_eq!(status, 410, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("restarted"),
        "{problem}"
    );
    // New events are numbered in the new run.
    server
        .post("units", TOKEN_VR24, &unit("u1", x + 0.2, y, "en_route"))
        .await;
    let (_, body) = server.get_json("/joins/events?after=0").await;
    assert_eq!(body["events"][0]["type"], "exit", "{body}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn coverage_rules_survive_a_restart_with_their_ids() {
    let data_dir = beeld_tests::scratch_dir("rules-restart");
    let server = TestServer::start_in(&data_dir).await;
    let (x, y) = VALKENBURG;
    server
        .post("hazards", TOKEN_VR24, &hazard("plume", x, y, 0.01))
        .await;
    let mut ids = Vec::new();
    for rule in [
        json!({"target": {"hazard": "plume", "radius_km": 10}, "type": "fire_engine", "status": "available", "min_units": 2}),
        json!({"target": {"region": "VR02"}, "type": "ambulance"}),
        json!({"target": {"region": "VR24"}}),
    ] {
        let (status, _, created) = post_rule(&server, &rule).await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_u64().unwrap());
    }
    let (status, _, _) = send_json(
        &server,
        reqwest::Method::DELETE,
        &format!("/joins/rules/{}", ids[2]),
        TOKEN_VR24,
        &Value::Null,
    )
    .await;
    assert_eq!(status, 204);
    let (_, before) = server.get_json("/joins/rules").await;
    server.stop().await.unwrap();

    let server = TestServer::start_in(&data_dir).await;
    let (_, after) = server.get_json("/joins/rules").await;
    let strip = |rules: &Value| -> Vec<Value> {
        rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.as_object_mut().unwrap().remove("since");
                r
            })
            .collect()
    };
    assert_eq!(strip(&after), strip(&before), "same rules, ids and alerts");
    assert_eq!(after["rules"].as_array().unwrap().len(), 2);
    // A new rule is numbered after the restored ones, never reusing an id.
    let (_, _, created) = post_rule(&server, &json!({"target": {"region": "VR23"}})).await;
    assert!(created["id"].as_u64().unwrap() > ids[2], "{created}");
    server.stop().await.unwrap();

    // A damaged rules file stops the server with a message naming it.
    std::fs::write(
        data_dir.join("rules.json"),
        "{\"rules\": [{\"id\": 1, \"target\": {}}]}",
    )
    .unwrap();
    let dir = data_dir.clone();
    let server = TestServer::spawn(move |c| c.data_dir = dir).await;
    let error = server.join().await.unwrap_err().to_string();
    assert!(error.contains("rules.json"), "{error}");
}
