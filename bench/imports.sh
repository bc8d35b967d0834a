#!/usr/bin/env bash
# Bulk imports (POST /imports, app/src/imports) against the same items sent
# as single POST /configs, on the embedded store and on MongoDB (+ Redis:
# the stream queue and the cache), interleaved in rounds:
#  - single: wrk POSTs new configs (distinct names, the import's item shape)
#    for DURATION with CONNECTIONS connections: items/s = 201s/s;
#  - import, 1 worker: one ITEMS-item import (JSON array), one app process
#    with worker.concurrency 1; items/s = ITEMS / (finished_at - created_at),
#    from the job's own timestamps (so queueing and every batch count);
#  - import, 2 workers: the same import with a second worker process
#    (`app worker`) on the same store and queue. A job is worked by one
#    worker at a time (batches in order: duplicates and upserts have a
#    defined winner), so this measures what a second worker adds to ONE
#    job (expected: nothing); and
#  - 2 jobs, 2 workers: the same ITEMS split into two imports posted
#    together, both workers busy; items/s over the pair.
# Prints medians, the ratio import/single per store (target: >= 10x on
# MongoDB with one worker) and the API process's peak RSS (VmHWM) after the
# single POSTs and its own import.
# Each round starts a fresh Redis and MongoDB server. The per-round ratios
# are printed too: the MongoDB-protocol stand-in the machines have (no
# mongod) is a Python server whose speed varies a lot.
# Usage: bench/imports.sh [ROUNDS=3] [ITEMS=20000] [DURATION=10s] [CONNECTIONS=32] [BATCH_SIZE=500]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-3}
ITEMS=${2:-20000}
DURATION=${3:-10s}
CONNS=${4:-32}
BATCH_SIZE=${5:-500}   # imports.batch_size of the app under test
# shellcheck source=scripts/services.sh
source scripts/services.sh
# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_tool wrk wrk
ensure_tool curl curl
cargo build --release --locked -p app >&2

WORK=$(mktemp -d /tmp/bench-imports.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; services_down; }
trap cleanup EXIT

# The items: the shape of the configs seed's sample.
python3 - "$ITEMS" "$WORK" <<'PY'
import json, sys
n, work = int(sys.argv[1]), sys.argv[2]
def item(prefix, i):
    return {"name": f"{prefix}-{i:06d}", "data": [
        {"id": i, "app_name": "Apus", "enabled": i % 2 == 0, "tags": ["a", "b"]},
        {"id": str(i), "region": "eu-west", "limits": {"rps": 20, "burst": 40}}]}
for tag in ("one", "two"):
    with open(f"{work}/items-{tag}.json", "w") as f:
        json.dump([item(tag, i) for i in range(n)], f)
