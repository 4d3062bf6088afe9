//! `GET /events`: the live protocol as Server-Sent Events, for tools that
//! cannot speak WebSocket. One subscription per request, given in the query
//! string; every event's `id` is the seq the client is consistent with, so a
//! reconnecting client resumes through `Last-Event-ID`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::gate::Gate;
use super::protocol::{self, Outgoing};
use super::session::Session;
use crate::problem::Problem;
use crate::state::{StateHandle, now};

fn bad(detail: impl Into<String>) -> Problem {
    Problem::bad_request("invalid-parameter", detail)
}

fn event(message: Outgoing) -> Event {
    let mut event = Event::default().event(message.kind).data(message.text());
    if let Some(seq) = message.seq {
        event = event.id(seq.to_string());
    }
    event
}

/// `GET /events?collections=units,hazards&bbox=…[&precision=6][&deltas=true][&since=N][&epoch=E][&events=true][&events_since=N&events_run=R][&property=value…]`
pub async fn events(
    State(state): State<StateHandle>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let mut collections = Vec::new();
    let mut bbox = [-180.0, -90.0, 180.0, 90.0];
    let mut precision = None;
    let mut deltas = false;
    let mut events = false;
    let mut aggregates = None;
    let mut since = None;
    let mut epoch = None;
    let mut events_since = None;
    let mut events_run = None;
    let mut filters = Vec::new();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "collections" => collections.extend(value.split(',').map(str::to_owned)),
            "bbox" => {
                let numbers: Vec<f64> = value
                    .split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect();
                bbox = <[f64; 4]>::try_from(numbers.as_slice())
                    .map_err(|_| bad("bbox must be minLon,minLat,maxLon,maxLat"))?;
            }
            "precision" => {
                precision = Some(
                    value
                        .parse::<u8>()
                        .map_err(|_| bad("precision must be 0-15"))?,
                )
            }
            "deltas" => deltas = value == "true",
            "events" => events = value == "true",
            "aggregates" => {
                aggregates = Some(
                    value
                        .parse::<u8>()
                        .map_err(|_| bad("aggregates must be an H3 resolution 4-9"))?,
                )
            }
            "since" => {
                since = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| bad("since must be a seq number"))?,
                )
            }
            "epoch" => epoch = Some(value.into_owned()),
            "events_since" => {
                events_since = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| bad("events_since must be an event number"))?,
                )
            }
            "events_run" => events_run = Some(value.into_owned()),
            "access_token" => {}
            name if !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                filters.push((key.into_owned(), value.into_owned()))
            }
            other => return Err(bad(format!("unknown parameter '{other}'"))),
        }
    }
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        since = Some(
            last.trim()
                .parse::<u64>()
                .map_err(|_| bad("Last-Event-ID must be a seq number"))?,
        );
    }
    if collections.is_empty() {
        return Err(bad(
            "collections is required, e.g. collections=units,hazards",
        ));
    }
    let hub = state.hub().clone();
    let (conn, mut ticks, lagging) = hub.register();
    let mut session = Session::new(state.clone(), hub.clone(), conn);
    let options = super::session::Options {
        since,
        epoch,
        precision,
        deltas,
        events,
        events_since,
        events_run,
        aggregates,
    };
    let first = session.subscribe("events".to_owned(), &collections, bbox, filters, options);
    if session.subscriptions() == 0 {
        session.close();
        let detail = first
            .first()
            .map_or_else(String::new, |m| m.text().into_owned());
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-subscription",
            "Invalid subscription",
            detail,
        ));
    }
    // Bounded: if the HTTP response cannot drain, the session stops pulling
    // ticks, its hub queue fills and it gets a catch-up diff.
    let (tx, mut rx) = mpsc::channel::<Outgoing>(16);
    let config = hub.config().clone();
    let shut_down = hub.shut_down();
    hub.spawn(async move {
        let mut heartbeat = tokio::time::interval(config.heartbeat);
        heartbeat.reset();
        // As on a WebSocket (`ws::serve`): ticks first, and the rest
        // polled only when it woke the task, from futures made once.
        tokio::pin!(shut_down);
        let gone = tx.closed();
        tokio::pin!(gone);
        let (heartbeat_gate, shutdown_gate, gone_gate) = (Gate::new(), Gate::new(), Gate::new());
        let mut catch_ups: VecDeque<Instant> = VecDeque::new();
        let mut pending: Vec<Outgoing> = first;
        'serve: loop {
            for message in pending.drain(..) {
                if tx.send(message).await.is_err() {
                    break 'serve;
                }
            }
            pending = tokio::select! {
                biased;
                Some(tick) = ticks.recv() => {
                    // This tick and every one queued behind it, in order;
                    // the catch-up instead once one was dropped.
                    let mut out = Vec::new();
                    let mut next = Some(tick);
                    while let Some(tick) = next {
                        if lagging.swap(false, Ordering::Relaxed) {
                            match super::ws::catch_up(&mut session, &mut ticks, &mut catch_ups, config.max_resyncs_per_minute) {
                                Ok(more) => out.extend(more),
                                Err(reason) => out.push(protocol::error("too_slow", &reason, None)),
                            }
                            break;
                        }
                        out.extend(session.handle_tick(&tick));
                        next = ticks.try_recv().ok();
                    }
                    out
                }
                _ = poll_fn(|cx| heartbeat_gate.poll(cx, |cx| heartbeat.poll_tick(cx))) => vec![protocol::heartbeat(state.read().seq(), state.epoch(), &now().to_rfc3339())],
                () = poll_fn(|cx| shutdown_gate.poll(cx, |cx| shut_down.as_mut().poll(cx))) => break 'serve,
                () = poll_fn(|cx| gone_gate.poll(cx, |cx| gone.as_mut().poll(cx))) => break 'serve,
            };
        }
        session.close();
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|m| m.map(|m| Ok::<_, Infallible>(event(m))))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
