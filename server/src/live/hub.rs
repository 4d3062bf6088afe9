//! The fan-out hub: every tick, gathers the store's changes into one
//! [`Batch`] and hands it to the connections it may concern.
//!
//! The hub's work is O(changes + subscriptions) per tick, whatever the
//! number of deliveries: each changed feature is coalesced, encoded to
//! JSON once, and put in Z-order in the batch; one `Arc` of the batch goes
//! to every connection with a subscription whose viewport touches the
//! batch's changes, and each session finds its own deliveries in it
//! (`batch`). Events (enter/exit/alerts) are few and are routed per
//! subscription through an R-tree of viewports. A connection whose queue
//! is full is not waited for: its tick is dropped and it is flagged to
//! catch up, so a slow client never slows ingest or other clients.
//!
//! The hub runs on its own OS thread (`beeld-fanout`), owned by
//! [`crate::run`], which stops it through [`Hub::stop`] at shutdown.

use hashbrown::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use beeld_layers::change::union;
use beeld_layers::relate::EventKind;
use beeld_layers::view::{RemoveReason, first_change_after};
use beeld_layers::{Collection, Feature, FeatureId, Seq};
use geo::Rect;
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RTree};
use tokio::sync::{mpsc, watch};

pub use super::batch::{Batch, Delivery, MAX_PRECISION};
use crate::output::{Precision, push_feature};
use crate::state::StateHandle;

/// How routing finds subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FanoutMode {
    /// Viewports in an R-tree (the default).
    #[default]
    Indexed,
    /// Every change checked against every subscription: the baseline the
    /// fan-out benchmark compares with.
    Naive,
}

/// Live-protocol settings.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// How often diffs are sent; changes within a tick are coalesced.
    pub tick: Duration,
    /// Ticks a connection may have queued before it is flagged to resync
    /// ([`LiveConfig::default_queue_ticks`]).
    pub queue_ticks: usize,
    /// Largest inbound message.
    pub max_message_bytes: usize,
    /// Inbound messages per second per connection (burst: twice that).
    pub messages_per_second: u32,
    /// Interval of heartbeats; a client silent for three is disconnected.
    pub heartbeat: Duration,
    /// Longest a single write to a client may take before it is dropped.
    pub write_timeout: Duration,
    /// Catch-ups per minute after which a slow client is disconnected.
    pub max_resyncs_per_minute: usize,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Routing strategy.
    pub fanout: FanoutMode,
}

impl Default for LiveConfig {
    fn default() -> Self {
        let tick = Duration::from_millis(100);
        LiveConfig {
            tick,
            queue_ticks: LiveConfig::default_queue_ticks(tick),
            max_message_bytes: 64 * 1024,
            messages_per_second: 50,
            heartbeat: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_resyncs_per_minute: 6,
            max_subscriptions: 16,
            fanout: FanoutMode::Indexed,
        }
    }
}

impl LiveConfig {
    /// The default queue: 32 ticks, or two seconds of ticks when that is
    /// more. A queued tick is an `Arc` of a batch every connection shares,
    /// so depth costs a few bytes per tick; at a 10 ms tick, 32 would be a
    /// third of a second of lag before a catch-up, which reads the change
    /// log for everything since and so costs far more than the ticks it
    /// replaces (at 10,000 moves/s that tipped every client into catching
    /// up, BENCHMARKS.md).
    pub fn default_queue_ticks(tick: Duration) -> usize {
        let two_seconds = Duration::from_secs(2).as_nanos() / tick.as_nanos().max(1);
        usize::try_from(two_seconds)
            .unwrap_or(usize::MAX)
            .clamp(32, 10_000)
    }
}

/// A connection.
pub type ConnId = u64;

/// One enter/exit/alert event, encoded once.
#[derive(Debug)]
pub struct EventDelivery {
    /// The event number (`relate::Event::n`).
    pub n: u64,
    /// The event as JSON (the `/joins/events` form).
    pub json: Arc<str>,
}

/// What a connection receives per tick: the tick's changes, shared by
/// every connection, and the events routed to its subscriptions.
#[derive(Debug)]
pub struct Tick {
    /// The tick's changes; each subscription searches them with its viewport.
    pub batch: Arc<Batch>,
    /// `(subscription key, event)`, for subscriptions that asked for events.
    pub events: Vec<(u32, Arc<EventDelivery>)>,
}

struct Conn {
    tx: mpsc::Sender<Tick>,
    lagging: Arc<AtomicBool>,
}

/// What the hub needs to know of a subscription.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its collections.
    pub collections: Vec<Collection>,
    /// Its viewport's box.
    pub bbox: Rect<f64>,
    /// Whether the subscription wants enter/exit/alert events.
    pub events: bool,
    /// The encoding it takes runs in (`batch::Search::Runs`), if it does
    /// (not with filters): the hub joins each encoding in use before
    /// handing out a batch, so that no session waits on another to do it.
    pub runs: Option<(Precision, bool)>,
}

