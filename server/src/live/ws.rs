//! `GET /ws`: the live protocol over WebSocket (axum on tokio-tungstenite).
//!
//! Per connection: inbound messages are size- and rate-limited; a bad
//! message gets an `error` and the connection stays open. Every heartbeat
//! interval the server sends a WebSocket ping and a `heartbeat` message with
//! the current seq; a client silent for three intervals is closed. Writes
//! have a timeout, and a client that has to catch up too often is
//! closed with a reason saying so: slow clients never hold up others.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};

use super::hub::Hub;
use super::protocol::{self, Outgoing};
use super::session::Session;
use crate::state::{StateHandle, now};

/// Close codes (RFC 6455).
const GOING_AWAY: u16 = 1001;
const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;

/// How server messages are framed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// JSON text frames (the default).
    Text,
    /// Each message raw-DEFLATE-compressed in a binary frame
    /// (`?compress=deflate-raw`): about 7x smaller for diffs (BENCHMARKS.md),
    /// for tablets on mobile links; costs server CPU, so it is opt-in.
    DeflateRaw,
}

fn compress(json: &str) -> Option<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(json.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(json.as_bytes()).ok()?;
    encoder.finish().ok()
}

/// `GET /ws[?compress=deflate-raw]`
pub async fn upgrade(
    State(state): State<StateHandle>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    ws: WebSocketUpgrade,
) -> Result<Response, crate::problem::Problem> {
    let mut framing = Framing::Text;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            ("compress", "deflate-raw") => framing = Framing::DeflateRaw,
            ("compress", other) => {
                return Err(crate::problem::Problem::bad_request(
                    "invalid-parameter",
                    format!("compress={other} is not supported; use compress=deflate-raw"),
                ));
            }
            _ => {}
        }
    }
    let hub = state.hub().clone();
    let limit = hub.config().max_message_bytes;
    // Small read buffer: an idle connection must stay cheap (BENCHMARKS.md).
    Ok(ws
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve(state, hub, socket, framing)))
}

/// A token bucket for inbound messages.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn serve(state: StateHandle, hub: Hub, socket: WebSocket, framing: Framing) {
    let config = hub.config().clone();
    let (conn, mut ticks, lagging) = hub.register();
    let mut session = Session::new(state.clone(), hub.clone(), conn);
    let mut replays = session.take_replay_messages();
    let (mut sink, mut stream) = socket.split();
    let mut shutdown = hub.shutdown_signal();
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.reset();
    let mut last_heard = Instant::now();
    let rate = f64::from(config.messages_per_second.max(1));
    let mut bucket = Bucket {
        tokens: 2.0 * rate,
        rate,
        burst: 2.0 * rate,
        at: Instant::now(),
    };
    let mut rejected = 0u32;
    let mut catch_ups: VecDeque<Instant> = VecDeque::new();
    tracing::debug!(conn, "websocket connected");

    let close: Option<(u16, String)> = loop {
        let out: Vec<Outgoing> = tokio::select! {
            inbound = stream.next() => match inbound {
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    if bucket.take() {
                        session.handle_text(text.as_str())
                    } else {
                        rejected += 1;
                        if rejected > 10 * config.messages_per_second {
                            break Some((POLICY, format!("too many messages: more than {} per second", config.messages_per_second)));
                        }
                        vec![protocol::error("rate_limited", &format!("more than {} messages per second; this one was ignored", config.messages_per_second), None)]
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    last_heard = Instant::now();
                    vec![protocol::error("bad_message", "binary frames are not part of the protocol; send JSON text", None)]
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                    last_heard = Instant::now();
                    Vec::new()
                }
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Err(e)) => {
                    let text = e.to_string();
                    if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
                        break Some((TOO_BIG, format!("message larger than {} bytes", config.max_message_bytes)));
                    }
                    break None;
                }
            },
            Some(mut tick) = ticks.recv() => {
                tick.absorb_queued(&mut ticks);
                if lagging.swap(false, Ordering::Relaxed) {
                    match catch_up(&mut session, &mut ticks, &mut catch_ups, config.max_resyncs_per_minute) {
                        Ok(out) => out,
                        Err(reason) => break Some((POLICY, reason)),
                    }
                } else {
                    session.handle_tick(&tick)
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > 3 * config.heartbeat {
                    break Some((GOING_AWAY, "no message or pong for three heartbeats".to_owned()));
                }
                let mut out = Vec::new();
                if lagging.swap(false, Ordering::Relaxed) {
                    match catch_up(&mut session, &mut ticks, &mut catch_ups, config.max_resyncs_per_minute) {
                        Ok(more) => out.extend(more),
                        Err(reason) => break Some((POLICY, reason)),
                    }
                }
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break None;
                }
                out.push(protocol::heartbeat(state.read().seq(), state.epoch(), &now().to_rfc3339()));
                out
            }
            Some(message) = async {
                match replays.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => vec![message],
            _ = shutdown.changed() => break Some((GOING_AWAY, "server shutting down".to_owned())),
        };
        if out.is_empty() {
            continue;
        }
        // One flush per batch of messages: a tick is one write.
        let write = async {
            for message in out {
                let frame = match framing {
                    Framing::Text => Message::Text(message.json.into()),
                    Framing::DeflateRaw => match compress(&message.json) {
                        Some(bytes) => Message::Binary(bytes.into()),
                        None => Message::Text(message.json.into()),
                    },
                };
                sink.feed(frame).await?;
            }
            sink.flush().await
        };
        match tokio::time::timeout(config.write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break None,
            Err(_) => {
                break Some((
                    POLICY,
                    format!(
                        "client too slow: a write took over {} s",
                        config.write_timeout.as_secs()
                    ),
                ));
            }
        }
    };
    session.close();
    if let Some((code, reason)) = close {
        tracing::info!(conn, code, %reason, "closing websocket");
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(config.write_timeout, sink.send(Message::Close(Some(frame))))
            .await;
    }
    tracing::debug!(conn, "websocket disconnected");
}

/// Drops queued ticks and sends the collapsed catch-up, unless the client
/// lags too often.
pub(super) fn catch_up(
    session: &mut Session,
    ticks: &mut tokio::sync::mpsc::Receiver<super::hub::Tick>,
    catch_ups: &mut VecDeque<Instant>,
    max_per_minute: usize,
) -> Result<Vec<Outgoing>, String> {
    while ticks.try_recv().is_ok() {}
    let now = Instant::now();
    catch_ups.push_back(now);
    while catch_ups
        .front()
        .is_some_and(|t| now.duration_since(*t).as_secs() >= 60)
    {
        catch_ups.pop_front();
    }
    if catch_ups.len() > max_per_minute {
        return Err(format!(
            "client too slow: fell behind {} times in a minute",
            catch_ups.len()
        ));
    }
    tracing::info!(
        catch_ups = catch_ups.len(),
        "client fell behind; catching up"
    );
    Ok(session.catch_up())
}
