//! The fan-out hub: routes each tick's changes to the connections whose
//! viewports they touch.
//!
//! Routing is O(changes × log subscriptions + deliveries), not O(changes ×
//! subscriptions): viewports live in an R-tree, and a change is looked up by
//! the box it touched (old and new position joined). Each changed feature is
//! encoded to JSON once per tick and the bytes are shared (`Arc`) by every
//! connection that receives it. A connection whose queue is full is not
//! waited for: its tick is dropped and it is flagged to resynchronise, so a
//! slow client never slows ingest or other clients.
//!
//! The hub runs on its own OS thread (`beeld-fanout`), owned by
//! [`crate::run`], which stops it through [`Hub::stop`] at shutdown.

use hashbrown::HashMap;
use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use beeld_layers::change::union;
use beeld_layers::relate::EventKind;
use beeld_layers::view::{Before, Change, RemoveReason, first_change_after};
use beeld_layers::{Collection, Feature, FeatureId, Seq};
use geo::{Intersects, Rect};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RTree};
use tokio::sync::{mpsc, watch};

use serde_json::{Map, Value};

use crate::output::{
    Precision, push_feature, push_feature_with, push_geometry, push_json_str, push_properties,
};
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
    /// Ticks a connection may have queued before it is flagged to resync.
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
        LiveConfig {
            tick: Duration::from_millis(100),
            // Queued ticks are coalesced into one diff when the connection
            // gets to them, so a deeper queue absorbs a stall cheaply; a
            // full one costs a catch-up against the whole store. 32 ticks
            // is 3.2 s at the default tick (BENCHMARKS.md, fan-out).
            queue_ticks: 32,
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

/// A connection.
pub type ConnId = u64;

/// One changed feature in one tick, shared by every connection that gets it.
#[derive(Debug)]
pub struct Delivery {
    /// The collection.
    pub collection: Collection,
    /// The id.
    pub id: FeatureId,
    /// A hash of the collection and id, made once by the hub, for merging
    /// queued ticks.
    pub id_hash: u64,
    /// The seq of the tick that routed it. After ticks are merged, a view
    /// that a viewport move has already brought past this seq must skip
    /// the delivery: its state is older than what the move read.
    pub tick_seq: Seq,
    /// Its state at the tick's seq; `None` when gone.
    pub feature: Option<Arc<Feature>>,
    /// The seq of the first change after `previous`: `previous` is the
    /// feature's state from its own seq up to this one. The first change
    /// the tick covers, unless `previous` is from within the tick
    /// (`first_change_after`).
    pub first: Seq,
    /// The newest version the hub knew before this tick (routed, or
    /// encoded for a snapshot since): the feature's state just before
    /// `first` when older than it, and so what every client that kept up
    /// holds and the base of the shared field-level delta.
    pub previous: Option<Arc<Feature>>,
    /// Why it is gone, when it is.
    pub gone: RemoveReason,
    /// The feature as GeoJSON at full precision, encoded once.
    pub json: Option<Arc<str>>,
    /// Other encodings (a coordinate precision, a delta from `previous`),
    /// made by the first connection that needs one and shared with the rest.
    /// Without this every delta subscriber re-encoded and re-parsed every
    /// feature it received, which made the low-bandwidth option the most
    /// expensive one on the server. One slot per option, set once, so that
    /// the connections that follow read without a lock (a `Mutex` here cost
    /// about 0.25 µs per delivery with 1,000 clients); the table itself is
    /// only allocated when some connection asks.
    variants: OnceLock<Box<[OnceLock<Box<str>>; VARIANTS]>>,
}

/// Coordinate precisions 0–15 and full, each whole or as a delta.
const VARIANTS: usize = 2 * (MAX_PRECISION as usize + 2);

/// The most decimals a subscription may ask for.
pub const MAX_PRECISION: u8 = 15;

impl Delivery {
    /// The feature at `precision`, as a delta from `previous` when `delta`,
    /// encoded once per tick for every connection that asks the same.
    pub fn variant(&self, precision: Precision, delta: bool) -> Option<Cow<'_, str>> {
        let feature = self.feature.as_deref()?;
        if precision.is_none() && !delta {
            return self.json.as_deref().map(Cow::Borrowed);
        }
        let encode = || -> Box<str> {
            match self.previous.as_deref().filter(|_| delta) {
                Some(base) => encode_delta(base, feature, precision).into(),
                None => {
                    let mut json = String::with_capacity(320);
                    push_feature_with(&mut json, feature, precision);
                    json.into()
                }
            }
        };
        let digits = match precision {
            Some(p) if p > MAX_PRECISION => return Some(Cow::Owned(encode().into())),
            Some(p) => usize::from(p),
            None => usize::from(MAX_PRECISION) + 1,
        };
        let table = self
            .variants
            .get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
        Some(Cow::Borrowed(
            table[2 * digits + usize::from(delta)].get_or_init(encode),
        ))
    }

    /// The seq of the version [`Delivery::variant`] diffs against.
    pub fn previous_seq(&self) -> Option<Seq> {
        self.previous.as_ref().map(|f| f.seq)
    }

    /// The delivery as the view decides it.
    pub fn change(&self) -> Change<'_> {
        Change {
            collection: self.collection,
            id: &self.id,
            routed: self.tick_seq,
            current: self.feature.as_deref(),
            gone: self.gone,
            first: self.first,
            // A feature the hub has no version of may well have existed (it
            // has not changed since the server started).
            before: self
                .previous
                .as_deref()
                .map_or(Before::Unknown, Before::Was),
        }
    }
}

