# Shared by the load scripts: start a server pinned to a core, drive it with wrk pinned to
# another, and measure requests/s, latency and the server's CPU time per request.
# Source it; it needs wrk (installed from Debian's packages when missing) and taskset.

set -euo pipefail

ensure_wrk() {
  if ! command -v wrk >/dev/null 2>&1; then
    echo "installing wrk" >&2
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  fi
}

# start_server BINARY CORES LOGFILE ARGS...: starts BINARY (verve or verve-tokio) pinned to
# CORES on a port the kernel picks, its write-ahead log in a fresh folder beside LOGFILE
# (unless ARGS name one, or the binary predates the log); sets SERVER_PID and SERVER_ADDR.
start_server() {
  local binary=$1 cores=$2 log=$3
  shift 3
  local wal=()
  if [[ " $* " != *" --wal-dir "* ]] && "$binary" --help | grep -q -- --wal-dir; then
    rm -rf "$log.wal"
    wal=(--wal-dir "$log.wal")
  fi
  RUST_LOG=warn,verve=info,verve_tokio=info taskset -c "$cores" "$binary" --listen 127.0.0.1:0 \
    "${wal[@]}" "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  local i
  for i in $(seq 1 100); do
    SERVER_ADDR=$(grep -o 'listening on [0-9.:]*' "$log" | head -1 | cut -d' ' -f3 || true)
    [ -n "$SERVER_ADDR" ] && return 0
    sleep 0.1
  done
  echo "server did not start: $(cat "$log")" >&2
  return 1
}

stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

# free_port: a 127.0.0.1 port nothing listens on now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# cpu_ticks PID: user and system time of the process, in clock ticks.
cpu_ticks() {
  # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends the command name.
  sed 's/.*) //' "/proc/$1/stat" | awk '{print $12, $13}'
}

# to_ms VALUE: wrk's "1.23ms" / "456.00us" / "1.02s" in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
    printf "%.3f", n
  }'
}

# measure LABEL WRK_CORES WRK_ARGS...: one wrk run against SERVER_ADDR/SERVER_PID; prints
# "LABEL,requests_per_sec,p50_ms,p99_ms,user_us_per_req,sys_us_per_req".
measure() {
  local label=$1 wrk_cores=$2
  shift 2
  local hz before after out
  hz=$(getconf CLK_TCK)
  before=$(cpu_ticks "$SERVER_PID")
  out=$(taskset -c "$wrk_cores" wrk --latency "$@" "http://$SERVER_ADDR/api/verve/accept?id=1")
  after=$(cpu_ticks "$SERVER_PID")
  local requests rps p50 p99
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
  p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
  local errors
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' || true)
  [ -n "$errors" ] && echo "$label: $errors" >&2
  echo "$before $after" | awk -v label="$label" -v hz="$hz" -v n="$requests" -v rps="$rps" \
    -v p50="$p50" -v p99="$p99" '{
      user = ($3 - $1) / hz * 1e6 / n; sys = ($4 - $2) / hz * 1e6 / n
      printf "%s,%.0f,%s,%s,%.3f,%.3f\n", label, rps, p50, p99, user, sys
    }'
}

# median: the median of the numbers on stdin.
median() {
  sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
