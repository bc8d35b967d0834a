#!/usr/bin/env bash
# Shared rate limits ([rate_limit.shared], gateway/src/rate_limit/cluster.rs),
# three figures from one run:
#  1. their cost on the request path: two gateways in front of the same
#     replicas with the same per-IP policy (a rate no client reaches), one
#     limiting locally and one sharing through a private redis-server; wrk
#     stands for 1,000 clients (X-Forwarded-For cycling over 10.0.0.1 to
#     10.0.3.250, the gateways trusting 127.0.0.1 as a proxy), interleaved in
#     rounds; prints req/s, p50, p99 and the shared/local ratios;
#  2. the Redis work behind them, during the shared rounds: EVAL calls/s and
#     all commands/s (INFO commandstats, which counts the commands run inside
#     the scripts too) next to the gateway's req/s and its 1,000 active keys,
#     and the gateway's own sync counters (admin /metrics);
#  3. accuracy: gateway/tests/shared_limits.rs, one client at 100 r/s spread
#     over three nodes at 20 r/s burst 10, run ACCURACY_RUNS times; prints how
#     many of its 500 requests each run accepted (one node gives 110), the
#     median and the worst deviation from 110.
# Usage: bench/shared_limits.sh [ROUNDS=3] [DURATION=10s] [CONNECTIONS=64] [ACCURACY_RUNS=10]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-3}
DURATION=${2:-10s}
CONNS=${3:-64}
ACCURACY_RUNS=${4:-10}
CLIENTS=1000     # distinct X-Forwarded-For addresses, so active keys per sync
SYNC_MS=100      # sync_interval of the shared gateway (the default)
CHUNK=500        # keys per script call (cluster.rs CHUNK)
ONE_NODE=110     # what one node admits of the accuracy test's 500 requests
# shellcheck source=scripts/services.sh
source scripts/services.sh
# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_tool wrk wrk
ensure_tool curl curl
ensure_tool redis-cli redis-tools
bench_start shared-limits
# Redis first: bench_cleanup's `wait` would otherwise wait for it too.
trap 'services_down; bench_cleanup' EXIT
start_redis