type RouteKey = (ConnId, u32);

#[derive(Default)]
struct Router {
    /// Viewports by box. Rebuilt entries are cheap: a viewport move is a
    /// remove plus an insert.
    index: RTree<GeomWithData<Rectangle<[f64; 2]>, RouteKey>>,
    routes: HashMap<RouteKey, Route>,
    conns: HashMap<ConnId, Conn>,
}

fn rectangle(rect: &Rect<f64>) -> Rectangle<[f64; 2]> {
    Rectangle::from_corners([rect.min().x, rect.min().y], [rect.max().x, rect.max().y])
}

/// Counters for logs and benchmarks.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Ticks that carried changes.
    pub ticks: AtomicU64,
    /// Deliveries sent to subscriptions (upserts and removes).
    pub deliveries: AtomicU64,
    /// Ticks dropped because a connection's queue was full.
    pub dropped_ticks: AtomicU64,
}

impl HubStats {
    /// Adds deliveries a session sent (one atomic add per tick and
    /// connection, not per delivery).
    pub fn count_deliveries(&self, n: u64) {
        if n > 0 {
            self.deliveries.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Latest version of each feature the hub has seen, with its full-precision
/// GeoJSON; the version is kept as the base of the next tick's deltas.
type Encodings = hashbrown::HashMap<(Collection, FeatureId), (Arc<Feature>, Arc<str>)>;

struct Inner {
    /// std Mutex: held for microseconds by sessions (route changes) and for
    /// one routing pass per tick by the hub thread; never across `.await`.
    router: Mutex<Router>,
    /// Encoded features shared by every session: the hub refreshes what
    /// changed each tick, snapshots and catch-ups fill in the rest. Without
    /// it a catch-up re-encoded a client's whole view, and under load that
    /// made slow clients the most expensive ones (BENCHMARKS.md).
    encodings: std::sync::RwLock<Encodings>,
    config: LiveConfig,
    next_conn: AtomicU64,
    /// The seq of the last tick routed (all its sends done).
    routed: AtomicU64,
    stopped: AtomicBool,
    /// Tells sessions the server is shutting down, so they close cleanly.
    shutdown: watch::Sender<bool>,
    stats: HubStats,
}

/// Handle to the hub. Cloning is an `Arc` increment.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub with no connections.
    pub fn new(config: LiveConfig) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                router: Mutex::new(Router::default()),
                encodings: std::sync::RwLock::new(Encodings::new()),
                config,
                next_conn: AtomicU64::new(1),
                routed: AtomicU64::new(0),
                stopped: AtomicBool::new(false),
                shutdown: watch::channel(false).0,
                stats: HubStats::default(),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &LiveConfig {
        &self.inner.config
    }

    /// The counters.
    pub fn stats(&self) -> &HubStats {
        &self.inner.stats
    }

    fn router(&self) -> std::sync::MutexGuard<'_, Router> {
        self.inner
            .router
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The feature as GeoJSON at full precision, encoded once per version.
    pub fn encoded(&self, collection: Collection, feature: &Feature) -> Arc<str> {
        let key = (collection, Arc::clone(&feature.id));
        if let Some((known, json)) = self
            .inner
            .encodings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            && known.seq == feature.seq
        {
            return Arc::clone(json);
        }
        let mut json = String::with_capacity(320);
        push_feature(&mut json, feature);
        let json: Arc<str> = json.into();
        let mut encodings = self
            .inner
            .encodings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Never replace a newer version the hub stored meanwhile: it is the
        // base of the next tick's deltas.
        let newer = encodings
            .get(&key)
            .is_some_and(|(known, _)| known.seq > feature.seq);
        if !newer {
            encodings.insert(key, (Arc::new(feature.clone()), Arc::clone(&json)));
        }
        json
    }

    /// Registers a connection: its tick queue and its lag flag.
    pub fn register(&self) -> (ConnId, mpsc::Receiver<Tick>, Arc<AtomicBool>) {
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        // Bounded: a client that cannot keep up loses ticks (and resyncs),
        // never grows server memory.
        let (tx, rx) = mpsc::channel(self.inner.config.queue_ticks.max(1));
        let lagging = Arc::new(AtomicBool::new(false));
        self.router().conns.insert(
            conn,
            Conn {
                tx,
                lagging: Arc::clone(&lagging),
            },
        );
        (conn, rx, lagging)
    }

    /// Forgets a connection and its routes.
    pub fn unregister(&self, conn: ConnId) {
        let mut router = self.router();
        router.conns.remove(&conn);
        let keys: Vec<RouteKey> = router
            .routes
            .keys()
            .filter(|k| k.0 == conn)
            .copied()
            .collect();
        for key in keys {
            remove_route(&mut router, key);
        }
    }

    /// Routes changes touching `bbox` in `collections` to `(conn, key)`.
    /// Must be called before the session reads the store for the same
    /// viewport (see `docs/protocol.md`, "Consistency").
    pub fn set_route(&self, conn: ConnId, key: u32, route: Route) {
        let mut router = self.router();
        remove_route(&mut router, (conn, key));
        router
            .index
            .insert(GeomWithData::new(rectangle(&route.bbox), (conn, key)));
        router.routes.insert((conn, key), route);
    }

    /// Stops routing to `(conn, key)`.
    pub fn remove_route(&self, conn: ConnId, key: u32) {
        remove_route(&mut self.router(), (conn, key));
    }

    /// The seq up to which every change has been routed: a connection
    /// whose queue is empty (and that is not lagging) afterwards was routed
    /// nothing it has not taken (`View::quiet_until`).
    pub fn routed(&self) -> Seq {
        Seq(self.inner.routed.load(Ordering::Acquire))
    }

    /// Number of connections.
    pub fn connections(&self) -> usize {
        self.router().conns.len()
    }

    /// A receiver that turns true at shutdown.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Stops the hub thread and tells every session to close.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        let _ = self.inner.shutdown.send(true);
    }

    /// Starts the hub thread over `state`.
    pub fn start(&self, state: StateHandle) -> std::io::Result<std::thread::JoinHandle<()>> {
        let hub = self.clone();
        std::thread::Builder::new()
            .name("beeld-fanout".to_owned())
            .spawn(move || hub.run(&state))
    }

    fn run(&self, state: &StateHandle) {
        let (mut last, mut last_event) = {
            let store = state.read();
            (store.seq(), store.relations().events().last())
        };
        self.inner.routed.store(last.0, Ordering::Release);
        let tick = self.inner.config.tick;
        // Fixed deadlines, so the period is the tick and not tick plus the
        // routing time; a pass that overruns starts the next at once.
        let mut deadline = std::time::Instant::now() + tick;
        while !self.inner.stopped.load(Ordering::Relaxed) {
            let now = std::time::Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            }
            deadline = (deadline + tick).max(std::time::Instant::now());
            (last, last_event) = self.tick(state, last, last_event);
        }
    }

