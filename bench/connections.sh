#!/usr/bin/env bash
# Connection economy, the gateway against nginx side by side in one run,
# both in front of the same two app replicas, with the same ECDSA P-256
# certificate and two workers each:
#   memory per idle keep-alive connection: COUNT connections, each from
#     its own loopback address, one GET /healthz each, then idle
#     (bench/idle_conns.py); the RSS the proxy grew by, divided by COUNT:
#     HTTP/1.1 in the clear, HTTP/1.1 over TLS, HTTP/2 over TLS, and
#     HTTP/1.1 after a 1 MiB request ("big", taken 6 s after, once the
#     upstream connections that carried the bodies have left the pool);
#   new TLS connections per second, one request each, the client resuming
#     its sessions (wrk -t1 -c32 -H 'Connection: close' over https);
#   full TLS handshakes per second (openssl s_time -new).
# Rates are medians of ROUNDS interleaved rounds. Prints each figure and
# the gateway/nginx ratios, and writes the gateway's memory figures to
# bench/connections.measured.toml, which a test holds the defaults to
# (max_connections times the idle cost, plus the baseline, must fit the
# Swarm stack's memory limit with room: gateway/tests/memory_budget.rs).
# MODES (default "h1 tls h2 big") picks the memory figures to take; the
# file is written only when all are taken.
# Usage: bench/connections.sh [COUNT=10000] [ROUNDS=3] [SECONDS=8]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
COUNT=${1:-10000}
ROUNDS=${2:-3}
SECS=${3:-8}
# shellcheck source=scripts/services.sh
source scripts/services.sh
# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_tool wrk wrk
ensure_tool nginx nginx-light
ensure_tool curl curl
ensure_tool openssl openssl
ulimit -n "$(ulimit -Hn)" # as many descriptors as allowed (COUNT must fit)
bench_start connections

start_upstreams "$WORK"
chmod 755 "$WORK"

# start_proxies: a fresh gateway (GW_PID, GW_HTTP, GW_HTTPS, GW_ADMIN) and
# nginx (NG_WORKERS, NG_HTTP, NG_HTTPS); stop_proxies stops both. Each
# memory figure is taken on fresh processes, so memory an earlier run
# freed (and the allocator kept) cannot hide what a run costs.
start_proxies() {
  start_gateway "$WORK" gateway "[rate_limits]"
  GW_ADMIN=$(sed -n 's/^admin = "\(.*\)"$/\1/p' "$WORK/gateway.toml")
  chmod 644 "$WORK/certs/key.pem"
  NG_HTTP=$(free_port); NG_HTTPS=$(free_port)
  nginx_config "$WORK" "$NG_HTTP" "$NG_HTTPS" "worker_processes 2; worker_rlimit_nofile $(ulimit -Hn);" \
    | sed 's/worker_connections 8192;/worker_connections 16384;/' >"$WORK/nginx.conf"
  nginx -c "$WORK/nginx.conf" -p "$WORK"
  wait_http "http://127.0.0.1:$NG_HTTP/healthz" 30
  mapfile -t NG_WORKERS < <(pgrep -P "$(cat "$WORK/nginx.pid")")
}

stop_proxies() {
  kill "$(cat "$WORK/nginx.pid")" "$GW_PID"
  wait "$GW_PID" 2>/dev/null || true
  while [ -f "$WORK/nginx.pid" ] && kill -0 "$(cat "$WORK/nginx.pid" 2>/dev/null)" 2>/dev/null; do sleep 0.2; done
}

# idle_cost MODE PORT PIDS... -> bytes per idle connection (BODY, when
# set, is the size of the one request each connection made; COUNT their
# number)
idle_cost() {
  local mode=$1 port=$2
  shift 2
  local count=$COUNT
  local before after fifo ready
  before=$(rss_kb "$@")
  echo "$before" >"$WORK/before.kb" 
  fifo="$WORK/idle.fifo"
  rm -f "$fifo"; mkfifo "$fifo"
  python3 bench/idle_conns.py --target "127.0.0.1:$port" --count "$count" --mode "$mode" --body "${BODY:-0}" \
    <"$fifo" >"$WORK/idle.out" 2>"$WORK/idle.err" &
  local client=$!
  exec 7>"$fifo"
  until grep -q '^ready' "$WORK/idle.out" 2>/dev/null; do sleep 0.5; done
  ready=$(awk '/^ready/ { print $2 }' "$WORK/idle.out")
  # Past the second after which an idle HTTP/1.1 connection of the
  # gateway hands its buffers back (connection::PARK_AFTER); after large
  # bodies, also past the upstream keepalive_timeout (4 s), so the pooled
  # upstream connections that carried them (the pool's memory, bounded by
  # keepalive_max_idle, not the client connections') have closed.
  sleep "${SETTLE:-3}"
  after=$(rss_kb "$@")
  echo >&7
  exec 7>&-
  wait "$client" || true
  sleep 3 # let the closed connections go
  if ((ready < count)); then echo "only $ready of $count $mode connections opened" >&2; fi
  echo $(((after - before) * 1024 / ready))
}