# The accuracy test, built now so that a build failure shows before the rounds.
echo "building the shared_limits test (release)" >&2
TEST_BIN=$(cargo test --release --locked -p gateway --test shared_limits --no-run --message-format=json |
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "shared_limits" and m.get("executable"):
        print(m["executable"])')
if [ -z "$TEST_BIN" ] || [ ! -x "$TEST_BIN" ]; then
  echo "could not find the shared_limits test binary" >&2
  exit 1
fi

# wrk as 1,000 clients: the requests made once, one per address, sent in turn.
cat >"$WORK/clients.lua" <<LUA
local requests, i = {}, 0
function init(args)
  for n = 0, $((CLIENTS - 1)) do
    local ip = string.format("10.0.%d.%d", math.floor(n / 250), n % 250 + 1)
    requests[n + 1] = wrk.format(nil, nil, { ["X-Forwarded-For"] = ip })
  end
end
function request()
  i = i % #requests + 1
  return requests[i]
end
LUA

start_upstreams "$WORK"
# gateway_config already writes [limits]; these tables come after [[routes]].
COMMON='[client_ip]
trusted_proxies = ["127.0.0.1/32"]
[rate_limits.per_ip]
rate = "1000000r/s"
burst = 1000
nodelay = true'
start_gateway "$WORK" local "$COMMON"
LOCAL=$GW_HTTP
LOCAL_PID=$GW_PID
start_gateway "$WORK" shared "$COMMON
[rate_limit.shared]
redis_url = \"$REDIS_URL\"
key_prefix = \"bench\"
sync_interval = \"${SYNC_MS}ms\""
SHARED=$GW_HTTP
SHARED_PID=$GW_PID
REDIS_PID=$(redis-cli -u "$REDIS_URL" INFO server | tr -d '\r' | sed -n 's/^process_id://p')
SHARED_ADMIN=$(sed -n 's/^admin = "\(.*\)"$/\1/p' "$WORK/shared.toml")

metric() { # NAME -> its value on the shared gateway's /metrics (0 when absent)
  curl -fs "http://$SHARED_ADMIN/metrics" | awk -v name="$1" '$1 == name { v = $2 } END { printf "%.0f\n", v }'
}

redis_calls() { # -> "EVAL_CALLS ALL_CALLS" from INFO commandstats (our own INFO left out)
  redis-cli -u "$REDIS_URL" INFO commandstats | tr -d '\r' | awk -F'[:,=]' '
    /^cmdstat_/ && $1 != "cmdstat_info" { all += $3; if ($1 == "cmdstat_eval") evals = $3 }
    END { printf "%.0f %.0f\n", evals, all }'
}

sync_counters() { # -> "OK FAILED_OR_SLOW SYNCED_KEYS", the shared gateway's syncs, from one read
  curl -fs "http://$SHARED_ADMIN/metrics" | awk '
    $1 == "gateway_rate_limit_syncs_total{result=\"ok\"}" { ok = $2 }
    $1 ~ /^gateway_rate_limit_syncs_total[{]result="(failed|slow)"[}]$/ { bad += $2 }
    $1 == "gateway_rate_limit_synced_keys_total" { keys = $2 }
    END { printf "%.0f %.0f %.0f\n", ok, bad, keys }'
}

now() { date +%s.%N; }

# The shared gateway must be syncing, not degraded, or its rounds measure the wrong thing.
deadline=$((SECONDS + 10))
until (($(metric 'gateway_rate_limit_syncs_total{result="ok"}') > 0)); do
  if ((SECONDS > deadline)); then
    echo "the shared gateway never synced with $REDIS_URL" >&2
    tail -20 "$WORK/shared-access.log" >&2
    exit 1
  fi
  sleep 0.2
done

declare -A RPS P50 P99 CPU
redis_ticks=0 evals=0 calls=0 syncs_ok=0 syncs_bad=0 synced_keys=0 shared_secs=0
for ((round = 1; round <= ROUNDS; round++)); do
  for mode in local shared; do
    port=$LOCAL pid=$LOCAL_PID
    if [ "$mode" = shared ]; then
      port=$SHARED pid=$SHARED_PID
      r0=$(cpu_ticks "$REDIS_PID")
      read -r evals0 calls0 <<<"$(redis_calls)"
      read -r ok0 bad0 keys0 <<<"$(sync_counters)"
      t0=$(now)
    fi
    c0=$(cpu_ticks "$pid") w0=$(now)
    out=$(wrk_run "http://127.0.0.1:$port/healthz" "$DURATION" "$CONNS" -s "$WORK/clients.lua")
    c1=$(cpu_ticks "$pid") w1=$(now)
    read -r rps p50 p99 <<<"$out"
    # The gateway's own CPU time per request (us), which drifts less than req/s.
    cpu=$(awk -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" -v r="$rps" -v a="$w0" -v b="$w1" \
      'BEGIN { printf "%.1f", c / hz * 1e6 / (r * (b - a)) }')
    if [ "$mode" = shared ]; then
      t1=$(now)
      redis_ticks=$((redis_ticks + $(cpu_ticks "$REDIS_PID") - r0))
      read -r evals1 calls1 <<<"$(redis_calls)"
      evals=$((evals + evals1 - evals0)); calls=$((calls + calls1 - calls0))
      read -r ok1 bad1 keys1 <<<"$(sync_counters)"
      syncs_ok=$((syncs_ok + ok1 - ok0)); syncs_bad=$((syncs_bad + bad1 - bad0))
      synced_keys=$((synced_keys + keys1 - keys0))
      shared_secs=$(awk -v s="$shared_secs" -v a="$t0" -v b="$t1" 'BEGIN { print s + b - a }')
    fi
    echo "round $round $mode policy: $rps req/s p50 ${p50}ms p99 ${p99}ms, gateway CPU ${cpu} us/request" >&2
    RPS[$mode]+="$rps "; P50[$mode]+="$p50 "; P99[$mode]+="$p99 "; CPU[$mode]+="$cpu "
  done
done
degraded=$(metric gateway_rate_limit_shared_degraded)

# shellcheck disable=SC2086
{
  l_rps=$(median ${RPS[local]}); l_p50=$(median ${P50[local]}); l_p99=$(median ${P99[local]})
  s_rps=$(median ${RPS[shared]}); s_p50=$(median ${P50[shared]}); s_p99=$(median ${P99[shared]})
  l_cpu=$(median ${CPU[local]}); s_cpu=$(median ${CPU[shared]})
  s_mean=$(printf '%s\n' ${RPS[shared]} | awk '{ t += $1 } END { printf "%.0f", t / NR }')
}
printf '\nend to end, %s clients by X-Forwarded-For, wrk -t2 -c%s, %s x %s rounds, medians\n' "$CLIENTS" "$CONNS" "$DURATION" "$ROUNDS"
printf 'local policy:  %s req/s  p50 %s ms  p99 %s ms  gateway CPU %s us/request\n' "$l_rps" "$l_p50" "$l_p99" "$l_cpu"
printf 'shared policy: %s req/s  p50 %s ms  p99 %s ms  gateway CPU %s us/request\n' "$s_rps" "$s_p50" "$s_p99" "$s_cpu"
awk -v s="$s_rps" -v l="$l_rps" 'BEGIN { printf "shared/local req/s: %.3fx (target >= 0.95)\n", s / l }'
awk -v s="$s_p99" -v l="$l_p99" 'BEGIN { printf "shared/local p99:   %.3fx (target <= 1.05)\n", s / l }'
awk -v s="$s_cpu" -v l="$l_cpu" 'BEGIN { printf "shared/local gateway CPU per request: %.3fx\n", s / l }'

printf '\nRedis during the shared rounds (%.1f s; %s active client keys; gateway %s req/s, mean of the rounds)\n' \
  "$shared_secs" "$CLIENTS" "$s_mean"
awk -v e="$evals" -v c="$calls" -v t="$shared_secs" -v r="$s_mean" -v k="$CLIENTS" -v ms="$SYNC_MS" -v chunk="$CHUNK" 'BEGIN {
  model = 1000 / ms * int((k + chunk - 1) / chunk)
  printf "EVAL calls/s:   %.1f (model: %d syncs/s x %d calls of up to %d keys = %d)\n", e / t, 1000 / ms, int((k + chunk - 1) / chunk), chunk, model
  printf "all commands/s: %.0f (the commands run inside the scripts included)\n", c / t
  printf "Redis commands per 1,000 gateway requests: %.2f\n", (r > 0 ? c / t / r * 1000 : 0)
}'
awk -v ticks="$redis_ticks" -v hz="$(getconf CLK_TCK)" -v t="$shared_secs" 'BEGIN {
  printf "redis-server CPU: %.1f%% of one core (on this box, beside the proxies and wrk)\n", ticks / hz / t * 100
}'
awk -v ok="$syncs_ok" -v bad="$syncs_bad" -v keys="$synced_keys" -v t="$shared_secs" -v d="$degraded" 'BEGIN {
  printf "gateway syncs: %.1f ok/s, %d failed or slow; %.0f keys per sync; degraded now: %d\n", ok / t, bad, (ok > 0 ? keys / ok : 0), d
}'

