//! One connection's subscriptions. Transport-agnostic: the WebSocket and SSE
//! handlers feed it client messages and ticks and send what it returns.
//!
//! Each subscription is a [`View`] from `layers`, which decides what the
//! client must be told; this module only validates input, keeps the hub's
//! routes in step, and encodes messages. Store reads take the read lock
//! briefly, clone what they need and encode after releasing it.

use hashbrown::HashMap;
use std::sync::Arc;

use beeld_layers::view::{Item, RemoveReason, View, Viewport};
use beeld_layers::{Collection, Feature, FeatureId, Seq};
use geo::{Rect, coord};

use super::batch::{Batch, Hit, Search};
use super::hub::{ConnId, FanoutMode, Hub, Route, Tick};
use super::protocol::{self, ClientMessage, DiffWriter, Outgoing, Piece, SnapshotWriter};

/// Runs of at least this many bytes go to the socket as the batch's own
/// bytes; smaller ones are copied into the message.
const SPLICE_AT: usize = 2048;
use crate::output::{Precision, push_feature_with};
use crate::state::StateHandle;

#[derive(Debug)]
struct Subscription {
    key: u32,
    view: View,
    precision: Precision,
    deltas: bool,
    /// Whether enter/exit/alert events are streamed, and the last one sent.
    events: bool,
    last_event: u64,
    /// H3 resolution of streamed aggregates, and the counts last sent per cell.
    aggregates: Option<(u8, HashMap<u64, String>)>,
}

/// An owned [`Item`], so encoding can happen after the store lock is released.
enum Owned {
    Upsert(Collection, Feature),
    Remove(Collection, FeatureId, RemoveReason),
}

fn own(items: Vec<Item<'_>>) -> Vec<Owned> {
    items
        .into_iter()
        .map(|item| match item {
            Item::Upsert {
                collection,
                feature,
                ..
            } => Owned::Upsert(collection, feature.clone()),
            Item::Remove {
                collection,
                id,
                reason,
            } => Owned::Remove(collection, id, reason),
        })
        .collect()
}

/// One connection's state.
#[derive(Debug)]
pub struct Session {
    state: StateHandle,
    hub: Hub,
    conn: ConnId,
    /// Running replays, by id.
    replays: HashMap<String, tokio::sync::mpsc::Sender<super::replay::Control>>,
    /// Where replays send their messages; the transport drains the receiver.
    replay_out: tokio::sync::mpsc::Sender<Outgoing>,
    replay_in: Option<tokio::sync::mpsc::Receiver<Outgoing>>,
    subs: HashMap<String, Subscription>,
    names: HashMap<u32, String>,
    next_key: u32,
}

impl Session {
    /// A session for connection `conn`.
    pub fn new(state: StateHandle, hub: Hub, conn: ConnId) -> Session {
        // Bounded: a replay waits for the client instead of racing ahead.
        let (replay_out, replay_in) = tokio::sync::mpsc::channel(16);
        Session {
            state,
            hub,
            conn,
            replays: HashMap::new(),
            replay_out,
            replay_in: Some(replay_in),
            subs: HashMap::new(),
            names: HashMap::new(),
            next_key: 0,
        }
    }

    /// The receiver of replay messages; the transport takes it once.
    pub fn take_replay_messages(&mut self) -> Option<tokio::sync::mpsc::Receiver<Outgoing>> {
        self.replay_in.take()
    }