for half in (0, 1):
    with open(f"{work}/items-pair-{half}.json", "w") as f:
        json.dump([item(f"pair{half}", i) for i in range(n // 2)], f)
PY

# wrk: each request a new config of the same shape (thread id + counter).
cat >"$WORK/single.lua" <<'LUA'
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  wrk.headers["content-type"] = "application/json"
end
function request()
  counter = counter + 1
  local name = string.format("PREFIX-%d-%d", tid, counter)
  local body = '{"name":"' .. name .. '","data":[{"id":' .. counter ..
    ',"app_name":"Apus","enabled":true,"tags":["a","b"]},{"id":"' .. counter ..
    '","region":"eu-west","limits":{"rps":20,"burst":40}}]}'
  return wrk.format("POST", "/configs", nil, body)
end
LUA

start_app() { # NAME PORT ROLE [ENV=VALUE...] -> pid in LAST_PID
  local name=$1 port=$2 role=$3
  shift 3
  env -i PATH="$PATH" APP_LISTEN="127.0.0.1:$port" APP_ADMIN_LISTEN="127.0.0.1:$(free_port)" \
    APP_WORKER_POLL_INTERVAL=100ms APP_IMPORTS_BATCH_SIZE="$BATCH_SIZE" RUST_LOG=warn "$@" target/release/app $role >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  pids+=("$LAST_PID")
}

# import PORT FILE... -> items/s of the imports posted together (first
# created_at to last finished_at).
import() {
  local port=$1
  shift
  local locations=() file location
  for file in "$@"; do
    location=$(curl -fsS -D - -o /dev/null -H 'content-type: application/json' \
      --data-binary "@$file" "http://127.0.0.1:$port/imports" | tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }')
    locations+=("$location")
  done
  local deadline=$((SECONDS + 600)) states
  while :; do
    states=$(for location in "${locations[@]}"; do curl -fsS "http://127.0.0.1:$port$location"; echo; done)
    # A here-string, not a pipe: with pipefail, grep -q leaving early
    # would fail the echo (SIGPIPE) and end the wait too soon.
    if ! grep -q '"state":"\(queued\|running\)"' <<<"$states"; then break; fi
    if ((SECONDS > deadline)); then echo "imports did not finish: $states" >&2; return 1; fi
    sleep 0.05
  done
  echo "$states" | python3 -c '
import json, sys, datetime
jobs = [json.loads(l) for l in sys.stdin if l.strip()]
for j in jobs:
    assert j["state"] == "done", j
    assert j["counts"]["created"] == j["total"], j
t = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
start = min(t(j["created_at"]) for j in jobs)
end = max(t(j["finished_at"]) for j in jobs)
print("%.0f" % (sum(j["total"] for j in jobs) / (end - start)))'
}

declare -A SINGLE ONE TWO PAIR PEAK
for ((round = 1; round <= ROUNDS; round++)); do
  # Fresh Redis and MongoDB server each round: the MongoDB-protocol
  # stand-in slows down as its memory fills (round after round of the same
  # database work got slower), which would skew later rounds.
  services_down
  unset REDIS_URL MONGODB_URI
  services_up
  trap cleanup EXIT
  for store in embedded mongodb; do
    db="bench_imports_${$}_${round}_$store"
    env_store=(APP_DATA_DIR="$WORK/$db")
    if [ "$store" = mongodb ]; then
      env_store=(MONGODB_URI="$MONGODB_URI" MONGODB_DATABASE="$db" REDIS_URL="$REDIS_URL" REDIS_KEY_PREFIX="$db")
    fi
    port=$(free_port)
    start_app "$db-api" "$port" "" "${env_store[@]}"
    api=$LAST_PID
    wait_http "http://127.0.0.1:$port/healthz" 30
    # Single POSTs.
    sed "s/PREFIX/single-$db/" "$WORK/single.lua" >"$WORK/single-$db.lua"
    read -r rps _ _ < <(wrk_run "http://127.0.0.1:$port" "$DURATION" "$CONNS" -s "$WORK/single-$db.lua")
    SINGLE[$store]+="$rps "
    # One import, one worker (the API process's).
    one=$(import "$port" "$WORK/items-one.json")
    ONE[$store]+="$one "
    # The API process's peak memory so far (it parsed and ran that import).
    PEAK[$store]+="$(awk '/VmHWM/ { print $2 / 1024 }' "/proc/$api/status") "
    # The same size of import with a second worker process beside it.
    start_app "$db-worker" "$(free_port)" worker "${env_store[@]}"
    worker=$LAST_PID
    sleep 1
    two=$(import "$port" "$WORK/items-two.json")
    TWO[$store]+="$two "
    pair=$(import "$port" "$WORK/items-pair-0.json" "$WORK/items-pair-1.json")
    PAIR[$store]+="$pair "
    kill "$worker" "$api"
    wait "$worker" "$api" 2>/dev/null || true
    echo "round $round $store: single POSTs $rps items/s; import 1 worker $one ($(awk -v o="$one" -v s="$rps" 'BEGIN { printf "%.1f", o / s }')x), 2 workers $two, 2 jobs on 2 workers $pair items/s" >&2
  done
done

printf '\n%-9s %14s %14s %14s %16s %10s %12s\n' store "single items/s" "import 1 wkr" "import 2 wkrs" "2 jobs, 2 wkrs" "ratio" "peak RSS MiB"
for store in embedded mongodb; do
  # shellcheck disable=SC2086
  s=$(median ${SINGLE[$store]}); o=$(median ${ONE[$store]}); t=$(median ${TWO[$store]}); p=$(median ${PAIR[$store]})
  m=$(median ${PEAK[$store]})
  printf '%-9s %14.0f %14.0f %14.0f %16.0f %9.1fx %12.0f\n' "$store" "$s" "$o" "$t" "$p" "$(awk -v o="$o" -v s="$s" 'BEGIN { print o / s }')" "$m"
done
echo "ratio = import with one worker / single POSTs (items per second); target >= 10x on MongoDB"