# The proxies and their Redis stop: the test runs its own three gateways and
# redis-server, and measures rates against the clock.
services_down
kill "${pids[@]}" 2>/dev/null || true
wait "${pids[@]}" 2>/dev/null || true
pids=()

echo "accuracy: $ACCURACY_RUNS runs of $TEST_BIN" >&2
counts=()
for ((run = 1; run <= ACCURACY_RUNS; run++)); do
  rc=0
  out=$(cd gateway && "$TEST_BIN" one_client_spread_over_three_nodes --nocapture 2>&1) || rc=$?
  n=$(echo "$out" | sed -n 's/.*shared accuracy: \([0-9][0-9]*\) of 500.*/\1/p' | head -1)
  if [ -z "$n" ]; then
    echo "$out" | tail -20 >&2
    echo "run $run: no figure (test exit $rc)" >&2
    continue
  fi
  note=""
  [ "$rc" -eq 0 ] || note=" (the test failed: exit $rc)"
  echo "run $run: $n of 500 accepted$note" >&2
  counts+=("$n")
done
printf '\naccuracy, one client at 100 r/s over three shared nodes (20 r/s, burst 10), 500 requests, %s runs\n' "$ACCURACY_RUNS"
if [ "${#counts[@]}" -eq 0 ]; then
  echo "no run gave a figure"
  exit 1
fi
printf 'accepted: %s\n' "${counts[*]}"
printf 'median: %s (one node: %s)\n' "$(median "${counts[@]}")" "$ONE_NODE"
printf '%s\n' "${counts[@]}" | awk -v want="$ONE_NODE" '
  { d = ($1 - want) / want * 100; if (NR == 1 || (d < 0 ? -d : d) > (w < 0 ? -w : w)) w = d }
  END { printf "worst deviation from %d: %+.1f%% (target within +-10%%)\n", want, w }'
