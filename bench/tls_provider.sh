#!/usr/bin/env bash
# Which rustls crypto provider the gateway is built with, by measurement:
# the gateway built on ring (the default) and on aws-lc-rs (the aws-lc-rs
# feature, built into target/aws-lc-rs), and nginx, side by side in one
# run, in front of the same two app replicas with the same ECDSA P-256
# certificate: new TLS connections per second with the client resuming
# its sessions, and full handshakes per second (bench/lib.sh's
# resumed_rate and full_rate). Medians of ROUNDS rounds, the order of the
# three rotated each round; prints each round, the medians and the ratios.
# Usage: bench/tls_provider.sh [ROUNDS=5] [SECONDS=6]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-5}
SECS=${2:-6}
# shellcheck source=scripts/services.sh
source scripts/services.sh
# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_tool wrk wrk
ensure_tool nginx nginx-light
ensure_tool openssl openssl
# aws-lc-sys builds AWS-LC from C (and cmake where its prebuilt recipe
# does not fit the target).
ensure_tool cmake cmake
bench_start tls-provider
CARGO_TARGET_DIR=target/aws-lc-rs cargo build --release --locked -p gateway --features aws-lc-rs >&2

start_upstreams "$WORK"
declare -A port
GATEWAY_BIN=target/release/gateway start_gateway "$WORK" ring ""
port[ring]=$GW_HTTPS
GATEWAY_BIN=target/aws-lc-rs/release/gateway start_gateway "$WORK" aws-lc-rs ""
port[aws-lc-rs]=$GW_HTTPS
chmod 644 "$WORK/certs/key.pem"
NG_HTTP=$(free_port); port[nginx]=$(free_port)
nginx_config "$WORK" "$NG_HTTP" "${port[nginx]}" "worker_processes 2;" >"$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK"
wait_http "http://127.0.0.1:$NG_HTTP/healthz" 30

declare -A resumed full
names=(ring aws-lc-rs nginx)
for round in $(seq 1 "$ROUNDS"); do
  for i in 0 1 2; do
    name=${names[$(((i + round) % 3))]}
    r=$(resumed_rate "${port[$name]}" "$SECS"); f=$(full_rate "${port[$name]}" "$SECS")
    echo "round $round $name: resumed $r/s, full $f/s"
    resumed[$name]+="$r "; full[$name]+="$f "
  done
done

echo
echo "medians of $ROUNDS rounds     resumed/s   full/s   resumed vs nginx   full vs nginx"
# shellcheck disable=SC2086 # the lists are space-separated numbers
rn=$(median ${resumed[nginx]}); fn=$(median ${full[nginx]})
for name in "${names[@]}"; do
  # shellcheck disable=SC2086
  r=$(median ${resumed[$name]}); f=$(median ${full[$name]})
  printf '%-26s %9s %8s   %16s   %13s\n' "$name" "$r" "$f" "$(ratio "$r" "$rn")" "$(ratio "$f" "$fn")"
done
