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