echo "memory per idle connection ($COUNT connections, one request each, RSS growth / connections)"
declare -A mem
# big: HTTP/1.1 after a 1 MiB request (a JSON document the app reads in
# full and refuses): a connection that carried one keeps no large buffer.
for mode in ${MODES:-h1 tls h2 big}; do
  start_proxies
  if [ "$mode" = tls ] || [ "$mode" = h2 ]; then gw_port=$GW_HTTPS; ng_port=$NG_HTTPS; else gw_port=$GW_HTTP; ng_port=$NG_HTTP; fi
  if [ "$mode" = big ]; then export BODY=1048576 SETTLE=6 kind=h1; else export BODY=0 SETTLE=3 kind=$mode; fi
  mem[gateway-$mode]=$(idle_cost "$kind" "$gw_port" "$GW_PID")
  [ "$mode" = h1 ] && baseline=$(cat "$WORK/before.kb")
  mem[nginx-$mode]=$(idle_cost "$kind" "$ng_port" "${NG_WORKERS[@]}")
  printf '  %-4s gateway %6s B   nginx %6s B\n' "$mode" "${mem[gateway-$mode]}" "${mem[nginx-$mode]}"
  stop_proxies
done
start_proxies

resumed_gw=(); resumed_ng=(); full_gw=(); full_ng=()
for round in $(seq 1 "$ROUNDS"); do
  if ((round % 2)); then order="gateway nginx"; else order="nginx gateway"; fi
  for proxy in $order; do
    if [ "$proxy" = gateway ]; then port=$GW_HTTPS; else port=$NG_HTTPS; fi
    r=$(resumed_rate "$port" "$SECS"); f=$(full_rate "$port" "$SECS")
    echo "round $round $proxy: resumed $r/s, full $f/s"
    if [ "$proxy" = gateway ]; then resumed_gw+=("$r"); full_gw+=("$f"); else resumed_ng+=("$r"); full_ng+=("$f"); fi
  done
done

rg=$(median "${resumed_gw[@]}"); rn=$(median "${resumed_ng[@]}")
fg=$(median "${full_gw[@]}"); fn=$(median "${full_ng[@]}")
echo
echo "measure                                   gateway      nginx   gateway/nginx"
for mode in ${MODES:-h1 tls h2 big}; do
  printf '%-40s %8s B %8s B   %s\n' "idle connection memory, $mode" "${mem[gateway-$mode]}" "${mem[nginx-$mode]}" "$(ratio "${mem[gateway-$mode]}" "${mem[nginx-$mode]}")"
done
printf '%-40s %8s/s %7s/s   %s\n' "new TLS connections/s, resumed" "$rg" "$rn" "$(ratio "$rg" "$rn")"
printf '%-40s %8s/s %7s/s   %s\n' "full TLS handshakes/s" "$fg" "$fn" "$(ratio "$fg" "$fn")"
if [ -n "${MODES:-}" ]; then
  echo "MODES set: bench/connections.measured.toml left as it was"
else
cat >bench/connections.measured.toml <<TOML
# Written by bench/connections.sh on $(date -u +%Y-%m-%d) ($COUNT idle connections per figure,
# fresh gateway each, default workers); read by gateway/tests/memory_budget.rs.
idle_http1_bytes = ${mem[gateway-h1]}
idle_tls_http1_bytes = ${mem[gateway-tls]}
idle_tls_http2_bytes = ${mem[gateway-h2]}
baseline_bytes = $((baseline * 1024))
TOML
echo "wrote bench/connections.measured.toml"
fi
echo "gateway memory metrics:"
curl -fsS "http://$GW_ADMIN/metrics" | grep -E '^gateway_(memory|connections_open)' | sed 's/^/  /' || true
