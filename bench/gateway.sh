#!/usr/bin/env bash
# The gateway against nginx, side by side in one run, interleaved in rounds,
# in front of the same upstream (two app replicas answering /healthz, which
# touches no store, so the proxies are what is measured).
#   HTTP/1.1 keep-alive: wrk -t2 -cC (req/s, p50, p99, and the proxy's own
#                        CPU time per request, which drifts less than req/s)
#   HTTP/2 over TLS:     h2load -cC -m10 -nN (req/s, mean latency)
# The two configurations do the same work per request (bench/lib.sh,
# nginx_config): forwarding headers, a request id passed on or made, an
# access-log line in a buffered file, keep-alive upstream connections, no
# rate limit (the limiter's own cost is bench/limiter.sh).
# Usage: bench/gateway.sh [ROUNDS=3] [DURATION=10s] [CONNECTIONS=64] [H2_REQUESTS=100000]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-3}
DURATION=${2:-10s}
CONNS=${3:-64}
H2_REQUESTS=${4:-100000}
if [[ ! $DURATION =~ ^[0-9]+s$ ]]; then
  echo "DURATION must be whole seconds such as 10s (got $DURATION)" >&2
  exit 2
fi
# shellcheck source=scripts/services.sh
source scripts/services.sh
# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_tool wrk wrk
ensure_tool h2load nghttp2-client
ensure_tool nginx nginx-light
ensure_tool curl curl
bench_start gateway

start_upstreams "$WORK"
# No rate-limit policy: nginx runs without limit_req (bench/limiter.sh measures the limiter).
start_gateway "$WORK" gateway "[rate_limits]"
chmod 644 "$WORK/certs/key.pem"

NG_HTTP=$(free_port); NG_HTTPS=$(free_port)
nginx_config "$WORK" "$NG_HTTP" "$NG_HTTPS" "worker_processes 2;" >"$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK"
wait_http "http://127.0.0.1:$NG_HTTP/healthz" 30
mapfile -t NG_WORKERS < <(pgrep -P "$(cat "$WORK/nginx.pid")")

# h2load_run URL CONNECTIONS REQUESTS -> "rps mean_ms"
h2load_run() {
  local out
  out=$(h2load -c "$2" -m 10 -t 1 -n "$3" "$1" 2>&1)
  if ! echo "$out" | grep -q "succeeded, 0 failed"; then
    echo "$out" | tail -20 >&2
    echo "h2load saw failures; the figures would be meaningless" >&2
    return 1
  fi
  echo "$out" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^finished in/ { rps = $4 }
    /^time for request:/ { mean = ms($6) }
    END { printf "%.0f %.3f\n", rps, mean }'
}

declare -A H1_RPS H1_P50 H1_P99 H1_CPU H2_RPS H2_MEAN
# Each round runs both proxies back to back (alternating which goes first),
# so a round's ratio compares them under the same machine conditions.
declare -a H1_RATIO
for ((round = 1; round <= ROUNDS; round++)); do
  order="nginx gateway"; ((round % 2)) || order="gateway nginx"
  declare -A ROUND_RPS=()
  for proxy in $order; do
    if [ "$proxy" = nginx ]; then
      http=$NG_HTTP; https=$NG_HTTPS; procs=("${NG_WORKERS[@]}")
    else
      http=$GW_HTTP; https=$GW_HTTPS; procs=("$GW_PID")
    fi
    before=$(cpu_ticks "${procs[@]}")
    read -r rps p50 p99 < <(wrk_run "http://127.0.0.1:$http/healthz" "$DURATION" "$CONNS")
    after=$(cpu_ticks "${procs[@]}")
    # Ticks are 1/CLK_TCK s; requests = rps x duration.
    cpu=$(awk -v t=$((after - before)) -v r="$rps" -v d="${DURATION%s}" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "%.1f", t / hz * 1e6 / (r * d) }')
    H1_CPU[$proxy]+="$cpu "
    H1_RPS[$proxy]+="$rps "; H1_P50[$proxy]+="$p50 "; H1_P99[$proxy]+="$p99 "; ROUND_RPS[$proxy]=$rps
    read -r rps2 mean2 < <(h2load_run "https://127.0.0.1:$https/healthz" "$CONNS" "$H2_REQUESTS")
    H2_RPS[$proxy]+="$rps2 "; H2_MEAN[$proxy]+="$mean2 "
    echo "round $round $proxy: h1 $rps req/s p50 ${p50}ms p99 ${p99}ms cpu ${cpu}us/req | h2+tls $rps2 req/s mean ${mean2}ms" >&2
  done
  H1_RATIO+=("$(awk -v g="${ROUND_RPS[gateway]}" -v n="${ROUND_RPS[nginx]}" 'BEGIN { printf "%.3f", g / n }')")
done

med() { median ${1}; }
printf '\nProxying GET /healthz to 2 app replicas; %s rounds x %s; medians\n' "$ROUNDS" "$DURATION"
printf '%-10s %14s %10s %10s %14s %16s %12s\n' proxy "h1 req/s" "p50 ms" "p99 ms" "h1 CPU us/req" "h2+TLS req/s" "mean ms"
for proxy in nginx gateway; do
  printf '%-10s %14s %10s %10s %14s %16s %12s\n' "$proxy" "$(med "${H1_RPS[$proxy]}")" "$(med "${H1_P50[$proxy]}")" \
    "$(med "${H1_P99[$proxy]}")" "$(med "${H1_CPU[$proxy]}")" "$(med "${H2_RPS[$proxy]}")" "$(med "${H2_MEAN[$proxy]}")"
done
sorted_ratios=$(printf '%s\n' "${H1_RATIO[@]}" | sort -g | tr '\n' ' ')
awk -v pm="$(median "${H1_RATIO[@]}")" -v range="$(echo "$sorted_ratios" | awk '{ printf "%s to %s", $1, $NF }')" \
    -v g="$(med "${H1_RPS[gateway]}")" -v n="$(med "${H1_RPS[nginx]}")" \
    -v gp="$(med "${H1_P99[gateway]}")" -v np="$(med "${H1_P99[nginx]}")" \
    -v gc="$(med "${H1_CPU[gateway]}")" -v nc="$(med "${H1_CPU[nginx]}")" \
    -v g2="$(med "${H2_RPS[gateway]}")" -v n2="$(med "${H2_RPS[nginx]}")" 'BEGIN {
  printf "gateway/nginx HTTP/1.1 req/s: %.2fx (target >= 1.0)\n", g / n
  printf "  same-round ratios: median %.2fx, range %s\n", pm, range
  printf "gateway/nginx HTTP/1.1 p99:   %.2fx (target <= 1.0)\n", gp / np
  printf "gateway/nginx HTTP/1.1 CPU per request: %.2fx\n", gc / nc
  printf "gateway/nginx HTTP/2+TLS req/s: %.2fx\n", g2 / n2
}'
