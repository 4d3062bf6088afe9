//! The expiry task: removes features whose `expires` time or collection
//! time-to-live has passed, as normal changes, so that stale markers leave
//! the picture without anyone deleting them.
//!
//! Owned by [`crate::run`], which stops it through the `stop` channel at
//! shutdown.

use std::time::Duration;

use beeld_layers::ChangeCause;
use tokio::sync::watch;

use crate::state::{StateHandle, now};

/// How often the expiry queue is checked. Expiry is therefore late by at
/// most this much; fine for markers whose lifetimes are minutes to hours.
pub const TICK: Duration = Duration::from_millis(250);

/// Runs until `stop` turns true.
pub async fn run(state: StateHandle, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = now();
        // Check under the read lock first: most ticks have nothing to do.
        let due = state.read().next_expiry().is_some_and(|t| t <= now);
        if !due {
            continue;
        }
        // Expiry waits for recovery: an unjournaled change would be lost.
        let Some(journal) = state.journal() else {
            continue;
        };
        let applied = {
            let mut store = state.write();
            let applied = store.expire(now);
            if !applied.changes.is_empty() {
                // Queued under the lock so the journal stays in seq order.
                // Nobody waits for it: no feed is owed an acknowledgement.
                journal.append_applied(&store, &applied, &ChangeCause::Expired, now);
            }
            applied
        };
        if !applied.changes.is_empty() {
            tracing::info!(
                n_expired = applied.changes.len(),
                seq = applied.seq.0,
                "features expired"
            );
        }
    }
}
