//! Scenarios played against the real server as the 25 regional feeds, over
//! HTTP, each checking its own outcome through the public read interfaces.

// Helpers in a test file panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use beeld_fixtures::scenario::{Scenario, Spec};
use beeld_server::simulate::{HttpOutlet, PlayOptions, play};
use beeld_tests::{
    REGIONAL_SECRET, TestServer, beeld_binary, regional_config, scratch_dir, shared_data,
};
use geo::{Area, Contains, Coord, LineString, Polygon};
use serde_json::Value;

async fn start() -> TestServer {
    // `start_with` binds the port after `adjust`, so the whole config can be replaced.
    TestServer::start_with(|c| *c = regional_config()).await
}

async fn features(server: &TestServer, collection: &str) -> Vec<Value> {
    server
        .get_json(&format!("/collections/{collection}/items?limit=10000"))
        .await
        .1["features"]
        .as_array()
        .unwrap()
        .clone()
}

fn polygon(feature: &Value) -> Polygon<f64> {
    let ring = feature["geometry"]["coordinates"][0].as_array().unwrap();
    Polygon::new(
        LineString(
            ring.iter()
                .map(|p| Coord {
                    x: p[0].as_f64().unwrap(),
                    y: p[1].as_f64().unwrap(),
                })
                .collect(),
        ),
        Vec::new(),
    )
}

