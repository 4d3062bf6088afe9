//! `GET /ws`: the live protocol over WebSocket (the RFC 6455 upgrade on
//! axum, tokio-tungstenite for reading and control frames, data frames
//! through [`super::queued`]).
//!
//! Per connection: inbound messages are size- and rate-limited; a bad
//! message gets an `error` and the connection stays open. Every heartbeat
//! interval the server sends a WebSocket ping and a `heartbeat` message with
//! the current seq; a client silent for three intervals is closed. Writes
//! have a timeout, and a client that has to catch up too often is
//! closed with a reason saying so: slow clients never hold up others.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::gate::Gate;
use super::hub::{Hub, Tick};
use super::protocol::{self, Outgoing};
use super::queued::{Opcode, Shared};
use super::session::Session;
use crate::problem::Problem;
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
///
/// The upgrade is done here rather than by axum's extractor so that data
/// frames can be written past tungstenite (`live::queued` says why).
pub async fn upgrade(
    State(state): State<StateHandle>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    mut request: Request,
) -> Result<Response, Problem> {
    let mut framing = Framing::Text;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            ("compress", "deflate-raw") => framing = Framing::DeflateRaw,
            ("compress", other) => {
                return Err(Problem::bad_request(
                    "invalid-parameter",
                    format!("compress={other} is not supported; use compress=deflate-raw"),
                ));
            }
            _ => {}
        }
    }
    let accept = handshake(request.headers())?;
    let hub = state.hub().clone();
    let limit = hub.config().max_message_bytes;
    // Small read buffer: an idle connection must stay cheap (BENCHMARKS.md).
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let on_upgrade = hyper::upgrade::on(&mut request);
    hub.clone().spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let writer = Shared::new(TokioIo::new(upgraded));
                let socket =
                    WebSocketStream::from_raw_socket(writer.clone(), Role::Server, Some(config))
                        .await;
                serve(state, hub, socket, writer, framing).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .map_err(|e| Problem::internal(&e))
}

/// Checks an RFC 6455 opening handshake; returns `Sec-WebSocket-Accept`.
fn handshake(headers: &HeaderMap) -> Result<String, Problem> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .unwrap_or_default()
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(Problem::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket-required",
            "WebSocket required",
            "/ws speaks the live protocol over WebSocket (docs/protocol.md); tools without \
             WebSocket can use /events (Server-Sent Events)",
        )
        .with_header(header::UPGRADE, "websocket"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(Problem::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket-version",
            "Unsupported WebSocket version",
            "only WebSocket version 13 (RFC 6455) is supported",
        )
        .with_header(header::SEC_WEBSOCKET_VERSION, "13"));
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or_else(|| {
        Problem::bad_request("websocket-key", "the Sec-WebSocket-Key header is missing")
    })?;
    Ok(derive_accept_key(key.as_bytes()))
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

/// The socket of one connection.
type Io = TokioIo<hyper::upgrade::Upgraded>;