/// Only what changed from `old` to `new`:
/// `{"id", "delta": true, "geometry"?, "set", "unset"?}` (docs/protocol.md).
pub fn encode_delta(old: &Feature, new: &Feature, precision: Precision) -> String {
    let mut geometry = String::new();
    push_geometry(&mut geometry, &new.shape, precision);
    let mut old_geometry = String::new();
    push_geometry(&mut old_geometry, &old.shape, precision);
    let mut old_properties = String::new();
    push_properties(&mut old_properties, old);
    let mut new_properties = String::new();
    push_properties(&mut new_properties, new);
    // Our own encoder wrote both, so they parse; a failure would only make
    // the delta larger, never wrong, as `set` then carries every field.
    let old: Map<String, Value> = serde_json::from_str(&old_properties).unwrap_or_default();
    let new_map: Map<String, Value> = serde_json::from_str(&new_properties).unwrap_or_default();
    let set: Map<String, Value> = new_map
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let unset: Vec<&String> = old.keys().filter(|k| !new_map.contains_key(*k)).collect();
    let mut json = String::from("{\"id\":");
    push_json_str(&mut json, &new.id);
    json.push_str(",\"delta\":true");
    if old_geometry != geometry {
        json.push_str(",\"geometry\":");
        json.push_str(&geometry);
    }
    json.push_str(",\"set\":");
    json.push_str(&Value::Object(set).to_string());
    if !unset.is_empty() {
        json.push_str(",\"unset\":");
        json.push_str(&serde_json::to_string(&unset).unwrap_or_else(|_| "[]".to_owned()));
    }
    json.push('}');
    json
}

/// One enter/exit/alert event, encoded once.
#[derive(Debug)]
pub struct EventDelivery {
    /// The event number (`relate::Event::n`).
    pub n: u64,
    /// The event as JSON (the `/joins/events` form).
    pub json: Arc<str>,
}

/// What a connection receives per tick: deliveries per subscription key.
#[derive(Debug)]
pub struct Tick {
    /// The seq every delivery's state is consistent with.
    pub seq: Seq,
    /// `(subscription key, delivery)`.
    pub items: Vec<(u32, Arc<Delivery>)>,
    /// `(subscription key, event)`, for subscriptions that asked for events.
    pub events: Vec<(u32, Arc<EventDelivery>)>,
}

impl Tick {
    /// Adds every tick the connection has queued to this one, as if the hub
    /// had used one longer tick: a feature routed more than once appears
    /// once, in its latest state. A connection that falls behind thus sends
    /// fewer, larger messages and catches up by itself, instead of filling
    /// its queue and needing a catch-up computed against the whole store.
    ///
    /// Sound because routing goes by the box a change touched (before and
    /// after): a feature the client may hold that changed later is in a
    /// later tick, so an earlier delivery that is not superseded is still
    /// the feature's state at the later seq as far as this client can see.
    /// A view that moved meanwhile has read the store past some of these
    /// ticks; it skips their deliveries (`Delivery::tick_seq`). The model of
    /// this is `layers::view`'s property test.
    pub fn absorb_queued(&mut self, queue: &mut mpsc::Receiver<Tick>) -> usize {
        let mut later = Vec::new();
        while let Ok(tick) = queue.try_recv() {
            later.push(tick);
        }
        if later.is_empty() {
            return 0;
        }
        let n = later.len();
        // Keyed by the hash the hub computed once per delivery: hashing
        // every id again here was a sixth of the server's CPU when clients
        // fell behind, which is exactly when this runs.
        let mut latest: hashbrown::HashTable<usize> = hashbrown::HashTable::new();
        let mut items: Vec<Option<(u32, Arc<Delivery>)>> = Vec::new();
        for tick in std::iter::once(std::mem::take(&mut self.items))
            .chain(later.iter_mut().map(|t| std::mem::take(&mut t.items)))
        {
            for (key, delivery) in tick {
                let at = items.len();
                let hash = merge_hash(key, &delivery);
                let same = |i: &usize| {
                    items[*i].as_ref().is_some_and(|(k, d)| {
                        *k == key && d.collection == delivery.collection && d.id == delivery.id
                    })
                };
                match latest.find_mut(hash, same) {
                    Some(earlier) => {
                        items[*earlier] = None;
                        *earlier = at;
                    }
                    None => {
                        let rehash =
                            |i: &usize| items[*i].as_ref().map_or(0, |(k, d)| merge_hash(*k, d));
                        latest.insert_unique(hash, at, rehash);
                    }
                }
                items.push(Some((key, delivery)));
            }
        }
        self.items = items.into_iter().flatten().collect();
        for tick in later {
            self.seq = self.seq.max(tick.seq);
            self.events.extend(tick.events);
        }
        n
    }
}

