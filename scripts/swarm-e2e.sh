#!/usr/bin/env bash
# Deploys swarm-stack.yml for real on this machine's Docker Engine and
# checks it, with steady client load through the gateway, across the
# operations that must lose no request. From a clean engine: it builds the
# images (deploy/local-images.sh: nothing is pulled), creates the swarm if
# there is none, the secrets from generated files, deploys, checks, and on
# exit removes everything it made (the stack, its volumes, secrets,
# configs and images, and the swarm if it created it).
#
# Prints each check with its figure and ends with `N passed, M failed`
# (exit 1 if any failed). Environment: SKIP_BUILD=1 uses the release
# binaries in target/release as they are; KEEP=1 leaves the stack up.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STACK=edge
export REGISTRY=edge VERSION=local REDIS_IMAGE=edge/redis:local MONGO_IMAGE=edge/mongo:local
SECRETS=(tls_cert tls_key mongodb_uri redis_password api_token mongo_root_password limits_redis_password gateway_redis_url)
IMAGES=(edge/gateway:local edge/app:local edge/app:local-next edge/app:local-broken edge/redis:local edge/mongo:local)
WORK=""
LOAD_LOG=""
PASSED=0
FAILED=0
CREATED_SWARM=""
GWBRIDGE_BEFORE=""
LOAD_PID=""

log() { printf '[swarm-e2e] %s\n' "$*" >&2; }
pass() { PASSED=$((PASSED + 1)); printf 'PASS  %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL  %s\n' "$*"; }
check() { # NAME FIGURE COMMAND...: passes when COMMAND succeeds
  local name=$1 figure=$2
  shift 2
  if "$@"; then pass "$name: $figure"; else fail "$name: $figure"; fi
}

# ---------------------------------------------------------------- set-up

preflight() {
  command -v docker >/dev/null || { log "no docker CLI"; exit 1; }
  local tool package missing=()
  for tool in ip:iproute2 curl:curl openssl:openssl python3:python3; do
    package=${tool#*:}
    command -v "${tool%%:*}" >/dev/null || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
  docker info >/dev/null 2>&1 || { log "the Docker Engine does not answer"; exit 1; }
  GWBRIDGE_BEFORE=$(docker network ls -q --filter name=^docker_gwbridge$)
  # Everything teardown removes must be this run's own: refuse to start
  # beside anything of the same name.
  local image volume
  for image in "${IMAGES[@]}"; do
    if docker image inspect "$image" >/dev/null 2>&1; then
      log "image $image already exists; not touching it"
      exit 1
    fi
  done
  for volume in "${STACK}_redis_data" "${STACK}_mongo_data"; do
    if docker volume inspect "$volume" >/dev/null 2>&1; then
      log "volume $volume already exists; not touching it"
      exit 1
    fi
  done
  local state
  state=$(docker info --format '{{.Swarm.LocalNodeState}}')
  if [ "$state" = "active" ]; then
    if docker stack ls --format '{{.Name}}' | grep -qx "$STACK"; then
      log "a stack named $STACK is already deployed here; not touching it"
      exit 1
    fi
    local s
    for s in "${SECRETS[@]}"; do
      if docker secret inspect "$s" >/dev/null 2>&1; then
        log "secret $s already exists on this swarm; not touching it"
        exit 1
      fi
    done
  fi
}

images() {
  log "building the images (deploy/local-images.sh)"
  bash deploy/local-images.sh local >/dev/null
  # The same app as a new release (another image, another tag), and a
  # release whose API never comes up (it starts the worker role, so its
  # `app healthcheck` fails while the process runs).
  printf 'FROM edge/app:local\nLABEL e2e.release=next\n' | DOCKER_BUILDKIT=0 docker build -q -t edge/app:local-next - >/dev/null 2>&1
  printf 'FROM edge/app:local\nENTRYPOINT ["/usr/local/bin/app", "worker"]\n' |
    DOCKER_BUILDKIT=0 docker build -q -t edge/app:local-broken - >/dev/null 2>&1
}

swarm() {
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != "active" ]; then
    local addr
    addr=$(ip -4 route get 1.1.1.1 2>/dev/null | grep -o 'src [0-9.]*' | cut -d' ' -f2 || true)
    log "docker swarm init${addr:+ --advertise-addr $addr}"
    docker swarm init ${addr:+--advertise-addr "$addr"} >/dev/null
    CREATED_SWARM=1
  fi
}