    fn replay(
        &mut self,
        id: String,
        collections: &[String],
        bbox: [f64; 4],
        from: &str,
        to: &str,
        speed: f64,
    ) -> Vec<Outgoing> {
        let fail = |code: &str, message: String| vec![protocol::error(code, &message, Some(&id))];
        let parsed = match parse_collections(collections) {
            Ok(parsed) => parsed,
            Err(message) => return fail("unknown_collection", message),
        };
        let rect = match check_bbox(bbox) {
            Ok(r) => r,
            Err(message) => return fail("bad_bbox", message),
        };
        let (Some(from), Some(to)) = (
            beeld_layers::Timestamp::parse_rfc3339(from),
            beeld_layers::Timestamp::parse_rfc3339(to),
        ) else {
            return fail(
                "bad_replay",
                "from and to must be RFC 3339 times".to_owned(),
            );
        };
        if from >= to || !speed.is_finite() || speed <= 0.0 {
            return fail(
                "bad_replay",
                "from must be before to, and speed positive".to_owned(),
            );
        }
        self.replays.retain(|_, tx| !tx.is_closed());
        if self.replays.len() >= 4 {
            return fail(
                "too_many_replays",
                "at most 4 replays per connection".to_owned(),
            );
        }
        let request = super::replay::Request {
            id: id.clone(),
            collections: parsed,
            bbox: rect,
            from,
            to,
            speed,
        };
        let control = super::replay::start(self.state.clone(), request, self.replay_out.clone());
        self.replays.insert(id, control);
        Vec::new()
    }

