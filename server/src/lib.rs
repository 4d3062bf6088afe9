//! The beeld server: HTTP ingest for regional feeds, OGC API Features for GIS
//! tools, and the tasks that keep the picture fresh. The binary (`main.rs`)
//! only parses the command line, sets up logging, binds and calls [`run`].
//!
//! # Layout
//!
//! * [`config`]: flags, environment, TOML file → [`Config`].
//! * [`state`]: [`StateHandle`], the store behind one lock, plus feed book and load status.
//! * [`boundaries`]: CBS/PDOK region and municipality files → the store at start.
//! * [`http`]: the router; OGC API Features reads and Part 4 writes, `/feeds`, `/healthz`.
//! * [`output`] and [`fgb`]: GeoJSON and FlatGeobuf writers.
//! * [`expiry`]: removes features whose `expires` or time-to-live has passed.
//! * [`live`]: live diffs over WebSocket and SSE, and the fan-out hub.
//! * [`problem`]: RFC 9457 errors.
//! * [`adapter`]: the feed adapter interface (`FeedSink`, `FeedAdapter`).
//! * [`simulate`]: plays scenarios as the 25 regional feeds (`beeld simulate`, `--demo`).

pub mod adapter;
pub mod auth;
pub mod boundaries;
pub mod config;
pub mod expiry;
pub mod feeds;
pub mod fgb;
pub mod http;
pub mod live;
pub mod output;
pub mod persist;
pub mod problem;
pub mod shutdown;
pub mod simulate;
pub mod state;
pub mod telemetry;

use std::future::Future;

pub use config::Config;
use state::LoadStatus;
pub use state::StateHandle;
use tokio::net::TcpListener;

/// Attribution of the reference data, shown on the landing page and in the README.
pub const ATTRIBUTION: &str = "Boundaries: CBS / PDOK (Gebiedsindelingen 2023), CC BY 4.0.";

/// Why the server stopped with an error.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Loading the initial state failed.
    #[error("loading failed: {0}")]
    Load(String),
    /// The durable store could not be opened.
    #[error(transparent)]
    Persist(#[from] persist::Error),
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
}

/// The demo task: plays the Limburg 2021 scenario in-process, over and over,
/// until shutdown. Owned by `run`; stopped by the hub's shutdown signal.
async fn demo(state: StateHandle, speed: f64) {
    let stop = state.hub().shutdown_signal();
    let data = state.config().shared_data.clone();
    loop {
        let scenario = beeld_fixtures::scenario::Spec::load("limburg-2021")
            .and_then(|spec| beeld_fixtures::scenario::Scenario::new(spec, &data, 1.0));
        let mut scenario = match scenario {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "demo scenario cannot start");
                return;
            }
        };
        tracing::info!(
            speed,
            units = scenario.unit_count(),
            "demo: playing limburg-2021"
        );
        let outlet = simulate::SinkOutlet::new(adapter::FeedSink::new(state.clone()));
        let options = simulate::PlayOptions {
            speed,
            until_h: None,
            progress: false,
        };
        let report = simulate::play(&mut scenario, &outlet, &options, &stop).await;
        tracing::info!(
            writes = report.writes,
            errors = report.errors,
            "demo: scenario finished"
        );
        if *stop.borrow() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    }
}

