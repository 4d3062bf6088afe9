//! End-to-end harness: starts the real beeld server on an ephemeral port
//! (in-process through `beeld_server::run`, or as the built `beeld` binary)
//! and talks to it over HTTP.
//!
//! External tools (GDAL) are looked up on `PATH`; when one is missing the
//! test is skipped with a message, except under `CI`, where it fails: the
//! README's test command installs them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use beeld_server::Config;
use beeld_server::config::parse_feed_token;
use serde_json::Value;

/// A token with write access to every writable collection (feed `vr24`).
pub const TOKEN_VR24: &str = "token-vr24-limburg-zuid";
/// The regional feed secret of the test configuration (`vr01`…`vr25`).
pub const REGIONAL_SECRET: &str = "regional-test-secret";

/// A token limited to `units` (feed `vr23-units`).
pub const TOKEN_VR23_UNITS: &str = "token-vr23-units-only";

/// `../shared/data`, or `BEELD_SHARED_DATA`.
pub fn shared_data() -> PathBuf {
    std::env::var_os("BEELD_SHARED_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
        PathBuf::from,
    )
}

/// A unique scratch directory under the system temp dir. The first call in
/// a test process removes the scratch directories of test processes that
/// have ended: each run of the suite leaves ~100 MB of data directories
/// behind otherwise, and CI machines have run out of disk.
pub fn scratch_dir(label: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(sweep_scratch_dirs);
    let dir = std::env::temp_dir().join(format!(
        "beeld-test-{label}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Removes `beeld-test-{label}-{pid}-{n}` directories whose process is gone.
fn sweep_scratch_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("beeld-test-") {
            continue;
        }
        // The pid is the second field from the end.
        let mut fields = name.rsplit('-');
        let (Some(_n), Some(pid)) = (fields.next(), fields.next()) else {
            continue;
        };
        let alive = pid.parse::<u32>().is_ok_and(|pid| {
            pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
        });
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The default test configuration: real boundaries, two feeds.
pub fn test_config() -> Config {
    let mut config = Config::for_boundaries(&shared_data().join("boundaries"));
    config.data_dir = scratch_dir("data");
    config.feeds = vec![
        parse_feed_token(&format!("vr24={TOKEN_VR24}")).expect("token"),
        parse_feed_token(&format!("vr23-units={TOKEN_VR23_UNITS}:units")).expect("token"),
    ];
    config
}

/// The test configuration plus the 25 regional feeds of `REGIONAL_SECRET`.
pub fn regional_config() -> Config {
    let mut args = beeld_server::config::ServeArgs {
        boundaries: Some(shared_data().join("boundaries")),
        regional_feeds: Some(REGIONAL_SECRET.to_owned()),
        ..Default::default()
    };
    args.feed_tokens = Vec::new();
    let mut config = Config::resolve(args).expect("regional config");
    config.data_dir = scratch_dir("data");
    config
}

/// A running in-process server.
#[derive(Debug)]
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// An HTTP client.
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), beeld_server::Error>>>,
}

impl TestServer {
    /// Starts with [`test_config`].
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts on `data_dir` (a restart of an earlier server when it already
    /// holds state), and waits until it is loaded.
    pub async fn start_in(data_dir: &Path) -> TestServer {
        let dir = data_dir.to_path_buf();
        TestServer::start_with(move |c| c.data_dir = dir).await
    }

    /// Starts with [`test_config`] changed by `adjust`, and waits until
    /// `/healthz` says the store is loaded.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let server = TestServer::spawn(adjust).await;
        server.wait_ready().await;
        server
    }

    /// Starts without waiting for readiness.
    pub async fn spawn(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config();
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        config.listen = addr;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(beeld_server::run(listener, config, async move {
            let _ = stopped.await;
        }));
        TestServer {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits up to 20 s for `/healthz` to answer 200.
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("server at {} did not become ready", self.base);
    }

    /// Full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path`, returning status and JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("get");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST `body` to a collection's items with `token`; status, content type, JSON.
    pub async fn post(&self, collection: &str, token: &str, body: &Value) -> (u16, String, Value) {
        self.send(
            reqwest::Method::POST,
            &format!("/collections/{collection}/items"),
            token,
            body.to_string(),
        )
        .await
    }

    /// Sends a raw request; status, content type, JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: String,
    ) -> (u16, String, Value) {
        let r = self
            .http
            .request(method, self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/geo+json")
            .body(body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (status, content_type, r.json().await.unwrap_or(Value::Null))
    }

    /// Stops the server gracefully and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), beeld_server::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }

    /// Waits for the server task to end by itself (e.g. after a load failure).
    pub async fn join(mut self) -> Result<(), beeld_server::Error> {
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("server stops by itself")
                .expect("server task"),
            None => Ok(()),
        }
    }
}

/// A unit feature.
pub fn unit(id: &str, lon: f64, lat: f64, status: &str) -> Value {
    serde_json::json!({
        "type": "Feature", "id": id,
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"type": "fire_engine", "status": status, "home_region": "VR24", "call_sign": id}
    })
}

/// A FeatureCollection of `features`.
pub fn collection(features: Vec<Value>) -> Value {
    serde_json::json!({"type": "FeatureCollection", "features": features})
}

/// A square hazard polygon of `size` degrees at `(lon, lat)`.
pub fn hazard(id: &str, lon: f64, lat: f64, size: f64) -> Value {
    serde_json::json!({
        "type": "Feature", "id": id,
        "geometry": {"type": "Polygon", "coordinates": [[[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]]},
        "properties": {"kind": "flood", "valid_from": "2021-07-14T12:00:00Z"}
    })
}

/// Path of a command on `PATH`; `None` (test skipped) when missing, a panic under `CI`.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is required under CI (the test command installs it)"
        );
        eprintln!("skipping: {name} not installed (scripts/test.sh installs it)");
    }
    found
}

