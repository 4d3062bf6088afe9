//! The beeld side of `benches/joins_vs_peers.sh`: writes the generated
//! snapshot-join data (100,000 units, 2,000 hazard polygons of 32–256
//! vertices, fixed seeds) to `DIR/units.csv` and `DIR/hazards.csv`, so the
//! peers read exactly the same input, then times beeld's join of the same
//! data single-threaded and prints one JSON line.
//!
//! `joins-peers DIR [N_UNITS] [N_HAZARDS]`

use std::fmt::Write as _;
use std::time::Instant;

use beeld_fixtures::{hazard_polygons, units};
use beeld_layers::relate::{HazardSet, bucket_points};
use geo::{BoundingRect, Geometry, coord};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: joins-peers DIR [N_UNITS] [N_HAZARDS]");
        std::process::exit(2);
    };
    let n_units: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let n_hazards: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let dir = std::path::PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    let fleet = units(n_units, 1);
    let polygons = hazard_polygons(n_hazards, 7);
    // `{}` prints the shortest text that reads back to the same f64, so the
    // peers parse bit-identical coordinates.
    let mut text = String::from("id,lon,lat\n");
    for (i, u) in fleet.iter().enumerate() {
        let _ = writeln!(text, "{i},{},{}", u.lon, u.lat);
    }
    let mut wkt = String::from("id\twkt\n");
    for (i, p) in polygons.iter().enumerate() {
        let coords: Vec<String> = p
            .exterior()
            .0
            .iter()
            .map(|c| format!("{} {}", c.x, c.y))
            .collect();
        let _ = writeln!(wkt, "{i}\tPOLYGON(({}))", coords.join(","));
    }
    for (name, body) in [("units.csv", text), ("hazards.tsv", wkt)] {
        if let Err(e) = std::fs::write(dir.join(name), body) {
            eprintln!("cannot write {name}: {e}");
            std::process::exit(1);
        }
    }
    let started = Instant::now();
    let mut set = HazardSet::default();
    for polygon in polygons {
        let Some(bbox) = polygon.bounding_rect() else {
            continue;
        };
        set.insert(Geometry::Polygon(polygon), bbox);
    }
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    let points = || (0u32..).zip(fleet.iter().map(|u| coord! { x: u.lon, y: u.lat }));
    // The units' buckets are the server's live index; build them outside the
    // timing, as the peers build their GiST/STRtree indexes outside theirs.
    let started = Instant::now();
    let buckets = bucket_points(points());
    let build_ms = build_ms + started.elapsed().as_secs_f64() * 1e3;
    let mut best = f64::INFINITY;
    let mut pairs = 0u64;
    for _ in 0..20 {
        let started = Instant::now();
        let mut n = 0u64;
        set.join(&buckets, |_, _| n += 1);
        best = best.min(started.elapsed().as_secs_f64() * 1e3);
        pairs = std::hint::black_box(n);
    }
    let line = format!(
        "{{\"engine\":\"beeld\",\"pairs\":{pairs},\"join_ms\":{best:.3},\"build_ms\":{build_ms:.3}}}"
    );
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
}