secrets() {
  local dir="$WORK/secrets" redis limits
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$dir/tls_key" -out "$dir/tls_cert" 2>/dev/null
  redis=$(openssl rand -hex 24)
  limits=$(openssl rand -hex 24)
  printf '%s' "$redis" >"$dir/redis_password"
  printf '%s' "$limits" >"$dir/limits_redis_password"
  printf 'redis://:%s@limits-redis:6379/0' "$limits" >"$dir/gateway_redis_url"
  printf '%s' "$(openssl rand -hex 32)" >"$dir/api_token"
  printf '%s' "$(openssl rand -hex 24)" >"$dir/mongo_root_password"
  # The stand-in runs without authentication (README: deploying locally).
  printf 'mongodb://mongo:27017/?directConnection=true' >"$dir/mongodb_uri"
  local s
  for s in "${SECRETS[@]}"; do
    docker secret create "$s" "$dir/$s" >/dev/null
  done
  TOKEN=$(cat "$dir/api_token")
  CA="$dir/tls_cert"
}

deploy() {
  log "docker stack deploy -c swarm-stack.yml $STACK"
  docker stack deploy -c swarm-stack.yml "$STACK" >/dev/null
}

# ---------------------------------------------------------------- teardown

teardown() {
  local rc=$?
  set +e
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -gt 0 ] && rc=1
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null && wait "$LOAD_PID" 2>/dev/null
  clients_down
  if [ -n "${KEEP:-}" ]; then
    log "KEEP=1: leaving the stack up ($WORK)"
    exit $rc
  fi
  log "removing the stack and what this run made"
  docker stack rm "$STACK" >/dev/null 2>&1
  local deadline=$((SECONDS + 90))
  while [ -n "$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ] ||
    [ -n "$(docker network ls -q --filter "label=com.docker.stack.namespace=$STACK")" ]; do
    ((SECONDS > deadline)) && break
    sleep 1
  done
  local s
  for s in "${SECRETS[@]}"; do docker secret rm "$s" >/dev/null 2>&1; done
  docker config ls -q --filter "label=e2e=$STACK" | xargs -r docker config rm >/dev/null 2>&1
  docker volume rm "${STACK}_redis_data" "${STACK}_mongo_data" >/dev/null 2>&1
  docker image rm "${IMAGES[@]}" >/dev/null 2>&1
  if [ -n "$CREATED_SWARM" ]; then
    docker swarm leave --force >/dev/null 2>&1
    # `swarm init` made the bridge the tasks' published ports use; leaving keeps it.
    [ -n "$GWBRIDGE_BEFORE" ] || docker network rm docker_gwbridge >/dev/null 2>&1
  fi
  rm -rf "$WORK"
  exit $rc
}

# ---------------------------------------------------------------- helpers

# Every service of the stack at its desired replicas, every task running
# and, where it has a healthcheck, healthy.
converged() {
  local line name have want
  while read -r name have want; do
    [ "$have" = "$want" ] || return 1
  done < <(docker service ls --filter "label=com.docker.stack.namespace=$STACK" --format '{{.Name}} {{.Replicas}}' |
    sed 's|/| |' | awk '{print $1, $2, $3}')
  ! docker ps --filter "label=com.docker.stack.namespace=$STACK" --format '{{.Status}}' | grep -q 'starting\|unhealthy'
}

# Converged, and still so a few seconds later (a task that starts, runs and
# exits at once counts as running for a moment).
settled() { converged && sleep 4 && converged; }

wait_for() { # SECONDS COMMAND...: polls COMMAND each second; the seconds it took, or fails
  local limit=$1 start=$SECONDS
  shift
  until "$@"; do
    ((SECONDS - start > limit)) && return 1
    sleep 1
  done
  echo $((SECONDS - start))
}

