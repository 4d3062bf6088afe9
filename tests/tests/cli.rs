//! The `beeld` binary as an operator runs it: help text, configuration
//! through the environment, JSON logs, and graceful shutdown on SIGTERM.

// Helpers in a test file panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use beeld_tests::{beeld_binary, scratch_dir, shared_data};
use serde_json::Value;

#[test]
fn help_documents_every_option() {
    let out = Command::new(beeld_binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--listen",
        "--data-dir",
        "--boundaries",
        "--feed-token",
        "--read-token",
        "--require-read-token",
        "--config",
        "--log-format",
        "--ttl",
        "--feed-silence",
        "--max-body-bytes",
        "BEELD_LISTEN",
    ] {
        assert!(help.contains(option), "help lacks {option}");
    }
}

#[test]
fn serves_with_env_config_logs_json_and_stops_on_sigterm() {
    let data_dir = scratch_dir("cli");
    let mut child = Command::new(beeld_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("BEELD_DATA_DIR", &data_dir)
        .env("BEELD_BOUNDARIES", shared_data().join("boundaries"))
        .env(
            "BEELD_FEED_TOKENS",
            "cli-feed=cli-token-0001:units;other=other-token-02",
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut addr = None;
    let mut ready = false;
    while Instant::now() < deadline && !(addr.is_some() && ready) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if line["message"] == "listening" {
                addr = line["addr"].as_str().map(str::to_owned);
            }
            if line["message"] == "boundaries loaded; serving" {
                ready = true;
            }
        }
    }
    let addr = addr.expect("a 'listening' log line with the address");
    assert!(ready, "no 'boundaries loaded' log line");
    assert!(data_dir.is_dir());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let feeds: Value = http.get(format!("http://{addr}/feeds")).send().await.unwrap().json().await.unwrap();
        let names: Vec<_> = feeds["feeds"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().to_owned()).collect();
        assert_eq!(names, ["cli-feed", "other"]);
        let unit = serde_json::json!({"type": "Feature", "id": "cli-1", "geometry": {"type": "Point", "coordinates": [5.1, 52.1]},
            "properties": {"type": "ambulance", "status": "available", "home_region": "VR09"}});
        let r = http.post(format!("http://{addr}/collections/units/items")).bearer_auth("cli-token-0001").body(unit.to_string()).send().await.unwrap();
        assert_eq!(r.status(), 201);
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            assert!(exit.success(), "beeld exited with {exit}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "beeld did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut saw_shutdown = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        saw_shutdown |= line["message"] == "shutting down";
    }
    assert!(saw_shutdown, "no 'shutting down' log line");
}

#[test]
fn bad_configuration_is_refused_before_starting() {
    let out = Command::new(beeld_binary())
        .args(["serve", "--feed-token", "vr01=short"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shorter than 8 characters"), "{stderr}");
}