    /// Number of subscriptions.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// Handles one text message from the client.
    pub fn handle_text(&mut self, text: &str) -> Vec<Outgoing> {
        let message: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                return vec![protocol::error(
                    "bad_message",
                    &format!(
                        "not a valid message: {e}; see docs/protocol.md for subscribe, viewport, unsubscribe and ping"
                    ),
                    None,
                )];
            }
        };
        match message {
            ClientMessage::Subscribe {
                id,
                collections,
                bbox,
                filters,
                since,
                epoch,
                precision,
                deltas,
                events,
                events_since,
                events_run,
                aggregates,
            } => {
                let filters = filters
                    .into_iter()
                    .map(|(k, v)| (k, v.into_text()))
                    .collect();
                let options = Options {
                    since,
                    epoch,
                    precision,
                    deltas,
                    events,
                    events_since,
                    events_run,
                    aggregates,
                };
                self.subscribe(id, &collections, bbox, filters, options)
            }
            ClientMessage::Viewport { id, bbox } => self.move_viewport(&id, bbox),
            ClientMessage::Unsubscribe { id } => match self.subs.remove(&id) {
                Some(sub) => {
                    self.hub.remove_route(self.conn, sub.key);
                    self.names.remove(&sub.key);
                    vec![protocol::unsubscribed(&id)]
                }
                None => vec![protocol::error(
                    "unknown_subscription",
                    &format!("no subscription '{id}'"),
                    Some(&id),
                )],
            },
            ClientMessage::Ping { id } => {
                vec![protocol::pong(self.state.read().seq(), id.as_ref())]
            }
            ClientMessage::Replay {
                id,
                collections,
                bbox,
                from,
                to,
                speed,
            } => self.replay(id, &collections, bbox, &from, &to, speed.unwrap_or(1.0)),
            ClientMessage::ReplayControl { id, action, speed } => {
                let control = match (action.as_str(), speed) {
                    ("pause", _) => super::replay::Control::Pause,
                    ("resume", _) => super::replay::Control::Resume,
                    ("stop", _) => super::replay::Control::Stop,
                    ("speed", Some(s)) if s > 0.0 => super::replay::Control::Speed(s),
                    _ => {
                        return vec![protocol::error(
                            "bad_message",
                            "action must be pause, resume, stop, or speed with a positive speed",
                            Some(&id),
                        )];
                    }
                };
                match self.replays.get(&id) {
                    Some(tx) if tx.try_send(control).is_ok() => Vec::new(),
                    _ => vec![protocol::error(
                        "unknown_replay",
                        &format!("no running replay '{id}'"),
                        Some(&id),
                    )],
                }
            }
        }
    }

    /// Subscribes (or replaces the subscription with the same id).
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &mut self,
        id: String,
        collections: &[String],
        bbox: [f64; 4],
        filters: Vec<(String, String)>,
        options: Options,
    ) -> Vec<Outgoing> {
        let Options {
            since,
            epoch,
            precision,
            deltas,
            events,
            events_since,
            events_run,
            aggregates,
        } = options;
        // A seq from another history (the data directory was replaced and
        // seqs started over) could name a point here that means something
        // else: never resume from it, always resync.
        let foreign = epoch
            .as_deref()
            .is_some_and(|e| !self.state.epoch().is_empty() && e != self.state.epoch());
        let (since, resync) = if foreign {
            (None, true)
        } else {
            (since, since.is_some())
        };
        // Event numbers start over with every run of the server.
        let other_run = events_run.as_deref().is_some_and(|r| r != self.state.run());
        let events_elsewhere = foreign || other_run;
        if aggregates.is_some_and(|r| !beeld_layers::relate::H3_RESOLUTIONS.contains(&r)) {
            return vec![protocol::error(
                "bad_subscription",
                "aggregates must be an H3 resolution from 4 to 9",
                Some(&id),
            )];
        }
        let fail = |code: &str, message: String| vec![protocol::error(code, &message, Some(&id))];
        if id.is_empty() || id.len() > 64 {
            return fail(
                "bad_subscription",
                "subscription id must be 1-64 characters".to_owned(),
            );
        }
        if !self.subs.contains_key(&id) && self.subs.len() >= self.hub.config().max_subscriptions {
            return fail(
                "too_many_subscriptions",
                format!(
                    "at most {} subscriptions per connection",
                    self.hub.config().max_subscriptions
                ),
            );
        }
        let parsed = match parse_collections(collections) {
            Ok(parsed) => parsed,
            Err(message) => return fail("unknown_collection", message),
        };
        if parsed.is_empty() {
            return fail(
                "bad_subscription",
                "collections must name at least one collection".to_owned(),
            );
        }
        if precision.is_some_and(|p| p > super::hub::MAX_PRECISION) {
            return fail(
                "bad_subscription",
                "precision must be 0-15 decimals".to_owned(),
            );
        }
        let rect = match check_bbox(bbox) {
            Ok(r) => r,
            Err(message) => return fail("bad_bbox", message),
        };
        if let Some(old) = self.subs.remove(&id) {
            self.hub.remove_route(self.conn, old.key);
            self.names.remove(&old.key);
        }
        let key = self.next_key;
        self.next_key += 1;
        let viewport = Viewport {
            collections: parsed.clone(),
            bbox: rect,
            filters,
        };
        // Route first, then read the store: every change after the read is
        // routed to us (docs/protocol.md, "Consistency").
        let route = Route {
            collections: parsed.clone(),
            bbox: rect,
            events,
            runs: viewport.filters.is_empty().then_some((precision, deltas)),
        };
        self.hub.set_route(self.conn, key, route);
        let mut sub = Subscription {
            key,
            view: View::new(viewport),
            precision,
            deltas,
            events,
            last_event: 0,
            aggregates: aggregates.map(|r| (r, HashMap::new())),
        };
        let store = self.state.read();
        let events_message = events.then(|| {
            missed_events(
                &store,
                &mut sub,
                (&id, self.state.run()),
                events_since,
                events_elsewhere,
            )
        });
        let aggregates_message = aggregate_changes(&store, &mut sub, &id, true);
        let resumed =
            since.and_then(|s| sub.view.resume(&store, Seq(s)).map(|items| (s, own(items))));
        let message = match resumed {
            Some((since, items)) => {
                let seq = sub.view.seq();
                drop(store);
                encode_diff(&self.hub, &mut sub, &id, Seq(since), seq, items)
            }
            None => fresh_snapshot(&self.hub, &self.state, store, &mut sub, &id, resync),
        };
        self.names.insert(key, id.clone());
        self.subs.insert(id, sub);
        let mut out = vec![message];
        out.extend(events_message);
        out.extend(aggregates_message);
        out
    }

    fn move_viewport(&mut self, id: &str, bbox: [f64; 4]) -> Vec<Outgoing> {
        let rect = match check_bbox(bbox) {
            Ok(r) => r,
            Err(message) => return vec![protocol::error("bad_bbox", &message, Some(id))],
        };
        let Some(sub) = self.subs.get_mut(id) else {
            return vec![protocol::error(
                "unknown_subscription",
                &format!("no subscription '{id}'"),
                Some(id),
            )];
        };
        let viewport = Viewport {
            bbox: rect,
            ..sub.view.viewport().clone()
        };
        let route = Route {
            collections: viewport.collections.clone(),
            bbox: rect,
            events: sub.events,
            runs: viewport
                .filters
                .is_empty()
                .then_some((sub.precision, sub.deltas)),
        };
        self.hub.set_route(self.conn, sub.key, route);
        let from = sub.view.seq();
        let store = self.state.read();
        let moved = sub.view.move_to(&store, viewport).map(own);
        let to = sub.view.seq();
        let aggregates = aggregate_changes(&store, sub, id, true);
        let message = match moved {
            Some(items) => {
                drop(store);
                encode_diff(&self.hub, sub, id, from, to, items)
            }
            // The change log no longer reaches back to what the client
            // holds: it gets the new viewport whole.
            None => fresh_snapshot(&self.hub, &self.state, store, sub, id, true),
        };
        let mut out = vec![message];
        out.extend(aggregates);
        out
    }

    /// The hub's last routed seq (`Hub::routed`).
    pub fn routed(&self) -> Seq {
        self.hub.routed(self.conn)
    }

    /// Moves every quiet subscription up to `seq`, the hub's last routed
    /// tick: the transport calls this when its tick queue is empty and it
    /// is not lagging, so nothing routed up to `seq` is pending
    /// (`View::quiet_until`). Keeps a viewport move a diff, not a resync,
    /// for a client whose area saw no change for longer than the change
    /// log reaches back.
    pub fn quiet_until(&mut self, seq: Seq) {
        for sub in self.subs.values_mut() {
            sub.view.quiet_until(seq);
        }
    }

    /// Applies one tick from the hub.
    pub fn handle_tick(&mut self, tick: &Tick) -> Vec<Outgoing> {
        let mut out = self.tick_features(tick);
        let mut by_sub: HashMap<u32, Vec<&super::hub::EventDelivery>> = HashMap::new();
        for (key, event) in &tick.events {
            by_sub.entry(*key).or_default().push(event);
        }
        for (key, events) in by_sub {
            let Some(name) = self.names.get(&key) else {
                continue;
            };
            let Some(sub) = self.subs.get_mut(name) else {
                continue;
            };
            let fresh: Vec<&str> = events
                .iter()
                .filter(|e| e.n > sub.last_event)
                .map(|e| &*e.json)
                .collect();
            let Some(newest) = events
                .iter()
                .map(|e| e.n)
                .max()
                .filter(|n| *n > sub.last_event)
            else {
                continue;
            };
            out.push(protocol::events(
                name,
                self.state.run(),
                (sub.last_event, newest),
                false,
                &fresh,
            ));
            sub.last_event = newest;
        }
        out
    }

    fn tick_features(&mut self, tick: &Tick) -> Vec<Outgoing> {
        let batch = &*tick.batch;
        let naive = self.hub.config().fanout == FanoutMode::Naive;
        let mut out = Vec::new();
        let mut delivered = 0u64;
        for (name, sub) in &mut self.subs {
            // Ticks reach a connection in order and none was dropped (that
            // would have made it catch up instead), so every tick before
            // this one that concerned the view was taken: a view behind
            // `batch.from` was told of nothing since its seq.
            sub.view.quiet_until(batch.from);
            let Some(from) = sub.view.begin_tick(batch.seq) else {
                continue;
            };
            let viewport = sub.view.viewport();
            let bbox = viewport.bbox;
            let how = if naive {
                Search::Naive
            } else if viewport.filters.is_empty() && from == batch.from {
                // Every change in a cell inside the viewport is an upsert,
                // in the encoding every such view gets (`Batch::search`).
                Search::Runs(sub.precision, sub.deltas)
            } else {
                Search::OneByOne
            };
            let mut writer = DiffWriter::default();
            let mut concerned = false;
            for &collection in &viewport.collections {
                batch.search(collection, &bbox, how, |hit| {
                    concerned = true;
                    let delivery = match hit {
                        Hit::Run(run) => {
                            delivered += run.count as u64;
                            // Copying a small run costs less than sharing it.
                            if run.text.len() >= SPLICE_AT {
                                let bytes = Batch::share(&tick.batch, &run);
                                writer.upsert(collection, Piece::Spliced(bytes, run.text));
                            } else {
                                writer.upsert(collection, run.text);
                            }
                            return;
                        }
                        Hit::One(delivery) => delivery,
                    };
                    match sub
                        .view
                        .update(from, &delivery.change(batch.seq), sub.deltas)
                    {
                        Some(Item::Upsert {
                            collection,
                            feature,
                            previous,
                        }) => {
                            delivered += 1;
                            // A delta only for a client holding the version
                            // the hub diffed against; otherwise the whole
                            // feature.
                            let delta = sub.deltas
                                && previous.is_some()
                                && previous == delivery.previous_seq();
                            // Borrows the tick's shared bytes.
                            match delivery.variant(sub.precision, delta) {
                                Some(json) => writer.upsert(collection, json),
                                None => {
                                    let json = encode_feature(
                                        &self.hub,
                                        sub.precision,
                                        (collection, feature),
                                        batch.seq,
                                    );
                                    writer.upsert(collection, json);
                                }
                            }
                        }
                        Some(Item::Remove {
                            collection,
                            id,
                            reason,
                        }) => {
                            delivered += 1;
                            writer.remove(collection, &id, reason);
                        }
                        None => {}
                    }
                });
            }
            if !writer.is_empty() {
                out.push(writer.finish(name, from, batch.seq));
            }
            if concerned && sub.aggregates.is_some() {
                // Aggregates change only with features this tick touched;
                // counting once per tick coalesces every change within it.
                let store = self.state.read();
                out.extend(aggregate_changes(&store, sub, name, false));
            }
        }
        self.hub.stats().count_deliveries(delivered);
        out
    }

    /// Brings a client that fell behind (its ticks were dropped) up to date
    /// with one collapsed `diff` per subscription, marked `catch_up`, of
    /// what changed since the view's seq (from the change log); a `resync`
    /// snapshot where the log no longer reaches back that far.
    pub fn catch_up(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for (name, sub) in &mut self.subs {
            let from = sub.view.seq();
            let store = self.state.read();
            match sub.view.catch_up(&store).map(own) {
                Some(items) => {
                    let to = sub.view.seq();
                    drop(store);
                    out.push(encode_items(
                        &self.hub,
                        DiffWriter::catch_up(),
                        sub,
                        name,
                        from,
                        to,
                        items,
                    ));
                }
                // Fell behind further than the change log reaches.
                None => out.push(fresh_snapshot(
                    &self.hub,
                    &self.state,
                    store,
                    sub,
                    name,
                    true,
                )),
            }
        }
        out
    }

    /// Removes every route of this connection (at disconnect).
    pub fn close(&mut self) {
        self.hub.unregister(self.conn);
        self.subs.clear();
    }
}

