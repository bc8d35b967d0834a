#!/usr/bin/env bash
# The rate limiter's cost, two ways:
#  1. criterion micro-benchmarks (gateway/benches/limiter.rs): a decision for a
#     hot key among 1M tracked keys and for a new key, memory per tracked key,
#     a flood of 1M distinct keys against the cap;
#  2. end to end: two gateways in front of the same replicas, one with the
#     limiter on (a policy with a rate no client reaches) and one with it off,
#     wrk interleaved in rounds; prints the on/off throughput ratio.
# Usage: bench/limiter.sh [ROUNDS=3] [DURATION=10s] [CONNECTIONS=64]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-3}
DURATION=${2:-10s}
CONNS=${3:-64}
# shellcheck source=scripts/services.sh
source scripts/services.sh
# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_tool wrk wrk
ensure_tool curl curl

echo "== micro-benchmarks (targets: median decision <= 150 ns at 1M keys; <= 128 bytes/key)"
cargo bench --locked -p gateway --bench limiter 2>&1 | grep -E "^(memory|flood):|time:|^decision" 

cargo build --release --locked -p app -p gateway >&2
WORK=$(mktemp -d /tmp/bench-limiter.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
start_upstreams "$WORK"
start_gateway "$WORK" off "[rate_limits]"
OFF=$GW_HTTP
start_gateway "$WORK" on "[rate_limits.per_ip]
rate = \"1000000r/s\"
burst = 1000
nodelay = true"
ON=$GW_HTTP

declare -A RPS P99
for ((round = 1; round <= ROUNDS; round++)); do
  for mode in off on; do
    port=$OFF; [ "$mode" = on ] && port=$ON
    read -r rps p50 p99 < <(wrk_run "http://127.0.0.1:$port/healthz" "$DURATION" "$CONNS")
    echo "round $round limiter $mode: $rps req/s p50 ${p50}ms p99 ${p99}ms" >&2
    RPS[$mode]+="$rps "; P99[$mode]+="$p99 "
  done
done
# shellcheck disable=SC2086
on=$(median ${RPS[on]}); off=$(median ${RPS[off]})
printf '\nend to end, wrk -t2 -c%s, %s x %s rounds, medians\n' "$CONNS" "$DURATION" "$ROUNDS"
# shellcheck disable=SC2086
printf 'limiter off: %s req/s (p99 %s ms)\nlimiter on:  %s req/s (p99 %s ms)\n' "$off" "$(median ${P99[off]})" "$on" "$(median ${P99[on]})"
awk -v on="$on" -v off="$off" 'BEGIN { printf "limiter on/off throughput: %.3fx (target >= 0.95)\n", on / off }'