/// Runs the server on `listener` until `shutdown` completes.
///
/// The listener is bound by the caller (tests bind port 0). Requests are
/// served at once; `/healthz` answers 503 and writes are refused until the
/// boundaries are loaded. A load failure stops the server with an error.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    if !config.listen.ip().is_loopback() && !config.require_read_token {
        tracing::warn!(listen = %config.listen, "reads are open to anyone who can reach this address; set --require-read-token to require a token");
    }
    let state = StateHandle::new(config);
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();

    // Held until `run` returns: a second server on the same data directory
    // would interleave its journal writes with ours.
    let layout = persist::Layout::new(&config_data_dir(&state));
    let _data_dir_lock = layout.lock()?;
    state.set_epoch(&layout.epoch()?);

    // Stops the expiry task and the PostGIS copier at shutdown.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    // Loader task: owned by `run`, finishes on its own; on failure it stops the server.
    let loader_state = state.clone();
    let loader_stop = stop_rx.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        match load(&loader_state, loader_stop).await {
            Ok((n_boundaries, n_records, seq)) => {
                tracing::info!(
                    n_features = n_boundaries,
                    n_journal_records = n_records,
                    seq,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "boundaries loaded; serving"
                );
                loader_state.set_status(LoadStatus::Ready);
                if let Some(speed) = loader_state.config().demo_speed {
                    tokio::spawn(demo(loader_state.clone(), speed));
                }
            }
            Err(message) => {
                tracing::error!(error = %message, "loading failed");
                loader_state.set_status(LoadStatus::Failed(message.clone()));
                let _ = failed_tx.send(message);
            }
        }
    });

    let expiry_task = tokio::spawn(expiry::run(state.clone(), stop_rx.clone()));
    // Detached: it ends at `stop` like the expiry task.
    tokio::spawn(feeds::watch(
        state.clone(),
        std::time::Duration::from_secs(60),
        stop_rx,
    ));
    let hub = state.hub().clone();
    let fanout = hub.start(state.clone())?;

    let load_error = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let load_error_slot = std::sync::Arc::clone(&load_error);
    let stop_hub = hub.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown => tracing::info!("shutting down"),
            Ok(message) = failed_rx => {
                *load_error_slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message);
            }
        }
        // Live sessions are long-lived; tell them to close so the server can stop.
        stop_hub.stop();
    };
    tracing::info!(addr = %listener.local_addr()?, "listening");
    // No Nagle: a diff's last segment must not wait for the client's
    // (possibly delayed) acknowledgement of the segments before it.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    axum::serve(listener, http::app(state.clone()))
        .with_graceful_shutdown(stop)
        .await?;
    let _ = stop_tx.send(true);
    let _ = expiry_task.await;
    hub.stop();
    let _ = tokio::task::spawn_blocking(move || {
        let _ = fanout.join();
        hub.shut_down_sessions();
    })
    .await;
    if let Some(journal) = state.journal().cloned() {
        // Writes what is queued and joins the writer thread.
        let _ = tokio::task::spawn_blocking(move || journal.shutdown()).await;
    }
    let failed = load_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match failed {
        Some(message) => Err(Error::Load(message)),
        None => Ok(()),
    }
}

fn config_data_dir(state: &StateHandle) -> std::path::PathBuf {
    state.config().data_dir.clone()
}