/// Collection ids, deduplicated in the order given.
fn parse_collections(names: &[String]) -> Result<Vec<Collection>, String> {
    let mut parsed = Vec::new();
    for name in names {
        let collection = name.parse::<Collection>().map_err(|e| e.to_string())?;
        if !parsed.contains(&collection) {
            parsed.push(collection);
        }
    }
    Ok(parsed)
}

/// The aggregates of a subscription's viewport that differ from what was
/// last sent (all of them with `reset`), as one message, if any.
fn aggregate_changes(
    store: &beeld_layers::Store,
    sub: &mut Subscription,
    name: &str,
    reset: bool,
) -> Option<Outgoing> {
    let bbox = sub.view.viewport().bbox;
    let (resolution, sent) = sub.aggregates.as_mut()?;
    let mut now: HashMap<u64, Vec<serde_json::Value>> = HashMap::new();
    for (cell, category, count) in store
        .relations()
        .h3_counts(*resolution, &bbox)
        .unwrap_or_default()
    {
        now.entry(cell)
            .or_default()
            .push(crate::http::joins::category_json(category, count));
    }
    let now: HashMap<u64, String> = now
        .into_iter()
        .map(|(cell, counts)| (cell, serde_json::Value::Array(counts).to_string()))
        .collect();
    let mut changed: Vec<(u64, String)> = if reset {
        now.iter().map(|(c, j)| (*c, j.clone())).collect()
    } else {
        let mut changed: Vec<(u64, String)> = now
            .iter()
            .filter(|(c, j)| sent.get(*c) != Some(*j))
            .map(|(c, j)| (*c, j.clone()))
            .collect();
        changed.extend(
            sent.keys()
                .filter(|c| !now.contains_key(*c))
                .map(|c| (*c, "[]".to_owned())),
        );
        changed
    };
    if changed.is_empty() && !reset {
        return None;
    }
    changed.sort_unstable_by_key(|(c, _)| *c);
    *sent = now;
    Some(protocol::aggregates(
        name,
        store.seq(),
        *resolution,
        reset,
        &changed,
    ))
}

