#!/usr/bin/env bash
# Benchmarks GET /configs/{name} on the app three ways, interleaved in rounds:
#   (a) the embedded SQLite store, (b) MongoDB without cache, (c) MongoDB with
#   the Redis cache. Prints requests/s and p50/p99 (medians over rounds) and
#   the cache speed-up (c)/(b).
# Usage: bench/app.sh [ROUNDS=3] [DURATION=10s] [CONNECTIONS=32]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-3}
DURATION=${2:-10s}
CONNS=${3:-32}
# shellcheck source=scripts/services.sh
source scripts/services.sh
# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_tool wrk wrk
ensure_tool curl curl
services_up
cargo build --release --locked -p app >&2

WORK=$(mktemp -d /tmp/bench-app.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; services_down; }
trap cleanup EXIT

start_app() { # NAME PORT [ENV=VALUE...]
  local name=$1 port=$2
  shift 2
  env -i PATH="$PATH" APP_LISTEN="127.0.0.1:$port" APP_ADMIN_LISTEN="127.0.0.1:$(free_port)" \
    APP_DATA_DIR="$WORK/$name" RUST_LOG=warn "$@" target/release/app >"$WORK/$name.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$port/healthz" 30
  curl -s -o /dev/null -H 'content-type: application/json' \
    -d '{"name":"bench","data":[{"id":4608,"app_name":"Apus","enabled":true},{"id":"1412","tags":["a","b"]}]}' \
    "http://127.0.0.1:$port/configs" || true
}

DB="bench_$$"
declare -A PORT
PORT[embedded]=$(free_port); start_app embedded "${PORT[embedded]}"
PORT[mongo]=$(free_port); start_app mongo "${PORT[mongo]}" MONGODB_URI="$MONGODB_URI" MONGODB_DATABASE="$DB"
PORT[mongo_redis]=$(free_port); start_app mongo_redis "${PORT[mongo_redis]}" MONGODB_URI="$MONGODB_URI" \
  MONGODB_DATABASE="$DB" REDIS_URL="$REDIS_URL" REDIS_KEY_PREFIX="bench$$"

declare -A RPS P50 P99
for ((round = 1; round <= ROUNDS; round++)); do
  for name in embedded mongo mongo_redis; do
    read -r rps p50 p99 < <(wrk_run "http://127.0.0.1:${PORT[$name]}/configs/bench" "$DURATION" "$CONNS")
    echo "round $round $name: $rps req/s p50 ${p50}ms p99 ${p99}ms" >&2
    RPS[$name]+="$rps "; P50[$name]+="$p50 "; P99[$name]+="$p99 "
  done
done

printf '\nGET /configs/{name}, wrk -t2 -c%s, %s x %s rounds, medians\n' "$CONNS" "$DURATION" "$ROUNDS"
printf '%-28s %12s %10s %10s\n' backend "req/s" "p50 ms" "p99 ms"
declare -A MED
for name in embedded mongo mongo_redis; do
  # shellcheck disable=SC2086
  MED[$name]=$(median ${RPS[$name]})
  # shellcheck disable=SC2086
  printf '%-28s %12s %10s %10s\n' "$name" "${MED[$name]}" "$(median ${P50[$name]})" "$(median ${P99[$name]})"
done
awk -v c="${MED[mongo_redis]}" -v b="${MED[mongo]}" 'BEGIN { printf "cache speed-up (mongo_redis / mongo): %.2fx\n", c / b }'
