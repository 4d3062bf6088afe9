//! Store upsert throughput for moving points: 100,000 units loaded, then
//! every unit reports a new position, applied in feed batches.

use std::hint::black_box;
use std::sync::Arc;

use beeld_fixtures::{Rng, units};
use beeld_layers::{Batch, Collection, Limits, Op, Store, Timestamp, prepare::prepare};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const N_UNITS: usize = 100_000;

fn loaded_store() -> Store {
    let mut store = Store::default();
    let ops = units(N_UNITS, 1)
        .iter()
        .map(beeld_fixtures::UnitSpec::upsert)
        .collect();
    store
        .apply(Batch {
            feed: "bench".into(),
            received_at: Timestamp(0),
            ops,
        })
        .expect("load");
    store
}

fn moved_batches(batch_size: usize, seed: u64) -> Vec<Vec<Op>> {
    let mut rng = Rng::new(seed);
    let mut fleet = units(N_UNITS, 1);
    fleet.iter_mut().for_each(|u| u.step(&mut rng));
    fleet
        .chunks(batch_size)
        .map(|chunk| chunk.iter().map(beeld_fixtures::UnitSpec::upsert).collect())
        .collect()
}

fn moving_points_are_upserted(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.sample_size(10);
    group.throughput(Throughput::Elements(N_UNITS as u64));
    let feed: Arc<str> = "bench".into();
    for batch_size in [1usize, 1000] {
        group.bench_function(
            format!("moving_points_upserted_in_batches_of_{batch_size}"),
            |b| {
                b.iter_batched(
                    || (loaded_store(), moved_batches(batch_size, 2)),
                    |(mut store, batches)| {
                        for ops in batches {
                            let applied = store.apply(Batch {
                                feed: Arc::clone(&feed),
                                received_at: Timestamp(1),
                                ops,
                            });
                            black_box(applied.is_ok());
                        }
                        store
                    },
                    BatchSize::PerIteration,
                );
            },
        );
    }
    // The same moves from GeoJSON: validation plus apply, as the HTTP path does after parsing.
    let mut rng = Rng::new(3);
    let mut fleet = units(N_UNITS, 1);
    fleet.iter_mut().for_each(|u| u.step(&mut rng));
    let features: Vec<serde_json::Value> = fleet
        .iter()
        .map(beeld_fixtures::UnitSpec::feature)
        .collect();
    group.bench_function("moving_points_prepared_from_geojson_and_upserted", |b| {
        b.iter_batched(
            || (loaded_store(), features.clone()),
            |(mut store, features)| {
                let limits = Limits::default();
                for chunk in features.chunks(1000) {
                    let ops = chunk
                        .iter()
                        .map(|f| Op::Upsert {
                            collection: Collection::Units,
                            draft: prepare(Collection::Units, f.clone(), &limits, Timestamp(1))
                                .expect("valid"),
                        })
                        .collect();
                    black_box(
                        store
                            .apply(Batch {
                                feed: Arc::clone(&feed),
                                received_at: Timestamp(1),
                                ops,
                            })
                            .is_ok(),
                    );
                }
                store
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, moving_points_are_upserted);
criterion_main!(benches);