/// Subscription options beyond the viewport.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Resume after this seq.
    pub since: Option<u64>,
    /// Coordinate decimals.
    pub precision: Option<u8>,
    /// Field-level deltas.
    pub deltas: bool,
    /// The epoch `since` and `events_since` belong to, if the client knows.
    pub epoch: Option<String>,
    /// Stream enter/exit/alert events.
    pub events: bool,
    /// Resume events after this number.
    pub events_since: Option<u64>,
    /// The run `events_since` belongs to, if the client knows.
    pub events_run: Option<String>,
    /// Stream H3 counts at this resolution.
    pub aggregates: Option<u8>,
}

/// The first `events` message of a subscription: what it missed since
/// `events_since` (only events touching its viewport, and every alert), or a
/// resync marker when the log no longer reaches back or the number is from
/// `elsewhere` (another run or epoch); without `events_since` an empty
/// message that says where the stream starts.
fn missed_events(
    store: &beeld_layers::Store,
    sub: &mut Subscription,
    (name, run): (&str, &str),
    events_since: Option<u64>,
    elsewhere: bool,
) -> Outgoing {
    use beeld_layers::relate::EventKind;
    let log = store.relations().events();
    let newest = log.last();
    sub.last_event = newest;
    let Some(after) = events_since else {
        return protocol::events(name, run, (newest, newest), false, &[]);
    };
    // A number from another run or history, or past the newest event,
    // names other events than ours: resync.
    if elsewhere || after > newest {
        return protocol::events(name, run, (newest, newest), true, &[]);
    }
    let Some(missed) = log.since(after) else {
        return protocol::events(name, run, (after, newest), true, &[]);
    };
    let bbox = sub.view.viewport().bbox;
    let json: Vec<String> = missed
        .filter(|event| match &event.kind {
            EventKind::Enter { unit, hazard } | EventKind::Exit { unit, hazard } => [
                store.get(Collection::Units, unit),
                store.get(Collection::Hazards, hazard),
            ]
            .into_iter()
            .flatten()
            .any(|f| f.shape.intersects_rect(&bbox)),
            EventKind::AlertRaised { .. } | EventKind::AlertCleared { .. } => true,
        })
        .map(|event| crate::http::joins::event_json(event).to_string())
        .collect();
    let refs: Vec<&str> = json.iter().map(String::as_str).collect();
    protocol::events(name, run, (after, newest), false, &refs)
}

