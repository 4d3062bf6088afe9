//! HTTP batch ingest throughput: the real server in-process on an ephemeral
//! port, C concurrent feed connections POSTing FeatureCollections of 1,000
//! moving units each. The load generator shares the machine's two cores.
//!
//! `cargo run --release -p beeld-benches --bin ingest-http -- [UNITS] [ROUNDS] [CONNECTIONS] [BATCH]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use beeld_fixtures::{Rng, feature_collection, units};

/// The same allocator as the `beeld` binary, so the figure is the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-token-ingest";

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n_units = args.first().copied().unwrap_or(100_000);
    let rounds = args.get(1).copied().unwrap_or(3);
    let connections = args.get(2).copied().unwrap_or(4);
    // Features per POST; 1 measures single-feature writes (each durable on its own).
    let batch = args.get(3).copied().unwrap_or(1000).max(1);

    let base = beeld_benches::start_server("ingest", TOKEN, |_| {}).await;
    let http = reqwest::Client::new();

    // Pre-serialise every body so the measurement is the server, not serde on the client.
    let mut fleet = units(n_units, 1);
    let mut rng = Rng::new(2);
    let mut bodies = Vec::new();
    for _ in 0..=rounds {
        for chunk in fleet.chunks(batch) {
            bodies.push(
                feature_collection(
                    chunk
                        .iter()
                        .map(beeld_fixtures::UnitSpec::feature)
                        .collect(),
                )
                .to_string(),
            );
        }
        fleet.iter_mut().for_each(|u| u.step(&mut rng));
    }
    let per_round = n_units.div_ceil(batch);
    let (load, moves) = bodies.split_at(per_round);
    post_all(&http, &base, load.to_vec(), connections).await;
    let bytes: usize = moves.iter().map(String::len).sum();
    let started = Instant::now();
    let mut latencies = post_all(&http, &base, moves.to_vec(), connections).await;
    let elapsed = started.elapsed();
    latencies.sort();
    let features = moves.len() * batch;
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "units: {n_units}, batches: {} of {batch}, connections: {connections}",
        moves.len()
    );
    println!(
        "body size: {:.0} bytes/feature",
        bytes as f64 / features as f64
    );
    println!(
        "throughput: {:.0} features/s ({:.1} MB/s)",
        features as f64 / elapsed.as_secs_f64(),
        bytes as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!(
        "batch latency: p50 {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
}

async fn post_all(
    http: &reqwest::Client,
    base: &str,
    bodies: Vec<String>,
    connections: usize,
) -> Vec<Duration> {
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let queue = Arc::clone(&queue);
        let http = http.clone();
        let url = format!("{base}/collections/units/items");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(body) = queue.lock().expect("queue").pop() else {
                    break;
                };
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .body(body)
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all
}
