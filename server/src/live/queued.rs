//! A write queue under each WebSocket: accepts whole frames at once and
//! drains them to the socket as it takes them.
//!
//! tungstenite keeps unsent bytes in one `Vec` and, after every partial
//! write, moves the rest to its front. A diff of a few hundred kilobytes to
//! a client that reads slower than the server writes was so moved dozens
//! of times: in the dense fan-out benchmark that `memmove` was a third of
//! the server's CPU. Here a partial write only advances an offset.
//!
//! A write goes straight to the socket when nothing is queued; what the
//! socket does not take is queued, and the queue is drained with vectored
//! writes. The queue is bounded ([`QueuedWrites::LIMIT`]): beyond it, writes wait
//! for the socket, so a slow client still pushes back on its session (and
//! so on the hub's per-connection tick queue), never on server memory.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An `AsyncWrite` that queues what it is given and writes it out in order.
#[derive(Debug)]
pub struct QueuedWrites<S> {
    inner: S,
    /// Unsent chunks, oldest first.
    chunks: VecDeque<Vec<u8>>,
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
}

impl<S: AsyncWrite + Unpin> AsyncWrite for QueuedWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.chunks.is_empty() {
            // Straight through when nothing waits: only what the socket did
            // not take is copied. (Gathering every frame until the flush
            // measured slower in alternating runs: 2.0–2.7 against 2.6–3.2 M
            // deliveries/s, BENCHMARKS.md.)
            match Pin::new(&mut this.inner).poll_write(cx, buf) {
                Poll::Ready(Ok(0)) if !buf.is_empty() => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    if n < buf.len() {
                        this.chunks.push_back(buf[n..].to_vec());
                        this.queued += buf.len() - n;
                    }
                    return Poll::Ready(Ok(buf.len()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        // Behind the socket: queue, and drain the queue with vectored
        // writes, waiting only beyond the limit.
        if this.queued > 0 && this.queued + buf.len() > Self::LIMIT {
            match this.drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // Woken when the socket takes more.
                Poll::Pending => return Poll::Pending,
            }
        }
        // Always take a write into an empty queue, however large, so that a
        // frame bigger than the limit still goes out.
        this.chunks.push_back(buf.to_vec());
        this.queued += buf.len();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for QueuedWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn everything_written_arrives_in_order_through_a_small_pipe() {
        // A pipe of 1 KiB forces partial writes and waits at the limit.
        let (client, server) = tokio::io::duplex(1024);
        let mut writer = QueuedWrites::new(server);
        let data: Vec<u8> = (0..3 * QueuedWrites::<()>::LIMIT as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        let expected = data.clone();
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            got
        });
        for chunk in data.chunks(70_000) {
            writer.write_all(chunk).await.expect("write");
        }
        writer.shutdown().await.expect("shutdown");
        drop(writer);
        assert_eq!(reader.await.expect("reader"), expected);
    }

    #[tokio::test]
    async fn a_write_larger_than_the_limit_is_taken_whole() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut writer = QueuedWrites::new(server);
        let big = vec![7u8; QueuedWrites::<()>::LIMIT * 2];
        let n = futures_util::FutureExt::now_or_never(writer.write(&big))
            .expect("ready")
            .expect("write");
        assert_eq!(n, big.len());
        drop(client);
    }
}
