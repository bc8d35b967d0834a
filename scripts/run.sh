#!/usr/bin/env bash
# The run command: builds and runs the app locally on the embedded SQLite
# store (./data) with no cache, on http://127.0.0.1:8000 (metrics on
# 127.0.0.1:9100). Set MONGODB_URI / REDIS_URL / API_TOKEN to use them.
# Ctrl-C stops it cleanly.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --locked -p app
export APP_LISTEN=${APP_LISTEN:-127.0.0.1:8000}
export APP_DATA_DIR=${APP_DATA_DIR:-$ROOT/data}
echo "app on http://$APP_LISTEN (data in $APP_DATA_DIR); try: curl http://$APP_LISTEN/configs" >&2
exec target/release/app
