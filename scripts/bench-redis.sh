#!/usr/bin/env bash
# What distributed counting costs: verve standalone, counting through one local redis-server,
# and through a local Redis Cluster of three masters (no replicas), back to back in each
# round. One worker; verve and Redis pinned to core 0, wrk to core 1; every id new
# (VERVE_BENCH_IDS=unique), so that the reports must add up to the requests answered ok.
#
#   scripts/bench-redis.sh           3 rounds of 10 s runs per scenario, then Redis stopped
#                                    for 4 s and for 30 s under load (about 8 minutes)
#   scripts/bench-redis.sh --quick   1 round of 2 s runs, one 4 s stop
#
# Per run: requests/s, requests not answered 200 (from verve's metrics), CPU µs per request
# of verve, of Redis (all its nodes) and of wrk, whether the reports add up to the ok answers
# (and their modes), and how long after its window's end the last window was reported.
# Prints a markdown table and writes the rows to OUT/redis.csv (OUT defaults to target/bench).
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WINDOW_SECS=${WINDOW_SECS:-5}
OUT=${OUT:-target/bench}
SERVER_CORE=${SERVER_CORE:-0}
WRK_CORE=${WRK_CORE:-1}
STALLS=${STALLS:-4 30}
if [ "${1:-}" = "--quick" ]; then
  ROUNDS=1 DURATION=2s STALLS=4
fi

