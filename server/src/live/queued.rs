//! The write side of each WebSocket: a bounded queue shared by tungstenite
//! (control frames) and the session's data frames, which go past
//! tungstenite.
//!
//! tungstenite copies every frame into its own buffer, keeps that buffer's
//! capacity for the connection's life, and after every partial write moves
//! the unsent rest to the front. For diffs of hundreds of kilobytes to
//! clients that read slower than the server writes, that was a third of the
//! server's CPU and, with 1,000 clients, a buffer the size of each one's
//! largest snapshot (BENCHMARKS.md, fan-out). So data frames (text or
//! binary, never fragmented) are written here directly: their header and
//! the message's own bytes, straight to the socket when nothing waits;
//! only what the socket does not take is copied, into the queue (a part
//! may be a run of a tick's shared batch, which a slow client must not
//! keep alive: 256 KiB of queued runs could otherwise hold a hundred
//! batches of megabytes each). tungstenite
//! still reads, answers pings and writes pings and the close frame, through
//! the same queue ([`Shared`]), so frames never interleave: a write is
//! always queued whole.
//!
//! The queue is bounded ([`QueuedWrites::LIMIT`]): beyond it, writes wait
//! for the socket, so a slow client pushes back on its session (and so on
//! the hub's per-connection tick queue), never on server memory.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// WebSocket opcodes of data frames (RFC 6455 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// UTF-8 text (the JSON protocol).
    Text = 1,
    /// Binary (compressed messages).
    Binary = 2,
}

/// The header of an unmasked, final server frame of `len` bytes.
pub fn frame_header(opcode: Opcode, len: usize) -> Bytes {
    let mut header = Vec::with_capacity(10);
    header.push(0x80 | opcode as u8);
    match len {
        0..=125 => header.push(len as u8),
        126..=0xFFFF => {
            header.push(126);
            header.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            header.push(127);
            header.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    Bytes::from(header)
}

/// Queued writes in front of a socket.
#[derive(Debug)]
pub struct QueuedWrites<S> {
    inner: S,
    /// Unsent chunks, oldest first.
    chunks: VecDeque<Bytes>,
    /// How much of the front chunk was sent.
    sent: usize,
    /// Unsent bytes.
    queued: usize,
}

impl<S> QueuedWrites<S> {
    /// Queued bytes beyond which writes wait for the socket.
    pub const LIMIT: usize = 256 * 1024;

    /// A queue in front of `inner`.
    pub fn new(inner: S) -> QueuedWrites<S> {
        QueuedWrites {
            inner,
            chunks: VecDeque::new(),
            sent: 0,
            queued: 0,
        }
    }

    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.queued += chunk.len();
            self.chunks.push_back(chunk);
        }
    }
}

