//! Benchmarks of beeld's hot paths. Criterion benches live in `benches/`;
//! whole-system measurements (HTTP ingest, memory, fan-out) are binaries in
//! `src/bin/` because they need a running server or a counting allocator.

use std::time::Duration;

use beeld_server::config::{Config, parse_feed_token};

/// Starts the real server in-process on an ephemeral port, with the shared
/// boundaries, a fresh data directory named after `label` and one feed
/// `bench` with `token`; `adjust` changes the config first. Returns the base
/// URL once `/healthz` answers 200.
pub async fn start_server(label: &str, token: &str, adjust: impl FnOnce(&mut Config)) -> String {
    let boundaries = std::env::var_os("BEELD_BOUNDARIES").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/boundaries"),
        std::path::PathBuf::from,
    );
    let mut config = Config::for_boundaries(&boundaries);
    config.data_dir = std::env::temp_dir().join(format!("beeld-bench-{label}"));
    // A fresh journal each run, so recovery and disk use do not accumulate.
    let _ = std::fs::remove_dir_all(&config.data_dir);
    config.feeds = vec![parse_feed_token(&format!("bench={token}")).expect("token")];
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(beeld_server::run(listener, config, std::future::pending()));
    let http = reqwest::Client::new();
    while http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    base
}
