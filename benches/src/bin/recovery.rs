//! Recovery time: journals N changes (units moving; one change per record,
//! as single-feature feed writes produce), then times a full start-up
//! rebuild (`recovery::rebuild`, no snapshot) of the picture from it.
//!
//! `cargo run --release -p beeld-benches --bin recovery -- [CHANGES] [UNITS]`

use std::sync::Arc;
use std::time::Instant;

use beeld_fixtures::{Rng, units};
use beeld_layers::{Batch, ChangeCause, Collection, Op, Seq, Store, StoreConfig, Timestamp};
use beeld_server::persist::Layout;
use beeld_server::persist::journal::{Journal, SyncPolicy, Tail, WriterConfig};
use beeld_server::persist::recovery::{Until, rebuild};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n_changes = args.first().copied().unwrap_or(1_000_000);
    let n_units = args.get(1).copied().unwrap_or(100_000);
    let dir = std::env::temp_dir().join("beeld-bench-recovery");
    let _ = std::fs::remove_dir_all(&dir);
    let layout = Layout::new(&dir);
    let (closed_tx, _closed_rx) = std::sync::mpsc::channel();
    let journal = Journal::start(
        WriterConfig {
            dir: layout.journal(),
            // Setup speed only; the file format is the same.
            sync: SyncPolicy::None,
            segment_bytes: 64 << 20,
        },
        &Tail {
            segment: None,
            seq: Seq(0),
        },
        closed_tx,
    )
    .expect("journal");
    let mut fleet = units(n_units, 11);
    let mut rng = Rng::new(3);
    let mut store = Store::default();
    let feed: Arc<str> = "bench".into();
    let cause = ChangeCause::Write {
        feed: Arc::clone(&feed),
    };
    for i in 0..n_changes {
        let unit = &mut fleet[i % n_units];
        unit.step(&mut rng);
        let at = Timestamp(1_700_000_000_000 + i as i64);
        let applied = store
            .apply(Batch {
                feed: Arc::clone(&feed),
                received_at: at,
                ops: vec![Op::Upsert {
                    collection: Collection::Units,
                    draft: unit.draft(),
                }],
            })
            .expect("apply");
        journal.append_applied(&store, &applied, &cause, at);
    }
    journal.shutdown();
    drop(store);
    let bytes: u64 = std::fs::read_dir(layout.journal())
        .expect("dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let started = Instant::now();
    let rebuilt = rebuild(&layout, StoreConfig::default(), Until::End, true).expect("rebuild");
    let elapsed = started.elapsed();
    assert_eq!(rebuilt.seq, Seq(n_changes as u64));
    assert_eq!(rebuilt.store.len(Collection::Units), n_units);
    println!(
        "recovered {n_changes} journaled changes ({} records, {:.0} MB, {n_units} units) in {:.2} s: {:.0} changes/s",
        rebuilt.n_records,
        bytes as f64 / 1e6,
        elapsed.as_secs_f64(),
        n_changes as f64 / elapsed.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
