#!/usr/bin/env bash
# Snapshot join of 100,000 units × 2,000 hazard polygons (32–256 vertices):
# beeld, geopandas `sjoin` and PostGIS `ST_Contains` (GiST) side by side on
# identical generated data, with ratios and pair counts (BENCHMARKS.md).
#
# Installs what it needs when missing (idempotent): Debian
# `postgresql-15-postgis-3` (and starts the cluster), and geopandas from PyPI.
# PostGIS is reached through the usual PG* variables, by default
# 127.0.0.1:5432, user postgres, database test.
#
#   benches/joins_vs_peers.sh [N_UNITS] [N_HAZARDS]
set -euo pipefail
cd "$(dirname "$0")/.."
N_UNITS="${1:-100000}"
N_HAZARDS="${2:-2000}"
export PGHOST="${PGHOST:-127.0.0.1}" PGUSER="${PGUSER:-postgres}" PGDATABASE="${PGDATABASE:-test}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! dpkg -s postgresql-15-postgis-3 >/dev/null 2>&1; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q postgresql-15 postgresql-15-postgis-3
fi
if ! pg_isready -q; then
  $SUDO pg_ctlcluster 15 main start || true
  for _ in $(seq 30); do pg_isready -q && break; sleep 1; done
fi
if ! psql -X -q -c 'select 1' >/dev/null 2>&1; then
  # A fresh cluster: allow the bench user in, and create the database.
  $SUDO -u postgres psql -X -q -h /var/run/postgresql -c "ALTER USER postgres PASSWORD 'postgres'" || true
  export PGPASSWORD="${PGPASSWORD:-postgres}"
  psql -X -q -d postgres -c "CREATE DATABASE ${PGDATABASE}" 2>/dev/null || true
fi
if ! python3 -c 'import geopandas' >/dev/null 2>&1; then
  python3 -m pip install --quiet geopandas
fi

DATA="${CARGO_TARGET_DIR:-target}/joins-peers"
mkdir -p "$DATA"
cargo run --release -q -p beeld-benches --bin joins-peers -- "$DATA" "$N_UNITS" "$N_HAZARDS" > "$DATA/beeld.json"
python3 benches/joins_vs_peers.py "$DATA"