ensure_wrk
command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
cargo build --release --locked --bin verve
mkdir -p "$OUT"
tmp=$(mktemp -d)
redis_pids=()
cleanup() {
  stop_server
  [ ${#redis_pids[@]} -gt 0 ] && kill "${redis_pids[@]}" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# redis_node PORT [ARGS...]: a redis-server pinned to the server's core.
redis_node() {
  local port=$1
  shift
  mkdir -p "$tmp/$port"
  taskset -c "$SERVER_CORE" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$tmp/$port" "$@" >"$tmp/$port/log" 2>&1 &
  redis_pids+=($!)
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
}

single_port=$(free_port)
redis_node "$single_port"
single_pid=${redis_pids[-1]}
cluster_ports=()
cluster_pids=()
while [ ${#cluster_ports[@]} -lt 3 ]; do
  port=$(( (RANDOM % 20000) + 10000 ))
  python3 -c "import socket,sys; [socket.socket().bind(('127.0.0.1', p)) for p in ($port, $port + 10000)]" \
    2>/dev/null || continue
  redis_node "$port" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000
  cluster_ports+=("$port")
  cluster_pids+=("${redis_pids[-1]}")
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${cluster_ports[@]}") --cluster-replicas 0 \
  --cluster-yes >/dev/null
until redis-cli -p "${cluster_ports[0]}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
seeds=$(printf 'redis://127.0.0.1:%s,' "${cluster_ports[@]}")
seeds=${seeds%,}

# ticks PIDS...: user+system clock ticks of the processes together.
ticks() {
  local t=0 pid u s
  for pid in "$@"; do
    read -r u s < <(cpu_ticks "$pid")
    t=$((t + u + s))
  done
  echo "$t"
}

csv="$OUT/redis.csv"
echo "scenario,mode,requests_per_sec,not_ok,verve_us_per_req,redis_us_per_req,wrk_us_per_req,reports_exact,last_report_delay_s" >"$csv"

# run SCENARIO MODE "VERVE ARGS" "REDIS PIDS" PIPELINE [STALL_SECS]: with STALL_SECS, Redis
# is stopped (SIGSTOP: a partition without a reset) that long, 2 s into a run that goes on
# 6 s after it.
run() {
  local scenario=$1 mode=$2 args=$3 pids=$4 depth=$5 stall=${6:-}
  local hz stats="$tmp/stats-$scenario-$mode.log" duration=$DURATION
  [ -n "$stall" ] && duration=$((stall + 8))s
  hz=$(getconf CLK_TCK)
  rm -f "$stats"
  # shellcheck disable=SC2086 # args is a word list
  start_server target/release/verve "$SERVER_CORE" "$tmp/server.log" --workers 1 \
    --window-secs "$WINDOW_SECS" --stats-log "$stats" --callback-log "$tmp/callbacks.log" $args
  # Distributed, the reporter waits a heartbeat expiry after connecting.
  sleep 3.5
  local verve0 redis0 out wrk_cpu verve1 redis1
  verve0=$(ticks "$SERVER_PID")
  # shellcheck disable=SC2086 # pids is a word list
  redis0=$(ticks $pids)
  if [ -n "$stall" ]; then
    # shellcheck disable=SC2086
    (sleep 2; kill -STOP $pids; sleep "$stall"; kill -CONT $pids) &
  fi
  out=$(VERVE_BENCH_IDS=unique VERVE_BENCH_PIPELINE=$depth python3 -c '
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(done.stdout)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("wrk_cpu_s", r.ru_utime + r.ru_stime)
' taskset -c "$WRK_CORE" wrk -t1 -c64 -d"$duration" -s scripts/wrk/accept.lua \
    "http://$SERVER_ADDR/api/verve/accept?id=1")
  verve1=$(ticks "$SERVER_PID")
  # shellcheck disable=SC2086
  redis1=$(ticks $pids)
  local ended requests rps not_ok ok scrape
  ended=$(date +%s.%N)
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  # verve's own count of what it answered: wrk does not count the answers still in flight
  # when it stops, which verve counted.
  scrape=$(curl -s "http://$SERVER_ADDR/metrics")
  ok=$(echo "$scrape" | awk '/^verve_requests_total\{route="accept",status="200"\}/ {print $2}')
  not_ok=$(echo "$scrape" | awk '/^verve_requests_total\{route="accept",status="[^2]/ {n += $2} END {print n + 0}')
  wrk_cpu=$(echo "$out" | awk '/wrk_cpu_s/ {print $2}')
  # Wait for the report of the window the run ended in.
  local last_window deadline
  last_window=$(python3 -c "print(int($ended) // $WINDOW_SECS * $WINDOW_SECS)")
  deadline=$((SECONDS + 90))
  until python3 - "$stats" "$last_window" <<'EOF' 2>/dev/null
import sys, datetime
want = int(sys.argv[2])
for line in open(sys.argv[1]):
    f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    start = datetime.datetime.fromisoformat(f["window_start"].replace("Z", "+00:00")).timestamp()
    if int(start) == want:
        sys.exit(0)
sys.exit(1)
EOF
  do
    [ $SECONDS -gt $deadline ] && break
    sleep 0.2
  done
  stop_server
  python3 - "$stats" "$requests" "$not_ok" "$WINDOW_SECS" "$ok" <<EOF | tee -a "$csv"
import sys, datetime
stats, requests, not_ok, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ok = int(sys.argv[5])
total, delay, modes = 0, 0.0, set()
for line in open(stats):
    f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    if f.get("partial") == "true":
        continue
    total += int(f["unique_requests"])
    modes.add(f["mode"])
    start = datetime.datetime.fromisoformat(f["window_start"].replace("Z", "+00:00")).timestamp()
    written = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
    if int(f["unique_requests"]) > 0:
        delay = max(delay, written - (start + window))
hz = $hz
print(f"$scenario,$mode,$rps,{not_ok},"
      f"{($verve1 - $verve0) / hz * 1e6 / requests:.3f},{($redis1 - $redis0) / hz * 1e6 / requests:.3f},"
      f"{$wrk_cpu * 1e6 / requests:.3f},{'yes' if total == ok else f'no ({total} of {ok})'} ({' '.join(sorted(modes))}),{delay:.2f}")
EOF
}

for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  for scenario in c64 pipeline16; do
    depth=1
    [ "$scenario" = pipeline16 ] && depth=16
    run "$scenario" standalone "" "" "$depth"
    run "$scenario" redis "--redis-url redis://127.0.0.1:$single_port" "$single_pid" "$depth"
    run "$scenario" cluster "--redis-cluster-nodes $seeds" "${cluster_pids[*]}" "$depth"
  done
done
for stall in $STALLS; do
  run "c64-stall${stall}s" redis "--redis-url redis://127.0.0.1:$single_port" "$single_pid" 1 "$stall"
done

python3 - "$csv" <<'EOF'
import csv, statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for r in csv.DictReader(open(sys.argv[1])):
    rows[(r["scenario"], r["mode"])].append(r)
med = lambda rs, k: statistics.median(float(r[k]) for r in rs)
print("| scenario | mode | requests/s | ×standalone | not ok | verve µs/req | Redis µs/req | wrk µs/req | reports exact | last report after window end (s) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (scenario, mode), rs in rows.items():
    base = med(rows.get((scenario, "standalone"), rows[("c64", "standalone")]), "requests_per_sec")
    print(f"| {scenario} | {mode} | {med(rs, 'requests_per_sec'):,.0f} | {med(rs, 'requests_per_sec') / base:.2f} | "
          f"{sum(int(r['not_ok']) for r in rs)} | {med(rs, 'verve_us_per_req'):.2f} | {med(rs, 'redis_us_per_req'):.2f} | "
          f"{med(rs, 'wrk_us_per_req'):.2f} | {', '.join(r['reports_exact'] for r in rs)} | "
          f"{', '.join(r['last_report_delay_s'] for r in rs)} |")
EOF
