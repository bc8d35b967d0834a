# shellcheck shell=bash
# Provisions and runs the real services the tests and benchmarks need:
# Redis (Debian's redis-server) and a MongoDB-protocol server (a real mongod
# when one is on PATH, else SecantusDB from PyPI in .venv-test). Source it,
# then call `services_up`; `services_down` (installed as an EXIT trap) stops
# what was started. Exports REDIS_URL, MONGODB_URI and REDIS_SERVER_BIN.

ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
SERVICES_DIR=${SERVICES_DIR:-$(mktemp -d /tmp/services.XXXXXX)}
SECANTUS_VERSION=0.7.0b3
_started_pids=()

log() { printf '[services] %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # PORT SECONDS
  local port=$1 deadline=$((SECONDS + $2))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ((SECONDS > deadline)); then return 1; fi
    sleep 0.2
  done
}

apt_install() { # PACKAGE...
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "${_apt_updated:-}" ]; then
    $sudo apt-get update -qq >&2
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

ensure_redis_server() {
  if ! command -v redis-server >/dev/null; then
    log "installing redis-server"
    apt_install redis-server
    # Debian starts a system instance; the tests use their own.
    (command -v systemctl >/dev/null && systemctl stop redis-server) >/dev/null 2>&1 || true
  fi
  REDIS_SERVER_BIN=$(command -v redis-server)
  export REDIS_SERVER_BIN
}

start_redis() {
  ensure_redis_server
  if [ -n "${REDIS_URL:-}" ]; then
    log "using REDIS_URL from the environment"
    return
  fi
  local port
  port=$(free_port)
  "$REDIS_SERVER_BIN" --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --logfile "$SERVICES_DIR/redis.log" &
  _started_pids+=($!)
  wait_port "$port" 20 || { log "redis-server did not start"; cat "$SERVICES_DIR/redis.log" >&2; return 1; }
  export REDIS_URL="redis://127.0.0.1:$port"
  log "redis-server on $REDIS_URL"
}

start_mongo() {
  if [ -n "${MONGODB_URI:-}" ]; then
    log "using MONGODB_URI from the environment"
    return
  fi
  local port
  port=$(free_port)
  if command -v mongod >/dev/null; then
    mkdir -p "$SERVICES_DIR/mongod"
    mongod --port "$port" --bind_ip 127.0.0.1 --dbpath "$SERVICES_DIR/mongod" \
      --logpath "$SERVICES_DIR/mongod.log" &
    _started_pids+=($!)
    log "mongod starting on port $port"
  else
    local venv="$ROOT/.venv-test"
    if ! "$venv/bin/python" -c 'import secantus' 2>/dev/null; then
      log "installing SecantusDB $SECANTUS_VERSION into $venv"
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q "secantusdb==$SECANTUS_VERSION" >&2
    fi
    "$venv/bin/python" -m secantus --host 127.0.0.1 --port "$port" --storage-path :memory: \
      --log-level WARNING >"$SERVICES_DIR/secantus.log" 2>&1 &
    _started_pids+=($!)
    log "SecantusDB starting on port $port"
  fi
  wait_port "$port" 60 || { log "MongoDB server did not start"; tail -50 "$SERVICES_DIR"/*.log >&2; return 1; }
  export MONGODB_URI="mongodb://127.0.0.1:$port/?directConnection=true"
  log "MongoDB protocol server on $MONGODB_URI"
}

services_up() {
  trap services_down EXIT
  start_redis
  start_mongo
}

services_down() {
  local pid
  for pid in "${_started_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${_started_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  _started_pids=()
}
