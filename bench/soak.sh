#!/usr/bin/env bash
# Soak under attack: a well-behaved client (15 r/s, reads and writes) keeps
# its success rate and its latency while a mix of cheap attacks runs from
# other addresses (bench/soak.py lists them: malformed, truncated and
# stalled bodies, bodies that never come, unread responses, slowloris,
# an idle-connection flood, HTTP/2 streams without window, odd targets and
# headers, one address far over its rate). Rounds alternate a run without
# attackers and one with them; the figures are the medians, and the ratio
# of the attacked p99 to the quiet one (target: 100% success, p99 ratio
# at most 2).
#
# The gateway runs with its defaults (20 r/s burst 20 per address, every
# limit and timeout at its default) in front of two app replicas on the
# embedded store; the configs read and written are small, one large
# (~900 KB) config is what unread responses and HTTP/2 attackers ask for.
# Usage: bench/soak.sh [ROUNDS=2] [SECONDS=30]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-2}
SECONDS_PER_RUN=${2:-30}
# shellcheck source=scripts/services.sh
source scripts/services.sh
# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_tool curl curl
bench_start soak
ulimit -n 65536 2>/dev/null || true

start_upstreams "$WORK"
GW_HTTP=$(free_port)
GW_ADMIN=$(free_port)
cat >"$WORK/soak.toml" <<TOML
[server]
http = "127.0.0.1:$GW_HTTP"
http_mode = "proxy"
admin = "127.0.0.1:$GW_ADMIN"
[upstreams.app]
servers = ["127.0.0.1:$UP1", "127.0.0.1:$UP2"]
health = { path = "/readyz" }
[[routes]]
path_prefix = "/"
upstream = "app"
TOML
RUST_LOG=warn target/release/gateway --config "$WORK/soak.toml" 2>"$WORK/gateway.log" &
GW_PID=$!
pids+=("$GW_PID")
wait_http "http://127.0.0.1:$GW_HTTP/healthz" 30

# The configs the clients use, written straight to a replica.
curl -fsS -o /dev/null -XPOST "http://127.0.0.1:$UP1/configs" -H 'content-type: application/json' \
  -d '{"name":"soak-small","data":[{"k":1}]}'
python3 - "$UP1" <<'PY'
import json, sys, urllib.request
data = [{"id": i, "payload": "x" * 880} for i in range(1000)]
body = json.dumps({"name": "soak-big", "data": data}).encode()
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/configs", body, {"content-type": "application/json"})
urllib.request.urlopen(request).read()
PY


quiet_p99=(); attacked_p99=(); quiet_ok=(); attacked_ok=()
for round in $(seq 1 "$ROUNDS"); do
  for mode in quiet attacked; do
    attacker=""
    if [ "$mode" = attacked ]; then
      python3 bench/soak.py --gateway "127.0.0.1:$GW_HTTP" --seconds "$SECONDS_PER_RUN" --role attack \
        >"$WORK/attack-$round.json" &
      attacker=$!
      sleep 1 # the attacks are under way before the client starts
    fi
    out=$(python3 bench/soak.py --gateway "127.0.0.1:$GW_HTTP" --seconds "$SECONDS_PER_RUN" --role good)
    echo "round $round $mode: client $out (gateway RSS $(rss_kb "$GW_PID") KB)"
    if [ -n "$attacker" ]; then
      wait "$attacker"
      echo "round $round attackers got: $(cat "$WORK/attack-$round.json")"
    fi
    p99=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p99_ms"])')
    ok=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["success_rate"])')
    if [ "$mode" = quiet ]; then quiet_p99+=("$p99"); quiet_ok+=("$ok"); else attacked_p99+=("$p99"); attacked_ok+=("$ok"); fi
    # Let held connections and timeouts of the last run run out.
    sleep 35
  done
done

q=$(median "${quiet_p99[@]}"); a=$(median "${attacked_p99[@]}")
echo
echo "well-behaved client, median of $ROUNDS rounds of ${SECONDS_PER_RUN}s:"
printf '  without attackers: success %s, p99 %s ms\n' "$(median "${quiet_ok[@]}")" "$q"
printf '  under attack:      success %s, p99 %s ms\n' "$(median "${attacked_ok[@]}")" "$a"
printf '  p99 ratio (attacked / quiet): %.2f (target <= 2)\n' "$(echo "$a / $q" | bc -l)"
echo
echo "gateway after the runs: RSS $(rss_kb "$GW_PID") KB"
curl -fsS "http://127.0.0.1:$GW_ADMIN/metrics" | grep -E '^gateway_(request_errors_total|connections_refused_total|upstream_healthy)' | sed 's/^/  /'
