//! A wake gate: polls a source of events (a socket, a timer) only after that
//! source has woken the task, not every time anything else did.
//!
//! A connection's task waits on several sources in one `select!`, which
//! polls every branch each time the task wakes. Nearly every wake is a tick
//! from the hub; polling the socket (through tungstenite, the write queue's
//! lock and the reactor), the heartbeat timer and the shutdown signal again
//! on each was about 6% of the sessions' CPU time at a 10 ms tick
//! (BENCHMARKS.md). Behind a gate, a source is polled with a waker of the
//! gate's own, which marks the gate open before waking the task; until then
//! the gate answers `Pending` without polling.
//!
//! ```
//! use std::future::poll_fn;
//! use beeld_server::live::gate::Gate;
//!
//! # let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
//! # runtime.block_on(async {
//! let gate = Gate::new();
//! let mut interval = tokio::time::interval(std::time::Duration::from_millis(1));
//! // The first tick is immediate; later ones come when the timer wakes the gate.
//! poll_fn(|cx| gate.poll(cx, |cx| interval.poll_tick(cx))).await;
//! poll_fn(|cx| gate.poll(cx, |cx| interval.poll_tick(cx))).await;
//! # });
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// One source's gate; see the module docs.
#[derive(Debug)]
pub struct Gate {
    shared: Arc<Shared>,
    /// A waker over `shared`, made once (polling with it clones an `Arc`).
    waker: Waker,
}

#[derive(Debug)]
struct Shared {
    /// Set when the source woke us, or when it last answered `Ready` (it
    /// may have more without waking anyone).
    open: AtomicBool,
    /// The task waiting behind the gate.
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Open first: the task, once woken, must find the gate open.
        self.open.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Gate {
    /// An open gate: the source is polled the first time.
    pub fn new() -> Gate {
        let shared = Arc::new(Shared {
            open: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Gate {
            waker: Waker::from(Arc::clone(&shared)),
            shared,
        }
    }

    /// Polls the source through `poll` if it woke the gate since it last
    /// answered `Pending`; otherwise `Pending` at once. Either way the
    /// task of `cx` is the one woken when the source is ready.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.shared.task.register(cx.waker());
        // Closed before polling: a wake during the poll reopens it.
        if !self.shared.open.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let answer = poll(&mut Context::from_waker(&self.waker));
        if answer.is_ready() {
            self.shared.open.store(true, Ordering::Release);
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts how often the source behind the gate is polled.
    fn counted<'a, T>(
        polls: &'a AtomicUsize,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T> + 'a,
    ) -> impl FnMut(&mut Context<'_>) -> Poll<T> + 'a {
        move |cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            poll(cx)
        }
    }

    #[tokio::test]
    async fn a_source_is_polled_again_only_after_it_woke_the_task() {
        let gate = Gate::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(4);
        let (other_tx, mut other_rx) = tokio::sync::mpsc::channel::<()>(4);
        let polls = AtomicUsize::new(0);
        let mut source = counted(&polls, |cx| rx.poll_recv(cx));
        let sender = tokio::spawn(async move {
            // Wakes that are not the source's: the gate stays shut.
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                other_tx.send(()).await.expect("open");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.send(7).await.expect("open");
            tx.send(8).await.expect("open");
        });
        let mut got = Vec::new();
        let mut others = 0;
        // A gate that missed a wake would wait forever: bounded.
        tokio::time::timeout(Duration::from_secs(10), async {
            while got.len() < 2 {
                tokio::select! {
                    biased;
                    Some(()) = other_rx.recv() => others += 1,
                    item = poll_fn(|cx| gate.poll(cx, &mut source)) => got.push(item.expect("open")),
                }
            }
        })
        .await
        .expect("every item arrives");
        sender.await.expect("sender");
        assert_eq!(got, [7, 8]);
        assert_eq!(others, 3);
        // Once at the start (pending), once per wake by the channel, once
        // after each item: never for the three other wakes.
        let n = polls.load(Ordering::Relaxed);
        assert!(n <= 4, "the source was polled {n} times");
    }

    #[tokio::test]
    async fn a_ready_source_stays_open_for_what_it_already_holds() {
        let gate = Gate::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(4);
        for i in 0..3 {
            tx.send(i).await.expect("open");
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(poll_fn(|cx| gate.poll(cx, |cx| rx.poll_recv(cx))).await);
        }
        assert_eq!(got, [Some(0), Some(1), Some(2)]);
    }

    #[tokio::test]
    async fn a_timer_behind_a_gate_still_fires() {
        let gate = Gate::new();
        let mut interval = tokio::time::interval(Duration::from_millis(2));
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), async {
            for _ in 0..4 {
                poll_fn(|cx| gate.poll(cx, |cx| interval.poll_tick(cx))).await;
            }
        })
        .await
        .expect("the timer wakes the gate");
        assert!(started.elapsed() >= Duration::from_millis(6));
    }
}