/// Start-up: recovers the durable state (snapshot + journal), starts the
/// journal writer, then loads the boundaries (parsed meanwhile) and notes
/// their seqs in the journal. Returns `(n boundary features, journal records
/// replayed, seq)`. Writes stay refused (503) until this returns.
async fn load(
    state: &StateHandle,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(usize, u64, u64), String> {
    let config = state.config().clone();
    let boundary_files = (
        config.regions_file.clone(),
        config.municipalities_file.clone(),
    );
    let boundaries = tokio::task::spawn_blocking(move || {
        boundaries::load(&boundary_files.0, &boundary_files.1, state::now())
    });
    let layout = persist::Layout::new(&config.data_dir);
    let store_config = beeld_layers::StoreConfig {
        ttl_ms: config.ttl_ms,
        change_log_capacity: config.change_log_capacity,
    };
    let rebuilt = {
        let (layout, store_config) = (layout.clone(), store_config.clone());
        tokio::task::spawn_blocking(move || {
            persist::recovery::rebuild(&layout, store_config, persist::recovery::Until::End, true)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
    };
    let n_records = rebuilt.n_records;
    if rebuilt.seq.0 > 0 {
        tracing::info!(
            seq = rebuilt.seq.0,
            n_journal_records = n_records,
            snapshot = rebuilt.snapshot.as_ref().map(|m| m.seq.0),
            "durable state recovered"
        );
    }
    // Retention keeps every segment PostGIS has not stored (no PostGIS: none pinned).
    let pinned = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let mut rebuilt = rebuilt;
    if let Some(url) = &config.database_url {
        pinned.store(0, std::sync::atomic::Ordering::Release);
        let status = std::sync::Arc::new(persist::postgis::Status::new(std::sync::Arc::clone(
            &pinned,
        )));
        open_postgis(url, &layout, &store_config, &mut rebuilt).await?;
        state.set_postgis(status);
    }
    // Before the store becomes visible: the hub thread must never route
    // replayed events, whose numbers the log then reuses (numbering restarts).
    rebuilt.store.forget_events();
    *state.write() = rebuilt.store;
    // Unbounded on purpose: one message per closed segment (every 64 MiB of
    // journal), and the snapshot thread coalesces a backlog into one snapshot.
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    // Segments closed by an earlier run that stopped before snapshotting them.
    let segments = persist::journal::list_segments(&layout.journal()).map_err(|e| e.to_string())?;
    if let [.., (last_first, _)] = segments.as_slice()
        && segments.len() > 1
    {
        let last_closed = beeld_layers::Seq(last_first.0.saturating_sub(1));
        if rebuilt
            .snapshot
            .as_ref()
            .is_none_or(|m| m.seq < last_closed)
        {
            let _ = closed_tx.send(last_closed);
        }
    }
    let journal = persist::Journal::start(
        persist::journal::WriterConfig {
            dir: layout.journal(),
            sync: config.journal_sync,
            segment_bytes: config.journal_segment_bytes,
        },
        &rebuilt.tail,
        closed_tx,
    )
    .map_err(|e| e.to_string())?;
    // Detached: it ends when the journal writer (its only sender) stops.
    persist::snapshot::spawn(
        layout.clone(),
        store_config,
        config.history_retention,
        closed_rx,
        pinned,
    )
    .map_err(|e| e.to_string())?;
    state.set_journal(journal.clone());
    if let (Some(url), Some(status)) = (&config.database_url, state.postgis()) {
        // Detached: it ends after `stop`, once it has copied what is durable.
        tokio::spawn(persist::postgis::copier(
            url.clone(),
            layout.journal(),
            journal.subscribe(),
            std::sync::Arc::clone(status),
            stop,
        ));
    }
    let rules = persist::rules::load(&config.data_dir).map_err(|e| e.to_string())?;
    let batch = match boundaries.await {
        Ok(Ok(batch)) => batch,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(e.to_string()),
    };
    let (n_boundaries, seq, ticket) = {
        let mut store = state.write();
        let applied = store.load(batch).map_err(|e| e.to_string())?;
        // Coverage rules come back with their ids, now that the hazards
        // and regions they name are in place.
        store.reserve_rule_ids(rules.next_id);
        for (id, body) in &rules.rules {
            let rule = http::joins::parse_rule(body).map_err(|p| {
                format!(
                    "{}: rule {id} cannot be read ({}); fix or remove it",
                    persist::rules::path(&config.data_dir).display(),
                    p.detail
                )
            })?;
            store.restore_rule(*id, rule, state::now()).map_err(|e| {
                format!(
                    "{}: rule {id}: {e}",
                    persist::rules::path(&config.data_dir).display()
                )
            })?;
        }
        // Placing recovered features in the regions again, and the alerts
        // of restored rules, are not news either.
        store.forget_events();
        // Boundaries are not journaled (they are reloaded from their
        // files), but their seqs are, so seqs never repeat across restarts.
        let ticket = applied
            .changes
            .first()
            .map(|first| journal.append_reserved(state::now(), first.3, applied.seq));
        (applied.changes.len(), applied.seq.0, ticket)
    };
    if let Some(ticket) = ticket {
        journal.wait(ticket).await.map_err(|e| e.to_string())?;
    }
    Ok((n_boundaries, n_records, seq))
}

/// With `--database-url`: migrates, and when the data directory holds no
/// journal yet (a new or replaced machine), loads the picture from PostGIS
/// and snapshots it so the journal continues from PostGIS's seq. PostGIS
/// being unreachable is not fatal: the journal is the durable store, and the
/// copier catches PostGIS up later.
async fn open_postgis(
    url: &str,
    layout: &persist::Layout,
    store_config: &beeld_layers::StoreConfig,
    rebuilt: &mut persist::recovery::Rebuilt,
) -> Result<(), String> {
    let pool = match persist::postgis::connect(url).await {
        Ok(pool) => pool,
        Err(e) => {
            tracing::warn!(error = %e, "postgis unreachable at start; serving from the journal, degraded");
            return Ok(());
        }
    };
    persist::postgis::migrate(&pool)
        .await
        .map_err(|e| e.to_string())?;
    let stored = persist::postgis::stored_seq(&pool)
        .await
        .map_err(|e| e.to_string())?;
    if rebuilt.seq.0 == 0 && stored.0 > 0 {
        let mut store = beeld_layers::Store::new(store_config.clone());
        let seq = persist::postgis::load(&pool, &mut store)
            .await
            .map_err(|e| e.to_string())?;
        let n_features: usize = beeld_layers::Collection::ALL
            .iter()
            .map(|c| store.len(*c))
            .sum();
        let snapshots = layout.snapshots();
        let store = tokio::task::spawn_blocking(move || {
            persist::snapshot::write(&snapshots, &store, seq, state::now()).map(|_| store)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        tracing::info!(
            seq = seq.0,
            n_features,
            "picture loaded from postgis (no journal in the data directory)"
        );
        rebuilt.store = store;
        rebuilt.seq = seq;
        rebuilt.tail.seq = seq;
    } else if stored > rebuilt.seq {
        return Err(format!(
            "postgis holds changes up to seq {stored} but the journal in {} only up to {}; the data directory is older than the database; move it away to load from postgis",
            layout.data_dir.display(),
            rebuilt.seq
        ));
    }
    pool.close().await;
    Ok(())
}
