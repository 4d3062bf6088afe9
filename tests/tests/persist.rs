//! Durability: the real `beeld` binary killed with SIGKILL during heavy
//! concurrent ingest keeps every acknowledged write and no partial batch;
//! a torn journal tail is truncated; corruption in the middle of the journal
//! stops the start with the file and offset; snapshots and history work.

// Helpers in a test file panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use beeld_tests::{
    TOKEN_VR24, TestServer, beeld_binary, collection, scratch_dir, shared_data, unit,
};
use serde_json::{Value, json};

const FEED_TOKEN: &str = "crash-feed-token-01";

/// A `beeld` process on an ephemeral port with JSON logs collected.
struct Beeld {
    child: Child,
    base: String,
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Beeld {
    fn start(data_dir: &Path, extra: &[&str]) -> Beeld {
        let mut child = Command::new(beeld_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .env("BEELD_DATA_DIR", data_dir)
            .env("BEELD_BOUNDARIES", shared_data().join("boundaries"))
            .env("BEELD_FEED_TOKENS", format!("crash={FEED_TOKEN}"))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "listening"
                        && let Some(addr) = v["addr"].as_str()
                    {
                        let _ = tx.send(addr.to_owned());
                    }
                    sink.lock().unwrap().push(v);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a 'listening' log line");
        Beeld {
            child,
            base: format!("http://{addr}"),
            logs,
        }
    }

    async fn wait_ready(&self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(format!("{}/healthz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("beeld did not become ready");
    }

    fn kill_9(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }

    fn logged(&self, message: &str) -> bool {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l["message"] == message)
    }
}

impl Drop for Beeld {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every unit id and its `n` property, paging through the collection.
async fn all_units(http: &reqwest::Client, base: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let mut url = format!("{base}/collections/units/items?limit=10000");
    loop {
        let page: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        for f in page["features"].as_array().unwrap() {
            out.insert(
                f["id"].as_str().unwrap().to_owned(),
                f["properties"]["n"].as_i64().unwrap_or(-1),
            );
        }
        let next = page["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["rel"] == "next")
            .and_then(|l| l["href"].as_str())
            .map(str::to_owned);
        match next {
            Some(next) => url = next,
            None => return out,
        }
    }
}

fn batch_units(feed: usize, n: usize, size: usize) -> Vec<Value> {
    let mut features: Vec<Value> = (0..size)
        .map(|j| {
            let mut u = unit(
                &format!("f{feed}-b{n}-{j}"),
                5.0 + j as f64 * 0.001,
                51.0 + feed as f64 * 0.01,
                "available",
            );
            u["properties"]["n"] = json!(n);
            u
        })
        .collect();
    // One unit per feed moves with every batch: its last acknowledged
    // position must survive too.
    let mut mover = unit(
        &format!("f{feed}-mover"),
        5.5,
        51.5 + n as f64 * 1e-5,
        "en_route",
    );
    mover["properties"]["n"] = json!(n);
    features.push(mover);
    features
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_concurrent_ingest_keeps_every_acknowledged_write_and_no_partial_batch() {
    const FEEDS: usize = 6;
    const BATCH: usize = 20;
    let data_dir = scratch_dir("crash");
    // Small segments, so segments close and snapshots are taken meanwhile.
    let mut server = Beeld::start(&data_dir, &["--journal-segment-mib", "1"]);
    let http = reqwest::Client::new();
    server.wait_ready(&http).await;

    let acked: Arc<Mutex<BTreeSet<(usize, usize)>>> = Arc::default();
    let sent: Arc<Mutex<BTreeSet<(usize, usize)>>> = Arc::default();
    let mut feeds = Vec::new();
    for feed in 0..FEEDS {
        let (acked, sent, http, base) = (
            Arc::clone(&acked),
            Arc::clone(&sent),
            http.clone(),
            server.base.clone(),
        );
        feeds.push(tokio::spawn(async move {
            for n in 0.. {
                let body = collection(batch_units(feed, n, BATCH)).to_string();
                sent.lock().unwrap().insert((feed, n));
                let response = http
                    .post(format!("{base}/collections/units/items"))
                    .bearer_auth(FEED_TOKEN)
                    .body(body)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 200 => {
                        acked.lock().unwrap().insert((feed, n));
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    // The server was killed.
                    Err(_) => return,
                }
            }
        }));
    }
    let started = Instant::now();
    while acked.lock().unwrap().len() < 600 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate =
        acked.lock().unwrap().len() as f64 * (BATCH + 1) as f64 / started.elapsed().as_secs_f64();
    server.kill_9();
    for feed in feeds {
        feed.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    assert!(acked.len() >= 600, "too few writes before the kill");
    eprintln!(
        "{} batches acknowledged ({rate:.0} writes/s), {} in flight at the kill",
        acked.len(),
        sent.len() - acked.len()
    );

    let server = Beeld::start(&data_dir, &[]);
    server.wait_ready(&http).await;
    assert!(server.logged("durable state recovered"));
    let units = all_units(&http, &server.base).await;
    for &(feed, n) in &sent {
        let present = (0..BATCH)
            .filter(|j| units.contains_key(&format!("f{feed}-b{n}-{j}")))
            .count();
        if acked.contains(&(feed, n)) {
            assert_eq!(present, BATCH, "acknowledged batch {feed}/{n} lost writes");
        } else {
            assert!(
                present == 0 || present == BATCH,
                "batch {feed}/{n} is half-applied: {present} of {BATCH}"
            );
        }
    }
    for feed in 0..FEEDS {
        let last_acked = acked
            .iter()
            .filter(|(f, _)| *f == feed)
            .map(|(_, n)| *n)
            .max();
        if let Some(last) = last_acked {
            let mover = units[&format!("f{feed}-mover")];
            assert!(
                mover >= last as i64,
                "feed {feed}: mover at {mover}, acknowledged {last}"
            );
        }
    }
    assert!(segments(&data_dir).len() > 1, "no segment was closed");
    // Closed segments are compacted into a snapshot (by the restarted
    // server if the kill came first).
    let deadline = Instant::now() + Duration::from_secs(30);
    let snapshot_written = loop {
        let n = std::fs::read_dir(data_dir.join("snapshots"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
                    .count()
            })
            .unwrap_or(0);
        if n > 0 || Instant::now() > deadline {
            break n > 0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        snapshot_written,
        "segments closed but no snapshot was written"
    );
    drop(server);
    // And a start from the snapshot plus the journal after it sees the same picture.
    let server = Beeld::start(&data_dir, &[]);
    server.wait_ready(&http).await;
    assert_eq!(all_units(&http, &server.base).await, units);
}

fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(data_dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    all.sort();
    all
}

async fn write_units(server: &TestServer, ids: &[&str]) {
    for id in ids {
        let (status, _, body) = server
            .post("units", TOKEN_VR24, &unit(id, 5.8, 50.86, "available"))
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

#[tokio::test]
async fn a_torn_journal_tail_is_truncated_and_the_rest_recovered() {
    let data_dir = scratch_dir("torn");
    let server = TestServer::start_in(&data_dir).await;
    write_units(&server, &["a", "b", "c"]).await;
    server.stop().await.unwrap();

    // A crash mid-write: a group header announcing more bytes than follow.
    let segment = segments(&data_dir).pop().unwrap();
    let good_len = std::fs::metadata(&segment).unwrap().len();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&500u32.to_le_bytes());
    bytes.extend_from_slice(&[0xAB; 40]);
    std::fs::write(&segment, &bytes).unwrap();

    let server = TestServer::start_in(&data_dir).await;
    for id in ["a", "b", "c"] {
        let (status, _) = server
            .get_json(&format!("/collections/units/items/{id}"))
            .await;
        assert_eq!(status, 200, "{id} lost");
    }
    write_units(&server, &["d"]).await;
    server.stop().await.unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    assert!(len > good_len, "new writes follow the good part");
    let server = TestServer::start_in(&data_dir).await;
    let (status, _) = server.get_json("/collections/units/items/d").await;
    assert_eq!(status, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn corruption_in_the_middle_of_the_journal_refuses_to_start_naming_file_and_offset() {
    let data_dir = scratch_dir("corrupt");
    let server = TestServer::start_in(&data_dir).await;
    write_units(&server, &["a", "b", "c"]).await;
    server.stop().await.unwrap();

    // Flip a byte inside the first group (the boundaries' seq note), which
    // later, good groups follow: no crash can do that.
    let segment = segments(&data_dir).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[12 + 8 + 10] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();

    let dir = data_dir.clone();
    let server = TestServer::spawn(move |c| c.data_dir = dir).await;
    let error = server.join().await.unwrap_err().to_string();
    assert!(error.contains(&segment.display().to_string()), "{error}");
    assert!(error.contains("offset 12"), "{error}");
    // The file is left as it was for the operator.
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
}

#[tokio::test]
async fn history_shows_the_picture_as_it_was() {
    let data_dir = scratch_dir("history");
    let server = TestServer::start_in(&data_dir).await;
    write_units(&server, &["early"]).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let between = beeld_server::state::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    write_units(&server, &["late"]).await;
    let (status, _, _) = server
        .send(
            reqwest::Method::DELETE,
            "/collections/units/items/early",
            TOKEN_VR24,
            String::new(),
        )
        .await;
    assert_eq!(status, 204);

    let (status, now) = server.get_json("/collections/units/items").await;
    assert_eq!(status, 200);
    let ids = |v: &Value| -> Vec<String> {
        v["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&now), ["late"]);
    let (status, then) = server
        .get_json(&format!(
            "/collections/units/items?datetime={}",
            between.to_rfc3339()
        ))
        .await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(ids(&then), ["early"]);
    // Before the retained history, `datetime` filters the live picture by
    // the features' own times (an instant keeps every unit).
    let (status, before) = server
        .get_json("/collections/units/items?datetime=2001-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(ids(&before), ["late"]);
    server.stop().await.unwrap();
}

// ---- PostGIS ----------------------------------------------------------------

/// PostGIS tests share one PostgreSQL server, and one of them stops it:
/// they run one at a time.
static POSTGIS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh database `beeld_test_<pid>_<n>` with PostGIS, or `None` (test
/// skipped) when PostgreSQL cannot be reached; under `CI` that fails.
async fn test_database() -> Option<(String, sqlx::PgPool, TestDatabase)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let admin_url = std::env::var("BEELD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&admin_url)
        .await
    {
        Ok(pool) => pool,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostGIS is required under CI (scripts/test.sh installs and starts it): {e}"
            );
            eprintln!("skipping: PostgreSQL not reachable at {admin_url}: {e}");
            return None;
        }
    };
    let name = format!(
        "beeld_test_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let url = match admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("BEELD_TEST_DATABASE_URL needs a database name"),
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    Some((url, pool, TestDatabase { admin_url, name }))
}

/// Drops the test database when the test ends (other engineers share the server).
struct TestDatabase {
    admin_url: String,
    name: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .stdout(Stdio::null())
            .status();
    }
}

async fn stored_ids(pool: &sqlx::PgPool) -> BTreeSet<String> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM beeld_features WHERE collection = 'units'")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().map(|(id,)| id).collect()
}

/// Waits until PostGIS has stored everything up to the journal's durable seq.
async fn wait_caught_up(http: &reqwest::Client, base: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let health: Value = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if health["status"] == "ok" && health["postgis"]["stored_seq"] == health["durable_seq"] {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "postgis did not catch up: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn writes_reach_postgis_tables_and_a_new_data_directory_loads_from_postgis() {
    let _serial = POSTGIS.lock().await;
    let Some((url, pool, _database)) = test_database().await else {
        return;
    };
    let first_dir = scratch_dir("pg-a");
    let (dir, db) = (first_dir.clone(), url.clone());
    let server = TestServer::start_with(move |c| {
        c.data_dir = dir;
        c.database_url = Some(db);
    })
    .await;
    write_units(&server, &["pg-1", "pg-2"]).await;
    let (status, _, _) = server
        .post(
            "hazards",
            TOKEN_VR24,
            &beeld_tests::hazard("flood-1", 5.8, 50.8, 0.1),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _, _) = server
        .send(
            reqwest::Method::DELETE,
            "/collections/units/items/pg-2",
            TOKEN_VR24,
            String::new(),
        )
        .await;
    assert_eq!(status, 204);
    wait_caught_up(&server.http, &server.base, Duration::from_secs(20)).await;

    assert_eq!(stored_ids(&pool).await, BTreeSet::from(["pg-1".to_owned()]));
    let (geom, status): (String, String) = sqlx::query_as(
        "SELECT ST_AsText(geom), properties->>'status' FROM beeld_features WHERE id = 'pg-1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (geom.as_str(), status.as_str()),
        ("POINT(5.8 50.86)", "available")
    );
    let (srid, kind): (i32, String) = sqlx::query_as(
        "SELECT ST_SRID(geom), GeometryType(geom) FROM beeld_features WHERE id = 'flood-1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((srid, kind.as_str()), (4326, "POLYGON"));
    let ops: Vec<(String, String)> =
        sqlx::query_as("SELECT id, op FROM beeld_changes WHERE collection = 'units' ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    let ops: Vec<(&str, &str)> = ops.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        ops,
        [("pg-1", "upsert"), ("pg-2", "upsert"), ("pg-2", "delete")]
    );
    let (gist,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'beeld_features' AND indexdef LIKE '%gist%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(gist, 1);
    server.stop().await.unwrap();

    // A new machine: empty data directory, the same database.
    let (dir, db) = (scratch_dir("pg-b"), url.clone());
    let server = TestServer::start_with(move |c| {
        c.data_dir = dir;
        c.database_url = Some(db);
    })
    .await;
    let (status, feature) = server.get_json("/collections/units/items/pg-1").await;
    assert_eq!(status, 200, "{feature}");
    assert_eq!(feature["geometry"]["coordinates"], json!([5.8, 50.86]));
    let (status, _) = server.get_json("/collections/hazards/items/flood-1").await;
    assert_eq!(status, 200);
    let (status, _) = server.get_json("/collections/units/items/pg-2").await;
    assert_eq!(status, 404);
    // Seqs go on from PostGIS's.
    let (_, _, written) = server
        .post("units", TOKEN_VR24, &unit("pg-3", 5.0, 51.0, "available"))
        .await;
    let stored: (i64,) = sqlx::query_as("SELECT seq FROM beeld_state")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(written["seq"].as_i64().unwrap() > stored.0, "{written}");
    server.stop().await.unwrap();
}

/// Stops the local PostgreSQL 15 cluster; starts it again when dropped, so a
/// failing test never leaves it down.
struct ClusterStopped;

impl ClusterStopped {
    fn new() -> ClusterStopped {
        let status = Command::new("pg_ctlcluster")
            .args([
                "--skip-systemctl-redirect",
                "15",
                "main",
                "stop",
                "-m",
                "fast",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "could not stop PostgreSQL");
        ClusterStopped
    }
}

impl Drop for ClusterStopped {
    fn drop(&mut self) {
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", "15", "main", "start"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgis_stopped_mid_run_degrades_keeps_acknowledging_and_catches_up() {
    let _serial = POSTGIS.lock().await;
    let Some((url, pool, _database)) = test_database().await else {
        return;
    };
    if beeld_tests::require_tool("pg_ctlcluster").is_none() {
        return;
    }
    let (dir, db) = (scratch_dir("pg-down"), url.clone());
    let server = TestServer::start_with(move |c| {
        c.data_dir = dir;
        c.database_url = Some(db);
    })
    .await;
    write_units(&server, &["before"]).await;
    wait_caught_up(&server.http, &server.base, Duration::from_secs(20)).await;
    pool.close().await;

    let stopped = ClusterStopped::new();
    // Writes are still acknowledged: the journal is the durable buffer.
    let ids: Vec<String> = (0..50).map(|i| format!("during-{i}")).collect();
    let ids_ref: Vec<&str> = ids.iter().map(String::as_str).collect();
    write_units(&server, &ids_ref).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, health) = server.get_json("/healthz").await;
        if health["status"] == "degraded" {
            assert_eq!(health["postgis"]["connected"], false);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reported degraded: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reads are served from memory meanwhile.
    let (status, _) = server.get_json("/collections/units/items/during-49").await;
    assert_eq!(status, 200);
    drop(stopped);

    wait_caught_up(&server.http, &server.base, Duration::from_secs(60)).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let stored = stored_ids(&pool).await;
    for id in ids.iter().map(String::as_str).chain(["before"]) {
        assert!(
            stored.contains(id),
            "{id} missing in postgis after catch-up"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_with_postgis_leaves_every_acknowledged_write_in_postgis() {
    let _serial = POSTGIS.lock().await;
    let Some((url, pool, _database)) = test_database().await else {
        return;
    };
    let data_dir = scratch_dir("pg-crash");
    let mut server = Beeld::start(&data_dir, &["--database-url", &url]);
    let http = reqwest::Client::new();
    server.wait_ready(&http).await;
    let acked: Arc<Mutex<BTreeSet<(usize, usize)>>> = Arc::default();
    let mut feeds = Vec::new();
    for feed in 0..4 {
        let (acked, http, base) = (Arc::clone(&acked), http.clone(), server.base.clone());
        feeds.push(tokio::spawn(async move {
            for n in 0.. {
                let body = collection(batch_units(feed, n, 10)).to_string();
                let sent = http
                    .post(format!("{base}/collections/units/items"))
                    .bearer_auth(FEED_TOKEN)
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => {
                        acked.lock().unwrap().insert((feed, n));
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return,
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill_9();
    for feed in feeds {
        feed.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let server = Beeld::start(&data_dir, &["--database-url", &url]);
    server.wait_ready(&http).await;
    wait_caught_up(&http, &server.base, Duration::from_secs(60)).await;
    let stored = stored_ids(&pool).await;
    for (feed, n) in &acked {
        for j in 0..10 {
            let id = format!("f{feed}-b{n}-{j}");
            assert!(stored.contains(&id), "acknowledged {id} missing in postgis");
        }
    }
}

#[tokio::test]
async fn closed_segments_are_compacted_into_snapshots_and_old_history_is_dropped() {
    let data_dir = scratch_dir("compact");
    let dir = data_dir.clone();
    let server = TestServer::start_with(move |c| {
        c.data_dir = dir;
        c.journal_segment_bytes = 16 * 1024;
        c.history_retention = Duration::ZERO;
    })
    .await;
    for round in 0..15 {
        let batch: Vec<Value> = (0..20)
            .map(|i| unit(&format!("c{round}-{i}"), 5.0, 51.0, "available"))
            .collect();
        let (status, _, body) = server.post("units", TOKEN_VR24, &collection(batch)).await;
        assert_eq!(status, 200, "{body}");
    }
    // The snapshot thread works in the background.
    let deadline = Instant::now() + Duration::from_secs(20);
    let snapshots = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir.join("snapshots"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "snap"))
                    .collect()
            })
            .unwrap_or_default()
    };
    while snapshots(&data_dir).is_empty() || segments(&data_dir).len() > 2 {
        assert!(
            Instant::now() < deadline,
            "no compaction: {} segments, {} snapshots",
            segments(&data_dir).len(),
            snapshots(&data_dir).len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await.unwrap();
    assert_eq!(snapshots(&data_dir).len(), 1, "older snapshots are dropped");

    let server = TestServer::start_in(&data_dir).await;
    let (_, health) = server.get_json("/healthz").await;
    assert_eq!(health["features"]["units"], 300, "{health}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_history_api_lists_changes_between_two_instants_in_seq_order() {
    use beeld_server::persist::codec::Change;
    use beeld_server::persist::{Layout, history};
    let data_dir = scratch_dir("changes");
    let server = TestServer::start_in(&data_dir).await;
    write_units(&server, &["before"]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let from = beeld_server::state::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_units(&server, &["x", "y"]).await;
    let (status, _, _) = server
        .send(
            reqwest::Method::DELETE,
            "/collections/units/items/x",
            TOKEN_VR24,
            String::new(),
        )
        .await;
    assert_eq!(status, 204);
    let to = beeld_server::state::now();

    let mut seen = Vec::new();
    history::changes_between(&Layout::new(&data_dir), from, to, |c| {
        seen.push(match c.change {
            Change::Upsert(_, f) => format!("upsert {} #{}", f.id, f.seq),
            Change::Delete(_, id, seq) => format!("delete {id} #{seq}"),
            Change::Superseded(_, id, seq) => format!("superseded {id} #{seq}"),
        });
        true
    })
    .unwrap();
    let (_, health) = server.get_json("/healthz").await;
    let last = health["seq"].as_u64().unwrap();
    assert_eq!(
        seen,
        [
            format!("upsert x #{}", last - 2),
            format!("upsert y #{}", last - 1),
            format!("delete x #{last}"),
        ]
    );
    server.stop().await.unwrap();
}
