//! Store memory per point unit: loads N units into an empty store under a
//! counting allocator and reports heap bytes per unit, with and without the
//! bytes of the properties text itself.
//!
//! `cargo run --release -p beeld-benches --bin store-memory -- 1000000`

// A global allocator is the one place that needs `unsafe`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use beeld_fixtures::units;
use beeld_layers::{Batch, Op, Store, Timestamp};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// wrapper only adds and subtracts sizes in an atomic counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    // Everything allocated from here on and still alive at the end belongs to
    // the store: the generator's data is dropped and the ops are consumed.
    let base = LIVE.load(Ordering::Relaxed);
    let fleet = units(n, 1);
    let ops: Vec<Op> = fleet.iter().map(beeld_fixtures::UnitSpec::upsert).collect();
    drop(fleet);
    let properties_bytes: usize = ops
        .iter()
        .map(|op| match op {
            Op::Upsert { draft, .. } => draft.properties.len(),
            Op::Delete { .. } => 0,
        })
        .sum();
    // The change log is sized by configuration, not by the number of units:
    // keep one record so it does not count here (see BENCHMARKS.md).
    let mut store = Store::new(beeld_layers::StoreConfig {
        change_log_capacity: 1,
        ..Default::default()
    });
    store
        .apply(Batch {
            feed: "bench".into(),
            received_at: Timestamp(0),
            ops,
        })
        .expect("load");
    let store_bytes = LIVE.load(Ordering::Relaxed) - base;
    let per_unit = |bytes: usize| bytes as f64 / n as f64;
    println!("units: {n}");
    println!(
        "size_of::<Feature>: {} bytes",
        std::mem::size_of::<beeld_layers::Feature>()
    );
    println!(
        "store heap, everything: {:.1} bytes/unit",
        per_unit(store_bytes)
    );
    println!(
        "  properties text: {:.1} bytes/unit",
        per_unit(properties_bytes)
    );
    println!(
        "store overhead beyond properties (ids, geometry, times, indexes): {:.1} bytes/unit",
        per_unit(store_bytes - properties_bytes)
    );
    // The relations (issue 4) live inside the store; the same ones built
    // on their own tell the two parts apart. Ids are shared `Arc`s, as in
    // the store, so no id text is counted twice.
    let before = LIVE.load(Ordering::Relaxed);
    let mut relations = beeld_layers::relate::Relations::new(1);
    for feature in store.iter(beeld_layers::Collection::Units) {
        relations.upsert(
            beeld_layers::Collection::Units,
            &feature.id,
            &feature.shape,
            &feature.attrs,
            feature.seq,
            feature.received_at,
        );
    }
    let relations_bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "  of which relations (attribution, hazard membership, H3 counts): {:.1} bytes/unit",
        per_unit(relations_bytes)
    );
    println!(
        "  of which the feature store (slab, id table, spatial index): {:.1} bytes/unit",
        per_unit(
            store_bytes - properties_bytes - relations_bytes.min(store_bytes - properties_bytes)
        )
    );
    std::hint::black_box(&relations);
    std::hint::black_box(&store);
}
