//! Fan-out load generator: opens N WebSocket clients with viewports of
//! 0.5–5 degrees over the Netherlands against a running beeld, drives M unit
//! moves per second through the HTTP ingest API, and reports deliveries per
//! second and the feed-write → client-receive latency histogram.
//!
//! Every move carries `t_us`, microseconds since the generator started; a
//! client computes latency from each upsert it receives. Messages are not
//! parsed as JSON (the generator shares the machine with the server): the
//! `t_us` values are found by scanning the text.
//!
//! The clients speak RFC 6455 themselves ([`Client`]): tungstenite zeroed
//! its read buffer before every read and copied every frame's payload,
//! which made the generator, not the server, the larger user of the two
//! cores. A client here reads into uninitialised spare capacity and scans
//! each frame where it landed; it answers pings, and it checks frame
//! headers (server frames unmasked, text or control opcodes, FIN set, as
//! beeld sends them) but not UTF-8.
//!
//! ```sh
//! loadgen --target http://127.0.0.1:8080 --token TOKEN --clients 1000 --rate 10000 --seconds 20
//! loadgen --target … --viewport 0.05-0.2 …   # town-sized viewports (default 0.5-5)
//! loadgen --target … --idle 1000 --server-pid PID     # memory per idle connection
//! ```

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use beeld_fixtures::{NL_BBOX, Rng, feature_collection, units};
use bytes::Buf as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone)]
struct Args {
    target: String,
    token: String,
    clients: usize,
    rate: usize,
    seconds: u64,
    units: usize,
    dense: bool,
    idle: Option<usize>,
    server_pid: Option<u32>,
    precision: Option<u8>,
    deltas: bool,
    /// Smallest and largest viewport side, degrees.
    viewport: (f64, f64),
}

