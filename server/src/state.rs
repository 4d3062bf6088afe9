//! The shared state of a running server: the store behind one lock, the
//! feed book, the load status and the configuration.

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use beeld_layers::{Store, StoreConfig, Timestamp};

use crate::config::Config;
use crate::feeds::FeedBook;
use crate::live::Hub;

/// Whether the store can serve yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadStatus {
    /// Boundaries (and later, durable state) are being loaded.
    Loading,
    /// Serving.
    Ready,
    /// Loading failed; the server is shutting down.
    Failed(String),
}

/// Handle to the live picture. Cloning is an `Arc` increment.
#[derive(Clone, Debug)]
pub struct StateHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// `std::sync::RwLock`, not Tokio's: nothing awaits while it is held,
    /// writers only update maps and indexes, and encoding of responses
    /// happens after the guard is dropped.
    store: RwLock<Store>,
    /// Set once by the loader, read by `/healthz` and by writes.
    status: RwLock<LoadStatus>,
    /// The journal writer, set once recovery is done (before writes open).
    journal: std::sync::OnceLock<crate::persist::Journal>,
    /// The last picture rebuilt for `datetime=INSTANT`.
    history: crate::persist::history::Cache,
    /// The PostGIS copier's status, when `--database-url` is set.
    postgis: std::sync::OnceLock<Arc<crate::persist::postgis::Status>>,
    /// Per-feed counters for `/feeds`; a separate lock so that counting never
    /// contends with readers of the store.
    feeds: Mutex<FeedBook>,
    /// Live subscriptions and their fan-out.
    hub: Hub,
    config: Config,
    started: Instant,
    /// The history this server's seqs belong to (`persist::Layout::epoch`).
    epoch: std::sync::OnceLock<Arc<str>>,
    /// This process: relation event numbers are per run.
    run: Arc<str>,
    /// Orders coverage-rule changes with their writes to `rules.json`.
    rules: tokio::sync::Mutex<()>,
}

impl StateHandle {
    /// A new, empty, loading state.
    pub fn new(config: Config) -> StateHandle {
        let store = Store::new(StoreConfig {
            ttl_ms: config.ttl_ms,
            change_log_capacity: config.change_log_capacity,
        });
        let feeds = FeedBook::new(&config.feeds);
        let hub = Hub::new(config.live.clone());
        StateHandle {
            shared: Arc::new(Shared {
                store: RwLock::new(store),
                status: RwLock::new(LoadStatus::Loading),
                journal: std::sync::OnceLock::new(),
                postgis: std::sync::OnceLock::new(),
                history: crate::persist::history::Cache::default(),
                feeds: Mutex::new(feeds),
                hub,
                config,
                started: Instant::now(),
                epoch: std::sync::OnceLock::new(),
                run: crate::persist::random_id().into(),
                rules: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The live hub.
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Read access to the store. Keep the guard short and never across `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, Store> {
        // A poisoned lock means a writer panicked mid-batch; the checks in
        // `Store::apply` run before any mutation, so the data is consistent.
        self.shared
            .store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Write access to the store. Keep the guard short and never across `.await`.
    pub fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.shared
            .store
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The journal, once recovery is done.
    pub fn journal(&self) -> Option<&crate::persist::Journal> {
        self.shared.journal.get()
    }

    /// Sets the journal (once, by the loader).
    pub fn set_journal(&self, journal: crate::persist::Journal) {
        let _ = self.shared.journal.set(journal);
    }

    /// The cache of historic pictures.
    pub fn history(&self) -> &crate::persist::history::Cache {
        &self.shared.history
    }

    /// The PostGIS status, when PostGIS is configured.
    pub fn postgis(&self) -> Option<&Arc<crate::persist::postgis::Status>> {
        self.shared.postgis.get()
    }

    /// Sets the PostGIS status (once, by the loader).
    pub fn set_postgis(&self, status: Arc<crate::persist::postgis::Status>) {
        let _ = self.shared.postgis.set(status);
    }

    /// The feed book.
    pub fn feeds(&self) -> std::sync::MutexGuard<'_, FeedBook> {
        self.shared
            .feeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The load status.
    pub fn status(&self) -> LoadStatus {
        self.shared
            .status
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sets the load status.
    pub fn set_status(&self, status: LoadStatus) {
        *self
            .shared
            .status
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }

    /// Sets the epoch once, before clients are served.
    pub fn set_epoch(&self, epoch: &str) {
        let _ = self.shared.epoch.set(epoch.into());
    }

    /// The history seqs belong to: a client's `since` from another epoch
    /// (a new data directory, whose seqs started over) is not resumed.
    pub fn epoch(&self) -> &str {
        self.shared.epoch.get().map_or("", |e| e)
    }

    /// Names this run of the server. Enter/exit/alert event numbers start
    /// over with every run (events are derived from the state, which is
    /// rebuilt at start), so an event number means something only with it.
    pub fn run(&self) -> &str {
        &self.shared.run
    }

    /// Held while a coverage rule changes and `rules.json` is rewritten.
    pub fn rules_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.shared.rules
    }

    /// Seconds since the server started.
    pub fn uptime_s(&self) -> u64 {
        self.shared.started.elapsed().as_secs()
    }
}

/// The wall clock, as the core wants it.
pub fn now() -> Timestamp {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp(millis)
}