fn check_bbox(bbox: [f64; 4]) -> Result<Rect<f64>, String> {
    let [min_x, min_y, max_x, max_y] = bbox;
    if !bbox.iter().all(|v| v.is_finite()) {
        return Err("bbox must be four finite numbers [minLon, minLat, maxLon, maxLat]".to_owned());
    }
    if !(-180.0..=180.0).contains(&min_x)
        || !(-180.0..=180.0).contains(&max_x)
        || !(-90.0..=90.0).contains(&min_y)
        || !(-90.0..=90.0).contains(&max_y)
    {
        return Err(format!(
            "bbox {bbox:?} is outside WGS84 lon/lat range (RD New metres are not accepted)"
        ));
    }
    if min_x > max_x || min_y > max_y {
        return Err(format!("bbox {bbox:?} has min above max"));
    }
    Ok(Rect::new(
        coord! { x: min_x, y: min_y },
        coord! { x: max_x, y: max_y },
    ))
}

/// A fresh `snapshot` of the subscription's viewport; `resync` marks one
/// that replaces a state the client held but that can no longer be diffed.
/// The features are cloned and the store lock released before encoding.
fn fresh_snapshot(
    hub: &Hub,
    state: &StateHandle,
    store: std::sync::RwLockReadGuard<'_, beeld_layers::Store>,
    sub: &mut Subscription,
    name: &str,
    resync: bool,
) -> Outgoing {
    let features: Vec<(Collection, Feature)> = sub
        .view
        .snapshot(&store)
        .into_iter()
        .map(|(c, f)| (c, f.clone()))
        .collect();
    drop(store);
    let seq = sub.view.seq();
    let collections = sub.view.viewport().collections.clone();
    encode_snapshot(
        hub,
        sub,
        name,
        (state.epoch(), seq),
        resync,
        &collections,
        &features,
    )
}

