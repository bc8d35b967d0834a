#!/usr/bin/env bash
# The run command: the whole stack locally.
#   gateway  https://localhost:8443 (dev certificate), http://localhost:8080 -> 308
#            admin (metrics, readiness) on http://127.0.0.1:9901
#   app x2   127.0.0.1:8001 and :8002, sharing the embedded SQLite store in
#            ./data (or MONGODB_URI / REDIS_URL when set), metrics on :9101/:9102
# Ctrl-C stops everything cleanly (SIGTERM to each process, then wait).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --locked -p app -p gateway
if [ ! -f certs/dev/cert.pem ]; then
  target/release/gateway gen-cert --out certs/dev
fi
mkdir -p data
pids=()
stop() {
  trap - INT TERM EXIT
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  echo "stopped" >&2
}
trap stop INT TERM EXIT
for i in 1 2; do
  APP_LISTEN="127.0.0.1:800$i" APP_ADMIN_LISTEN="127.0.0.1:910$i" APP_DATA_DIR="$ROOT/data" \
    target/release/app &
  pids+=($!)
done
target/release/gateway --config deploy/local-gateway.toml &
pids+=($!)
echo "stack up: curl -k https://localhost:8443/configs   (Ctrl-C to stop)" >&2
wait -n "${pids[@]}" || true
