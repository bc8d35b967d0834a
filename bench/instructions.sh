#!/usr/bin/env bash
# User-space instructions per proxied request, the gateway against nginx,
# counted by valgrind (callgrind) instead of timed: a count does not drift
# with the machine, so it settles differences of a few percent that req/s
# on a shared box cannot (bench/gateway.sh measures the req/s).
#
# Each proxy runs one worker (nginx with master_process off, the gateway
# with server.workers = 1) with the configurations bench/gateway.sh uses,
# in front of the same two app replicas, and serves N1 and then, in a fresh
# process, N2 keep-alive requests for GET /healthz (h2load --h1, 16
# connections). The difference of the two totals over N2 - N1 is what one
# request costs, start-up and shutdown excluded. Kernel time is not
# counted; both proxies make the same system calls per request.
# Then it prints where the gateway's instructions per request go, by crate
# (each function's own instructions, grouped by the crate its name starts
# with; C functions by their library), from the same two counts.
# Usage: bench/instructions.sh [N1=2000] [N2=12000]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
N1=${1:-2000}
N2=${2:-12000}
if ! ((N2 > N1)); then
  echo "N2 must be larger than N1 (got $N1 and $N2)" >&2
  exit 2
fi
# shellcheck source=scripts/services.sh
source scripts/services.sh
# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_tool valgrind valgrind
ensure_tool h2load nghttp2-client
ensure_tool nginx nginx-light
ensure_tool curl curl
bench_start instructions

start_upstreams "$WORK"
gateway_config "$WORK" gateway "[rate_limits]"
sed -i 's/^\[server\]$/[server]\nworkers = 1/' "$WORK/gateway.toml"
chmod 644 "$WORK/certs/key.pem"
NG_HTTP=$(free_port)
nginx_config "$WORK" "$NG_HTTP" "$(free_port)" "daemon off; master_process off; worker_processes 1;" >"$WORK/nginx.conf"

# count PROXY N -> sets COUNT: total instructions of a fresh PROXY process
# serving N requests.
count() {
  local proxy=$1 n=$2 url out="$WORK/callgrind.$1.$2" vg stop
  if [ "$proxy" = nginx ]; then
    url="http://127.0.0.1:$NG_HTTP/healthz"; stop=QUIT
    valgrind --tool=callgrind --callgrind-out-file="$out" \
      nginx -c "$WORK/nginx.conf" -p "$WORK" 2>"$out.log" &
  else
    url="http://127.0.0.1:$GW_HTTP/healthz"; stop=TERM
    RUST_LOG=info valgrind --tool=callgrind --callgrind-out-file="$out" \
      target/release/gateway --config "$WORK/gateway.toml" 2>"$out.log" &
  fi
  vg=$!
  pids+=("$vg")
  wait_http "$url" 120
  if ! h2load --h1 -n "$n" -c 16 -t 1 "$url" 2>&1 | grep "succeeded, 0 failed" >/dev/null; then
    echo "h2load saw failures against $proxy; the count would be meaningless" >&2
    return 1
  fi
  kill -"$stop" "$vg"
  wait "$vg" || true
  COUNT=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ { gsub(",", "", $1); print $1 }')
}

# by_crate FILE -> "where instructions" lines: each function's own count
# (callgrind_annotate, every function listed), summed by the crate its
# name starts with (a trait impl by its type's; the gateway's by module)
# or, for C, by its library (libc's memcpy). Code inlined into a function
# counts as that function's, whichever crate it came from.
by_crate() {
  callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null | awk '
    /^ *[0-9,]+ +\( *[0-9.]+%\) +[^ ]/ && !/PROGRAM TOTALS/ {
      n = $1; gsub(",", "", n)
      line = $0; sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +/, "", line)
      object = line; sub(/.*\[/, "", object); sub(/\].*/, "", object); sub(/.*\//, "", object)
      fn = line; sub(/ \[[^]]*\]$/, "", fn); sub(/^[^:]*:/, "", fn)
      sub(/^[<&]+/, "", fn); sub(/^(dyn |mut )+/, "", fn)
      if (fn ~ /^gateway::[a-z_]+::/) { split(fn, part, "::"); where = "gateway::" part[2] }
      else if (fn ~ /^[A-Za-z_][A-Za-z0-9_]*::/) { where = fn; sub(/::.*/, "", where) }
      else if (fn ~ /^_?mi_/) where = "mimalloc"
      else where = object
      sum[where] += n
    }
    END { for (w in sum) print w, sum[w] }'
}

declare -A PER_REQUEST
for proxy in nginx gateway; do
  count "$proxy" "$N1"; small=$COUNT
  count "$proxy" "$N2"; large=$COUNT
  PER_REQUEST[$proxy]=$(awk -v a="$small" -v b="$large" -v n=$((N2 - N1)) 'BEGIN { printf "%.0f", (b - a) / n }')
  echo "$proxy: $small instructions for $N1 requests, $large for $N2" >&2
done

printf '\nUser-space instructions per proxied request (callgrind; GET /healthz, HTTP/1.1 keep-alive, one worker)\n'
printf '%-10s %14s\n' proxy "instructions"
for proxy in nginx gateway; do
  printf '%-10s %14s\n' "$proxy" "${PER_REQUEST[$proxy]}"
done
awk -v g="${PER_REQUEST[gateway]}" -v n="${PER_REQUEST[nginx]}" \
  'BEGIN { printf "gateway/nginx instructions per request: %.2fx\n", g / n }'

printf '\nWhere the gateway'"'"'s instructions per request go (own instructions by crate, %s - %s requests)\n' "$N2" "$N1"
join -a1 -a2 -e0 -o 0,1.2,2.2 <(by_crate "$WORK/callgrind.gateway.$N2" | LC_ALL=C sort) <(by_crate "$WORK/callgrind.gateway.$N1" | LC_ALL=C sort) |
  awk -v n=$((N2 - N1)) '{ d = ($2 - $3) / n; if (d >= 100) printf "%8.0f  %s\n", d, $1; else rest += d }
    END { printf "%8.0f  (the rest, under 100 each)\n", rest }' | sort -rn