impl<S: AsyncWrite + Unpin> QueuedWrites<S> {
    /// Writes queued bytes until the queue is empty (`Ready`) or the socket
    /// is full (`Pending`, with the task registered to be woken).
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.chunks.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .chunks
                .iter()
                .take(64)
                .enumerate()
                .map(|(i, chunk)| IoSlice::new(if i == 0 { &chunk[self.sent..] } else { chunk }))
                .collect();
            let mut n = match Pin::new(&mut self.inner).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.queued -= n;
            while let Some(front) = self.chunks.front() {
                let left = front.len() - self.sent;
                if n < left {
                    self.sent += n;
                    break;
                }
                n -= left;
                self.sent = 0;
                self.chunks.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes everything queued and flushes the socket.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    /// Writes `parts` whole and in order, or waits (`Pending`, leaving
    /// `parts` as they are) while the queue is over its limit. An empty
    /// queue always takes them, however large, so that any message goes
    /// out.
    fn poll_write_parts(
        &mut self,
        cx: &mut Context<'_>,
        parts: &mut Vec<Bytes>,
    ) -> Poll<io::Result<()>> {
        if self.chunks.is_empty() {
            // Straight through when nothing waits: only what the socket
            // did not take is queued.
            let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            let mut n = match Pin::new(&mut self.inner).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => 0,
            };
            for part in parts.drain(..) {
                if n >= part.len() {
                    n -= part.len();
                } else {
                    self.push(Bytes::copy_from_slice(&part[n..]));
                    n = 0;
                }
            }
            return Poll::Ready(Ok(()));
        }
        let len: usize = parts.iter().map(Bytes::len).sum();
        if self.queued + len > Self::LIMIT {
            match self.drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        for part in parts.drain(..) {
            self.push(Bytes::copy_from_slice(&part));
        }
        Poll::Ready(Ok(()))
    }
}

/// A [`QueuedWrites`] shared by tungstenite (as its socket) and the
/// session's [`Shared::send`]. Both are used from the connection's one
/// task, so the lock is never contended.
#[derive(Debug)]
pub struct Shared<S>(Arc<Mutex<QueuedWrites<S>>>);

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<S> Shared<S> {
    /// A shared queue in front of `inner`.
    pub fn new(inner: S) -> Shared<S> {
        Shared(Arc::new(Mutex::new(QueuedWrites::new(inner))))
    }

    fn lock(&self) -> MutexGuard<'_, QueuedWrites<S>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: AsyncWrite + Unpin> Shared<S> {
    /// Sends one whole data message as a single frame: its header and the
    /// message's parts, in order; what the socket takes at once is not
    /// copied.
    pub async fn send(&self, opcode: Opcode, payload: Vec<Bytes>) -> io::Result<()> {
        let len = payload.iter().map(Bytes::len).sum();
        let mut parts = Vec::with_capacity(payload.len() + 1);
        parts.push(frame_header(opcode, len));
        parts.extend(payload);
        poll_fn(|cx| self.lock().poll_write_parts(cx, &mut parts)).await
    }

    /// Waits until everything queued is written to the socket.
    pub async fn flush(&self) -> io::Result<()> {
        poll_fn(|cx| self.lock().poll_flush(cx)).await
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Shared<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // tungstenite's frames are small (pings, pongs, close): copied.
        let mut parts = vec![Bytes::copy_from_slice(buf)];
        match self.lock().poll_write_parts(cx, &mut parts) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.lock().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut queue = self.lock();
        match queue.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut queue.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Shared<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// Frames written here are read back by tungstenite as a client would,
    /// through a pipe small enough to force partial writes and waits.
    #[tokio::test]
    async fn a_websocket_client_reads_every_message_whole_and_in_order() {
        let (client, server) = tokio::io::duplex(1024);
        let writer = Shared::new(server);
        let sizes = [0, 1, 125, 126, 65_535, 65_536, 700_000, 3];
        let messages: Vec<String> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let c = char::from(b'a' + i as u8);
                std::iter::repeat_n(c, *n).collect()
            })
            .collect();
        let expected = messages.clone();
        let reader = tokio::spawn(async move {
            let mut socket = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            let mut got = Vec::new();
            while got.len() < expected.len() {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => got.push(text.as_str().to_owned()),
                    Some(Ok(Message::Binary(bytes))) => {
                        got.push(String::from_utf8(bytes.to_vec()).expect("utf8"));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            got
        });
        for (i, message) in messages.into_iter().enumerate() {
            let opcode = if i % 2 == 0 {
                Opcode::Text
            } else {
                Opcode::Binary
            };
            writer
                .send(opcode, vec![Bytes::from(message)])
                .await
                .expect("send");
        }
        writer.flush().await.expect("flush");
        let got = reader.await.expect("reader");
        let lengths: Vec<usize> = got.iter().map(String::len).collect();
        assert_eq!(lengths, sizes);
        assert!(got[6].bytes().all(|b| b == b'g'));
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        assert_eq!(&frame_header(Opcode::Text, 125)[..], [0x81, 125]);
        assert_eq!(&frame_header(Opcode::Binary, 126)[..], [0x82, 126, 0, 126]);
        assert_eq!(
            &frame_header(Opcode::Text, 65_536)[..],
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }
}