fn encode_snapshot(
    hub: &Hub,
    sub: &mut Subscription,
    name: &str,
    (epoch, seq): (&str, Seq),
    resync: bool,
    collections: &[Collection],
    features: &[(Collection, Feature)],
) -> Outgoing {
    let mut writer = SnapshotWriter::new(name, epoch, seq, resync, collections);
    for (collection, feature) in features {
        let json = encode_feature(hub, sub.precision, (*collection, feature), seq);
        writer.feature(*collection, &json);
    }
    writer.finish()
}

fn encode_diff(
    hub: &Hub,
    sub: &mut Subscription,
    name: &str,
    from: Seq,
    to: Seq,
    items: Vec<Owned>,
) -> Outgoing {
    encode_items(hub, DiffWriter::default(), sub, name, from, to, items)
}

fn encode_items(
    hub: &Hub,
    mut writer: DiffWriter,
    sub: &mut Subscription,
    name: &str,
    from: Seq,
    to: Seq,
    items: Vec<Owned>,
) -> Outgoing {
    for item in items {
        match item {
            Owned::Upsert(collection, feature) => {
                let json = encode_feature(hub, sub.precision, (collection, &feature), to);
                writer.upsert(collection, json);
            }
            Owned::Remove(collection, id, reason) => {
                writer.remove(collection, &id, reason);
            }
        }
    }
    writer.finish(name, from, to)
}

/// The whole feature at the subscription's precision, for snapshots and
/// catch-ups. Deltas are only sent on ticks, where the hub computes each
/// once for every client (`Delivery::variant`); a client that fell behind
/// gets whole features, which replace whatever version it held. `at`: a
/// seq at which `feature` was the current version.
fn encode_feature(
    hub: &Hub,
    precision: Precision,
    (collection, feature): (Collection, &Feature),
    at: Seq,
) -> Arc<str> {
    // Always through the hub, which so learns the version this client now
    // holds: a change coalesced into the same tick as this snapshot is then
    // still sent as a delta from it.
    let full = hub.encoded(collection, feature, at);
    if precision.is_none() {
        return full;
    }
    let mut json = String::with_capacity(320);
    push_feature_with(&mut json, feature, precision);
    json.into()
}