fn parse_args() -> Args {
    let mut args = Args {
        target: "http://127.0.0.1:8080".to_owned(),
        token: String::new(),
        clients: 1000,
        rate: 10_000,
        seconds: 20,
        units: 10_000,
        dense: false,
        idle: None,
        server_pid: None,
        precision: None,
        deltas: false,
        viewport: (0.5, 5.0),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match flag.as_str() {
            "--target" => args.target = value(),
            "--token" => args.token = value(),
            "--clients" => args.clients = value().parse().unwrap_or(args.clients),
            "--rate" => args.rate = value().parse().unwrap_or(args.rate),
            "--seconds" => args.seconds = value().parse().unwrap_or(args.seconds),
            "--units" => args.units = value().parse().unwrap_or(args.units),
            "--dense" => args.dense = true,
            "--idle" => args.idle = value().parse().ok(),
            "--server-pid" => args.server_pid = value().parse().ok(),
            "--precision" => args.precision = value().parse().ok(),
            "--deltas" => args.deltas = true,
            "--viewport" => {
                let v = value();
                match v.split_once('-').map(|(a, b)| (a.parse(), b.parse())) {
                    Some((Ok(min), Ok(max))) if 0.0 < min && min <= max => {
                        args.viewport = (min, max);
                    }
                    _ => {
                        eprintln!("--viewport takes MIN-MAX in degrees, e.g. 0.05-0.2, not {v}");
                        std::process::exit(2);
                    }
                }
            }
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    args
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

/// The server's CPU time (user + system) in seconds, from `/proc/PID/stat`
/// (fields 14 and 15, in clock ticks of 100 Hz on Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The key of the send timestamp in every feature the generator writes.
const T_US: &[u8] = b"\"t_us\":";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(target: &str) -> Socket {
    let url = format!("{}/ws", target.replace("http://", "ws://"));
    loop {
        // A smaller read buffer than tungstenite's 128 KiB: it zeroes the
        // whole buffer on every read, which cost the load generator more
        // than the server's reads did.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(16 * 1024);
        match tokio_tungstenite::connect_async_with_config(&url, Some(config), false).await {
            Ok((socket, _)) => return socket,
            Err(e) => {
                eprintln!("connect failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A WebSocket client that reads frames where they land in its buffer.
struct Client {
    socket: tokio::net::TcpStream,
    buffer: bytes::BytesMut,
    /// A message that came in fragments, joined.
    fragments: Vec<u8>,
}

impl Client {
    /// Connects and upgrades, retrying while the server is not there.
    async fn connect(target: &str) -> Client {
        loop {
            match Client::try_connect(target).await {
                Ok(client) => return client,
                Err(e) => {
                    eprintln!("connect failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn try_connect(target: &str) -> std::io::Result<Client> {
        let authority = target.trim_start_matches("http://").trim_end_matches('/');
        let socket = tokio::net::TcpStream::connect(authority).await?;
        socket.set_nodelay(true)?;
        let mut client = Client {
            socket,
            buffer: bytes::BytesMut::with_capacity(256 * 1024),
            fragments: Vec::new(),
        };
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: bG9hZGdlbi1iZWVsZC0wMQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        client.write_all(request.as_bytes()).await?;
        let end = loop {
            if let Some(at) = memchr::memmem::find(&client.buffer, b"\r\n\r\n") {
                break at + 4;
            }
            client.fill().await?;
        };
        if !client.buffer.starts_with(b"HTTP/1.1 101") {
            let head = String::from_utf8_lossy(&client.buffer[..end]).into_owned();
            return Err(std::io::Error::other(format!("no upgrade: {head}")));
        }
        // Whatever follows the response is the first frames.
        let _ = client.buffer.split_to(end);
        Ok(client)
    }

    /// Reads more into the buffer's spare capacity (not zeroed first).
    async fn fill(&mut self) -> std::io::Result<()> {
        // Room for a large read: reclaims the space of frames already
        // taken (moving the few bytes of a partial frame), or grows.
        self.buffer.reserve(64 * 1024);
        // `read_buf`, not `readable` + `try_read_buf`: a read that leaves
        // room in the buffer has drained the socket, and `poll_read` then
        // clears its readiness; `try_read_buf` keeps it, so every message
        // cost a second, empty `recvfrom` (54,000 a second at a 10 ms tick).
        match tokio::io::AsyncReadExt::read_buf(&mut self.socket, &mut self.buffer).await? {
            0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(()),
        }
    }

    async fn write_all(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            self.socket.writable().await?;
            match self.socket.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends one masked frame, as a client must (RFC 6455 §5.3).
    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x5a, 0x17, 0xc3, 0x8e];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.write_all(&frame).await
    }

    async fn send_text(&mut self, text: &[u8]) -> std::io::Result<()> {
        self.send_frame(0x1, text).await
    }

    /// Waits for the next data message and hands its payload to `handle`,
    /// answering pings on the way. `false` when the server closed.
    async fn next_message(&mut self, mut handle: impl FnMut(&[u8])) -> std::io::Result<bool> {
        loop {
            let Some((fin, opcode, start, len)) = self.frame_header()? else {
                self.fill().await?;
                continue;
            };
            if self.buffer.len() < start + len {
                self.buffer.reserve(start + len - self.buffer.len());
                self.fill().await?;
                continue;
            }
            // Handled in place and then skipped: `split_to` made the
            // buffer shared (an allocation and reference counts per
            // message).
            let payload = start..start + len;
            match opcode {
                0x9 => {
                    let ping = self.buffer[payload].to_vec();
                    self.buffer.advance(start + len);
                    self.send_frame(0xA, &ping).await?;
                }
                0xA => self.buffer.advance(start + len),
                0x8 => return Ok(false),
                0x0..=0x2 => {
                    if fin && self.fragments.is_empty() {
                        handle(&self.buffer[payload]);
                        self.buffer.advance(start + len);
                        return Ok(true);
                    }
                    self.fragments.extend_from_slice(&self.buffer[payload]);
                    self.buffer.advance(start + len);
                    if fin {
                        let message = std::mem::take(&mut self.fragments);
                        handle(&message);
                        return Ok(true);
                    }
                }
                other => {
                    return Err(std::io::Error::other(format!("unknown opcode {other}")));
                }
            }
        }
    }

    /// The next frame's FIN bit, opcode, payload offset and length, once
    /// its header is in the buffer.
    fn frame_header(&self) -> std::io::Result<Option<(bool, u8, usize, usize)>> {
        let b = &self.buffer[..];
        if b.len() < 2 {
            return Ok(None);
        }
        if b[1] & 0x80 != 0 {
            return Err(std::io::Error::other("a server frame was masked"));
        }
        let (start, len) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (4, usize::from(u16::from_be_bytes([b[2], b[3]]))),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (
                    10,
                    usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX),
                )
            }
            126 | 127 => return Ok(None),
            n => (2, usize::from(n)),
        };
        Ok(Some((b[0] & 0x80 != 0, b[0] & 0x0F, start, len)))
    }
}

#[derive(Default)]
struct Totals {
    deliveries: AtomicU64,
    bytes: AtomicU64,
    resyncs: AtomicU64,
    samples: std::sync::Mutex<Vec<u32>>,
    /// Feed write → acknowledgement, µs, per batch of moves.
    acks: std::sync::Mutex<Vec<u32>>,
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    if let Some(n) = args.idle {
        idle(&args, n).await;
        return;
    }
    let started = Instant::now();
    let http = reqwest::Client::new();
    let url = format!("{}/collections/units/items", args.target);
    let mut fleet = units(args.units, 11);
    for chunk in fleet.chunks(1000) {
        let body = feature_collection(
            chunk
                .iter()
                .map(beeld_fixtures::UnitSpec::feature)
                .collect(),
        );
        let r = http
            .post(&url)
            .bearer_auth(&args.token)
            .body(body.to_string())
            .send()
            .await
            .expect("load units");
        assert!(
            r.status().is_success(),
            "loading units failed: {}",
            r.text().await.unwrap_or_default()
        );
    }

    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = Rng::new(5);
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.clients.max(1));
    for i in 0..args.clients {
        let bbox = if args.dense {
            NL_BBOX
        } else {
            let size = rng.range(args.viewport.0, args.viewport.1);
            let x = rng.range(NL_BBOX[0] - size / 2.0, NL_BBOX[2] - size / 2.0);
            let y = rng.range(NL_BBOX[1] - size / 2.0, NL_BBOX[3] - size / 2.0);
            [x, y, x + size, y + size]
        };
        let mut subscribe =
            json!({"type": "subscribe", "id": "s", "collections": ["units"], "bbox": bbox});
        if let Some(p) = args.precision {
            subscribe["precision"] = json!(p);
        }
        if args.deltas {
            subscribe["deltas"] = json!(true);
        }
        let totals = Arc::clone(&totals);
        let stop = Arc::clone(&stop);
        let ready = ready_tx.clone();
        let target = args.target.clone();
        // Every 10th client records latency samples; all count deliveries.
        let sample = i % 10 == 0;
        tasks.push(tokio::spawn(async move {
            let t_us = memchr::memmem::Finder::new(T_US);
            // Made once: `memmem::find` builds its searcher on every call.
            let catch_up = memchr::memmem::Finder::new(b"\"catch_up\":true");
            let mut client = Client::connect(&target).await;
            client
                .send_text(subscribe.to_string().as_bytes())
                .await
                .expect("subscribe");
            let mut snapshot_seen = false;
            let mut local = Vec::new();
            loop {
                let handled = client.next_message(|bytes| {
                    if !snapshot_seen {
                        if bytes.starts_with(b"{\"type\":\"snapshot\"") {
                            snapshot_seen = true;
                            let _ = ready.try_send(());
                        }
                        return;
                    }
                    // The flag is in the message's head, before any feature.
                    let head = &bytes[..bytes.len().min(200)];
                    if catch_up.find(head).is_some() {
                        totals.resyncs.fetch_add(1, Ordering::Relaxed);
                    }
                    let now_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let mut n = 0u64;
                    // memmem (SIMD) rather than `str::match_indices`:
                    // scanning every message was the load generator's
                    // largest cost, and it shares the machine with the
                    // server.
                    for pos in t_us.find_iter(bytes) {
                        n += 1;
                        if sample {
                            let t = bytes[pos + T_US.len()..]
                                .iter()
                                .take_while(|b| b.is_ascii_digit())
                                .fold(0u64, |t, b| {
                                    t.saturating_mul(10).saturating_add(u64::from(b - b'0'))
                                });
                            local.push(u32::try_from(now_us.saturating_sub(t)).unwrap_or(u32::MAX));
                        }
                    }
                    totals.deliveries.fetch_add(n, Ordering::Relaxed);
                    totals
                        .bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                });
                match handled.await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        eprintln!("client: {e}");
                        break;
                    }
                }
                if !local.is_empty() {
                    totals.samples.lock().expect("samples").append(&mut local);
                }
                // Readiness waits do not count against tokio's budget, so
                // a client whose socket always has data would otherwise
                // keep its worker from the other clients.
                tokio::task::consume_budget().await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }));
    }
    for _ in 0..args.clients {
        ready_rx.recv().await;
    }
    eprintln!(
        "{} clients subscribed in {:.1} s; driving {} moves/s for {} s",
        args.clients,
        started.elapsed().as_secs_f64(),
        args.rate,
        args.seconds
    );
    totals.samples.lock().expect("samples").clear();
    totals.deliveries.store(0, Ordering::Relaxed);
    totals.bytes.store(0, Ordering::Relaxed);

    // The writer: every 10 ms, a batch of moves.
    // The feed is another system than the map clients: its writes go out
    // from a runtime of their own, so that their timing does not wait on
    // the thousand client tasks (on one runtime, a write's send was
    // queued behind them, and that counted as server latency).
    let feed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("loadgen-feed")
        .enable_all()
        .build()
        .expect("feed runtime");
    let feed_http = reqwest::Client::new();
    let per_batch = (args.rate / 100).max(1);
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let run_started = Instant::now();
    let cpu_started = args.server_pid.and_then(cpu_seconds);
    let mut written = 0u64;
    let mut next_report = Duration::from_secs(1);
    let mut last_deliveries = 0;
    while run_started.elapsed() < Duration::from_secs(args.seconds) {
        interval.tick().await;
        let t_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Written as text: building `serde_json::Value`s for 10,000 moves a
        // second was a tenth of a core that the server could not have.
        let mut body = String::with_capacity(per_batch * 230 + 40);
        body.push_str(r#"{"type":"FeatureCollection","features":["#);
        for n in 0..per_batch {
            let i = rng.below(fleet.len());
            fleet[i].step(&mut rng);
            let u = &fleet[i];
            if n > 0 {
                body.push(',');
            }
            let _ = write!(
                body,
                r#"{{"type":"Feature","id":"{id}","geometry":{{"type":"Point","coordinates":[{lon},{lat}]}},"properties":{{"type":"{ty}","status":"{st}","home_region":"VR{hr:02}","call_sign":"{id}","t_us":{t_us}}}}}"#,
                id = u.id,
                lon = u.lon,
                lat = u.lat,
                ty = u.unit_type.as_str(),
                st = u.status.as_str(),
                hr = u.home_region,
            );
        }
        body.push_str("]}");
        let http = feed_http.clone();
        let url = url.clone();
        let token = args.token.clone();
        let acked = Arc::clone(&totals);
        feed.spawn(async move {
            let sent = Instant::now();
            if http
                .post(&url)
                .bearer_auth(&token)
                .body(body)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                let us = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                acked.acks.lock().expect("acks").push(us);
            }
        });
        written += per_batch as u64;
        if run_started.elapsed() >= next_report {
            let d = totals.deliveries.load(Ordering::Relaxed);
            eprintln!(
                "t={:>3}s writes/s={:>6} deliveries/s={:>9} catch-ups={}",
                next_report.as_secs(),
                written / next_report.as_secs(),
                d - last_deliveries,
                totals.resyncs.load(Ordering::Relaxed)
            );
            last_deliveries = d;
            next_report += Duration::from_secs(1);
        }
    }
    let elapsed = run_started.elapsed().as_secs_f64();
    let cpu_used = args
        .server_pid
        .and_then(cpu_seconds)
        .zip(cpu_started)
        .map(|(end, start)| end - start);
    let deliveries_in_run = totals.deliveries.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let deliveries = totals.deliveries.load(Ordering::Relaxed);
    let bytes = totals.bytes.load(Ordering::Relaxed);
    let mut samples = std::mem::take(&mut *totals.samples.lock().expect("samples"));
    samples.sort_unstable();
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    println!(
        "clients: {}, viewports: {}, moves/s offered: {}, achieved: {:.0}",
        args.clients,
        if args.dense {
            "whole country".to_owned()
        } else {
            format!("{}-{} degrees", args.viewport.0, args.viewport.1)
        },
        args.rate,
        written as f64 / elapsed
    );
    println!(
        "deliveries: {:.0}/s ({:.1} MB/s to clients), catch-ups: {}",
        deliveries as f64 / elapsed,
        bytes as f64 / elapsed / 1e6,
        totals.resyncs.load(Ordering::Relaxed)
    );
    println!(
        "latency write->receive (ms, {} samples): p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        samples.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    let mut acks = std::mem::take(&mut *totals.acks.lock().expect("acks"));
    acks.sort_unstable();
    let ack = |p: f64| {
        acks.get(((acks.len() as f64 * p) as usize).min(acks.len().saturating_sub(1)))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    println!(
        "feed write->acknowledged (ms, {} batches): p50 {:.1}  p99 {:.1}",
        acks.len(),
        ack(0.5),
        ack(0.99)
    );
    if let Some(pid) = args.server_pid {
        println!("server RSS: {} KiB", rss_kib(pid).unwrap_or(0));
    }
    if let Some(cpu) = cpu_used {
        println!(
            "server CPU: {:.2} cores, {:.2} µs per delivery",
            cpu / elapsed,
            cpu * 1e6 / deliveries_in_run.max(1) as f64
        );
    }
    feed.shutdown_background();
    for task in tasks {
        task.abort();
    }
}

/// Opens `n` connections, each subscribed to a small empty viewport, and
/// reports the server's memory per connection.
async fn idle(args: &Args, n: usize) {
    let pid = args.server_pid.expect("--idle needs --server-pid");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid).expect("server RSS");
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        let mut socket = connect(&args.target).await;
        // A 0.01° box in the North Sea: subscribed, nothing to send.
        let x = 3.0 + (i % 100) as f64 * 0.001;
        let subscribe = json!({"type": "subscribe", "id": "s", "collections": ["units", "incidents", "hazards"], "bbox": [x, 53.9, x + 0.01, 53.91]});
        socket
            .send(Message::Text(subscribe.to_string().into()))
            .await
            .expect("subscribe");
        let _ = socket.next().await;
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid).expect("server RSS");
    println!(
        "idle connections: {n}, server RSS {before} KiB -> {after} KiB: {:.1} KiB per connection",
        (after.saturating_sub(before)) as f64 / n as f64
    );
    drop(sockets);
}
