//! Interoperability with a real GIS client: GDAL's OGC API Features driver
//! (`ogrinfo`, `ogr2ogr`) and its FlatGeobuf driver read what beeld serves.

// Helpers in a test file panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use beeld_tests::{TOKEN_VR24, TestServer, collection, require_tool, scratch_dir, unit};
use serde_json::Value;

/// Runs a command off the async runtime and returns its stdout, asserting success.
async fn run(program: std::path::PathBuf, args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(&program)
            .args(&args)
            .output()
            .expect("run gdal");
        assert!(
            out.status.success(),
            "{} {:?} failed:\n{}\n{}",
            program.display(),
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ogrinfo_lists_the_collections_and_ogr2ogr_copies_all_25_regions() {
    let (Some(ogrinfo), Some(ogr2ogr)) = (require_tool("ogrinfo"), require_tool("ogr2ogr")) else {
        return;
    };
    let server = TestServer::start().await;
    let source = format!("OAPIF:{}/", server.base);
    let listing = run(
        ogrinfo.clone(),
        vec!["-ro".into(), "-q".into(), source.clone()],
    )
    .await;
    for id in ["regions", "municipalities", "incidents", "units", "hazards"] {
        assert!(
            listing.contains(id),
            "ogrinfo did not list {id}:\n{listing}"
        );
    }

    let dir = scratch_dir("gdal");
    let out = dir.join("regions.geojson");
    run(
        ogr2ogr.clone(),
        vec![
            "-f".into(),
            "GeoJSON".into(),
            out.display().to_string(),
            source.clone(),
            "regions".into(),
        ],
    )
    .await;
    let copied: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let features = copied["features"].as_array().unwrap();
    assert_eq!(features.len(), 25);
    assert!(features.iter().any(|f| f["properties"]["code"] == "VR24"));

    // Paging: 1,234 units pulled through GDAL's OAPIF driver with small pages.
    let units: Vec<Value> = (0..1234)
        .map(|i| {
            unit(
                &format!("u{i:04}"),
                4.0 + f64::from(i) * 0.002,
                52.0,
                "available",
            )
        })
        .collect();
    assert_eq!(
        server.post("units", TOKEN_VR24, &collection(units)).await.0,
        200
    );
    let summary = run(
        ogrinfo.clone(),
        vec![
            "-ro".into(),
            "-so".into(),
            "-oo".into(),
            "PAGE_SIZE=100".into(),
            source,
            "units".into(),
        ],
    )
    .await;
    assert!(summary.contains("Feature Count: 1234"), "{summary}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gdal_reads_the_flatgeobuf_export() {
    let (Some(ogrinfo), Some(ogr2ogr)) = (require_tool("ogrinfo"), require_tool("ogr2ogr")) else {
        return;
    };
    let server = TestServer::start().await;
    let dir = scratch_dir("fgb");
    for (name, expected) in [("regions", 25), ("municipalities", 342)] {
        let bytes = server
            .http
            .get(server.url(&format!("/collections/{name}/items?f=fgb")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let path = dir.join(format!("{name}.fgb"));
        std::fs::write(&path, &bytes).unwrap();
        let info = run(
            ogrinfo.clone(),
            vec![
                "-ro".into(),
                "-so".into(),
                "-al".into(),
                path.display().to_string(),
            ],
        )
        .await;
        assert!(
            info.contains(&format!("Feature Count: {expected}")),
            "{info}"
        );
        assert!(info.contains("Multi Polygon"), "{info}");
        assert!(
            info.contains("EPSG\",4326") || info.contains("WGS 84"),
            "{info}"
        );
        assert!(info.contains("received_at: DateTime"), "{info}");
    }
    // ogr2ogr converts it to GeoJSON with the attributes intact.
    let out = dir.join("regions-from-fgb.geojson");
    run(
        ogr2ogr,
        vec![
            "-f".into(),
            "GeoJSON".into(),
            out.display().to_string(),
            dir.join("regions.fgb").display().to_string(),
        ],
    )
    .await;
    let converted: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let vr24 = converted["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["properties"]["id"] == "VR24")
        .unwrap();
    assert_eq!(vr24["properties"]["name"], "Zuid-Limburg");
    server.stop().await.unwrap();
}
