#!/usr/bin/env bash
# Fan-out benchmark: the real beeld binary (release) and the loadgen on one
# machine, for each scenario of issue 3, plus the naive baseline (every
# change checked against every subscription) in the same run.
#
#   benches/fanout.sh [SECONDS]
#
# BEELD_BIN=path runs another build of the server (to compare two builds,
# alternate them run by run: the VM's speed drifts over an hour).
#
# Prints one block per scenario; BENCHMARKS.md records them.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
cargo build --release --bin beeld >/dev/null
cargo build --release -p beeld-benches --bin loadgen >/dev/null
bin="${CARGO_TARGET_DIR:-target}/release"
token=fanout-bench-token
port=18190

run() {
  local label=$1 server_flags=$2 load_flags=$3
  local data; data=$(mktemp -d)
  "${BEELD_BIN:-$bin/beeld}" serve --listen 127.0.0.1:$port --data-dir "$data" \
    --feed-token "bench=$token" $server_flags >/tmp/beeld-fanout-server.log 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  echo "== $label  (server: ${server_flags:-defaults}; load: $load_flags)"
  "$bin/loadgen" --target "http://127.0.0.1:$port" --token "$token" --server-pid "$pid" $load_flags 2>/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  echo
}

run "idle connections" "" "--idle 1000"
run "1000 clients, 0.5-5 deg viewports, 1000 moves/s, tick 100 ms" "" "--clients 1000 --rate 1000 --seconds $seconds"
run "same, naive routing baseline" "--fanout naive" "--clients 1000 --rate 1000 --seconds $seconds"
run "1000 clients, 0.5-5 deg viewports, 10000 moves/s, tick 100 ms" "" "--clients 1000 --rate 10000 --seconds $seconds"
run "same, naive routing baseline" "--fanout naive" "--clients 1000 --rate 10000 --seconds $seconds"
# Every connection ticking at once, as before the ticks were staggered.
run "same, ticks not staggered" "--tick-phases 1" "--clients 1000 --rate 10000 --seconds $seconds"
run "1000 clients, 0.5-5 deg viewports, 1000 moves/s, tick 10 ms" "--tick-ms 10" "--clients 1000 --rate 1000 --seconds $seconds"
run "1000 clients, 0.5-5 deg viewports, 10000 moves/s, tick 10 ms" "--tick-ms 10" "--clients 1000 --rate 10000 --seconds $seconds"
run "dense: 200 clients see the whole country, 10000 moves/s" "" "--clients 200 --rate 10000 --seconds $seconds --dense"
# 200 clients ask for at most 2 M deliveries/s; 300 and 500 ask for 3 M and
# 5 M, to see what the server can deliver rather than what it is asked.
run "dense: 300 clients see the whole country, 10000 moves/s" "" "--clients 300 --rate 10000 --seconds $seconds --dense"
run "dense: 500 clients see the whole country, 10000 moves/s" "" "--clients 500 --rate 10000 --seconds $seconds --dense"
# Town-sized viewports (tablets zoomed in): few deliveries, many
# connections; what routing and waking cost rather than bytes.
run "5000 clients, 0.02-0.1 deg viewports, 10000 moves/s" "" "--clients 5000 --rate 10000 --seconds $seconds --viewport 0.02-0.1"
run "same, naive routing baseline" "--fanout naive" "--clients 5000 --rate 10000 --seconds $seconds --viewport 0.02-0.1"
run "1000 clients, 0.5-5 deg viewports, 10000 moves/s, precision 6" "" "--clients 1000 --rate 10000 --seconds $seconds --precision 6"
run "same, precision 6 + field-level deltas" "" "--clients 1000 --rate 10000 --seconds $seconds --precision 6 --deltas"
