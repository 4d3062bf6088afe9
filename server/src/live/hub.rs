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
//! Connections are split into [`LiveConfig::phases`] groups whose ticks
//! are staggered evenly over the tick period: each group still gets one
//! diff per tick, covering exactly the tick before it, but the groups take
//! turns, so the server sends a tick's bytes in several small bursts
//! rather than one. With one burst, the last client of a tick waited for
//! every other client's bytes to be copied first; that burst, not routing,
//! set the latency tail (BENCHMARKS.md). Each group is a chain of batches
//! of its own, with its own delta bases ([`Version::chains`]) and its own
//! routed seq.
//!
//! The hub runs on its own OS thread (`beeld-fanout`), owned by
//! [`crate::run`], which stops it through [`Hub::stop`] at shutdown.

use hashbrown::HashMap;
use std::collections::VecDeque;
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

pub use super::batch::{Batch, Delivery, MAX_PRECISION, Variants};
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
    /// Groups of connections whose ticks are staggered over the tick
    /// period ([`LiveConfig::default_phases`]); 1 sends every tick to
    /// every connection at once.
    pub phases: usize,
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
            phases: LiveConfig::default_phases(tick),
        }
    }
}

/// The most phase groups ([`LiveConfig::phases`]): one bit each in
/// [`Version::chains`].
pub const MAX_PHASES: usize = 16;

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

    /// The default phase groups: one per 10 ms of tick, at most 10 (so 10
    /// at the default 100 ms tick, and 1, no staggering, at 10 ms). Each
    /// group's batch is built on its own, so every change is encoded into
    /// a batch once per group; steps shorter than 10 ms would cost the hub
    /// more than the smaller bursts save.
    pub fn default_phases(tick: Duration) -> usize {
        let steps = tick.as_millis() / 10;
        usize::try_from(steps).unwrap_or(10).clamp(1, 10)
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

/// A version of a feature the hub knows, with its full-precision GeoJSON.
#[derive(Debug)]
struct Version {
    feature: Arc<Feature>,
    json: Arc<str>,
    /// The phase groups (one bit each) for which this version is the
    /// feature's state at their last tick: the base of their next tick's
    /// deltas, and what their clients that kept up hold. Set by the
    /// group's tick that routed it, or by a snapshot that read it after
    /// that tick ([`Hub::encoded`]). Zero for a version only kept as an
    /// encoding (for snapshots and catch-ups).
    chains: u16,
    /// Its other encodings (precisions, deltas), per base version diffed
    /// from: every group's delivery of this version from the same base
    /// shares them, so each is made once, not once per group.
    variants: Vec<(Option<Seq>, Arc<Variants>)>,
}

impl Version {
    /// The encodings of this version diffed from `base`.
    fn variants_from(&mut self, base: Option<Seq>) -> Arc<Variants> {
        if let Some((_, variants)) = self.variants.iter().find(|(b, _)| *b == base) {
            return Arc::clone(variants);
        }
        // Bases differ only while a change passes through the groups; a
        // few are plenty, and a dropped one is only made again.
        if self.variants.len() >= 4 {
            self.variants.remove(0);
        }
        let variants = Arc::<Variants>::default();
        self.variants.push((base, Arc::clone(&variants)));
        variants
    }
}

/// What the hub knows of features' versions, under one lock.
#[derive(Debug, Default)]
struct Known {
    /// Per feature: the base of each phase group (usually one version all
    /// groups share; two or three while a change makes its way through
    /// the groups), and the newest version as a cache of its encoding.
    versions: hashbrown::HashMap<(Collection, FeatureId), Vec<Version>>,
    /// The phase groups that keep bases: those with routes. A group
    /// without any is not given batches, so its bases would go stale.
    active: u16,
}

/// Drops versions that are nobody's base, except the newest (the encoding
/// cache) when `keep_newest`.
fn prune(versions: &mut Vec<Version>, keep_newest: bool) {
    let newest = versions.iter().map(|v| v.feature.seq).max();
    versions.retain(|v| v.chains != 0 || (keep_newest && Some(v.feature.seq) == newest));
}

/// The state of one phase group's chain of batches.
#[derive(Debug, Clone, Copy)]
struct Chain {
    /// The seq its last batch went up to.
    last: Seq,
    /// The last event it routed.
    last_event: u64,
}

struct Inner {
    /// std Mutex: held for microseconds by sessions (route changes) and for
    /// one routing pass per tick by the hub thread; never across `.await`.
    router: Mutex<Router>,
    /// Encoded features shared by every session: the hub refreshes what
    /// changed each tick, snapshots and catch-ups fill in the rest. Without
    /// it a catch-up re-encoded a client's whole view, and under load that
    /// made slow clients the most expensive ones (BENCHMARKS.md).
    encodings: std::sync::RwLock<Known>,
    config: LiveConfig,
    next_conn: AtomicU64,
    /// Per phase group, the seq of its last tick routed (all its sends
    /// done).
    routed: Box<[AtomicU64]>,
    stopped: AtomicBool,
    /// Tells sessions the server is shutting down, so they close cleanly.
    shutdown: watch::Sender<bool>,
    stats: HubStats,
    /// The runtime live sessions run on ([`Hub::spawn`]), apart from the
    /// one serving HTTP, and its handle.
    sessions: Mutex<Option<tokio::runtime::Runtime>>,
    sessions_handle: OnceLock<tokio::runtime::Handle>,
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
        let phases = config.phases.clamp(1, MAX_PHASES);
        Hub {
            inner: Arc::new(Inner {
                router: Mutex::new(Router::default()),
                encodings: std::sync::RwLock::new(Known::default()),
                config,
                next_conn: AtomicU64::new(1),
                routed: (0..phases).map(|_| AtomicU64::new(0)).collect(),
                stopped: AtomicBool::new(false),
                shutdown: watch::channel(false).0,
                stats: HubStats::default(),
                sessions: Mutex::new(None),
                sessions_handle: OnceLock::new(),
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
    /// `at`: a seq at which it was the current version (the snapshot's
    /// that read it). For a group whose last tick is between the version's
    /// seq and `at`, and that has no base for the feature (it has not
    /// changed since that group's batches began), it becomes the base: a
    /// change right after the snapshot is then sent as a delta from it.
    pub fn encoded(&self, collection: Collection, feature: &Feature, at: Seq) -> Arc<str> {
        let key = (collection, Arc::clone(&feature.id));
        let known_json = {
            let known = self
                .inner
                .encodings
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let found = known.versions.get(&key).and_then(|versions| {
                let v = versions.iter().find(|v| v.feature.seq == feature.seq)?;
                Some((versions, v))
            });
            match found {
                Some((versions, v)) => {
                    if self.bases_to_take(versions, feature.seq, at, known.active) == 0 {
                        return Arc::clone(&v.json);
                    }
                    Some(Arc::clone(&v.json))
                }
                None => None,
            }
        };
        let json = known_json.unwrap_or_else(|| {
            let mut json = String::with_capacity(320);
            push_feature(&mut json, feature);
            json.into()
        });
        let mut known = self
            .inner
            .encodings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let active = known.active;
        let versions = known.versions.entry(key).or_default();
        let take = self.bases_to_take(versions, feature.seq, at, active);
        let json = match versions.iter_mut().find(|v| v.feature.seq == feature.seq) {
            Some(v) => {
                v.chains |= take;
                Arc::clone(&v.json)
            }
            None => {
                versions.push(Version {
                    feature: Arc::new(feature.clone()),
                    json: Arc::clone(&json),
                    chains: take,
                    variants: Vec::new(),
                });
                json
            }
        };
        prune(versions, true);
        json
    }

    /// The active groups without a base for a feature whose version
    /// `seq` was current at `at`, and for which it is the state at their
    /// last tick. Read under the encodings lock: a group's tick moves its
    /// bases under the write lock before it publishes its routed seq, so a
    /// routed seq read here is never newer than the bases seen, and an
    /// older one is still right for a feature its tick did not touch.
    fn bases_to_take(&self, versions: &[Version], seq: Seq, at: Seq, active: u16) -> u16 {
        let mut take = 0;
        for (group, routed) in self.inner.routed.iter().enumerate() {
            let bit = 1u16 << group;
            let routed = Seq(routed.load(Ordering::Acquire));
            if active & bit != 0
                && !versions.iter().any(|v| v.chains & bit != 0)
                && seq <= routed
                && routed <= at
            {
                take |= bit;
            }
        }
        take
    }

    /// The phase group of a connection.
    fn chain_of(&self, conn: ConnId) -> usize {
        usize::try_from(conn % self.inner.routed.len() as u64).unwrap_or(0)
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
        {
            let mut router = self.router();
            remove_route(&mut router, (conn, key));
            router
                .index
                .insert(GeomWithData::new(rectangle(&route.bbox), (conn, key)));
            router.routes.insert((conn, key), route);
        }
        // The group keeps bases from now on, so that the snapshot that
        // follows can give it its first ones (`Hub::encoded`).
        let bit = 1u16 << self.chain_of(conn);
        let active = |known: &Known| known.active & bit != 0;
        if !active(
            &self
                .inner
                .encodings
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ) {
            self.inner
                .encodings
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .active |= bit;
        }
    }

    /// Stops routing to `(conn, key)`.
    pub fn remove_route(&self, conn: ConnId, key: u32) {
        remove_route(&mut self.router(), (conn, key));
    }

    /// The seq up to which every change has been routed to `conn`: if its
    /// queue is empty (and it is not lagging) afterwards, it was routed
    /// nothing it has not taken (`View::quiet_until`).
    pub fn routed(&self, conn: ConnId) -> Seq {
        Seq(self.inner.routed[self.chain_of(conn)].load(Ordering::Acquire))
    }

    /// Runs a live session's task on the sessions' runtime (once the hub
    /// is started; the current one before). Its own threads: a feed write
    /// arriving while a tick goes out to every client is then taken up by
    /// the HTTP runtime's idle thread at once, instead of waiting behind
    /// every session task in one run queue (at a 10 ms tick with 10,000
    /// moves/s, acknowledgements took 9.5 ms at the median, BENCHMARKS.md).
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match self.inner.sessions_handle.get() {
            Some(handle) => drop(handle.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// Shuts the sessions' runtime down, waiting a little for sessions to
    /// finish closing; blocks, so call it where blocking is allowed.
    pub fn shut_down_sessions(&self) {
        let runtime = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// Number of connections.
    pub fn connections(&self) -> usize {
        self.router().conns.len()
    }

    /// A receiver that turns true at shutdown.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Completes at shutdown (or once the hub is gone). A connection makes
    /// one for its life and pins it: made anew each turn of its loop, it
    /// entered and left the watch's waiter list (a lock shared by every
    /// connection) on every tick.
    pub fn shut_down(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut signal = self.shutdown_signal();
        async move {
            let _ = signal.changed().await;
        }
    }

    /// Stops the hub thread and tells every session to close.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        let _ = self.inner.shutdown.send(true);
    }

    /// Starts the hub thread over `state`.
    pub fn start(&self, state: StateHandle) -> std::io::Result<std::thread::JoinHandle<()>> {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("beeld-live")
            .enable_all()
            .build()?;
        let _ = self.inner.sessions_handle.set(runtime.handle().clone());
        *self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(runtime);
        let hub = self.clone();
        std::thread::Builder::new()
            .name("beeld-fanout".to_owned())
            .spawn(move || hub.run(&state))
    }

    fn run(&self, state: &StateHandle) {
        let (last, last_event) = {
            let store = state.read();
            (store.seq(), store.relations().events().last())
        };
        let phases = self.inner.routed.len();
        for routed in &self.inner.routed {
            routed.store(last.0, Ordering::Release);
        }
        let mut fanout = Fanout {
            chains: vec![Chain { last, last_event }; phases],
            segments: VecDeque::new(),
            stepped: last,
        };
        // One step per phase group: each group's batch covers exactly the
        // tick before it.
        let step = self.inner.config.tick / u32::try_from(phases).unwrap_or(1);
        // Fixed deadlines, so the period is the step and not step plus the
        // routing time; a pass that overruns starts the next at once.
        let mut deadline = std::time::Instant::now() + step;
        let mut group = 0;
        while !self.inner.stopped.load(Ordering::Relaxed) {
            let now = std::time::Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            }
            deadline = (deadline + step).max(std::time::Instant::now());
            self.step(state, &mut fanout, group);
            group = (group + 1) % phases;
        }
    }

    /// Stops `groups` (a mask) keeping bases, and clears their bits from
    /// every version: their bases are no longer known to be their
    /// clients' state.
    fn forget_bases(&self, groups: u16) {
        let mut known = self
            .inner
            .encodings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.active &= !groups;
        known.versions.retain(|_, versions| {
            for v in versions.iter_mut() {
                v.chains &= !groups;
            }
            prune(versions, true);
            !versions.is_empty()
        });
    }

    /// One step of the hub: gather what changed since the last step into a
    /// segment, then route phase group `group`'s tick (every change after
    /// its last tick, from the segments since, and its events).
    fn step(&self, state: &StateHandle, fanout: &mut Fanout, group: usize) {
        let bit = 1u16 << group;
        let last = fanout.chains[group].last;
        let last_event = fanout.chains[group].last_event;
        let (seq, segment, events, newest_event) = {
            let store = state.read();
            let seq = store.seq();
            let newest_event = store.relations().events().last();
            let segment = if seq == fanout.stepped {
                Some(HashMap::new())
            } else {
                store
                    .log()
                    .since(fanout.stepped)
                    .map(|records| self.coalesce(&store, records))
            };
            // Events: each routed by the boxes of its unit and hazard (alerts
            // go to every events subscriber). A log that moved past us skips
            // ahead: `/joins/events` answers 410 and clients reload from REST.
            let events: Vec<(Option<Rect<f64>>, EventDelivery)> = store
                .relations()
                .events()
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
            (seq, segment, events, newest_event)
        };
        let Some(mut segment) = segment else {
            // The log moved past us: nobody can be diffed; all resync.
            tracing::warn!(
                last = fanout.stepped.0,
                "fan-out fell behind the change log; every client resyncs"
            );
            for conn in self.router().conns.values() {
                conn.lagging.store(true, Ordering::Relaxed);
            }
            // Versions it kept may have changed unseen: no longer a base
            // for deltas or for what a client held.
            self.forget_bases(u16::MAX);
            fanout.segments.clear();
            fanout.stepped = seq;
            for (chain, routed) in fanout.chains.iter_mut().zip(&self.inner.routed) {
                *chain = Chain {
                    last: seq,
                    last_event: newest_event,
                };
                routed.store(seq.0, Ordering::Release);
            }
            return;
        };
        if seq > fanout.stepped {
            // Encode once, outside the store lock; every group shares it.
            for touch in segment.values_mut() {
                if let (Some(feature), None) = (&touch.feature, &touch.json) {
                    let mut json = String::with_capacity(320);
                    push_feature(&mut json, feature);
                    touch.json = Some(json.into());
                }
            }
            fanout.segments.push_back(Segment {
                to: seq,
                changes: segment,
            });
            fanout.stepped = seq;
        }
        if seq == last {
            return;
        }
        // A group without routes gets no batch. Checked after reading the
        // seq: a route set after this check is set before its session
        // reads the store, so that read is at `seq` or later.
        let idle = !self
            .router()
            .routes
            .keys()
            .any(|key| self.chain_of(key.0) == group);
        if idle {
            let active = self
                .inner
                .encodings
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .active;
            if active & bit != 0 {
                self.forget_bases(bit);
            }
            fanout.finish(group, seq, newest_event);
            self.inner.routed[group].store(seq.0, Ordering::Release);
            return;
        }
        // The group's tick: the segments since its last, coalesced.
        let since = || fanout.segments.iter().filter(|s| s.to > last);
        let mut window: HashMap<(Collection, FeatureId), Touch> =
            HashMap::with_capacity(since().map(|s| s.changes.len()).sum());
        for segment in since() {
            for (key, touch) in &segment.changes {
                window
                    .entry_ref(key)
                    .and_modify(|earlier| earlier.then(touch))
                    .or_insert_with(|| touch.clone());
            }
        }
        let deliveries: Vec<Delivery> = {
            let mut known = self
                .inner
                .encodings
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            known.active |= bit;
            let encodings = &mut known.versions;
            window
                .into_iter()
                .map(|((collection, id), touch)| {
                    let versions = encodings
                        .entry_ref(&(collection, Arc::clone(&id)))
                        .or_default();
                    // The group's base: its clients' version at `last`; if
                    // it has none (the feature had not changed since its
                    // batches began, and no snapshot read it since), the
                    // state after the tick's first change when a snapshot
                    // read that (`first_change_after` places it).
                    let previous = versions
                        .iter()
                        .find(|v| v.chains & bit != 0)
                        .or_else(|| versions.iter().find(|v| v.feature.seq == touch.seqs[0]))
                        .map(|v| Arc::clone(&v.feature));
                    for v in versions.iter_mut() {
                        v.chains &= !bit;
                    }
                    let previous_seq = previous.as_ref().map(|f| f.seq);
                    let variants = match (&touch.feature, &touch.json) {
                        (Some(feature), Some(json)) => {
                            let at =
                                match versions.iter().position(|v| v.feature.seq == feature.seq) {
                                    Some(at) => at,
                                    None => {
                                        versions.push(Version {
                                            feature: Arc::clone(feature),
                                            json: Arc::clone(json),
                                            chains: 0,
                                            variants: Vec::new(),
                                        });
                                        versions.len() - 1
                                    }
                                };
                            versions[at].chains |= bit;
                            let variants = versions[at].variants_from(previous_seq);
                            prune(versions, true);
                            variants
                        }
                        // Gone: nothing to keep but other groups' bases.
                        _ => {
                            prune(versions, false);
                            Arc::default()
                        }
                    };
                    if versions.is_empty() {
                        encodings.remove(&(collection, Arc::clone(&id)));
                    }
                    Delivery {
                        collection,
                        id,
                        touched: touch.touched,
                        feature: touch.feature,
                        first: first_change_after(previous_seq, touch.seqs),
                        previous,
                        gone: touch.gone,
                        json: touch.json,
                        variants,
                    }
                })
                .collect()
        };
        fanout.finish(group, seq, newest_event);
        let batch = Arc::new(Batch::new(seq, last, deliveries));
        // Every connection of the group with a subscription the batch may
        // concern gets it (the naive baseline: every connection); each
        // searches it with its own viewports. Events go by their boxes
        // through the R-tree.
        let mut per_conn: HashMap<ConnId, Vec<(u32, Arc<EventDelivery>)>> = HashMap::new();
        let router = self.router();
        let mut encodings: Vec<(Precision, bool)> = Vec::new();
        for (key, route) in &router.routes {
            if self.chain_of(key.0) != group {
                continue;
            }
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
                if route.events && self.chain_of(key.0) == group {
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
        // After every send: a session of the group that then finds its
        // queue empty has taken everything routed to it up to `seq`.
        self.inner.routed[group].store(seq.0, Ordering::Release);
        self.inner.stats.ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// Coalesces change records into one [`Touch`] per feature, in its
    /// state at the store's seq. A version another group's batch already
    /// made (or a snapshot encoded) is shared, not cloned again.
    fn coalesce<'r>(
        &self,
        store: &beeld_layers::Store,
        records: impl Iterator<Item = &'r beeld_layers::change::ChangeRecord>,
    ) -> HashMap<(Collection, FeatureId), Touch> {
        let mut touched: HashMap<(Collection, FeatureId), Touch> = HashMap::new();
        for record in records {
            let touch = Touch {
                touched: record.touched,
                gone: RemoveReason::gone(&record.cause),
                seqs: [record.seq; 3],
                feature: None,
                json: None,
            };
            touched
                .entry((record.collection, Arc::clone(&record.id)))
                .and_modify(|earlier| earlier.then(&touch))
                .or_insert(touch);
        }
        let known = self
            .inner
            .encodings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((collection, id), touch) in &mut touched {
            let Some(current) = store.get(*collection, id) else {
                continue;
            };
            match known
                .versions
                .get(&(*collection, Arc::clone(id)))
                .and_then(|versions| versions.iter().find(|v| v.feature.seq == current.seq))
            {
                Some(v) => {
                    touch.feature = Some(Arc::clone(&v.feature));
                    touch.json = Some(Arc::clone(&v.json));
                }
                None => touch.feature = Some(Arc::new(current.clone())),
            }
        }
        touched
    }
}

/// The hub thread's own state.
struct Fanout {
    /// Per phase group.
    chains: Vec<Chain>,
    /// What changed, step by step, since the oldest group's last tick.
    segments: VecDeque<Segment>,
    /// The seq the newest segment goes up to.
    stepped: Seq,
}

impl Fanout {
    /// Moves group `group` on to `seq`, and drops the segments every group
    /// has passed.
    fn finish(&mut self, group: usize, seq: Seq, newest_event: u64) {
        self.chains[group] = Chain {
            last: seq,
            last_event: newest_event,
        };
        let oldest = self.chains.iter().map(|c| c.last).min().unwrap_or(seq);
        while self.segments.front().is_some_and(|s| s.to <= oldest) {
            self.segments.pop_front();
        }
    }
}

/// One step's changes to the hub.
struct Segment {
    /// The seq it goes up to, from the previous segment's.
    to: Seq,
    changes: HashMap<(Collection, FeatureId), Touch>,
}

/// A feature's changes over one or more steps, coalesced.
#[derive(Clone)]
struct Touch {
    /// The boxes of every state it passed through, joined.
    touched: Rect<f64>,
    /// Why it is gone, when it is (from the last change).
    gone: RemoveReason,
    /// The seqs of its first, second and last change (`first_change_after`).
    seqs: [Seq; 3],
    /// Its state after the last change; `None` when gone.
    feature: Option<Arc<Feature>>,
    /// That state as GeoJSON at full precision.
    json: Option<Arc<str>>,
}

impl Touch {
    /// Appends the changes of `later`, which follow these.
    fn then(&mut self, later: &Touch) {
        self.touched = union(self.touched, later.touched);
        self.gone = later.gone;
        if self.seqs[1] == self.seqs[0] {
            self.seqs[1] = later.seqs[0];
        }
        self.seqs[2] = later.seqs[2];
        self.feature.clone_from(&later.feature);
        self.json.clone_from(&later.json);
    }
}

fn remove_route(router: &mut Router, key: RouteKey) {
    if let Some(route) = router.routes.remove(&key) {
        router
            .index
            .remove(&GeomWithData::new(rectangle(&route.bbox), key));
    }
}