/// The built `beeld` binary next to the test executable, building it if needed.
pub fn beeld_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join("beeld");
    if !path.is_file() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "beeld-server", "--bin", "beeld"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building beeld failed");
    }
    path
}

/// A WebSocket client of the live protocol that keeps its own copy of the
/// picture, applying snapshots and diffs as a map client would.
#[derive(Debug)]
pub struct WsClient {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Features held, by `(subscription, collection, id)`.
    pub picture: std::collections::BTreeMap<(String, String, String), Value>,
    /// The seq each subscription's state is consistent with.
    pub seqs: std::collections::BTreeMap<String, u64>,
    /// Snapshots received marked `resync`.
    pub resyncs: usize,
    /// Diffs received marked `catch_up`.
    pub catch_ups: usize,
}

impl WsClient {
    /// Connects to `/ws`.
    pub async fn connect(server: &TestServer) -> WsClient {
        let url = format!("{}/ws", server.base.replace("http://", "ws://"));
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        WsClient {
            socket,
            picture: Default::default(),
            seqs: Default::default(),
            resyncs: 0,
            catch_ups: 0,
        }
    }

    /// Sends a JSON message.
    pub async fn send(&mut self, message: Value) {
        use futures_util::SinkExt;
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::Text(
                message.to_string().into(),
            ))
            .await
            .expect("send");
    }

    /// The next frame (text as JSON, close as `{"type":"close",...}`), within `wait`.
    pub async fn next_frame(&mut self, wait: Duration) -> Option<Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let frame = tokio::time::timeout(wait, self.socket.next())
                .await
                .ok()??;
            match frame {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(text.as_str()).expect("json"));
                }
                Ok(Message::Close(frame)) => {
                    let (code, reason) = frame.map_or((0, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    return Some(
                        serde_json::json!({"type": "close", "code": code, "reason": reason}),
                    );
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// The next message of `kind`, applying every snapshot and diff on the way.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let message = self
                .next_frame(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("no '{kind}' message"));
            self.apply(&message);
            if message["type"] == kind {
                return message;
            }
            assert_ne!(
                message["type"], "close",
                "connection closed while waiting for {kind}: {message}"
            );
        }
    }

    /// Applies snapshots and diffs to the local picture.
    pub fn apply(&mut self, message: &Value) {
        let sub = message["sub"].as_str().unwrap_or_default().to_owned();
        match message["type"].as_str() {
            Some("snapshot") => {
                self.resyncs += usize::from(message["resync"] == true);
                self.picture.retain(|(s, _, _), _| *s != sub);
                for (collection, features) in
                    message["collections"].as_object().expect("collections")
                {
                    for feature in features.as_array().expect("features") {
                        let id = feature["id"].as_str().expect("id").to_owned();
                        self.picture
                            .insert((sub.clone(), collection.clone(), id), feature.clone());
                    }
                }
                self.seqs.insert(sub, message["seq"].as_u64().expect("seq"));
            }
            Some("diff") => {
                self.catch_ups += usize::from(message["catch_up"] == true);
                for (collection, change) in message["collections"].as_object().expect("collections")
                {
                    for feature in change["upsert"].as_array().expect("upsert") {
                        let id = feature["id"].as_str().expect("id").to_owned();
                        let key = (sub.clone(), collection.clone(), id);
                        if feature["delta"] == true {
                            let held = self
                                .picture
                                .get_mut(&key)
                                .expect("delta for a held feature");
                            if !feature["geometry"].is_null() {
                                held["geometry"] = feature["geometry"].clone();
                            }
                            for (k, v) in feature["set"].as_object().expect("set") {
                                held["properties"][k] = v.clone();
                            }
                            for k in feature["unset"].as_array().into_iter().flatten() {
                                held["properties"]
                                    .as_object_mut()
                                    .expect("props")
                                    .remove(k.as_str().expect("name"));
                            }
                        } else {
                            self.picture.insert(key, feature.clone());
                        }
                    }
                    for removed in change["remove"].as_array().expect("remove") {
                        let id = removed["id"].as_str().expect("id").to_owned();
                        self.picture.remove(&(sub.clone(), collection.clone(), id));
                    }
                }
                self.seqs.insert(sub, message["seq"].as_u64().expect("seq"));
            }
            _ => {}
        }
    }

    /// `(collection, id) → seq` of what one subscription holds.
    pub fn held(&self, sub: &str) -> std::collections::BTreeMap<(String, String), u64> {
        self.picture
            .iter()
            .filter(|((s, _, _), _)| s == sub)
            .map(|((_, c, id), f)| {
                (
                    (c.clone(), id.clone()),
                    f["properties"]["seq"].as_u64().expect("seq"),
                )
            })
            .collect()
    }

    /// Reads and applies messages until `sub` is at `seq` or later.
    pub async fn catch_up(&mut self, sub: &str, seq: u64) {
        while self.seqs.get(sub).copied().unwrap_or(0) < seq {
            let message = self
                .next_frame(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("{sub} stuck below seq {seq}"));
            assert_ne!(message["type"], "close", "closed: {message}");
            self.apply(&message);
        }
    }

    /// Applies messages until none arrives for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) {
        while let Some(message) = self.next_frame(quiet).await {
            assert_ne!(message["type"], "close", "closed: {message}");
            self.apply(&message);
        }
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
