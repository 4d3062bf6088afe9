//! Acknowledged single-feature writes per second through the journal with
//! group commit, measured at the journal API (no HTTP): W concurrent writers
//! each apply a one-feature batch to a real `Store` under its lock, queue
//! the record, and wait until it is durable (`fdatasync`), exactly as
//! `http::ingest` does. Also prints the fsyncs done (groups), to show the
//! sharing.
//!
//! `cargo run --release -p beeld-benches --bin journal-append -- [WRITES] [WRITERS] [fsync|none]`

use std::sync::{Arc, RwLock};
use std::time::Instant;

use beeld_fixtures::{Rng, units};
use beeld_layers::{Batch, ChangeCause, Collection, Op, Seq, Store, Timestamp};
use beeld_server::persist::journal::{Journal, SyncPolicy, Tail, WriterConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n_writes: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let n_writers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(512);
    let sync = match args.get(2).map(String::as_str) {
        Some("none") => SyncPolicy::None,
        _ => SyncPolicy::Fsync,
    };
    let dir = std::env::temp_dir().join("beeld-bench-journal");
    let _ = std::fs::remove_dir_all(&dir);
    let (closed_tx, _closed_rx) = std::sync::mpsc::channel();
    let journal = Journal::start(
        WriterConfig {
            dir: dir.join("journal"),
            sync,
            segment_bytes: 1 << 30,
        },
        &Tail {
            segment: None,
            seq: Seq(0),
        },
        closed_tx,
    )
    .expect("journal");
    let store = Arc::new(RwLock::new(Store::default()));
    let fleet = Arc::new(units(10_000, 7));
    let per_writer = n_writes / n_writers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..n_writers {
        let (journal, store, fleet) = (journal.clone(), Arc::clone(&store), Arc::clone(&fleet));
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(w as u64);
            let mut unit = fleet[w % fleet.len()].clone();
            let feed: Arc<str> = format!("feed-{}", w % 25).into();
            let cause = ChangeCause::Write {
                feed: Arc::clone(&feed),
            };
            for _ in 0..per_writer {
                unit.step(&mut rng);
                journal.admit().await.expect("admit");
                let batch = Batch {
                    feed: Arc::clone(&feed),
                    received_at: Timestamp(1_700_000_000_000),
                    ops: vec![Op::Upsert {
                        collection: Collection::Units,
                        draft: unit.draft(),
                    }],
                };
                let ticket = {
                    let mut store = store.write().expect("lock");
                    let applied = store.apply(batch).expect("apply");
                    journal.append_applied(&store, &applied, &cause, Timestamp(1_700_000_000_000))
                };
                journal.wait(ticket).await.expect("durable");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let elapsed = started.elapsed();
    let total = per_writer * n_writers;
    let bytes: u64 = std::fs::read_dir(dir.join("journal"))
        .expect("dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{total} single-feature writes acknowledged ({sync:?}) by {n_writers} writers in {:.2} s: {:.0} writes/s, {:.1} MB journal ({:.0} B/write)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        bytes as f64 / 1e6,
        bytes as f64 / total as f64
    );
    journal.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