async fn serve(
    state: StateHandle,
    hub: Hub,
    mut socket: WebSocketStream<Shared<Io>>,
    writer: Shared<Io>,
    framing: Framing,
) {
    let config = hub.config().clone();
    let (conn, ticks, lagging) = hub.register();
    let mut inbox = Inbox {
        ticks,
        lagging,
        catch_ups: VecDeque::new(),
        max_resyncs_per_minute: config.max_resyncs_per_minute,
    };
    let mut session = Session::new(state.clone(), hub.clone(), conn);
    let mut replays = session.take_replay_messages();
    let shut_down = hub.shut_down();
    tokio::pin!(shut_down);
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.reset();
    // Nearly every wake is a tick: the socket, the heartbeat and the
    // shutdown signal are polled only when they woke the task (`gate`).
    let (inbound_gate, heartbeat_gate, shutdown_gate) = (Gate::new(), Gate::new(), Gate::new());
    let mut last_heard = Instant::now();
    let rate = f64::from(config.messages_per_second.max(1));
    let mut bucket = Bucket {
        tokens: 2.0 * rate,
        rate,
        burst: 2.0 * rate,
        at: Instant::now(),
    };
    let mut rejected = 0u32;
    tracing::debug!(conn, "websocket connected");

    let close: Option<(u16, String)> = loop {
        let out: Vec<Outgoing> = tokio::select! {
            // Ticks first: they are what wakes a connection nearly every
            // time, and a woken connection then polls nothing else. Nothing
            // starves: a tick takes every queued tick.
            biased;
            Some(tick) = inbox.ticks.recv() => {
                match inbox.handle(tick, &mut session) {
                    Ok(out) => out,
                    Err(reason) => break Some((POLICY, reason)),
                }
            }
            inbound = poll_fn(|cx| inbound_gate.poll(cx, |cx| socket.poll_next_unpin(cx))) => match inbound {
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    if bucket.take() {
                        // Ticks routed before this message first, so that a
                        // viewport move diffs from what the client has.
                        let mut out = match inbox.take_all(&mut session) {
                            Ok(out) => out,
                            Err(reason) => break Some((POLICY, reason)),
                        };
                        out.extend(session.handle_text(text.as_str()));
                        out
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
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                    last_heard = Instant::now();
                    Vec::new()
                }
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Err(WsError::Capacity(_))) => {
                    break Some((TOO_BIG, format!("message larger than {} bytes", config.max_message_bytes)));
                }
                Some(Err(_)) => break None,
            },
            _ = poll_fn(|cx| heartbeat_gate.poll(cx, |cx| heartbeat.poll_tick(cx))) => {
                if last_heard.elapsed() > 3 * config.heartbeat {
                    break Some((GOING_AWAY, "no message or pong for three heartbeats".to_owned()));
                }
                let mut out = match inbox.catch_up_if_lagging(&mut session) {
                    Ok(out) => out,
                    Err(reason) => break Some((POLICY, reason)),
                };
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
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
            () = poll_fn(|cx| shutdown_gate.poll(cx, |cx| shut_down.as_mut().poll(cx))) => break Some((GOING_AWAY, "server shutting down".to_owned())),
        };
        if out.is_empty() {
            continue;
        }
        // Data frames go past tungstenite (see `queued`); one flush per
        // batch of messages: a tick is one write.
        let write = async {
            for message in out {
                let (parts, opcode) = match framing {
                    Framing::Text => (message.into_parts(), Opcode::Text),
                    Framing::DeflateRaw => match compress(&message.text()) {
                        Some(bytes) => (vec![Bytes::from(bytes)], Opcode::Binary),
                        None => (message.into_parts(), Opcode::Text),
                    },
                };
                writer.send(opcode, parts).await?;
            }
            writer.flush().await
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
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            config.write_timeout,
            socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
    tracing::debug!(conn, "websocket disconnected");
}

/// What the hub routes to one connection: its tick queue, its lag flag,
/// and the catch-ups it needed in the last minute.
struct Inbox {
    ticks: mpsc::Receiver<Tick>,
    lagging: Arc<AtomicBool>,
    catch_ups: VecDeque<Instant>,
    max_resyncs_per_minute: usize,
}

impl Inbox {
    /// Takes `tick` and every tick queued behind it, in order (their
    /// messages go out in one write), or the catch-up when ticks were
    /// dropped.
    fn handle(&mut self, tick: Tick, session: &mut Session) -> Result<Vec<Outgoing>, String> {
        let mut out = Vec::new();
        let mut next = Some(tick);
        while let Some(tick) = next {
            // Read after taking the tick: a drop before it was sent shows.
            if self.lagging.swap(false, Ordering::Relaxed) {
                out.extend(self.catch_up(session)?);
                break;
            }
            out.extend(session.handle_tick(&tick));
            next = self.ticks.try_recv().ok();
        }
        Ok(out)
    }

    /// The catch-up, when ticks were dropped.
    fn catch_up_if_lagging(&mut self, session: &mut Session) -> Result<Vec<Outgoing>, String> {
        if self.lagging.swap(false, Ordering::Relaxed) {
            self.catch_up(session)
        } else {
            Ok(Vec::new())
        }
    }

    fn catch_up(&mut self, session: &mut Session) -> Result<Vec<Outgoing>, String> {
        catch_up(
            session,
            &mut self.ticks,
            &mut self.catch_ups,
            self.max_resyncs_per_minute,
        )
    }

    /// Brings the session up to everything the hub has routed: the queued
    /// ticks (or a catch-up), and then, as nothing routed is pending, every
    /// subscription to the hub's last routed seq.
    fn take_all(&mut self, session: &mut Session) -> Result<Vec<Outgoing>, String> {
        let mut out = Vec::new();
        loop {
            // Read before the queue: every send of that tick happened before.
            let routed = session.routed();
            match self.ticks.try_recv() {
                Ok(tick) => out.extend(self.handle(tick, session)?),
                Err(_) if self.lagging.load(Ordering::Relaxed) => {
                    out.extend(self.catch_up_if_lagging(session)?);
                }
                Err(_) => {
                    session.quiet_until(routed);
                    return Ok(out);
                }
            }
        }
    }
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
