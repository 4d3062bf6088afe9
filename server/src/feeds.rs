//! The feed book: who may write what, and how each feed is doing.
//!
//! A crisis room must notice when a region's feed stops: silence is reported
//! by `GET /feeds` once a feed has not written for the configured threshold.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use beeld_layers::{Collection, Timestamp};
use serde_json::{Value, json};

use crate::config::FeedToken;

/// Index of a feed in the book.
pub type FeedIndex = usize;

/// One feed's permissions and counters.
#[derive(Debug, Clone)]
pub struct FeedEntry {
    /// Name.
    pub name: String,
    /// Writable collections.
    pub collections: BTreeSet<Collection>,
    /// Last accepted write.
    pub last_write_at: Option<Timestamp>,
    /// Accepted batches (a single-feature write counts as one).
    pub batches: u64,
    /// Features written or deleted.
    pub writes: u64,
    /// Rejected requests.
    pub errors: u64,
    /// The last rejection, for the operator.
    pub last_error: Option<(Timestamp, String)>,
}

/// All feeds.
#[derive(Debug, Clone)]
pub struct FeedBook {
    entries: Vec<FeedEntry>,
    by_token: HashMap<String, FeedIndex>,
}

impl FeedBook {
    /// A book for the configured feeds.
    pub fn new(tokens: &[FeedToken]) -> FeedBook {
        let entries = tokens
            .iter()
            .map(|t| FeedEntry {
                name: t.name.clone(),
                collections: t.collections.clone(),
                last_write_at: None,
                batches: 0,
                writes: 0,
                errors: 0,
                last_error: None,
            })
            .collect();
        let by_token = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.token.clone(), i))
            .collect();
        FeedBook { entries, by_token }
    }

    /// The feed owning `token`.
    pub fn by_token(&self, token: &str) -> Option<FeedIndex> {
        self.by_token.get(token).copied()
    }

    /// The feed called `name`.
    pub fn by_name(&self, name: &str) -> Option<FeedIndex> {
        self.entries.iter().position(|e| e.name == name)
    }

    /// A feed's entry.
    pub fn entry(&self, index: FeedIndex) -> &FeedEntry {
        &self.entries[index]
    }

    /// Records an accepted batch of `n` changes.
    pub fn record_write(&mut self, index: FeedIndex, n: usize, at: Timestamp) {
        let e = &mut self.entries[index];
        e.batches += 1;
        e.writes += n as u64;
        e.last_write_at = Some(at);
    }

    /// Records a rejected request.
    pub fn record_error(&mut self, index: FeedIndex, message: &str, at: Timestamp) {
        let e = &mut self.entries[index];
        e.errors += 1;
        e.last_error = Some((at, message.chars().take(500).collect()));
    }

    /// The `/feeds` document.
    pub fn to_json(&self, now: Timestamp, silence: Duration) -> Value {
        let silence_ms = i64::try_from(silence.as_millis()).unwrap_or(i64::MAX);
        let feeds: Vec<Value> = self
            .entries
            .iter()
            .map(|e| {
                let silent = e
                    .last_write_at
                    .is_none_or(|t| now.millis().saturating_sub(t.millis()) > silence_ms);
                json!({
                    "name": e.name,
                    "collections": e.collections.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                    "last_write_at": e.last_write_at.map(Timestamp::to_rfc3339),
                    "batches": e.batches,
                    "writes": e.writes,
                    "errors": e.errors,
                    "last_error": e.last_error.as_ref().map(|(t, m)| json!({"at": t.to_rfc3339(), "detail": m})),
                    "silent": silent,
                    "state": match (e.last_write_at, silent) {
                        (None, _) => "never_written",
                        (Some(_), true) => "silent",
                        (Some(_), false) => "active",
                    },
                })
            })
            .collect();
        json!({
            "silence_threshold_s": silence.as_secs(),
            "feeds": feeds,
        })
    }
}