/// The key of a delivery to one subscription when queued ticks merge.
fn merge_hash(key: u32, delivery: &Delivery) -> u64 {
    delivery.id_hash ^ u64::from(key).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

struct Conn {
    tx: mpsc::Sender<Tick>,
    lagging: Arc<AtomicBool>,
}

struct Route {
    collections: Vec<Collection>,
    bbox: Rect<f64>,
    /// Whether the subscription wants enter/exit/alert events.
    events: bool,
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
    /// Deliveries routed to connections.
    pub deliveries: AtomicU64,
    /// Ticks dropped because a connection's queue was full.
    pub dropped_ticks: AtomicU64,
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
    /// Hashes ids for `Delivery::id_hash`.
    hasher: hashbrown::DefaultHashBuilder,
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
                hasher: hashbrown::DefaultHashBuilder::default(),
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
    pub fn set_route(
        &self,
        conn: ConnId,
        key: u32,
        collections: Vec<Collection>,
        bbox: Rect<f64>,
        events: bool,
    ) {
        let mut router = self.router();
        remove_route(&mut router, (conn, key));
        router
            .index
            .insert(GeomWithData::new(rectangle(&bbox), (conn, key)));
        router.routes.insert(
            (conn, key),
            Route {
                collections,
                bbox,
                events,
            },
        );
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
            let pending: Vec<(Rect<f64>, [Seq; 3], Delivery)> = touched
                .into_iter()
                .map(|((collection, id), (bbox, gone, seqs))| {
                    let feature = store.get(collection, &id).cloned().map(Arc::new);
                    (
                        bbox,
                        seqs,
                        Delivery {
                            id_hash: self.inner.hasher.hash_one((collection, &*id)),
                            collection,
                            id,
                            tick_seq: seq,
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
        for (_, _, delivery) in &mut pending {
            if let Some(feature) = &delivery.feature {
                let mut json = String::with_capacity(320);
                push_feature(&mut json, feature);
                delivery.json = Some(json.into());
            }
        }
        {
            let mut encodings = self
                .inner
                .encodings
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (_, seqs, delivery) in &mut pending {
                let key = (delivery.collection, Arc::clone(&delivery.id));
                let previous = match (&delivery.feature, &delivery.json) {
                    (Some(feature), Some(json)) => {
                        encodings.insert(key, (Arc::clone(feature), Arc::clone(json)))
                    }
                    _ => encodings.remove(&key),
                };
                delivery.previous = previous.map(|(feature, _)| feature);
                delivery.first = first_change_after(delivery.previous_seq(), *seqs);
            }
        }
        type Routed = (Vec<(u32, Arc<Delivery>)>, Vec<(u32, Arc<EventDelivery>)>);
        let mut per_conn: HashMap<ConnId, Routed> = HashMap::new();
        let router = self.router();
        let mut n_deliveries = 0u64;
        for (bbox, _, delivery) in pending {
            let delivery = Arc::new(delivery);
            let mut deliver = |key: RouteKey, route: &Route| {
                if route.collections.contains(&delivery.collection) {
                    per_conn
                        .entry(key.0)
                        .or_default()
                        .0
                        .push((key.1, Arc::clone(&delivery)));
                    n_deliveries += 1;
                }
            };
            match self.inner.config.fanout {
                FanoutMode::Indexed => {
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
                FanoutMode::Naive => {
                    for (key, route) in &router.routes {
                        if route.bbox.intersects(&bbox) {
                            deliver(*key, route);
                        }
                    }
                }
            }
        }
        for (bbox, event) in events {
            let event = Arc::new(event);
            let mut deliver = |key: RouteKey, route: &Route| {
                if route.events {
                    per_conn
                        .entry(key.0)
                        .or_default()
                        .1
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
        for (conn, (items, events)) in per_conn {
            let Some(target) = router.conns.get(&conn) else {
                continue;
            };
            match target.tx.try_send(Tick { seq, items, events }) {
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
        self.inner
            .stats
            .deliveries
            .fetch_add(n_deliveries, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use beeld_layers::attrs::{Attrs, RegionCode, UnitStatus, UnitType};
    use beeld_layers::{Shape, Timestamp};
    use geo::Coord;

    fn unit(x: f64, status: &str, seq: u64) -> Feature {
        Feature {
            id: "u1".into(),
            shape: Shape::Point(Coord { x, y: 52.1 }),
            properties: format!(r#"{{"status":"{status}","call_sign":"A-1"}}"#).into(),
            attrs: Attrs::Unit {
                unit_type: UnitType::Ambulance,
                status: UnitStatus::Available,
                home_region: RegionCode::parse("VR09").expect("code"),
            },
            feed: "vr09".into(),
            observed_at: Timestamp(1_000),
            received_at: Timestamp(2_000),
            expires_at: None,
            seq: Seq(seq),
            place: beeld_layers::relate::Place::default(),
        }
    }

    fn delivery(previous: Feature, feature: Feature) -> Delivery {
        let mut json = String::new();
        push_feature(&mut json, &feature);
        Delivery {
            id_hash: 0,
            collection: Collection::Units,
            id: "u1".into(),
            tick_seq: feature.seq,
            first: feature.seq,
            feature: Some(Arc::new(feature)),
            previous: Some(Arc::new(previous)),
            gone: RemoveReason::Deleted,
            json: Some(json.into()),
            variants: OnceLock::new(),
        }
    }

    #[test]
    fn a_delta_is_encoded_once_and_shared() {
        let d = delivery(unit(5.1, "available", 7), unit(5.1, "en_route", 9));
        let first = d.variant(Some(6), true).expect("delta");
        let second = d.variant(Some(6), true).expect("delta");
        assert!(
            std::ptr::eq(first.as_ptr(), second.as_ptr()),
            "second client reuses it"
        );
        let delta: Value = serde_json::from_str(&first).expect("json");
        assert_eq!(delta["delta"], true);
        assert!(delta.get("geometry").is_none(), "did not move: {delta}");
        assert_eq!(delta["set"]["status"], "en_route");
        assert_eq!(delta["set"]["seq"], 9);
        assert!(delta["set"].get("call_sign").is_none(), "{delta}");
        // Other options get their own encodings; full precision, no delta,
        // is the hub's shared GeoJSON itself.
        let whole = d.variant(Some(6), false).expect("whole");
        assert!(whole.contains("\"type\":\"Feature\""), "{whole}");
        let full = d.variant(None, false).expect("full");
        assert!(std::ptr::eq(
            full.as_ptr(),
            d.json.as_ref().expect("json").as_ptr()
        ));
    }

    fn tick(seq: u64, deliveries: &[(&str, u64)]) -> Tick {
        let items = deliveries
            .iter()
            .map(|(id, version)| {
                let mut feature = unit(5.1, "available", *version);
                feature.id = (*id).into();
                let mut d = delivery(unit(5.1, "available", 1), feature);
                d.id = (*id).into();
                (0, Arc::new(d))
            })
            .collect();
        let events = vec![(
            0,
            Arc::new(EventDelivery {
                n: seq,
                json: "{}".into(),
            }),
        )];
        Tick {
            seq: Seq(seq),
            items,
            events,
        }
    }

    #[test]
    fn queued_ticks_coalesce_to_each_features_latest_state() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut first = tick(10, &[("a", 9), ("b", 10)]);
        tx.try_send(tick(20, &[("a", 15), ("c", 20)]))
            .expect("queue");
        tx.try_send(tick(30, &[("a", 30)])).expect("queue");
        assert_eq!(first.absorb_queued(&mut rx), 2);
        assert_eq!(first.seq, Seq(30));
        let got: Vec<(&str, u64)> = first
            .items
            .iter()
            .map(|(_, d)| (&*d.id, d.feature.as_ref().expect("feature").seq.0))
            .collect();
        assert_eq!(got, [("b", 10), ("c", 20), ("a", 30)]);
        let events: Vec<u64> = first.events.iter().map(|(_, e)| e.n).collect();
        assert_eq!(events, [10, 20, 30], "events are kept, in order");
        assert_eq!(first.absorb_queued(&mut rx), 0, "nothing more queued");
    }

    #[test]
    fn a_moved_feature_carries_its_geometry_at_the_precision() {
        let d = delivery(
            unit(5.1, "available", 7),
            unit(5.123_456_789, "available", 8),
        );
        let delta: Value =
            serde_json::from_str(&d.variant(Some(3), true).expect("delta")).expect("json");
        assert_eq!(delta["geometry"]["coordinates"][0], 5.123);
        // Below the precision a move is no move.
        let d = delivery(unit(5.1, "available", 7), unit(5.100_01, "available", 8));
        let delta: Value =
            serde_json::from_str(&d.variant(Some(3), true).expect("delta")).expect("json");
        assert!(delta.get("geometry").is_none(), "{delta}");
    }
}
