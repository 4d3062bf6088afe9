//! Replay for after-action review: the picture of a viewport from T1 to T2,
//! streamed as it happened, at a speed factor, pausable.
//!
//! The start is rebuilt from the retained history (`persist::history`),
//! then the journaled changes are applied to that private copy frame by frame
//! (one frame per 100 ms of wall time, covering `100 ms × speed` of recorded
//! time) and turned into `diff` messages by the same [`View`] as live
//! clients: a replay client holds exactly what a live client would have held
//! at each recorded instant. The task is owned by its session and stops with
//! it, on `stop`, or at T2.

use std::time::{Duration, Instant};

use beeld_layers::view::{Item, RemoveReason, View, Viewport};
use beeld_layers::{Collection, Feature, Seq, StoreConfig, Timestamp};
use geo::Rect;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use tokio::sync::mpsc;

use super::protocol::{self, DiffWriter, Outgoing, SnapshotWriter};
use crate::output::{push_feature, push_json_str};
use crate::persist::codec::Change;
use crate::persist::{Layout, history};
use crate::state::StateHandle;

/// The most changes one replay reads; longer windows must be split.
pub const MAX_CHANGES: usize = 2_000_000;

/// Wall time per replay frame.
const FRAME: Duration = Duration::from_millis(100);

/// What a replay shows.
#[derive(Debug, Clone)]
pub struct Request {
    /// The replay's id (like a subscription id).
    pub id: String,
    /// Collections.
    pub collections: Vec<Collection>,
    /// Viewport.
    pub bbox: Rect<f64>,
    /// Start.
    pub from: Timestamp,
    /// End.
    pub to: Timestamp,
    /// Recorded seconds per wall-clock second.
    pub speed: f64,
}

/// Steering a running replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Control {
    /// Hold.
    Pause,
    /// Continue.
    Resume,
    /// End now.
    Stop,
    /// Change the speed.
    Speed(f64),
}

fn mark(message: Outgoing, kind: &str, at: Timestamp) -> Outgoing {
    // Replay messages are live messages plus `"replay": true` and the
    // recorded instant they show.
    let prefix = format!("{{\"type\":\"{kind}\"");
    let json = message.json.replacen(
        &prefix,
        &format!("{prefix},\"replay\":true,\"at\":\"{}\"", at.to_rfc3339()),
        1,
    );
    // The prefix opens the message, before anything spliced.
    let grown = json.len() - message.json.len();
    let spliced = message
        .spliced
        .into_iter()
        .map(|(offset, bytes)| (offset + grown, bytes))
        .collect();
    Outgoing {
        json,
        spliced,
        ..message
    }
}

/// Starts a replay; its messages go to `out`. Returns the control channel.
pub fn start(
    state: StateHandle,
    request: Request,
    out: mpsc::Sender<Outgoing>,
) -> mpsc::Sender<Control> {
    let (control_tx, control_rx) = mpsc::channel(8);
    tokio::spawn(run(state, request, out, control_rx));
    control_tx
}

