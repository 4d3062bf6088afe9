"""Peers of beeld's snapshot join, on the data `joins-peers` wrote.

Reads DIR/units.csv and DIR/hazards.tsv, joins units to the hazard polygons
that contain them with geopandas `sjoin(predicate="within")` and with
PostGIS `ST_Contains` over GiST indexes, and prints each engine's time
(best of several runs), pair count, and its ratio to beeld's time from
DIR/beeld.json. Exits non-zero when the pair counts differ.
"""

import json
import os
import subprocess
import sys
import time

DIR = sys.argv[1]
RUNS = 5


def geopandas_join():
    import geopandas as gpd
    import pandas as pd
    import shapely

    units = pd.read_csv(os.path.join(DIR, "units.csv"))
    hazards = pd.read_csv(os.path.join(DIR, "hazards.tsv"), sep="\t")
    units = gpd.GeoDataFrame(units, geometry=gpd.points_from_xy(units.lon, units.lat), crs=4326)
    hazards = gpd.GeoDataFrame(hazards[["id"]], geometry=shapely.from_wkt(hazards.wkt), crs=4326)
    started = time.perf_counter()
    _ = hazards.sindex  # the STRtree, built once like beeld's HazardSet
    build_ms = (time.perf_counter() - started) * 1e3
    best, pairs = float("inf"), None
    for _ in range(RUNS):
        started = time.perf_counter()
        joined = gpd.sjoin(units, hazards, predicate="within", how="inner")
        best = min(best, (time.perf_counter() - started) * 1e3)
        pairs = len(joined)
    return {"engine": f"geopandas {gpd.__version__} sjoin(within)", "pairs": pairs, "join_ms": best, "build_ms": build_ms}


def psql(sql):
    env = dict(os.environ)
    env.setdefault("PGHOST", "127.0.0.1")
    env.setdefault("PGUSER", "postgres")
    env.setdefault("PGDATABASE", "test")
    out = subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql],
                         env=env, check=True, capture_output=True, text=True)
    return out.stdout


def postgis_join():
    units = os.path.abspath(os.path.join(DIR, "units.csv"))
    hazards = os.path.abspath(os.path.join(DIR, "hazards.tsv"))
    psql("CREATE EXTENSION IF NOT EXISTS postgis")
    psql("DROP TABLE IF EXISTS beeld_bench_units, beeld_bench_hazards, beeld_bench_hazards_raw")
    psql("CREATE TABLE beeld_bench_units (id int PRIMARY KEY, lon float8, lat float8, geom geometry(Point, 4326))")
    psql("CREATE TABLE beeld_bench_hazards_raw (id int, wkt text)")
    # Read from stdin so the server needs no access to the files.
    env = dict(os.environ, PGHOST=os.environ.get("PGHOST", "127.0.0.1"),
               PGUSER=os.environ.get("PGUSER", "postgres"), PGDATABASE=os.environ.get("PGDATABASE", "test"))
    with open(units) as f:
        subprocess.run(["psql", "-X", "-q", "-c", "COPY beeld_bench_units (id, lon, lat) FROM STDIN WITH (FORMAT csv, HEADER true)"],
                       stdin=f, env=env, check=True)
    with open(hazards) as f:
        subprocess.run(["psql", "-X", "-q", "-c", "COPY beeld_bench_hazards_raw FROM STDIN WITH (FORMAT text, HEADER true)"],
                       stdin=f, env=env, check=True)
    psql("UPDATE beeld_bench_units SET geom = ST_SetSRID(ST_MakePoint(lon, lat), 4326)")
    psql("CREATE TABLE beeld_bench_hazards AS SELECT id, ST_GeomFromText(wkt, 4326) AS geom FROM beeld_bench_hazards_raw")
    started = time.perf_counter()
    psql("CREATE INDEX ON beeld_bench_hazards USING gist (geom); CREATE INDEX ON beeld_bench_units USING gist (geom)")
    build_ms = (time.perf_counter() - started) * 1e3
    # VACUUM cannot run inside the implicit transaction of a multi-statement -c.
    psql("VACUUM ANALYZE beeld_bench_units")
    psql("VACUUM ANALYZE beeld_bench_hazards")
    query = ("SELECT count(*) FROM beeld_bench_units u JOIN beeld_bench_hazards h "
             "ON ST_Contains(h.geom, u.geom)")
    best = float("inf")
    for _ in range(RUNS):
        # Single-threaded like the others (no parallel workers), and no JIT:
        # compiling the plan cost more than the join itself.
        plan = psql("SET max_parallel_workers_per_gather = 0; SET jit = off; EXPLAIN (ANALYZE, FORMAT JSON) " + query)
        best = min(best, json.loads(plan)[0]["Execution Time"])
    pairs = int(psql("SET max_parallel_workers_per_gather = 0; SET jit = off; " + query).strip())
    version = psql("SELECT postgis_lib_version()").strip()
    return {"engine": f"PostGIS {version} ST_Contains + GiST", "pairs": pairs, "join_ms": best, "build_ms": build_ms}


def main():
    with open(os.path.join(DIR, "beeld.json")) as f:
        beeld = json.loads(f.read().strip().splitlines()[-1])
    beeld["engine"] = "beeld HazardSet (prepared grid)"
    rows = [beeld, geopandas_join(), postgis_join()]
    print(f"{'engine':45} {'pairs':>8} {'join ms':>9} {'index ms':>9} {'vs beeld':>9}")
    for r in rows:
        ratio = r["join_ms"] / beeld["join_ms"]
        print(f"{r['engine']:45} {r['pairs']:>8} {r['join_ms']:>9.2f} {r['build_ms']:>9.1f} {ratio:>8.1f}x")
    counts = {r["pairs"] for r in rows}
    if len(counts) != 1:
        print(f"pair counts differ: {[r['pairs'] for r in rows]}", file=sys.stderr)
        sys.exit(1)
    print(f"pair counts equal: {beeld['pairs']}")


main()
