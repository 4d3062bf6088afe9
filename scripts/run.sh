#!/usr/bin/env bash
# Builds the web client (frontend/ -> frontend/dist) and runs `beeld serve`
# with it, so that http://127.0.0.1:8080/ in a browser shows the live map.
# Arguments are passed to `beeld serve`, e.g.:
#   scripts/run.sh --feed-token demo=demo-token-0001
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  echo "error: Node.js (18+) and npm are needed to build the web client in frontend/." >&2
  echo "       Install them (Debian: apt-get install nodejs npm), or serve the API only with" >&2
  echo "       cargo run --release --bin beeld -- serve $*" >&2
  exit 1
fi

(
  cd frontend
  # Install exactly the locked dependencies when they are missing or outdated.
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    # npm 11 refuses `npm ci` when the lock lacks other platforms' optional
    # packages (rollup's); `npm install` then resolves from the same lock.
    npm ci --no-audit --no-fund || npm install --no-audit --no-fund
  fi
  npm run build
)

exec cargo run --release --bin beeld -- serve "$@"