async fn play_until(
    scenario: &mut Scenario,
    outlet: &HttpOutlet,
    hours: f64,
) -> beeld_server::simulate::Report {
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let options = PlayOptions {
        speed: 0.0,
        until_h: Some(hours),
        progress: false,
    };
    play(scenario, outlet, &options, &stop).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limburg_floods_grow_units_enter_them_and_every_region_feeds_its_own_data() {
    let server = start().await;
    let outlet = HttpOutlet::new(&server.base, REGIONAL_SECRET);
    let mut scenario =
        Scenario::new(Spec::load("limburg-2021").unwrap(), &shared_data(), 1.0).unwrap();

    let early = play_until(&mut scenario, &outlet, 3.0).await;
    assert_eq!(early.errors, 0, "{:?}", early.first_error);
    let (_, geul) = server
        .get_json("/collections/hazards/items/flood-geul")
        .await;
    let early_area = polygon(&geul).unsigned_area();

    let report = play_until(&mut scenario, &outlet, 14.0).await;
    assert_eq!(
        report.errors, 0,
        "nothing rejected: {:?}",
        report.first_error
    );
    let hazards = features(&server, "hazards").await;
    let ids: Vec<&str> = hazards.iter().map(|h| h["id"].as_str().unwrap()).collect();
    for id in [
        "flood-geul",
        "flood-maas-maastricht",
        "flood-geleenbeek",
        "flood-roer",
        "flood-jeker",
    ] {
        assert!(ids.contains(&id), "{id} exists: {ids:?}");
    }
    let geul = hazards.iter().find(|h| h["id"] == "flood-geul").unwrap();
    assert!(
        polygon(geul).unsigned_area() > 2.0 * early_area,
        "the Geul flood grew"
    );
    // Valkenburg aan de Geul is under water.
    assert!(
        polygon(geul).contains(&Coord { x: 5.83, y: 50.865 })
            || polygon(geul).contains(&Coord {
                x: 5.872,
                y: 50.854
            })
    );

    let floods: Vec<Polygon<f64>> = hazards.iter().map(polygon).collect();
    let units = features(&server, "units").await;
    let inside = units
        .iter()
        .filter(|u| {
            let c = &u["geometry"]["coordinates"];
            let at = Coord {
                x: c[0].as_f64().unwrap(),
                y: c[1].as_f64().unwrap(),
            };
            floods.iter().any(|f| f.contains(&at))
        })
        .count();
    assert!(inside >= 5, "units entered the flood areas: {inside}");

    // Every feature was written by the feed of the region that owns it.
    for unit in &units {
        let props = &unit["properties"];
        assert_eq!(
            props["feed"].as_str().unwrap(),
            props["home_region"].as_str().unwrap().to_lowercase(),
            "{}",
            unit["id"]
        );
    }
    let incidents = features(&server, "incidents").await;
    assert!(!incidents.is_empty());
    for incident in incidents.iter().take(15) {
        let c = &incident["geometry"]["coordinates"];
        let (x, y) = (c[0].as_f64().unwrap(), c[1].as_f64().unwrap());
        let (_, regions) = server
            .get_json(&format!("/collections/regions/items?bbox={x},{y},{x},{y}"))
            .await;
        let owners: Vec<String> = regions["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_lowercase())
            .collect();
        assert!(
            owners.contains(&incident["properties"]["feed"].as_str().unwrap().to_owned()),
            "{} in {owners:?}",
            incident["id"]
        );
    }
    // Limburg-Zuid, Limburg-Noord and four assistance regions wrote; nobody was refused.
    let (_, feeds) = server.get_json("/feeds").await;
    let writers: Vec<&str> = feeds["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["writes"].as_u64().unwrap() > 0)
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(writers, ["vr06", "vr07", "vr21", "vr22", "vr23", "vr24"]);
    assert!(
        feeds["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["errors"] == 0)
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baseline_is_fed_by_all_25_regions() {
    let server = start().await;
    let outlet = HttpOutlet::new(&server.base, REGIONAL_SECRET);
    let mut scenario = Scenario::new(Spec::load("baseline").unwrap(), &shared_data(), 0.2).unwrap();
    let report = play_until(&mut scenario, &outlet, 0.5).await;
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert_eq!(report.per_feed.len(), 25);
    let (_, feeds) = server.get_json("/feeds").await;
    assert!(
        feeds["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["writes"].as_u64().unwrap() > 0 && f["errors"] == 0)
    );
    assert_eq!(
        server.get_json("/collections/units/items?limit=1").await.1["numberMatched"],
        25 * 20
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wildfire_front_moves_with_the_wind() {
    let server = start().await;
    let outlet = HttpOutlet::new(&server.base, REGIONAL_SECRET);
    let mut scenario = Scenario::new(Spec::load("wildfire").unwrap(), &shared_data(), 1.0).unwrap();
    play_until(&mut scenario, &outlet, 1.0).await;
    let (_, early) = server
        .get_json("/collections/hazards/items/wildfire-strabrechtse-heide")
        .await;
    let report = play_until(&mut scenario, &outlet, 8.0).await;
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    let (_, late) = server
        .get_json("/collections/hazards/items/wildfire-strabrechtse-heide")
        .await;
    let centroid = |f: &Value| geo::Centroid::centroid(&polygon(f)).unwrap();
    assert!(
        centroid(&late).x() > centroid(&early).x() + 0.01,
        "the front moved east with the wind"
    );
    assert!(polygon(&late).unsigned_area() > polygon(&early).unsigned_area());
    assert_eq!(late["properties"]["kind"], "wildfire");
    server.stop().await.unwrap();
}

async fn health(http: &reqwest::Client, base: &str) -> Option<Value> {
    let response = http.get(format!("{base}/healthz")).send().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    response.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beeld_simulate_plays_against_the_binary_and_serve_demo_is_live() {
    use std::process::{Command, Stdio};
    let http = reqwest::Client::new();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let serve = |extra: &[&str], label: &str| {
        Command::new(beeld_binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("BEELD_DATA_DIR", scratch_dir(label))
            .env("BEELD_BOUNDARIES", shared_data().join("boundaries"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut server = serve(&["--regional-feeds", "cli-secret-1"], "sim-cli");
    for _ in 0..200 {
        if health(&http, &base).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let simulate = Command::new(beeld_binary())
        .args([
            "simulate",
            "--scenario",
            "wildfire",
            "--target",
            &base,
            "--regional-feeds",
            "cli-secret-1",
            "--speed",
            "0",
            "--hours",
            "1",
            "--data",
        ])
        .arg(shared_data())
        .output();
    let out = tokio::task::spawn_blocking(move || simulate)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("done at +1.0 h") && stderr.contains("0 errors"),
        "{stderr}"
    );
    let _ = server.kill();
    let _ = server.wait();

    // --demo: the Limburg scenario plays in-process; the floods appear.
    let mut demo = serve(&["--demo", "--demo-speed", "3600"], "demo");
    let mut hazards = 0;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(h) = health(&http, &base).await {
            hazards = h["features"]["hazards"].as_u64().unwrap_or(0);
            if hazards >= 2 && h["features"]["units"].as_u64().unwrap_or(0) > 200 {
                break;
            }
        }
    }
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(hazards >= 2, "the demo shows floods");
}