https() { # METHOD PATH [BODY]: prints the status code
  local body=()
  [ $# -ge 3 ] && body=(--data "$3")
  curl -s -o "$WORK/body" -w '%{http_code}' --max-time 10 --cacert "$CA" \
    --resolve localhost:443:127.0.0.1 -X "$1" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' "${body[@]}" "https://localhost$2" || true
}

# The overlay addresses of a service's running tasks (on NETWORK only, if given).
task_ips() { # SERVICE [NETWORK]
  docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_$1" |
    xargs -r docker inspect --format '{{range $net, $v := .NetworkSettings.Networks}}{{$net}}={{$v.IPAddress}} {{end}}' |
    tr ' ' '\n' | grep "^${2:+${STACK}_$2}" | cut -d= -f2 | grep . || true
}

# The replica addresses in the gateway's access log from a Unix second on.
upstreams_since() { # FROM
  docker service logs --raw "${STACK}_gateway" 2>&1 | python3 -c '
import json, sys
since = sys.argv[1]
seen = set()
for line in sys.stdin:
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if entry.get("target") == "access" and entry.get("upstream") and entry["timestamp"] >= since:
        seen.add(entry["upstream"].rsplit(":", 1)[0])
print("\n".join(sorted(seen)))
' "$(date -u -d "@$1" +%Y-%m-%dT%H:%M:%S)"
}

# The clients live in a network namespace of their own, each with its own
# address, and reach the gateway on the host's address: from the host
# itself Docker would masquerade every connection to one address (and the
# per-address limit would then apply to all of them at once).
CLIENTS_NS=swarm-e2e-clients
clients_up() {
  ip netns add "$CLIENTS_NS"
  ip link add swarm-e2e-h type veth peer name swarm-e2e-c
  ip link set swarm-e2e-c netns "$CLIENTS_NS"
  ip addr add 198.18.0.1/24 dev swarm-e2e-h
  ip link set swarm-e2e-h up
  local i sources=()
  ip netns exec "$CLIENTS_NS" ip link set lo up
  ip netns exec "$CLIENTS_NS" ip link set swarm-e2e-c up
  for i in $(seq 2 $((CLIENTS + 1))); do
    ip netns exec "$CLIENTS_NS" ip addr add "198.18.0.$i/24" dev swarm-e2e-c
    sources+=("198.18.0.$i")
  done
  ip netns exec "$CLIENTS_NS" ip route add default via 198.18.0.1
  SOURCES=$(IFS=,; echo "${sources[*]}")
  HOST_IP=$(ip -4 route get 1.1.1.1 | grep -o 'src [0-9.]*' | cut -d' ' -f2)
}

clients_down() {
  ip netns del "$CLIENTS_NS" 2>/dev/null || true
  ip link del swarm-e2e-h 2>/dev/null || true
}

load_start() {
  clients_up
  ip netns exec "$CLIENTS_NS" python3 scripts/swarm_load.py seed "$HOST_IP" 443 "${SOURCES%%,*}" "$CA" "$TOKEN" >/dev/null
  ip netns exec "$CLIENTS_NS" python3 scripts/swarm_load.py drive "$HOST_IP" 443 "$SOURCES" "$CA" "$TOKEN" "$RATE" "$LOAD_LOG" &
  LOAD_PID=$!
}

# What the clients saw from FROM to now, as JSON (after the last second is written).
seen_since() { # FROM
  local until=$(($(date +%s) - 1))
  sleep 2 # the load writes a second once it is over
  python3 scripts/swarm_load.py tally "$LOAD_LOG" "$1" "$until"
}

matches() { [[ $1 == $2 ]]; } # VALUE GLOB

field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

# The requests that failed in a tally, as "kind x count, ...".
failures_of() { field '["failures"]' | tr -d "{}'" ; }

# ---------------------------------------------------------------- checks

check_deployed() {
  local took serves
  if took=$(wait_for 300 settled); then
    pass "the stack converges: every service at its replicas, every task healthy (${took} s)"
    # The gateway's healthcheck is liveness: it is healthy before it has
    # found a replica (tasks.app may not resolve yet when it starts; it
    # looks again every discover_interval).
    gateway_serves() { [ "$(https GET /version)" = 200 ]; }
    if serves=$(wait_for 60 gateway_serves); then
      pass "the gateway serves through a replica ${serves} s after the stack converged"
    else
      fail "the gateway did not serve within 60 s of the stack converging"
    fi
  else
    fail "the stack did not converge in 300 s: $(docker service ls --format '{{.Name}} {{.Replicas}}' | tr '\n' ' ')"
    docker service ps --no-trunc "$STACK"_app "$STACK"_gateway "$STACK"_mongo 2>&1 | head -20 >&2
    return 1
  fi
}

check_reach() {
  local redirect code created read anonymous
  redirect=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' --max-time 5 http://127.0.0.1/configs || true)
  check "port 80 (host mode) redirects to https" "$redirect" matches "$redirect" '308 https://*'
  code=$(https GET /version)
  check "port 443 (host mode) answers over TLS" "GET /version $code" [ "$code" = 200 ]
  local name="e2e-$RANDOM"
  created=$(https POST /configs "{\"name\":\"$name\",\"data\":[{\"k\":1}]}")
  read=$(https GET "/configs/$name")
  check "POST and GET /configs end to end, the write token read from the api_token secret" \
    "POST $created, GET $read" [ "$created" = 201 -a "$read" = 200 ]
  anonymous=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$CA" --resolve localhost:443:127.0.0.1 \
    -X POST -H 'Content-Type: application/json' --data '{"name":"x","data":[]}' https://localhost/configs || true)
  check "a write without the token is refused" "POST $anonymous" [ "$anonymous" = 401 ]
}

check_discovery() {
  local since i ips seen missing=""
  since=$(date +%s)
  for i in $(seq 1 12); do https GET /configs >/dev/null; sleep 0.1; done
  sleep 1
  ips=$(task_ips app frontend | sort -u)
  seen=$(upstreams_since "$since")
  for i in $ips; do grep -qx "$i" <<<"$seen" || missing="$missing $i"; done
  check "the gateway finds the replicas through tasks.app" \
    "app tasks: $(echo $ips), used: $(echo $seen)" [ -z "$missing" -a -n "$ips" ]
}

# Whether SERVICE's own protocol answers on its tasks' addresses, from this
# host (`host`) or from inside a running task of FROM (its network
# namespace, through nsenter). A TCP connection alone proves nothing: an
# egress proxy may accept anything (this machine's does).
answers() { # SERVICE PORT KIND host|FROM
  local ip pid answered=""
  if [ "$4" != host ]; then
    pid=$(docker inspect --format '{{.State.Pid}}' \
      "$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_$4" | head -1)")
  fi
  for ip in $(task_ips "$1"); do
    if [ "$4" = host ]; then
      python3 scripts/swarm_load.py probe "$ip" "$2" "$3" && answered="$answered $ip"
    else
      nsenter -t "$pid" -n python3 scripts/swarm_load.py probe "$ip" "$2" "$3" && answered="$answered $ip"
    fi
  done
  echo "$answered"
}

check_isolation() {
  local target service port kind peer open="" inside=""
  # SERVICE:PORT:KIND:a service that must reach it
  for target in app:8000:http:gateway app:9100:http:app redis:6379:redis:app mongo:27017:mongo:app \
    limits-redis:6379:redis:gateway; do
    IFS=: read -r service port kind peer <<<"$target"
    [ -n "$(answers "$service" "$port" "$kind" host)" ] && open="$open $service:$port"
    [ -n "$(answers "$service" "$port" "$kind" "$peer")" ] || inside="$inside $service:$port(from $peer)"
  done
  for target in 8000:http 9100:http 6379:redis 27017:mongo; do
    python3 scripts/swarm_load.py probe 127.0.0.1 "${target%%:*}" "${target#*:}" && open="$open 127.0.0.1:${target%%:*}"
  done
  check "the probes reach each store and the app from the tasks that use them" "${inside:-all answered}" [ -z "$inside" ]
  check "Redis, MongoDB and the app are unreachable from the host" "${open:-none answered}" [ -z "$open" ]
}

# The load's figures since FROM; passes when nothing failed.
check_no_failures() { # NAME FROM
  local seen requests failed
  seen=$(seen_since "$2")
  requests=$(field '["requests"]' <<<"$seen")
  failed=$(field '["failed"]' <<<"$seen")
  check "$1" "$requests requests, $failed failed $(failures_of <<<"$seen")" [ "$failed" = 0 -a "$requests" -gt 0 ]
}

app_tasks() { docker service ps -q --filter desired-state=running "${STACK}_app" | sort; }

check_rolling_update() {
  local from took
  from=$(date +%s)
  docker service update --quiet --image edge/app:local-next "${STACK}_app" >/dev/null 2>&1 || true
  took=$(($(date +%s) - from))
  local images
  images=$(docker service ps --filter desired-state=running --format '{{.Image}}' "${STACK}_app" | sort -u | tr '\n' ' ')
  check "app update to a new image (start-first, one at a time) completes" "${took} s, running: $images" \
    [ "$images" = "edge/app:local-next " ]
  check_no_failures "app update under load: no failed request" "$from"
}

check_scale() {
  local from scaled took
  from=$(date +%s)
  docker service scale --detach=false "${STACK}_app=5" >/dev/null 2>&1 || true
  scaled=$(date +%s)
  new_used() {
    local ips seen i
    ips=$(task_ips app frontend | sort -u)
    [ "$(wc -l <<<"$ips")" -eq 5 ] || return 1
    seen=$(upstreams_since "$scaled")
    for i in $ips; do grep -qx "$i" <<<"$seen" || return 1; done
  }
  if took=$(wait_for 30 new_used); then
    pass "scale to 5: the gateway sends to all 5 replicas ${took} s after Swarm has them running (discover_interval 5 s)"
  else
    fail "scale to 5: the gateway did not use all 5 replicas within 30 s"
  fi
  docker service scale --detach=false "${STACK}_app=2" >/dev/null 2>&1 || true
  check "scale back to 2" "$(app_tasks | wc -l) running" [ "$(app_tasks | wc -l)" -eq 2 ]
  check_no_failures "scale 5 and back to 2 under load: no failed request" "$from"
}

check_kill() {
  local from victim took
  from=$(date +%s)
  victim=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_app" | head -1)
  docker kill "$victim" >/dev/null || true
  took=$(wait_for 90 settled) || took="not within 90"
  check "an app task killed: Swarm replaces it" "${took} s" [ "$took" != "not within 90" ]
  check_no_failures "an app task killed under load: no failed (idempotent) request" "$from"
}

check_rollback() {
  local from state took images
  from=$(date +%s)
  docker service update --quiet --image edge/app:local-broken "${STACK}_app" >/dev/null 2>&1 || true
  rolled_back() {
    state=$(docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "${STACK}_app")
    [ "$state" = "rollback_completed" ] && settled
  }
  if wait_for 240 rolled_back >/dev/null; then took=$(($(date +%s) - from)); else took="not within 240"; fi
  images=$(docker service ps --filter desired-state=running --format '{{.Image}}' "${STACK}_app" | sort -u | tr '\n' ' ')
  check "an update to an image whose healthcheck fails rolls back by itself" \
    "${took} s from the update to rollback_completed, running: $images" [ "$images" = "edge/app:local-next " ]
  check_no_failures "the failed update and its rollback under load: no failed request" "$from"
}

check_gateway_config() {
  local from seen took config="${STACK}_gateway_toml_2"
  sed 's/^idle_timeout = "60s"/idle_timeout = "55s"/' deploy/gateway.swarm.toml >"$WORK/gateway.toml"
  grep -q '^idle_timeout = "55s"' "$WORK/gateway.toml" || { fail "gateway config: nothing to change"; return; }
  docker config create --label "e2e=$STACK" "$config" "$WORK/gateway.toml" >/dev/null || true
  from=$(date +%s)
  docker service update --quiet --config-rm "${STACK}_gateway_toml" \
    --config-add "source=$config,target=/etc/gateway/gateway.toml" "${STACK}_gateway" >/dev/null 2>&1 || true
  local running
  new_config_serves() {
    running=$(docker service inspect --format '{{range .Spec.TaskTemplate.ContainerSpec.Configs}}{{.ConfigName}}{{end}}' "${STACK}_gateway")
    [ "$running" = "$config" ] && settled && [ "$(https GET /version)" = 200 ]
  }
  if wait_for 120 new_config_serves >/dev/null; then took=$(($(date +%s) - from)); else took="not within 120"; fi
  sleep 3
  seen=$(seen_since "$from")
  local failed requests secs
  failed=$(field '["failed"]' <<<"$seen")
  requests=$(field '["requests"]' <<<"$seen")
  secs=$(field '["failed_seconds"]' <<<"$seen" | python3 -c 'import sys,json; s=json.loads(sys.stdin.read().replace("'"'"'","\"")); print(f"{len(s)} s with failures" + (f", {s[0]}..{s[-1]}" if s else ""))')
  GATEWAY_UPDATE="$requests requests, $failed failed ($secs): $(failures_of <<<"$seen")"
  GATEWAY_FAILED=$failed
  check "gateway config update (new config object, stop-first on the node's host ports): the new config serves" \
    "${took} s from the update; clients saw: $GATEWAY_UPDATE" [ "$took" != "not within 120" ]
}

# Stops SERVICE for SECONDS (scaled to 0), then brings it back.
outage() { # SERVICE SECONDS
  docker service scale --detach=true "${STACK}_$1=0" >/dev/null 2>&1 || true
  sleep "$2"
  docker service scale --detach=true "${STACK}_$1=1" >/dev/null 2>&1 || true
}

check_mongo_outage() {
  local from tasks_before seen started took clean failed writes other
  tasks_before=$(app_tasks)
  from=$(date +%s)
  docker service scale --detach=true "${STACK}_mongo=0" >/dev/null 2>&1 || true
  sleep 60
  check "MongoDB stopped 60 s: the app tasks are not restarted" \
    "tasks before $(echo $tasks_before), after $(echo $(app_tasks))" [ "$tasks_before" = "$(app_tasks)" ]
  started=$(date +%s)
  docker service scale --detach=true "${STACK}_mongo=1" >/dev/null 2>&1 || true
  if wait_for 120 settled >/dev/null; then took=$(($(date +%s) - started)); else took="not within 120"; fi
  # Recovered: a 5 s window with requests and no failure.
  recovered() {
    local window
    window=$(python3 scripts/swarm_load.py tally "$LOAD_LOG" "$(($(date +%s) - 5))" "$(($(date +%s) - 1))")
    [ "$(field '["failed"]' <<<"$window")" = 0 ] && [ "$(field '["requests"]' <<<"$window")" -gt 0 ]
  }
  if wait_for 120 recovered >/dev/null; then clean=$(($(date +%s) - started)); else clean="not within 120"; fi
  # From the stop to the recovery, every failure is a 503 with Retry-After.
  seen=$(seen_since "$from")
  failed=$(field '["failed"]' <<<"$seen")
  writes=$(field '["failed_writes"]' <<<"$seen")
  other=$(field '["failed_other_than_503_retry_after"]' <<<"$seen")
  MONGO_FAILED=$failed
  check "MongoDB stopped 60 s: writes answer 503 with Retry-After, and nothing fails otherwise" \
    "$(field '["requests"]' <<<"$seen") requests; $writes writes and $(field '["failed_reads"]' <<<"$seen") reads failed, $other of them not a 503 with Retry-After: $(failures_of <<<"$seen")" \
    [ "$writes" -gt 0 -a "$other" = 0 ]
  check "MongoDB back: everything recovers by itself" \
    "healthy ${took} s after it was started, every request answered ${clean} s after" \
    [ "$took" != "not within 120" -a "$clean" != "not within 120" ]
}

check_redis_outage() {
  local from seen
  from=$(date +%s)
  outage redis 60
  seen=$(seen_since "$from")
  check "Redis stopped 60 s: reads (and writes) keep answering from the store" \
    "$(field '["requests"]' <<<"$seen") requests, $(field '["failed"]' <<<"$seen") failed $(failures_of <<<"$seen")" \
    [ "$(field '["failed"]' <<<"$seen")" = 0 -a "$(field '["requests"]' <<<"$seen")" -gt 0 ]
  wait_for 120 settled >/dev/null || true
}

# Every failure of the whole run fell in the two windows where some were
# expected (the gateway's own restart, the MongoDB outage): none was
# counted between the checks' windows.
check_whole_run() {
  local seen
  seen=$(seen_since "$LOAD_FROM")
  check "the whole run: no failure outside the gateway restart and the MongoDB outage" \
    "$(field '["requests"]' <<<"$seen") requests, $(field '["failed"]' <<<"$seen") failed, ${GATEWAY_FAILED:-?} + ${MONGO_FAILED:-?} in those windows" \
    [ "$(field '["failed"]' <<<"$seen")" = "$((${GATEWAY_FAILED:-0} + ${MONGO_FAILED:-0}))" ]
}

main() {
  preflight # before the trap: what it refuses to touch, teardown must not remove
  WORK=$(mktemp -d /tmp/swarm-e2e.XXXXXX)
  LOAD_LOG="$WORK/load.jsonl"
  trap teardown EXIT
  images
  swarm
  secrets
  deploy
  check_deployed || exit 1
  check_reach
  check_discovery
  check_isolation
  load_start
  LOAD_FROM=$(date +%s)
  log "steady load from $SOURCES at $RATE r/s each"
  sleep 5
  check_no_failures "steady load before any operation: no failed request" "$(($(date +%s) - 4))"
  check_rolling_update
  check_scale
  check_kill
  check_rollback
  check_gateway_config
  check_mongo_outage
  check_redis_outage
  check_whole_run
}

CLIENTS=${CLIENTS:-6}
RATE=${RATE:-8}
main "$@"