async fn run(
    state: StateHandle,
    request: Request,
    out: mpsc::Sender<Outgoing>,
    mut control: mpsc::Receiver<Control>,
) {
    let layout = Layout::new(&state.config().data_dir);
    // Expiries are journaled as changes; the copy must not expire by itself.
    let store_config = StoreConfig {
        ttl_ms: [None; 5],
        change_log_capacity: 1,
    };
    let (from, to) = (request.from, request.to);
    let loaded = tokio::task::spawn_blocking(move || {
        let rebuilt = history::picture_at(&layout, store_config, from)?;
        let mut changes = Vec::new();
        history::changes_between(&layout, from, to, |c| {
            changes.push(c);
            changes.len() < MAX_CHANGES
        })?;
        Ok::<_, crate::persist::Error>((rebuilt.store, changes))
    })
    .await;
    let (mut store, changes) = match loaded {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(e)) => {
            let _ = out
                .send(protocol::error(
                    "replay_unavailable",
                    &format!("no history for that window: {e}"),
                    Some(&request.id),
                ))
                .await;
            return;
        }
        Err(e) => {
            let _ = out
                .send(protocol::error(
                    "replay_unavailable",
                    &e.to_string(),
                    Some(&request.id),
                ))
                .await;
            return;
        }
    };
    let viewport = Viewport {
        collections: request.collections.clone(),
        bbox: request.bbox,
        filters: Vec::new(),
    };
    let mut view = View::new(viewport);
    let mut snapshot = SnapshotWriter::new(
        &request.id,
        state.epoch(),
        store.seq(),
        false,
        &request.collections,
    );
    for (collection, feature) in view.snapshot(&store) {
        let mut json = String::new();
        push_feature(&mut json, feature);
        snapshot.feature(collection, &json);
    }
    if out
        .send(mark(snapshot.finish(), "snapshot", from))
        .await
        .is_err()
    {
        return;
    }
    let mut speed = request.speed.max(0.001);
    let mut recorded = from;
    let mut changes = changes.into_iter().peekable();
    let mut next_wall = Instant::now();
    'frames: while changes.peek().is_some() {
        // Steering: pause blocks until resume or stop.
        while let Ok(message) = control.try_recv() {
            match message {
                Control::Stop => break 'frames,
                Control::Speed(s) => speed = s.max(0.001),
                Control::Resume => {}
                Control::Pause => loop {
                    match control.recv().await {
                        Some(Control::Resume) => {
                            next_wall = Instant::now();
                            break;
                        }
                        Some(Control::Speed(s)) => speed = s.max(0.001),
                        Some(Control::Pause) => {}
                        Some(Control::Stop) | None => break 'frames,
                    }
                },
            }
        }
        next_wall += FRAME;
        tokio::time::sleep_until(next_wall.into()).await;
        recorded = recorded.plus_millis((FRAME.as_secs_f64() * speed * 1000.0) as i64);
        // Per feature touched in this frame: the version before its first
        // change here, that change's seq, and why it is gone if it is.
        type Touched = (Option<Feature>, Seq, RemoveReason);
        let mut touched: HashMap<(Collection, beeld_layers::FeatureId), Touched> = HashMap::new();
        let mut order: Vec<(Collection, beeld_layers::FeatureId)> = Vec::new();
        while let Some(change) = changes.next_if(|c| c.at <= recorded) {
            let reason = RemoveReason::gone(&change.cause);
            let (collection, id, seq) = match &change.change {
                Change::Upsert(collection, feature) => {
                    (*collection, std::sync::Arc::clone(&feature.id), feature.seq)
                }
                Change::Delete(collection, id, seq) => {
                    (*collection, std::sync::Arc::clone(id), *seq)
                }
                Change::Superseded(..) => continue,
            };
            match touched.entry((collection, std::sync::Arc::clone(&id))) {
                Entry::Occupied(mut entry) => entry.get_mut().2 = reason,
                Entry::Vacant(entry) => {
                    order.push(entry.key().clone());
                    entry.insert((store.get(collection, &id).cloned(), seq, reason));
                }
            }
            match change.change {
                Change::Upsert(collection, feature) => {
                    store.restore(collection, feature, Some(change.cause));
                }
                Change::Delete(collection, id, seq) => {
                    store.restore_delete(collection, &id, seq, change.cause, change.at);
                }
                Change::Superseded(..) => {}
            }
        }
        let Some(from_seq) = (!touched.is_empty())
            .then(|| view.begin_tick(store.seq()))
            .flatten()
        else {
            continue;
        };
        let mut diff = DiffWriter::default();
        for key in order {
            let Some((before, first, reason)) = touched.get(&key) else {
                continue;
            };
            let (collection, id) = key;
            let change = beeld_layers::view::Change {
                collection,
                id: &id,
                routed: view.seq(),
                current: store.get(collection, &id),
                gone: *reason,
                first: *first,
                before: before.as_ref().map_or(
                    beeld_layers::view::Before::Absent,
                    beeld_layers::view::Before::Was,
                ),
            };
            match view.update(from_seq, &change, false) {
                Some(Item::Upsert {
                    collection,
                    feature,
                    ..
                }) => {
                    let mut json = String::new();
                    push_feature(&mut json, feature);
                    diff.upsert(collection, json);
                }
                Some(Item::Remove {
                    collection,
                    id,
                    reason,
                }) => diff.remove(collection, &id, reason),
                None => {}
            }
        }
        if !diff.is_empty()
            && out
                .send(mark(
                    diff.finish(&request.id, from_seq, view.seq()),
                    "diff",
                    recorded.min(to),
                ))
                .await
                .is_err()
        {
            return;
        }
    }
    let mut json = String::from("{\"type\":\"replay_end\",\"sub\":");
    push_json_str(&mut json, &request.id);
    json.push_str(&format!(",\"at\":\"{}\"}}", recorded.min(to).to_rfc3339()));
    let _ = out.send(Outgoing::new("replay_end", None, json)).await;
}
