# shellcheck shell=bash
# Helpers shared by the benchmark scripts: run wrk, parse its figures, take
# medians. Figures are printed, never asserted: machines are shared and noisy.

ensure_tool() { # COMMAND DEBIAN_PACKAGE
  command -v "$1" >/dev/null || apt_install "$2"
}

# wrk_run URL DURATION CONNECTIONS [extra wrk args...] -> "rps p50_ms p99_ms"
wrk_run() {
  local url=$1 duration=$2 conns=$3
  shift 3
  local out
  out=$(wrk -t2 -c"$conns" -d"$duration" --latency "$@" "$url")
  if echo "$out" | grep -q "Non-2xx"; then
    echo "$out" >&2
    echo "benchmark saw non-2xx answers; the figures would be meaningless" >&2
    return 1
  fi
  echo "$out" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }'
}

# bench_start NAME -> builds the release binaries and sets WORK (a fresh
# directory) and an EXIT trap that stops nginx (when WORK/nginx.pid names
# one) and every process in the caller's `pids`.
bench_start() {
  cargo build --release --locked -p app -p gateway >&2
  WORK=$(mktemp -d "/tmp/bench-$1.XXXXXX")
  chmod 755 "$WORK"
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}

median() { # numbers... -> median
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

wait_http() { # URL SECONDS
  local deadline=$((SECONDS + $2))
  until curl -fsk -o /dev/null "$1"; do
    if ((SECONDS > deadline)); then echo "no answer from $1" >&2; return 1; fi
    sleep 0.2
  done
}

# start_upstreams WORK -> sets UP1 UP2: two app replicas on the embedded store
# answering /healthz (no store work), appended to the caller's `pids`.
start_upstreams() {
  local work=$1 port
  UP1=$(free_port); UP2=$(free_port)
  for port in "$UP1" "$UP2"; do
    env -i PATH="$PATH" APP_LISTEN="127.0.0.1:$port" APP_ADMIN_LISTEN="127.0.0.1:$(free_port)" \
      APP_DATA_DIR="$work/data" RUST_LOG=warn target/release/app >"$work/app-$port.log" 2>&1 &
    pids+=($!)
    wait_http "http://127.0.0.1:$port/healthz" 30
  done
}

# cpu_ticks PID... -> user + system clock ticks the processes have used.
cpu_ticks() {
  local pid total=0 fields
  for pid in "$@"; do
    read -r -a fields <"/proc/$pid/stat"
    total=$((total + fields[13] + fields[14]))
  done
  echo "$total"
}

# gateway_config WORK NAME EXTRA_TOML -> sets GW_HTTP and GW_HTTPS and writes
# WORK/NAME.toml: a gateway proxying plain HTTP and HTTPS to UP1/UP2.
gateway_config() {
  local work=$1 name=$2 extra=$3
  GW_HTTP=$(free_port); GW_HTTPS=$(free_port)
  [ -f "$work/certs/cert.pem" ] || target/release/gateway gen-cert --out "$work/certs" --name localhost --name 127.0.0.1 >/dev/null
  cat >"$work/$name.toml" <<TOML
[server]
https = "127.0.0.1:$GW_HTTPS"
http = "127.0.0.1:$GW_HTTP"
http_mode = "proxy"
admin = "127.0.0.1:$(free_port)"
[tls]
cert = "$work/certs/cert.pem"
key = "$work/certs/key.pem"
[limits]
max_connections_per_ip = 10000
# One load generator on one address stands for many clients.
max_requests_in_flight_per_client = 10000
[upstreams.app]
servers = ["127.0.0.1:$UP1", "127.0.0.1:$UP2"]
balance = "round_robin"
keepalive_max_idle = 128
[[routes]]
path_prefix = "/"
upstream = "app"
$extra
TOML
}

# start_gateway WORK NAME EXTRA_TOML -> sets GW_HTTP, GW_HTTPS and GW_PID: the
# gateway of `gateway_config` running (the binary GATEWAY_BIN, by default
# the release build), access log to a file.
start_gateway() {
  local work=$1 name=$2
  gateway_config "$@"
  RUST_LOG=info "${GATEWAY_BIN:-target/release/gateway}" --config "$work/$name.toml" 2>"$work/$name-access.log" &
  GW_PID=$!
  pids+=("$GW_PID")
  wait_http "http://127.0.0.1:$GW_HTTP/healthz" 30
}

# nginx_config WORK HTTP_PORT HTTPS_PORT MAIN_DIRECTIVES -> prints an nginx
# configuration equivalent to `gateway_config`'s in front of UP1/UP2. What
# the gateway does for every request, nginx does too: keep the client's
# X-Request-Id or make one, send it upstream and return it, set the same
# forwarding headers, keep upstream connections alive, and log the replica,
# time and id of each request to a file (buffered, as the gateway's log).
# No limit_req: bench/limiter.sh measures the limiter.
nginx_config() {
  local work=$1 http=$2 https=$3 main=$4
  cat <<CONF
$main
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 8192; }
http {
  map \$http_x_request_id \$req_id { default \$http_x_request_id; "" \$request_id; }
  log_format gateway '\$time_iso8601 \$remote_addr "\$request" \$status \$body_bytes_sent '
                     '\$upstream_addr \$request_time \$req_id';
  access_log $work/nginx-access.log gateway buffer=64k flush=1s;
  upstream app { server 127.0.0.1:$UP1; server 127.0.0.1:$UP2; keepalive 128; }
  server {
    listen 127.0.0.1:$http;
    listen 127.0.0.1:$https ssl http2;
    ssl_certificate $work/certs/cert.pem;
    ssl_certificate_key $work/certs/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    # Resumption as a production nginx has it: a shared cache and tickets.
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 1h;
    ssl_session_tickets on;
    server_tokens off;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Request-Id \$req_id;
      proxy_hide_header X-Request-Id;
      add_header X-Request-Id \$req_id always;
    }
  }
}
CONF
}

# resumed_rate PORT SECONDS -> new TLS connections per second, one request
# each, the client (wrk, one thread, 32 connections) resuming its sessions
resumed_rate() {
  wrk -t1 -c32 -d"$2s" -H 'Connection: close' "https://127.0.0.1:$1/healthz" | awk '/Requests\/sec:/ { printf "%.0f\n", $2 }'
}

# full_rate PORT SECONDS -> full TLS handshakes per second (openssl s_time -new)
full_rate() {
  openssl s_time -connect "127.0.0.1:$1" -new -time "$2" 2>/dev/null | awk '/connections in .* real seconds/ { printf "%.0f\n", $1 / $4 }'
}

rss_kb() { # PID... -> their VmRSS in kB, summed
  local pid total=0 kb
  for pid in "$@"; do
    kb=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
    total=$((total + kb))
  done
  echo "$total"
}

ratio() { # A B -> "A/Bx"
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'
}
