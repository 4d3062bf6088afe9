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

/// What the feed watch reports about one feed since its last look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedNews {
    /// Wrote `batches` batches with `writes` changes, and had `errors` rejections.
    Activity {
        /// Accepted batches.
        batches: u64,
        /// Changes in them.
        writes: u64,
        /// Rejected requests.
        errors: u64,
    },
    /// Has not written for the silence threshold (reported once).
    WentSilent,
    /// Writes again after having gone silent.
    Resumed,
}

/// Remembers what the watch saw last, to report differences.
#[derive(Debug, Default)]
pub struct FeedWatch {
    seen: Vec<(u64, u64, u64, bool)>,
}

impl FeedWatch {
    /// What happened per feed since the last call, by feed name.
    pub fn look(
        &mut self,
        book: &FeedBook,
        now: Timestamp,
        silence: Duration,
    ) -> Vec<(String, FeedNews)> {
        let silence_ms = i64::try_from(silence.as_millis()).unwrap_or(i64::MAX);
        self.seen.resize(book.entries.len(), (0, 0, 0, false));
        let mut news = Vec::new();
        for (entry, seen) in book.entries.iter().zip(&mut self.seen) {
            let (batches, writes, errors, was_silent) = *seen;
            // A feed that never wrote is not "silent": it may not be in use.
            let silent = entry
                .last_write_at
                .is_some_and(|t| now.0.saturating_sub(t.0) > silence_ms);
            if entry.batches > batches || entry.errors > errors {
                news.push((
                    entry.name.clone(),
                    FeedNews::Activity {
                        batches: entry.batches - batches,
                        writes: entry.writes - writes,
                        errors: entry.errors - errors,
                    },
                ));
            }
            match (was_silent, silent) {
                (false, true) => news.push((entry.name.clone(), FeedNews::WentSilent)),
                (true, false) => news.push((entry.name.clone(), FeedNews::Resumed)),
                _ => {}
            }
            *seen = (entry.batches, entry.writes, entry.errors, silent);
        }
        news
    }
}

/// Logs each feed's activity once per `every` (per-batch lines are at
/// debug level: at thousands of batches per second they drown the log),
/// warns once when a feed goes silent and says when it resumes.
pub async fn watch(
    state: crate::state::StateHandle,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let mut watch = FeedWatch::default();
    let silence = state.config().feed_silence;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let news = watch.look(&state.feeds(), crate::state::now(), silence);
        for (feed, news) in news {
            match news {
                FeedNews::Activity {
                    batches,
                    writes,
                    errors,
                } => {
                    tracing::info!(%feed, batches, writes, errors, period_s = every.as_secs(), "feed activity")
                }
                FeedNews::WentSilent => {
                    tracing::warn!(%feed, silence_s = silence.as_secs(), "feed went silent")
                }
                FeedNews::Resumed => tracing::info!(%feed, "feed writes again"),
            }
        }
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    #[test]
    fn the_watch_reports_activity_silence_once_and_resumption() {
        let token = crate::config::parse_feed_token("vr24=token-vr24-0001").expect("token");
        let mut book = FeedBook::new(&[token]);
        let mut watch = FeedWatch::default();
        let minute = Duration::from_secs(60);
        assert!(
            watch.look(&book, Timestamp(0), minute).is_empty(),
            "never wrote"
        );
        book.record_write(0, 10, Timestamp(1_000));
        book.record_write(0, 5, Timestamp(2_000));
        assert_eq!(
            watch.look(&book, Timestamp(3_000), minute),
            [(
                "vr24".to_owned(),
                FeedNews::Activity {
                    batches: 2,
                    writes: 15,
                    errors: 0
                }
            )]
        );
        let later = Timestamp(2_000 + 61_000);
        assert_eq!(
            watch.look(&book, later, minute),
            [("vr24".to_owned(), FeedNews::WentSilent)]
        );
        assert!(watch.look(&book, later, minute).is_empty(), "said once");
        book.record_write(0, 1, later);
        let news = watch.look(&book, later, minute);
        assert!(
            news.contains(&("vr24".to_owned(), FeedNews::Resumed)),
            "{news:?}"
        );
    }
}
