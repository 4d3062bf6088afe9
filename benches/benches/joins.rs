//! Spatial joins (issue 4): point-in-region throughput on the real CBS
//! boundaries, the snapshot join of 100,000 units against 2,000 hazard
//! polygons, and the incremental cost of one unit move with 2,000 hazards
//! loaded (hazard membership, attribution and H3 counts together).
//!
//! The boundaries are read from `../shared/data/boundaries` (or
//! `BEELD_SHARED_DATA`). Data is generated from fixed seeds.

use std::hint::black_box;
use std::path::PathBuf;

use beeld_fixtures::{NL_BBOX, Rng, hazard_draft, hazard_polygons, units};
use beeld_layers::relate::{HazardSet, Locator, Relations, bucket_points, covers_brute};
use beeld_layers::{Batch, Collection, FeatureId, Op, Shape, Store, Timestamp};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use geo::{BoundingRect, Coord, Geometry, coord};

/// The server's allocator, so allocation costs match production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N_POINTS: usize = 100_000;
const N_UNITS: usize = 100_000;
const N_HAZARDS: usize = 2_000;

fn boundaries_dir() -> PathBuf {
    std::env::var_os("BEELD_SHARED_DATA")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
            PathBuf::from,
        )
        .join("boundaries")
}

fn areas(file: &str, collection: Collection) -> Vec<(String, Geometry<f64>)> {
    beeld_server::boundaries::load_file(&boundaries_dir().join(file), collection, Timestamp(0))
        .expect("boundary file (set BEELD_SHARED_DATA)")
        .into_iter()
        .filter_map(|op| match op {
            Op::Upsert { draft, .. } => match draft.shape {
                Shape::Area(area) => Some((draft.id?.to_string(), area.geometry)),
                Shape::Point(_) => None,
            },
            Op::Delete { .. } => None,
        })
        .collect()
}

fn random_points(n: usize, seed: u64) -> Vec<Coord<f64>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| coord! { x: rng.range(NL_BBOX[0], NL_BBOX[2]), y: rng.range(NL_BBOX[1], NL_BBOX[3]) })
        .collect()
}

const BOUNDARY_FILES: [(&str, &str, Collection); 4] = [
    (
        "veiligheidsregios_2023",
        "veiligheidsregios_2023_wgs84.geojson",
        Collection::Regions,
    ),
    (
        "veiligheidsregios_2019",
        "veiligheidsregios_2019_cbs_wgs84_woki74.geojson",
        Collection::Regions,
    ),
    (
        "gemeenten_2023",
        "gemeenten_2023_wgs84.geojson",
        Collection::Municipalities,
    ),
    (
        "gemeenten_2022_345",
        "gemeenten_cbs_2022_gegeneraliseerd_wgs84.geojson",
        Collection::Municipalities,
    ),
];

fn points_are_located_in_real_regions(c: &mut Criterion) {
    let points = random_points(N_POINTS, 11);
    let mut group = c.benchmark_group("point_in_region");
    group.throughput(Throughput::Elements(N_POINTS as u64));
    for (name, file, collection) in BOUNDARY_FILES {
        let geometries: Vec<Geometry<f64>> = areas(file, collection)
            .into_iter()
            .map(|(_, g)| g)
            .collect();
        let locator = Locator::new(&geometries);
        group.bench_function(format!("{name}_points_located_by_the_prepared_grid"), |b| {
            b.iter(|| {
                let mut hits = 0u32;
                for p in &points {
                    hits += u32::from(locator.first(*p).is_some());
                }
                black_box(hits)
            });
        });
    }
    group.finish();
    // The unprepared reference on the most detailed file, for the ratio:
    // bounding-box prefilter, then every edge of each candidate.
    let mut group = c.benchmark_group("point_in_region_reference");
    group.sample_size(10);
    let few = &points[..2_000];
    group.throughput(Throughput::Elements(few.len() as u64));
    let geometries: Vec<Geometry<f64>> = areas(BOUNDARY_FILES[3].1, Collection::Municipalities)
        .into_iter()
        .map(|(_, g)| g)
        .collect();
    let boxes: Vec<geo::Rect<f64>> = geometries
        .iter()
        .filter_map(BoundingRect::bounding_rect)
        .collect();
    group.bench_function(
        "gemeenten_2022_345_points_located_by_brute_force_after_bbox",
        |b| {
            b.iter(|| {
                let mut hits = 0u32;
                for p in few {
                    let found = geometries.iter().zip(&boxes).any(|(g, r)| {
                        p.x >= r.min().x
                            && p.x <= r.max().x
                            && p.y >= r.min().y
                            && p.y <= r.max().y
                            && covers_brute(g, *p)
                    });
                    hits += u32::from(found);
                }
                black_box(hits)
            });
        },
    );
    group.finish();
}

