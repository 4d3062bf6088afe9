//! Bytes per update on the live protocol, for each low-bandwidth option and
//! for compression: 1,000 units in a viewport move ~100 m per round (every
//! third round, a tenth also changes status), 10 rounds, one subscription per
//! option on the real server. Compression is estimated on the very diff
//! messages received: raw DEFLATE per message (permessage-deflate without
//! context takeover) and over the stream (with context takeover).
//!
//! `cargo run --release -p beeld-benches --bin update-bytes`

use std::io::Write as _;
use std::time::Duration;

use beeld_fixtures::{Rng, feature_collection, units};
use flate2::Compression;
use flate2::write::DeflateEncoder;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "bench-token-bytes";
const BBOX: [f64; 4] = [4.0, 51.0, 6.0, 52.5];

#[tokio::main]
async fn main() {
    let base =
        beeld_benches::start_server("bytes", TOKEN, |c| c.live.tick = Duration::from_millis(50))
            .await;
    let http = reqwest::Client::new();
    let addr = base.trim_start_matches("http://").to_owned();
    let mut rng = Rng::new(3);
    let mut fleet = units(1000, 9);
    for u in &mut fleet {
        u.lon = rng.range(BBOX[0] + 0.1, BBOX[2] - 0.1);
        u.lat = rng.range(BBOX[1] + 0.1, BBOX[3] - 0.1);
    }
    let post = |fleet: &[beeld_fixtures::UnitSpec]| {
        let body = feature_collection(
            fleet
                .iter()
                .map(beeld_fixtures::UnitSpec::feature)
                .collect(),
        )
        .to_string();
        let http = http.clone();
        let url = format!("{base}/collections/units/items");
        async move {
            let r = http
                .post(url)
                .bearer_auth(TOKEN)
                .body(body)
                .send()
                .await
                .expect("post");
            assert!(r.status().is_success());
        }
    };
    post(&fleet).await;

    let options = [
        ("full (default)", json!({})),
        ("precision 6", json!({"precision": 6})),
        ("deltas", json!({"deltas": true})),
        (
            "precision 6 + deltas",
            json!({"precision": 6, "deltas": true}),
        ),
    ];
    let mut sockets = Vec::new();
    for (_, extra) in &options {
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("connect");
        let mut subscribe =
            json!({"type": "subscribe", "id": "s", "collections": ["units"], "bbox": BBOX});
        for (k, v) in extra.as_object().expect("object") {
            subscribe[k] = v.clone();
        }
        socket
            .send(Message::Text(subscribe.to_string().into()))
            .await
            .expect("subscribe");
        let _snapshot = socket.next().await;
        sockets.push(socket);
    }
    for round in 0..10 {
        for u in &mut fleet {
            u.step(&mut rng);
        }
        if round % 3 == 2 {
            for u in fleet.iter_mut().take(100) {
                u.status = beeld_layers::attrs::UnitStatus::ALL[rng.below(4)];
            }
        }
        post(&fleet).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    println!(
        "{:<22} {:>12} {:>14} {:>16} {:>18}",
        "option", "upserts", "bytes/update", "deflate/message", "deflate/stream"
    );
    for ((name, _), socket) in options.iter().zip(&mut sockets) {
        let mut messages = Vec::new();
        while let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_millis(300), socket.next()).await
        {
            messages.push(text.as_str().to_owned());
        }
        let mut upserts = 0usize;
        let mut bytes = 0usize;
        let mut per_message = 0usize;
        let mut stream = DeflateEncoder::new(Vec::new(), Compression::fast());
        for text in &messages {
            let v: Value = serde_json::from_str(text).expect("json");
            if v["type"] != "diff" {
                continue;
            }
            upserts += v["collections"]["units"]["upsert"]
                .as_array()
                .map_or(0, Vec::len);
            bytes += text.len();
            let mut one = DeflateEncoder::new(Vec::new(), Compression::fast());
            one.write_all(text.as_bytes()).expect("deflate");
            per_message += one.finish().expect("deflate").len();
            stream.write_all(text.as_bytes()).expect("deflate");
            stream.flush().expect("deflate");
        }
        let streamed = stream.finish().expect("deflate").len();
        let per = |b: usize| b as f64 / upserts.max(1) as f64;
        println!(
            "{:<22} {:>12} {:>14.1} {:>16.1} {:>18.1}",
            name,
            upserts,
            per(bytes),
            per(per_message),
            per(streamed)
        );
    }
}
