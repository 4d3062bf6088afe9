#!/usr/bin/env bash
# The full test suite, as CI runs it (.ci/run calls this script).
#
# It provisions what the tests need on a fresh Debian machine (GDAL for the
# OGC API / FlatGeobuf interoperability tests; Node.js, npm and Chromium for
# the web client), then runs formatting, lints, every test of the workspace
# and the web client's unit and headless-browser tests. Under CI (CI set), a missing tool makes
# its tests fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

apt_updated=
apt_install() {
  # $1: command that must exist afterwards; rest: Debian packages.
  local probe=$1; shift
  command -v "$probe" >/dev/null && return 0
  step "installing $* (for $probe)"
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq || echo "warning: apt-get update failed"
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || echo "warning: could not install $* (tests that need $probe will skip, or fail under CI)"
}

shared="${BEELD_SHARED_DATA:-../shared/data}"
if [ ! -d "$shared/boundaries" ]; then
  echo "error: $shared/boundaries not found; run from a checkout with ../shared beside it or set BEELD_SHARED_DATA" >&2
  exit 1
fi
export BEELD_SHARED_DATA="$(cd "$shared" && pwd)"

apt_install ogrinfo gdal-bin

# PostGIS for the persistence tests (tests/tests/persist.rs). Installing may
# restart a PostgreSQL that is already running.
if ! dpkg -s postgresql-15-postgis-3 >/dev/null 2>&1; then
  step "installing postgresql-15-postgis-3"
  as_root apt-get update -qq || echo "warning: apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-15-postgis-3 >/dev/null \
    || echo "warning: could not install PostGIS (its tests will skip, or fail under CI)"
fi
if command -v pg_ctlcluster >/dev/null; then
  if ! pg_lsclusters -h 2>/dev/null | grep -Eq '^15 +main .*online'; then
    as_root pg_ctlcluster --skip-systemctl-redirect 15 main start || echo "warning: could not start PostgreSQL 15"
  fi
  # A password login for the tests, so no pg_hba.conf change is needed.
  as_root runuser -u postgres -- psql -q -c "DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'beeld_test') THEN
      CREATE ROLE beeld_test LOGIN SUPERUSER PASSWORD 'beeld_test'; END IF; END \$\$" \
    || echo "warning: could not create the beeld_test role"
fi
export BEELD_TEST_DATABASE_URL="${BEELD_TEST_DATABASE_URL:-postgres://beeld_test:beeld_test@127.0.0.1:5432/postgres}"

# A one-shot build gains nothing from incremental caches, which roughly
# double the size of target/; CI machines have had little disk to spare.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
step "disk"
df -h . || true

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --bins --locked

step "test"
cargo test --workspace --locked

# The web client: unit tests (vitest), then end-to-end in headless Chromium
# against the beeld binary built above (frontend/tests/e2e/harness.mjs).
step "web client"
apt_install npm nodejs npm
apt_install chromium chromium
web_missing=
command -v npm >/dev/null || web_missing="npm"
command -v chromium >/dev/null || [ -n "${CHROMIUM:-}" ] || web_missing="$web_missing chromium"
if [ -n "$web_missing" ]; then
  if [ -n "${CI:-}" ]; then
    echo "error: $web_missing missing: the web client tests cannot run under CI" >&2
    exit 1
  fi
  echo "warning: skipping the web client tests ($web_missing missing)"
else
  BEELD_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/beeld"
  export BEELD_BIN
  (
    cd frontend
    if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
      # npm 11 refuses `npm ci` when the lock lacks other platforms' optional
      # packages (rollup's); `npm install` then resolves from the same lock.
      npm ci --no-audit --no-fund || npm install --no-audit --no-fund
    fi
    npm run build
    npm test
    npm run e2e
  )
fi