fn snapshot_join(c: &mut Criterion) {
    let mut set = HazardSet::default();
    for polygon in hazard_polygons(N_HAZARDS, 7) {
        let bbox = polygon.bounding_rect().expect("non-empty");
        set.insert(Geometry::Polygon(polygon), bbox);
    }
    let points: Vec<Coord<f64>> = units(N_UNITS, 1)
        .iter()
        .map(|u| coord! { x: u.lon, y: u.lat })
        .collect();
    let indexed = || (0u32..).zip(points.iter().copied());
    let buckets = bucket_points(indexed());
    let mut group = c.benchmark_group("snapshot_join");
    group.throughput(Throughput::Elements(N_UNITS as u64));
    // The units' buckets exist already in a running server (`Relations`
    // keeps them), as the peers' indexes are built before their timing.
    group.bench_function(
        "100k_bucketed_units_joined_with_2000_hazards_of_32_to_256_vertices",
        |b| {
            b.iter(|| {
                let mut pairs = 0u32;
                set.join(&buckets, |_, _| pairs += 1);
                black_box(pairs)
            });
        },
    );
    group.bench_function(
        "100k_raw_units_bucketed_then_joined_with_2000_hazards",
        |b| {
            b.iter(|| {
                let buckets = bucket_points(indexed());
                let mut pairs = 0u32;
                set.join(&buckets, |_, _| pairs += 1);
                black_box(pairs)
            });
        },
    );
    group.bench_function("100k_units_each_looked_up_in_the_hazard_buckets", |b| {
        b.iter(|| {
            let mut pairs = 0u32;
            for p in &points {
                set.for_each_covering(*p, |_| pairs += 1);
            }
            black_box(pairs)
        });
    });
    group.finish();
}

/// Real boundaries, 2,000 hazards and 100,000 units in a store.
fn loaded_store() -> Store {
    let dir = boundaries_dir();
    let mut store = Store::default();
    let boundaries = beeld_server::boundaries::load(
        &dir.join("veiligheidsregios_2023_wgs84.geojson"),
        &dir.join("gemeenten_2023_wgs84.geojson"),
        Timestamp(0),
    )
    .expect("boundaries");
    store.load(boundaries).expect("load");
    let hazards = hazard_polygons(N_HAZARDS, 7)
        .iter()
        .enumerate()
        .map(|(i, p)| Op::Upsert {
            collection: Collection::Hazards,
            draft: hazard_draft(&format!("hazard-{i:04}"), p),
        })
        .collect();
    store
        .apply(Batch {
            feed: "bench".into(),
            received_at: Timestamp(0),
            ops: hazards,
        })
        .expect("hazards");
    let ops = units(N_UNITS, 1)
        .iter()
        .map(|u| Op::Upsert {
            collection: Collection::Units,
            draft: u.draft(),
        })
        .collect();
    store
        .apply(Batch {
            feed: "bench".into(),
            received_at: Timestamp(0),
            ops,
        })
        .expect("units");
    store
}

fn unit_moves_are_kept_current(c: &mut Criterion) {
    let mut store = loaded_store();
    let mut rng = Rng::new(3);
    let mut fleet = units(N_UNITS, 1);
    let mut group = c.benchmark_group("incremental");
    group.throughput(Throughput::Elements(N_UNITS as u64));
    // The whole write path: store apply (slab, id table, point index, change
    // log) plus relations (attribution, hazards, H3, region counts).
    group.bench_function(
        "unit_moves_applied_to_the_store_with_relations_kept_current",
        |b| {
            b.iter_batched(
                || {
                    fleet.iter_mut().for_each(|u| u.step(&mut rng));
                    fleet
                        .iter()
                        .map(|u| {
                            vec![Op::Upsert {
                                collection: Collection::Units,
                                draft: u.draft(),
                            }]
                        })
                        .collect::<Vec<_>>()
                },
                |batches| {
                    for ops in batches {
                        let _ = store.apply(Batch {
                            feed: "bench".into(),
                            received_at: Timestamp(1),
                            ops,
                        });
                    }
                },
                BatchSize::PerIteration,
            );
        },
    );
    // The relations alone: what issue 4 adds to every unit move.
    let mut relations = Relations::default();
    {
        let regions = areas(BOUNDARY_FILES[0].1, Collection::Regions);
        let municipalities = areas(BOUNDARY_FILES[2].1, Collection::Municipalities);
        relations.set_boundaries(
            regions.iter().map(|(id, g)| (id.as_str(), g)),
            municipalities.iter().map(|(id, g)| (id.as_str(), g)),
        );
    }
    for (i, polygon) in hazard_polygons(N_HAZARDS, 7).iter().enumerate() {
        let draft = hazard_draft(&format!("hazard-{i:04}"), polygon);
        let id: FeatureId = format!("hazard-{i:04}").into();
        relations.upsert(
            Collection::Hazards,
            &id,
            &draft.shape,
            &draft.attrs,
            beeld_layers::Seq(0),
            Timestamp(0),
        );
    }
    let ids: Vec<FeatureId> = fleet
        .iter()
        .map(|u| FeatureId::from(u.id.as_str()))
        .collect();
    for (u, id) in fleet.iter().zip(&ids) {
        let draft = u.draft();
        relations.upsert(
            Collection::Units,
            id,
            &draft.shape,
            &draft.attrs,
            beeld_layers::Seq(0),
            Timestamp(0),
        );
    }
    group.bench_function(
        "unit_moves_update_hazard_membership_attribution_and_h3_counts",
        |b| {
            b.iter_batched(
                || {
                    fleet.iter_mut().for_each(|u| u.step(&mut rng));
                    fleet
                        .iter()
                        .map(|u| (Shape::Point(coord! { x: u.lon, y: u.lat }), u.draft().attrs))
                        .collect::<Vec<_>>()
                },
                |moves| {
                    for ((shape, attrs), id) in moves.iter().zip(&ids) {
                        black_box(relations.upsert(
                            Collection::Units,
                            id,
                            shape,
                            attrs,
                            beeld_layers::Seq(1),
                            Timestamp(1),
                        ));
                    }
                },
                BatchSize::PerIteration,
            );
        },
    );
    group.finish();
}

criterion_group!(
    benches,
    points_are_located_in_real_regions,
    snapshot_join,
    unit_moves_are_kept_current
);
criterion_main!(benches);
