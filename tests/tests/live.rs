//! The live protocol end to end: real WebSocket (and SSE) clients against the
//! real server, checking snapshots, diffs, viewport moves, coalescing,
//! resume, errors, limits and the core invariant under random load.

// Helpers in a test file panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use beeld_fixtures::Rng;
use beeld_server::live::LiveConfig;
use beeld_tests::{TOKEN_VR24, TestServer, WsClient, collection, hazard, unit};
use reqwest::Method;
use serde_json::{Value, json};

const LIMBURG: [f64; 4] = [5.6, 50.7, 6.2, 51.0];

fn subscribe(id: &str, collections: &[&str], bbox: [f64; 4]) -> Value {
    json!({"type": "subscribe", "id": id, "collections": collections, "bbox": bbox})
}

async fn fast_server() -> TestServer {
    TestServer::start_with(|c| {
        c.live.tick = Duration::from_millis(20);
        c.live.phases = LiveConfig::default_phases(c.live.tick);
    })
    .await
}

fn ids(change: &Value, op: &str) -> Vec<String> {
    change[op].as_array().map_or_else(Vec::new, |items| {
        items
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_owned())
            .collect()
    })
}

#[tokio::test]
async fn snapshot_then_diffs_follow_feed_writes() {
    let server = fast_server().await;
    server
        .post(
            "units",
            TOKEN_VR24,
            &unit("valkenburg", 5.83, 50.865, "available"),
        )
        .await;
    server
        .post(
            "units",
            TOKEN_VR24,
            &unit("utrecht", 5.12, 52.09, "available"),
        )
        .await;
    let mut client = WsClient::connect(&server).await;
    client
        .send(subscribe("s1", &["units", "hazards"], LIMBURG))
        .await;
    let snapshot = client.next_of("snapshot").await;
    assert_eq!(ids(&snapshot["collections"], "units"), ["valkenburg"]);
    assert_eq!(snapshot["collections"]["hazards"], json!([]));
    assert_eq!(snapshot["resync"], false);

    server
        .post(
            "units",
            TOKEN_VR24,
            &unit("maastricht", 5.69, 50.85, "en_route"),
        )
        .await;
    let diff = client.next_of("diff").await;
    assert_eq!(ids(&diff["collections"]["units"], "upsert"), ["maastricht"]);
    assert!(diff["seq"].as_u64() > diff["from_seq"].as_u64());

    // Leaves the viewport.
    server
        .post(
            "units",
            TOKEN_VR24,
            &unit("maastricht", 4.9, 52.37, "en_route"),
        )
        .await;
    let diff = client.next_of("diff").await;
    assert_eq!(
        diff["collections"]["units"]["remove"],
        json!([{"id": "maastricht", "reason": "left_viewport"}])
    );

    // Deleted.
    server
        .send(
            Method::DELETE,
            "/collections/units/items/valkenburg",
            TOKEN_VR24,
            String::new(),
        )
        .await;
    let diff = client.next_of("diff").await;
    assert_eq!(
        diff["collections"]["units"]["remove"],
        json!([{"id": "valkenburg", "reason": "deleted"}])
    );

    // A change outside the viewport sends nothing.
    server
        .post(
            "units",
            TOKEN_VR24,
            &unit("utrecht", 5.13, 52.09, "available"),
        )
        .await;
    assert!(
        client
            .next_frame(Duration::from_millis(300))
            .await
            .is_none()
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn viewport_move_sends_only_what_enters_and_leaves() {
    let server = fast_server().await;
    server
        .post(
            "units",
            TOKEN_VR24,
            &collection(vec![
                unit("a", 5.1, 51.1, "available"),
                unit("b", 5.35, 51.1, "available"),
                unit("c", 5.6, 51.1, "available"),
            ]),
        )
        .await;
    let mut client = WsClient::connect(&server).await;
    client
        .send(subscribe("s1", &["units"], [5.0, 51.0, 5.4, 51.2]))
        .await;
    let snapshot = client.next_of("snapshot").await;
    assert_eq!(ids(&snapshot["collections"], "units"), ["a", "b"]);
    client
        .send(json!({"type": "viewport", "id": "s1", "bbox": [5.3, 51.0, 5.7, 51.2]}))
        .await;
    let diff = client.next_of("diff").await;
    assert_eq!(
        ids(&diff["collections"]["units"], "upsert"),
        ["c"],
        "only c enters; b stays and is not resent"
    );
    assert_eq!(
        diff["collections"]["units"]["remove"],
        json!([{"id": "a", "reason": "left_viewport"}])
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn changes_within_a_tick_are_coalesced_to_the_latest_state() {
    let server = TestServer::start_with(|c| c.live.tick = Duration::from_millis(700)).await;
    let mut client = WsClient::connect(&server).await;
    client.send(subscribe("s1", &["units"], LIMBURG)).await;
    client.next_of("snapshot").await;
    for i in 0..10 {
        server
            .post(
                "units",
                TOKEN_VR24,
                &unit("mover", 5.7 + f64::from(i) * 0.01, 50.8, "en_route"),
            )
            .await;
    }
    let diff = client.next_of("diff").await;
    let upserts = diff["collections"]["units"]["upsert"].as_array().unwrap();
    assert_eq!(upserts.len(), 1, "{diff}");
    assert_eq!(upserts[0]["geometry"]["coordinates"][0], json!(5.79));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn resume_with_since_gets_exactly_the_missed_changes() {
    let server = fast_server().await;
    server
        .post(
            "units",
            TOKEN_VR24,
            &collection(vec![
                unit("stays", 5.7, 50.8, "available"),
                unit("goes", 5.8, 50.8, "available"),
            ]),
        )
        .await;
    let mut client = WsClient::connect(&server).await;
    client.send(subscribe("s1", &["units"], LIMBURG)).await;
    client.next_of("snapshot").await;
    let since = client.seqs["s1"];
    let before = client.held("s1");
    client.close().await;

    // Missed while away: one new, one deleted, one changed outside the viewport.
    server
        .post("units", TOKEN_VR24, &unit("new", 5.9, 50.9, "available"))
        .await;
    server
        .send(
            Method::DELETE,
            "/collections/units/items/goes",
            TOKEN_VR24,
            String::new(),
        )
        .await;
    server
        .post(
            "units",
            TOKEN_VR24,
            &unit("elsewhere", 4.9, 52.3, "available"),
        )
        .await;

    let mut client = WsClient::connect(&server).await;
    for ((c, id), seq) in before {
        client.picture.insert(
            ("s1".into(), c, id.clone()),
            json!({"id": id, "properties": {"seq": seq}}),
        );
    }
    client.send(json!({"type": "subscribe", "id": "s1", "collections": ["units"], "bbox": LIMBURG, "since": since})).await;
    let diff = client.next_of("diff").await;
    assert_eq!(diff["from_seq"], since);
    assert_eq!(ids(&diff["collections"]["units"], "upsert"), ["new"]);
    assert_eq!(
        diff["collections"]["units"]["remove"],
        json!([{"id": "goes", "reason": "deleted"}])
    );

    let mut fresh = WsClient::connect(&server).await;
    fresh.send(subscribe("s1", &["units"], LIMBURG)).await;
    fresh.next_of("snapshot").await;
    assert_eq!(client.held("s1"), fresh.held("s1"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn resume_beyond_the_change_log_gets_a_resync_snapshot() {
    let server = TestServer::start_with(|c| {
        c.live.tick = Duration::from_millis(20);
        c.change_log_capacity = 5;
    })
    .await;
    let mut client = WsClient::connect(&server).await;
    for i in 0..10 {
        server
            .post(
                "units",
                TOKEN_VR24,
                &unit(&format!("u{i}"), 5.7, 50.8, "available"),
            )
            .await;
    }
    client.send(json!({"type": "subscribe", "id": "s1", "collections": ["units"], "bbox": LIMBURG, "since": 3})).await;
    let snapshot = client.next_of("snapshot").await;
    assert_eq!(snapshot["resync"], true);
    assert_eq!(
        snapshot["collections"]["units"].as_array().unwrap().len(),
        10
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_message_gets_an_error_and_the_connection_stays_open() {
    let server = fast_server().await;
    let mut client = WsClient::connect(&server).await;
    for (bad, code) in [
        (json!({"type": "dance"}), "bad_message"),
        (
            json!({"type": "subscribe", "id": "s", "collections": ["volcanoes"], "bbox": LIMBURG}),
            "unknown_collection",
        ),
        (
            json!({"type": "subscribe", "id": "s", "collections": ["units"], "bbox": [155000, 463000, 156000, 464000]}),
            "bad_bbox",
        ),
        (
            json!({"type": "viewport", "id": "nope", "bbox": LIMBURG}),
            "unknown_subscription",
        ),
    ] {
        client.send(bad).await;
        let error = client.next_of("error").await;
        assert_eq!(error["code"], code, "{error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    client.send(json!({"type": "ping", "id": 7})).await;
    let pong = client.next_of("pong").await;
    assert_eq!(pong["id"], 7);
    assert!(pong["seq"].as_u64().unwrap() > 0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_messages_close_and_floods_are_rate_limited() {
    let server = TestServer::start_with(|c| {
        c.live.max_message_bytes = 1024;
        c.live.messages_per_second = 5;
    })
    .await;
    let mut client = WsClient::connect(&server).await;
    for _ in 0..30 {
        client.send(json!({"type": "ping"})).await;
    }
    let mut limited = 0;
    while let Some(message) = client.next_frame(Duration::from_millis(300)).await {
        limited += usize::from(message["code"] == "rate_limited");
    }
    assert!(
        limited >= 15,
        "expected most of a 30-message burst over 5/s (burst 10) rate-limited, got {limited}"
    );

    let mut client = WsClient::connect(&server).await;
    client
        .send(json!({"type": "ping", "id": "x".repeat(5000)}))
        .await;
    let close = client.next_frame(Duration::from_secs(5)).await.unwrap();
    assert_eq!(close["type"], "close");
    assert_eq!(close["code"], 1009);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn field_deltas_and_precision_send_less() {
    let server = fast_server().await;
    server
        .post(
            "units",
            TOKEN_VR24,
            &unit("u1", 5.712_345_678, 50.8, "available"),
        )
        .await;
    let mut client = WsClient::connect(&server).await;
    client.send(json!({"type": "subscribe", "id": "lean", "collections": ["units"], "bbox": LIMBURG, "precision": 4, "deltas": true})).await;
    let snapshot = client.next_of("snapshot").await;
    assert_eq!(
        snapshot["collections"]["units"][0]["geometry"]["coordinates"],
        json!([5.7123, 50.8])
    );
    let mut moved = unit("u1", 5.712_345_678, 50.8, "on_scene");
    moved["properties"]["note"] = json!("dijk Geul");
    server.post("units", TOKEN_VR24, &moved).await;
    let diff = client.next_of("diff").await;
    let delta = &diff["collections"]["units"]["upsert"][0];
    assert_eq!(delta["delta"], true, "{delta}");
    assert!(
        delta["geometry"].is_null(),
        "position did not change: {delta}"
    );
    assert_eq!(delta["set"]["status"], "on_scene");
    assert_eq!(delta["set"]["note"], "dijk Geul");
    assert!(
        delta["set"].get("type").is_none(),
        "unchanged fields are not resent"
    );
    let held = &client.picture[&("lean".to_owned(), "units".to_owned(), "u1".to_owned())];
    assert_eq!(held["properties"]["status"], "on_scene");
    assert_eq!(held["properties"]["type"], "fire_engine");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn heartbeats_carry_the_seq_and_shutdown_closes_with_going_away() {
    let server = TestServer::start_with(|c| c.live.heartbeat = Duration::from_millis(300)).await;
    let mut client = WsClient::connect(&server).await;
    let heartbeat = client.next_of("heartbeat").await;
    assert!(
        heartbeat["seq"].as_u64().unwrap() >= 367,
        "boundaries are loaded: {heartbeat}"
    );
    assert!(heartbeat["at"].as_str().unwrap().ends_with('Z'));
    let stopping = tokio::spawn(server.stop());
    let mut close = None;
    while let Some(frame) = client.next_frame(Duration::from_secs(5)).await {
        if frame["type"] == "close" {
            close = Some(frame);
            break;
        }
    }
    let close = close.expect("a close frame");
    assert_eq!(close["code"], 1001);
    assert_eq!(close["reason"], "server shutting down");
    stopping.await.unwrap().unwrap();
}

/// A live client with the parameters of its one subscription `s`.
struct Tracked {
    client: WsClient,
    bbox: [f64; 4],
    filters: Value,
    /// Encoding options (`precision`, `deltas`).
    options: Value,
}

impl Tracked {
    fn subscription(&self, since: Option<u64>) -> Value {
        let mut message = json!({"type": "subscribe", "id": "s", "collections": ["units", "hazards"], "bbox": self.bbox, "filters": self.filters});
        for (k, v) in self.options.as_object().expect("options") {
            message[k] = v.clone();
        }
        if let Some(since) = since {
            message["since"] = json!(since);
        }
        message
    }

    /// A new client with the same subscription, past its snapshot: what
    /// this one should hold.
    async fn fresh(&self, server: &TestServer) -> Tracked {
        let mut fresh = Tracked {
            client: WsClient::connect(server).await,
            bbox: self.bbox,
            filters: self.filters.clone(),
            options: self.options.clone(),
        };
        fresh.client.send(fresh.subscription(None)).await;
        fresh.client.next_of("snapshot").await;
        fresh
    }

    /// Every feature the client holds for `s`, whole.
    fn picture(&self) -> Vec<Value> {
        self.client
            .picture
            .iter()
            .filter(|((sub, _, _), _)| sub == "s")
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// The core invariant end to end: random writes, moves, deletes, viewport
/// changes, disconnects and resumes; afterwards every client holds exactly
/// what a fresh snapshot of its viewport holds, feature for feature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_load_keeps_every_client_exact() {
    random_load(1, 42).await;
}

/// The same with ticks staggered over four groups of connections, each
/// with its own chain of batches and its own delta bases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_load_keeps_every_client_exact_with_staggered_ticks() {
    random_load(4, 43).await;
}

async fn random_load(phases: usize, seed: u64) {
    let server = TestServer::start_with(|c| {
        c.live.tick = Duration::from_millis(20);
        c.live.phases = phases;
    })
    .await;
    let mut rng = Rng::new(seed);
    let random_bbox = |rng: &mut Rng| {
        let (x, y) = (rng.range(5.5, 6.0), rng.range(50.7, 51.0));
        let size = rng.range(0.05, 0.4);
        [x, y, x + size, y + size]
    };
    let mut clients = Vec::new();
    for i in 0..8 {
        let bbox = random_bbox(&mut rng);
        let filters = if i == 3 {
            json!({"status": "available"})
        } else {
            json!({})
        };
        let options = match i {
            4 | 5 => json!({"deltas": true}),
            6 => json!({"deltas": true, "precision": 6}),
            7 => json!({"precision": 5}),
            _ => json!({}),
        };
        let mut tracked = Tracked {
            client: WsClient::connect(&server).await,
            bbox,
            filters,
            options,
        };
        tracked.client.send(tracked.subscription(None)).await;
        tracked.client.next_of("snapshot").await;
        clients.push(tracked);
    }
    for round in 0..40 {
        let mut batch = Vec::new();
        for _ in 0..20 {
            let i = rng.below(60);
            let status = ["available", "en_route", "on_scene"][rng.below(3)];
            batch.push(unit(
                &format!("u{i}"),
                rng.range(5.5, 6.3),
                rng.range(50.7, 51.3),
                status,
            ));
        }
        server.post("units", TOKEN_VR24, &collection(batch)).await;
        if round % 3 == 0 {
            let h = rng.below(5);
            server
                .post(
                    "hazards",
                    TOKEN_VR24,
                    &hazard(
                        &format!("h{h}"),
                        rng.range(5.5, 6.0),
                        rng.range(50.7, 51.0),
                        rng.range(0.01, 0.2),
                    ),
                )
                .await;
        }
        if round % 4 == 1 {
            let victim = format!("/collections/units/items/u{}", rng.below(60));
            server
                .send(Method::DELETE, &victim, TOKEN_VR24, String::new())
                .await;
        }
        let who = rng.below(clients.len());
        match rng.below(4) {
            0 => {
                let bbox = random_bbox(&mut rng);
                clients[who].bbox = bbox;
                clients[who]
                    .client
                    .send(json!({"type": "viewport", "id": "s", "bbox": bbox}))
                    .await;
            }
            1 => {
                // Disconnect, miss some changes, reconnect and resume with the seq held.
                let tracked = &mut clients[who];
                tracked.client.drain(Duration::from_millis(150)).await;
                let (picture, seq) = (tracked.client.picture.clone(), tracked.client.seqs["s"]);
                let mut client = WsClient::connect(&server).await;
                std::mem::swap(&mut client, &mut tracked.client);
                client.close().await;
                server
                    .post(
                        "units",
                        TOKEN_VR24,
                        &unit(
                            "while-away",
                            rng.range(5.5, 6.2),
                            rng.range(50.7, 51.0),
                            "available",
                        ),
                    )
                    .await;
                tracked.client.picture = picture;
                let resume = tracked.subscription(Some(seq));
                tracked.client.send(resume).await;
            }
            _ => {}
        }
        for tracked in &mut clients {
            if let Some(message) = tracked.client.next_frame(Duration::from_millis(5)).await {
                tracked.client.apply(&message);
            }
        }
    }
    for (i, tracked) in clients.iter_mut().enumerate() {
        tracked.client.drain(Duration::from_millis(400)).await;
        let fresh = tracked.fresh(&server).await;
        assert_eq!(
            tracked.client.held("s"),
            fresh.client.held("s"),
            "client {i} (filters {}, options {})",
            tracked.filters,
            tracked.options
        );
        assert!(
            tracked.picture() == fresh.picture(),
            "client {i} (options {}): features differ from a fresh snapshot",
            tracked.options
        );
    }
    server.stop().await.unwrap();
}

/// Staggered ticks with writes faster than a step: the groups' batches
/// then start from different versions of the same feature, and each
/// group's clients must be diffed from the version they hold. Units jump
/// in and out of the viewport, so a group diffed from another group's
/// version would miss a remove or send a delta against the wrong base.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staggered_groups_diff_from_their_own_versions() {
    let server = TestServer::start_with(|c| {
        c.live.tick = Duration::from_millis(40);
        c.live.phases = 4;
    })
    .await;
    let bbox = [5.6, 50.7, 5.9, 50.9];
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut tracked = Tracked {
            client: WsClient::connect(&server).await,
            bbox,
            filters: json!({}),
            options: if i % 2 == 0 {
                json!({})
            } else {
                json!({"deltas": true})
            },
        };
        tracked.client.send(tracked.subscription(None)).await;
        tracked.client.next_of("snapshot").await;
        clients.push(tracked);
    }
    let mut rng = Rng::new(11);
    for round in 0..150 {
        let batch = (0..4)
            .map(|_| {
                let i = rng.below(12);
                // Half inside the viewport, half just outside it.
                let (x, y) = if rng.below(2) == 0 {
                    (rng.range(5.6, 5.9), rng.range(50.7, 50.9))
                } else {
                    (rng.range(5.95, 6.2), rng.range(50.7, 50.9))
                };
                let status = ["available", "en_route", "on_scene"][rng.below(3)];
                unit(&format!("j{i}"), x, y, status)
            })
            .collect();
        server.post("units", TOKEN_VR24, &collection(batch)).await;
        if round % 10 == 0 {
            for tracked in &mut clients {
                while let Some(message) = tracked.client.next_frame(Duration::from_millis(1)).await
                {
                    tracked.client.apply(&message);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for (i, tracked) in clients.iter_mut().enumerate() {
        tracked.client.drain(Duration::from_millis(300)).await;
        let fresh = tracked.fresh(&server).await;
        assert!(
            tracked.picture() == fresh.picture(),
            "client {i} ({}): {:?} held, {:?} in a fresh snapshot",
            tracked.options,
            tracked.client.held("s"),
            fresh.client.held("s"),
        );
    }
    server.stop().await.unwrap();
}

/// Hundreds of changes per tick inside a viewport reach a client as runs
/// of the tick's shared text, spliced into its messages unchanged; a
/// client assembling them, whole or as field deltas at a precision, holds
/// exactly what a fresh snapshot gives, feature for feature.
#[tokio::test]
async fn large_ticks_sent_as_shared_runs_leave_clients_exact() {
    let server = fast_server().await;
    let bbox = [5.5, 50.6, 6.3, 51.1];
    let mut clients = Vec::new();
    for options in [json!({}), json!({"precision": 6, "deltas": true})] {
        let mut sub = subscribe("s", &["units"], bbox);
        for (k, v) in options.as_object().expect("options") {
            sub[k] = v.clone();
        }
        let mut client = WsClient::connect(&server).await;
        client.send(sub.clone()).await;
        client.next_of("snapshot").await;
        clients.push((client, sub));
    }
    let mut rng = Rng::new(7);
    let mut at: Vec<(f64, f64)> = (0..600)
        .map(|_| (rng.range(5.6, 6.2), rng.range(50.7, 51.0)))
        .collect();
    for round in 0..4 {
        let batch = at
            .iter_mut()
            .enumerate()
            .map(|(i, (x, y))| {
                *x += rng.range(-0.001, 0.001);
                *y += rng.range(-0.001, 0.001);
                let status = if round % 2 == 1 && i % 10 == 0 {
                    "en_route"
                } else {
                    "available"
                };
                unit(&format!("big{i}"), *x, *y, status)
            })
            .collect();
        server.post("units", TOKEN_VR24, &collection(batch)).await;
        // More than a tick apart, so that later rounds are deltas.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let picture = |client: &WsClient| -> Vec<Value> {
        client
            .picture
            .iter()
            .filter(|((sub, _, _), _)| sub == "s")
            .map(|(_, f)| f.clone())
            .collect()
    };
    for (client, sub) in &mut clients {
        client.drain(Duration::from_millis(400)).await;
        let mut fresh = WsClient::connect(&server).await;
        fresh.send(sub.clone()).await;
        fresh.next_of("snapshot").await;
        let (held, want) = (picture(client), picture(&fresh));
        assert_eq!(want.len(), 600);
        assert!(
            held == want,
            "{sub}: the assembled picture differs from a fresh snapshot"
        );
    }
    server.stop().await.unwrap();
}

/// An SSE stream gets heartbeats, and its session ends when the client goes
/// (both wake the session through gates, `live::gate`).
#[tokio::test]
async fn server_sent_events_heartbeat_and_end_with_the_client() {
    let server = TestServer::start_with(|c| c.live.heartbeat = Duration::from_millis(200)).await;
    let url = server.url("/events?collections=units&bbox=5.6,50.7,6.2,51.0");
    let mut response = server.http.get(&url).send().await.unwrap();
    let mut text = String::new();
    while text.matches("event: heartbeat").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("a heartbeat within 5 s")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let connections = |body: &Value| body["live"]["connections"].as_u64().unwrap();
    assert_eq!(connections(&server.get_json("/healthz").await.1), 1);
    drop(response);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if connections(&server.get_json("/healthz").await.1) == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn server_sent_events_stream_snapshot_diffs_and_resume() {
    let server = fast_server().await;
    server
        .post("units", TOKEN_VR24, &unit("sse-1", 5.7, 50.8, "available"))
        .await;
    let url = server.url("/events?collections=units&bbox=5.6,50.7,6.2,51.0");
    let mut response = server.http.get(&url).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while !text.contains("event: snapshot") {
        text.push_str(&String::from_utf8_lossy(
            &response.chunk().await.unwrap().unwrap(),
        ));
    }
    server
        .post("units", TOKEN_VR24, &unit("sse-2", 5.8, 50.8, "available"))
        .await;
    while !text.contains("event: diff") {
        text.push_str(&String::from_utf8_lossy(
            &response.chunk().await.unwrap().unwrap(),
        ));
    }
    while !text.ends_with("\n\n") {
        text.push_str(&String::from_utf8_lossy(
            &response.chunk().await.unwrap().unwrap(),
        ));
    }
    assert!(text.contains("\"sse-2\""));
    let last_id: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .unwrap()
        .parse()
        .unwrap();
    drop(response);

    server
        .post("units", TOKEN_VR24, &unit("sse-3", 5.9, 50.8, "available"))
        .await;
    let mut response = server
        .http
        .get(&url)
        .header("Last-Event-ID", last_id.to_string())
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("event: ") || !text.ends_with("\n\n") {
        text.push_str(&String::from_utf8_lossy(
            &response.chunk().await.unwrap().unwrap(),
        ));
    }
    assert!(
        text.starts_with("event: diff"),
        "resume gives a diff, not a snapshot: {text}"
    );
    assert!(
        text.contains("\"sse-3\"") && !text.contains("\"sse-1\""),
        "{text}"
    );
    let bad = server
        .http
        .get(server.url("/events?bbox=1,2,3,4"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Relation events over SSE: a resume from another run is a resync.
    let mut response = server
        .http
        .get(server.url("/events?collections=units&bbox=5.6,50.7,6.2,51.0&events=true&events_since=3&events_run=0123456789abcdef"))
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("event: events") || !text.ends_with("\n\n") {
        text.push_str(&String::from_utf8_lossy(
            &response.chunk().await.unwrap().unwrap(),
        ));
    }
    let events = text
        .split("event: events")
        .nth(1)
        .and_then(|rest| rest.lines().find_map(|l| l.strip_prefix("data: ")))
        .unwrap();
    let events: Value = serde_json::from_str(events).unwrap();
    assert_eq!(events["resync"], true, "{events}");
    assert_ne!(events["run"], "0123456789abcdef");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_catches_up_without_blocking_others() {
    let server = TestServer::start_with(|c| {
        c.live.tick = Duration::from_millis(20);
        c.live.phases = 1;
        c.live.queue_ticks = 2;
        c.live.max_resyncs_per_minute = 1000;
        // This test is about catching up; the disconnect has its own test.
        c.live.write_timeout = Duration::from_secs(120);
    })
    .await;
    let nl = [3.3, 50.7, 7.3, 53.6];
    let mut slow = WsClient::connect(&server).await;
    slow.send(subscribe("s", &["units"], nl)).await;
    slow.next_of("snapshot").await;
    let mut fast = WsClient::connect(&server).await;
    fast.send(subscribe("s", &["units"], nl)).await;
    fast.next_of("snapshot").await;

    // ~24 MB of updates: far more than the loopback socket buffers hold, so
    // the slow client's writes block while it does not read.
    let padding = "x".repeat(1000);
    let mut rng = Rng::new(7);
    let mut last_seq = 0;
    for round in 0..12 {
        let batch: Vec<Value> = (0..2000)
            .map(|i| {
                let mut u = unit(
                    &format!("u{i}"),
                    rng.range(3.5, 7.0),
                    rng.range(50.8, 53.5),
                    "available",
                );
                u["properties"]["padding"] = json!(format!("{round}{padding}"));
                u
            })
            .collect();
        let (status, _, body) = server.post("units", TOKEN_VR24, &collection(batch)).await;
        assert_eq!(status, 200);
        last_seq = body["seq"].as_u64().unwrap();
        // The fast client keeps up while the slow one is stuck.
        fast.catch_up("s", last_seq).await;
    }
    let started = std::time::Instant::now();
    slow.catch_up("s", last_seq).await;
    slow.drain(Duration::from_millis(300)).await;
    let mut fresh = WsClient::connect(&server).await;
    fresh.send(subscribe("s", &["units"], nl)).await;
    fresh.next_of("snapshot").await;
    assert_eq!(slow.held("s"), fresh.held("s"));
    assert_eq!(fast.held("s"), fresh.held("s"));
    assert!(
        slow.catch_ups >= 1,
        "the slow client fell behind and got a catch-up diff"
    );
    assert_eq!(slow.resyncs, 0, "catching up needs no snapshot");
    assert_eq!(fast.catch_ups, 0, "the fast client never fell behind");
    assert!(
        server
            .http
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    );
    let dropped = started.elapsed();
    assert!(
        dropped < Duration::from_secs(30),
        "slow client took {dropped:?} to converge"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn compressed_connections_get_deflated_binary_frames() {
    use futures_util::{SinkExt, StreamExt};
    use std::io::Read as _;
    use tokio_tungstenite::tungstenite::Message;

    let server = fast_server().await;
    server
        .post("units", TOKEN_VR24, &unit("z1", 5.7, 50.8, "available"))
        .await;
    let url = format!(
        "{}/ws?compress=deflate-raw",
        server.base.replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
        .send(Message::Text(
            subscribe("s1", &["units"], LIMBURG).to_string().into(),
        ))
        .await
        .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Binary(bytes) = frame else {
        panic!("expected a binary frame, got {frame:?}")
    };
    let mut text = String::new();
    flate2::read::DeflateDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .unwrap();
    let snapshot: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(ids(&snapshot["collections"], "units"), ["z1"]);
    let bad = format!(
        "{}/ws?compress=brotli",
        server.base.replace("http://", "ws://")
    );
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("expected an HTTP 400 refusal, got {other:?}"),
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_with_a_reason() {
    let server = TestServer::start_with(|c| {
        c.live.tick = Duration::from_millis(20);
        c.live.write_timeout = Duration::from_secs(1);
    })
    .await;
    let nl = [3.3, 50.7, 7.3, 53.6];
    let mut stuck = WsClient::connect(&server).await;
    stuck.send(subscribe("s", &["units"], nl)).await;
    stuck.next_of("snapshot").await;
    let padding = "x".repeat(2000);
    let mut rng = Rng::new(9);
    let started = std::time::Instant::now();
    // Keep writing until the server gives up on the client (or 60 s pass).
    while started.elapsed() < Duration::from_secs(60) && server.get_json("/healthz").await.0 == 200
    {
        let batch: Vec<Value> = (0..2000)
            .map(|i| {
                let mut u = unit(
                    &format!("u{i}"),
                    rng.range(3.5, 7.0),
                    rng.range(50.8, 53.5),
                    "available",
                );
                u["properties"]["padding"] = json!(padding);
                u
            })
            .collect();
        server.post("units", TOKEN_VR24, &collection(batch)).await;
        if server.get_json("/healthz").await.1["features"]["units"].as_u64() == Some(2000)
            && started.elapsed() > Duration::from_secs(3)
        {
            break;
        }
    }
    // The server let go of the connection instead of buffering for it.
    let mut connections = u64::MAX;
    for _ in 0..100 {
        connections = server.get_json("/healthz").await.1["live"]["connections"]
            .as_u64()
            .unwrap();
        if connections == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(connections, 0, "the stuck client was disconnected");
    // The client reads what was queued; a close frame, if it got through the
    // full pipe in time, says why.
    while let Some(frame) = stuck.next_frame(Duration::from_secs(5)).await {
        if frame["type"] == "close" {
            assert_eq!(frame["code"], 1008, "{frame}");
            assert!(
                frame["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("client too slow"),
                "{frame}"
            );
            break;
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn enter_and_exit_events_stream_to_subscribers_and_resume() {
    let server = fast_server().await;
    server
        .post(
            "units",
            TOKEN_VR24,
            &unit("boat-1", 5.83, 50.86, "available"),
        )
        .await;
    let mut client = WsClient::connect(&server).await;
    client
        .send(json!({"type": "subscribe", "id": "s1", "collections": ["units", "hazards"], "bbox": LIMBURG, "events": true}))
        .await;
    client.next_of("snapshot").await;
    let start = client.next_of("events").await;
    assert_eq!(
        start["events"],
        json!([]),
        "the stream starts empty: {start}"
    );
    let since = start["event"].as_u64().unwrap();

    // The Geul floods over the unit: one enter.
    server
        .post(
            "hazards",
            TOKEN_VR24,
            &hazard("flood-geul", 5.8, 50.84, 0.06),
        )
        .await;
    let events = client.next_of("events").await;
    let enter = &events["events"][0];
    assert_eq!(
        (
            enter["type"].as_str(),
            enter["unit"].as_str(),
            enter["hazard"].as_str()
        ),
        (Some("enter"), Some("boat-1"), Some("flood-geul"))
    );
    assert!(events["event"].as_u64().unwrap() > since);

    // It drives out: one exit.
    server
        .post(
            "units",
            TOKEN_VR24,
            &unit("boat-1", 5.95, 50.95, "en_route"),
        )
        .await;
    let events = client.next_of("events").await;
    assert_eq!(events["events"][0]["type"], "exit");

    // A new connection resuming from the start gets both, in order.
    let mut resumed = WsClient::connect(&server).await;
    resumed
        .send(json!({"type": "subscribe", "id": "s1", "collections": ["units"], "bbox": LIMBURG, "events": true, "events_since": since}))
        .await;
    resumed.next_of("snapshot").await;
    let missed = resumed.next_of("events").await;
    let kinds: Vec<&str> = missed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["enter", "exit"]);
    assert_eq!(missed["resync"], false);

    // A subscription elsewhere sees none of it.
    let mut far = WsClient::connect(&server).await;
    far.send(json!({"type": "subscribe", "id": "s1", "collections": ["units"], "bbox": [4.8, 52.3, 5.0, 52.4], "events": true, "events_since": since})).await;
    far.next_of("snapshot").await;
    assert_eq!(far.next_of("events").await["events"], json!([]));
    server.stop().await.unwrap();
}

fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    beeld_layers::Timestamp(i64::try_from(now.as_millis()).unwrap()).to_rfc3339()
}

#[tokio::test]
async fn replay_streams_the_recorded_picture_in_order() {
    let server = fast_server().await;
    let from = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(50)).await;
    server
        .post("units", TOKEN_VR24, &unit("r-1", 5.7, 50.8, "en_route"))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    server
        .post("units", TOKEN_VR24, &unit("r-1", 5.75, 50.82, "on_scene"))
        .await;
    server
        .post(
            "units",
            TOKEN_VR24,
            &unit("elsewhere", 4.9, 52.37, "available"),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    server
        .send(
            Method::DELETE,
            "/collections/units/items/r-1",
            TOKEN_VR24,
            String::new(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let to = now_rfc3339();

    let mut client = WsClient::connect(&server).await;
    client.send(json!({"type": "replay", "id": "r", "collections": ["units"], "bbox": LIMBURG, "from": from, "to": to, "speed": 4.0})).await;
    let snapshot = client.next_of("snapshot").await;
    assert_eq!(snapshot["replay"], true);
    assert_eq!(
        snapshot["collections"]["units"],
        json!([]),
        "nothing yet at the start"
    );
    let mut seen = Vec::new();
    loop {
        let message = client
            .next_frame(Duration::from_secs(10))
            .await
            .expect("replay messages");
        client.apply(&message);
        match message["type"].as_str() {
            Some("diff") => {
                assert_eq!(message["replay"], true);
                let units = &message["collections"]["units"];
                for f in units["upsert"].as_array().unwrap() {
                    seen.push(format!(
                        "{} {}",
                        f["id"].as_str().unwrap(),
                        f["properties"]["status"].as_str().unwrap()
                    ));
                }
                for r in units["remove"].as_array().unwrap() {
                    seen.push(format!(
                        "{} {}",
                        r["id"].as_str().unwrap(),
                        r["reason"].as_str().unwrap()
                    ));
                }
            }
            Some("replay_end") => break,
            _ => {}
        }
    }
    assert_eq!(
        seen,
        ["r-1 en_route", "r-1 on_scene", "r-1 deleted"],
        "in recorded order, only the viewport"
    );

    // Steering: a slow replay can be stopped.
    client.send(json!({"type": "replay", "id": "slow", "collections": ["units"], "bbox": LIMBURG, "from": from, "to": to, "speed": 0.01})).await;
    client.next_of("snapshot").await;
    client
        .send(json!({"type": "replay_control", "id": "slow", "action": "stop"}))
        .await;
    let end = client.next_of("replay_end").await;
    assert_eq!(end["sub"], "slow");
    client
        .send(json!({"type": "replay_control", "id": "nope", "action": "pause"}))
        .await;
    assert_eq!(client.next_of("error").await["code"], "unknown_replay");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn h3_aggregates_stream_with_the_viewport() {
    let server = fast_server().await;
    server
        .post(
            "units",
            TOKEN_VR24,
            &collection(vec![
                unit("a1", 5.70, 50.85, "available"),
                unit("a2", 5.701, 50.851, "available"),
            ]),
        )
        .await;
    let mut client = WsClient::connect(&server).await;
    client.send(json!({"type": "subscribe", "id": "s1", "collections": ["units"], "bbox": LIMBURG, "aggregates": 6})).await;
    client.next_of("snapshot").await;
    let all = client.next_of("aggregates").await;
    assert_eq!(all["reset"], true);
    assert_eq!(all["resolution"], 6);
    let cells = all["cells"].as_array().unwrap();
    assert_eq!(
        cells.len(),
        1,
        "both units share one resolution-6 cell: {all}"
    );
    let total = |counts: &Value| {
        counts
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["count"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(total(&cells[0]["counts"]), 2);
    let cell = cells[0]["cell"].clone();

    // A third unit in the same cell: only that cell is sent, with the new count.
    server
        .post("units", TOKEN_VR24, &unit("a3", 5.702, 50.852, "en_route"))
        .await;
    let changed = client.next_of("aggregates").await;
    assert_eq!(changed["reset"], false);
    assert_eq!(changed["cells"].as_array().unwrap().len(), 1);
    assert_eq!(changed["cells"][0]["cell"], cell);
    assert_eq!(total(&changed["cells"][0]["counts"]), 3);

    client.send(json!({"type": "subscribe", "id": "bad", "collections": ["units"], "bbox": LIMBURG, "aggregates": 12})).await;
    assert_eq!(client.next_of("error").await["code"], "bad_subscription");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_since_from_another_history_gets_a_resync_not_a_wrong_diff() {
    // Server A: the client holds a picture at seq `since` of epoch `a`.
    let dir_a = beeld_tests::scratch_dir("epoch-a");
    let server = TestServer::start_in(&dir_a).await;
    server
        .post("units", TOKEN_VR24, &unit("a1", 5.7, 50.85, "available"))
        .await;
    let mut client = WsClient::connect(&server).await;
    client.send(subscribe("s1", &["units"], LIMBURG)).await;
    let snapshot = client.next_of("snapshot").await;
    let epoch_a = snapshot["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch_a.len(), 16, "{snapshot}");
    let since = snapshot["seq"].as_u64().unwrap();
    client.close().await;
    server.stop().await.unwrap();

    // The same data directory after a restart keeps its epoch: resumable.
    let server = TestServer::start_in(&dir_a).await;
    let mut client = WsClient::connect(&server).await;
    client.send(json!({"type": "subscribe", "id": "s1", "collections": ["units"], "bbox": LIMBURG, "since": since, "epoch": epoch_a})).await;
    let resumed = client.next_frame(Duration::from_secs(5)).await.unwrap();
    assert_eq!(resumed["type"], "diff", "{resumed}");
    client.close().await;
    server.stop().await.unwrap();

    // Server B: a fresh data directory whose seqs passed `since` again.
    let dir_b = beeld_tests::scratch_dir("epoch-b");
    let server = TestServer::start_with(move |c| {
        c.data_dir = dir_b;
        c.live.heartbeat = Duration::from_millis(300);
    })
    .await;
    let units: Vec<Value> = (0..40)
        .map(|i| unit(&format!("b{i}"), 5.7, 50.85, "available"))
        .collect();
    server.post("units", TOKEN_VR24, &collection(units)).await;
    let (_, health) = server.get_json("/healthz").await;
    let mut client = WsClient::connect(&server).await;
    client.send(json!({"type": "subscribe", "id": "s1", "collections": ["units"], "bbox": LIMBURG, "since": since, "epoch": epoch_a})).await;
    let answer = client.next_frame(Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer["type"], "snapshot", "{answer} (health {health})");
    assert_eq!(answer["resync"], true);
    assert_ne!(answer["epoch"], epoch_a.as_str());
    assert_eq!(answer["epoch"], health["epoch"], "/healthz names it too");
    assert_eq!(answer["collections"]["units"].as_array().unwrap().len(), 40);
    // Heartbeats name the epoch too, so an idle client can notice.
    let heartbeat = client.next_of("heartbeat").await;
    assert_eq!(heartbeat["epoch"], answer["epoch"]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_plain_request_to_ws_gets_a_problem_naming_the_alternatives() {
    let server = TestServer::start().await;
    let r = server.http.get(server.url("/ws")).send().await.unwrap();
    assert_eq!(r.status(), 426);
    assert_eq!(r.headers()["upgrade"], "websocket");
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "RFC 9457"
    );
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("/events"),
        "{problem}"
    );
    // A WebSocket request of another version is refused with the one we speak.
    let r = server
        .http
        .get(server.url("/ws"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 426);
    assert_eq!(r.headers()["sec-websocket-version"], "13");
    server.stop().await.unwrap();
}