    /// One tick: route every change after `last` and every event after
    /// `last_event`; returns the new pair.
    fn tick(&self, state: &StateHandle, last: Seq, last_event: u64) -> (Seq, u64) {
        let (seq, mut pending, events, newest_event) = {
            let store = state.read();
            let seq = store.seq();
            if seq == last {
                return (last, last_event);
            }
            // Events: each routed by the boxes of its unit and hazard (alerts
            // go to every events subscriber). A log that moved past us skips
            // ahead: `/joins/events` answers 410 and clients reload from REST.
            let log = store.relations().events();
            let newest_event = log.last();
            let events: Vec<(Option<Rect<f64>>, EventDelivery)> = log
                .since(last_event)
                .into_iter()
                .flatten()
                .map(|event| {
                    let bbox = match &event.kind {
                        EventKind::Enter { unit, hazard } | EventKind::Exit { unit, hazard } => {
                            let found = [
                                store.get(Collection::Units, unit),
                                store.get(Collection::Hazards, hazard),
                            ];
                            found
                                .into_iter()
                                .flatten()
                                .map(|f| f.shape.bbox())
                                .reduce(union)
                        }
                        EventKind::AlertRaised { .. } | EventKind::AlertCleared { .. } => None,
                    };
                    let json = crate::http::joins::event_json(event).to_string();
                    (
                        bbox,
                        EventDelivery {
                            n: event.n,
                            json: json.into(),
                        },
                    )
                })
                .collect();
            let Some(records) = store.log().since(last) else {
                drop(store);
                // The log moved past us: nobody can be diffed; all resync.
                tracing::warn!(
                    last = last.0,
                    "fan-out fell behind the change log; every client resyncs"
                );
                for conn in self.router().conns.values() {
                    conn.lagging.store(true, Ordering::Relaxed);
                }
                // Versions it kept may have changed unseen: no longer a
                // base for deltas or for what a client held.
                self.inner
                    .encodings
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
                self.inner.routed.store(seq.0, Ordering::Release);
                return (seq, newest_event);
            };
            // Coalesce: one delivery per feature, in its state at `seq`.
            // The seqs are the first, second and last change of the feature.
            type Touched = (Rect<f64>, RemoveReason, [Seq; 3]);
            let mut touched: HashMap<(Collection, FeatureId), Touched> = HashMap::new();
            for record in records {
                let gone = RemoveReason::gone(&record.cause);
                touched
                    .entry((record.collection, Arc::clone(&record.id)))
                    .and_modify(|(bbox, reason, [first, second, last])| {
                        *bbox = union(*bbox, record.touched);
                        *reason = gone;
                        if second == first {
                            *second = record.seq;
                        }
                        *last = record.seq;
                    })
                    .or_insert((record.touched, gone, [record.seq; 3]));
            }
            let pending: Vec<([Seq; 3], Delivery)> = touched
                .into_iter()
                .map(|((collection, id), (bbox, gone, seqs))| {
                    let feature = store.get(collection, &id).cloned().map(Arc::new);
                    (
                        seqs,
                        Delivery {
                            collection,
                            id,
                            touched: bbox,
                            feature,
                            first: seqs[0],
                            previous: None,
                            gone,
                            json: None,
                            variants: OnceLock::new(),
                        },
                    )
                })
                .collect();
            (seq, pending, events, newest_event)
        };
        // Encode once, outside the store lock, and keep the encodings.
        for (_, delivery) in &mut pending {
            if let Some(feature) = &delivery.feature {
                let mut json = String::with_capacity(320);
                push_feature(&mut json, feature);
                delivery.json = Some(json.into());
            }
        }
        let deliveries: Vec<Delivery> = {
            let mut encodings = self
                .inner
                .encodings
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pending
                .into_iter()
                .map(|(seqs, mut delivery)| {
                    let key = (delivery.collection, Arc::clone(&delivery.id));
                    let previous = match (&delivery.feature, &delivery.json) {
                        (Some(feature), Some(json)) => {
                            encodings.insert(key, (Arc::clone(feature), Arc::clone(json)))
                        }
                        _ => encodings.remove(&key),
                    };
                    delivery.previous = previous.map(|(feature, _)| feature);
                    delivery.first = first_change_after(delivery.previous_seq(), seqs);
                    delivery
                })
                .collect()
        };
        let batch = Arc::new(Batch::new(seq, last, deliveries));
        // Every connection with a subscription the batch may concern gets
        // it (the naive baseline: every connection); each searches it with
        // its own viewports. Events go by their boxes through the R-tree.
        let mut per_conn: HashMap<ConnId, Vec<(u32, Arc<EventDelivery>)>> = HashMap::new();
        let router = self.router();
        let mut encodings: Vec<(Precision, bool)> = Vec::new();
        for (key, route) in &router.routes {
            let concerned = match self.inner.config.fanout {
                FanoutMode::Indexed => batch.may_concern(&route.collections, &route.bbox),
                FanoutMode::Naive => true,
            };
            if concerned {
                per_conn.entry(key.0).or_default();
                if let Some(encoding) = route.runs
                    && !encodings.contains(&encoding)
                {
                    encodings.push(encoding);
                }
            }
        }
        if self.inner.config.fanout == FanoutMode::Indexed {
            for (precision, deltas) in encodings {
                batch.prepare(precision, deltas);
            }
        }
        for (bbox, event) in events {
            let event = Arc::new(event);
            let mut deliver = |key: RouteKey, route: &Route| {
                if route.events {
                    per_conn
                        .entry(key.0)
                        .or_default()
                        .push((key.1, Arc::clone(&event)));
                }
            };
            match bbox {
                Some(bbox) => {
                    let env = AABB::from_corners(
                        [bbox.min().x, bbox.min().y],
                        [bbox.max().x, bbox.max().y],
                    );
                    for hit in router.index.locate_in_envelope_intersecting(&env) {
                        if let Some(route) = router.routes.get(&hit.data) {
                            deliver(hit.data, route);
                        }
                    }
                }
                None => {
                    for (key, route) in &router.routes {
                        deliver(*key, route);
                    }
                }
            }
        }
        for (conn, events) in per_conn {
            let Some(target) = router.conns.get(&conn) else {
                continue;
            };
            let tick = Tick {
                batch: Arc::clone(&batch),
                events,
            };
            match target.tx.try_send(tick) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    target.lagging.store(true, Ordering::Relaxed);
                    self.inner
                        .stats
                        .dropped_ticks
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        drop(router);
        // After every send: a session that then finds its queue empty has
        // taken everything routed to it up to `seq`.
        self.inner.routed.store(seq.0, Ordering::Release);
        self.inner.stats.ticks.fetch_add(1, Ordering::Relaxed);
        (seq, newest_event)
    }
}

fn remove_route(router: &mut Router, key: RouteKey) {
    if let Some(route) = router.routes.remove(&key) {
        router
            .index
            .remove(&GeomWithData::new(rectangle(&route.bbox), key));
    }
}
