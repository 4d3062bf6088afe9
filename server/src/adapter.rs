//! Feed adapters: the way regional systems get writes into beeld.
//!
//! Today feeds push over HTTP (`http::ingest`). Other transports (a message
//! broker, CAP alerts, Cursor-on-Target) plug in as a [`FeedAdapter`] that
//! turns its input into GeoJSON features and hands them to a [`FeedSink`].
//! The sink is the same path as HTTP ingest: a configured feed, its
//! collection permissions, `layers::prepare` for every feature, one atomic
//! batch, the feed book's counters. So an adapter cannot bypass validation,
//! and the core does not change when one is added.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use beeld_layers::{Batch, Collection, Op};
use serde_json::Value;
use tokio::sync::watch;

use crate::feeds::FeedIndex;
use crate::http::ingest;
use crate::problem::Problem;
use crate::state::{StateHandle, now};

/// Where an adapter sends its writes.
#[derive(Debug, Clone)]
pub struct FeedSink {
    state: StateHandle,
}

/// What an accepted write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Changes applied.
    pub changes: usize,
    /// The store's seq after them.
    pub seq: u64,
}

impl FeedSink {
    /// A sink into `state`.
    pub fn new(state: StateHandle) -> FeedSink {
        FeedSink { state }
    }

    fn feed(&self, feed: &str, collection: Collection) -> Result<FeedIndex, Problem> {
        let feeds = self.state.feeds();
        let index = feeds.by_name(feed).ok_or_else(|| {
            Problem::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unknown feed",
                format!("no feed named '{feed}' is configured"),
            )
        })?;
        if !feeds.entry(index).collections.contains(&collection) {
            return Err(Problem::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "Feed may not write this collection",
                format!("feed '{feed}' may not write {collection}"),
            ));
        }
        Ok(index)
    }

    /// Upserts `features` into `collection` as `feed`, atomically; exactly
    /// the checks of `POST /collections/{collection}/items`, and like it,
    /// returns only once the batch is durable in the journal.
    pub async fn submit(
        &self,
        feed: &str,
        collection: Collection,
        features: Vec<Value>,
    ) -> Result<Accepted, Problem> {
        if self.state.status() != crate::state::LoadStatus::Ready {
            return Err(Problem::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "loading",
                "Store is loading",
                "nothing was written; retry in a moment",
            ));
        }
        let index = self.feed(feed, collection)?;
        let max = self.state.config().max_batch_features;
        if features.len() > max {
            return Err(ingest::reject(
                &self.state,
                index,
                Problem::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "batch-too-large",
                    "Batch too large",
                    format!(
                        "the batch has {} features; at most {max} are accepted",
                        features.len()
                    ),
                ),
            ));
        }
        let numbered = features
            .into_iter()
            .enumerate()
            .map(|(i, f)| (format!("/features/{i}"), f))
            .collect();
        let result = ingest::check_features(
            collection,
            numbered,
            None,
            &self.state,
            ingest::feed_name(&self.state, index),
        );
        let result = match result {
            Ok(batch) => ingest::apply(&self.state, collection, index, batch).await,
            Err(problem) => Err(problem),
        };
        match result {
            Ok((_, seq, ids)) => Ok(Accepted {
                changes: ids.len(),
                seq,
            }),
            Err(problem) => Err(ingest::reject(&self.state, index, problem)),
        }
    }

    /// Deletes one feature as `feed`.
    pub async fn delete(
        &self,
        feed: &str,
        collection: Collection,
        id: &str,
    ) -> Result<Accepted, Problem> {
        let index = self.feed(feed, collection)?;
        let batch = Batch {
            feed: ingest::feed_name(&self.state, index),
            received_at: now(),
            ops: vec![Op::Delete {
                collection,
                id: Arc::from(id),
            }],
        };
        match ingest::apply(&self.state, collection, index, batch).await {
            Ok((_, seq, ids)) => Ok(Accepted {
                changes: ids.len(),
                seq,
            }),
            Err(problem) => Err(ingest::reject(&self.state, index, problem)),
        }
    }
}

/// A boxed future, for object-safe adapters.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A source of feed writes other than HTTP. Runs until its input ends or
/// `shutdown` turns true.
pub trait FeedAdapter: Send + 'static {
    /// A name for logs.
    fn name(&self) -> &str;
    /// Runs the adapter, writing through `sink`.
    fn run(self: Box<Self>, sink: FeedSink, shutdown: watch::Receiver<bool>) -> BoxFuture<()>;
}
