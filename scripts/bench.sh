#!/usr/bin/env bash
# verve against the hyper-on-tokio baseline (verve-tokio), one worker each pinned to core 0,
# wrk pinned to core 1, random ids (scripts/wrk/accept.lua). Every scenario alternates
# verve, tokio, verve, tokio... for ROUNDS rounds, each run on a fresh server after a warm-up.
#
#   scripts/bench.sh            3 rounds of 10 s runs (about 6 minutes)
#   scripts/bench.sh --quick    1 round of 1 s runs (about half a minute once built)
#
# Scenarios: 64 and 256 connections; 64 connections pipelining 16 requests per write;
# verve with every request carrying the same id (nothing forwarded to the recorder); verve
# on epoll instead of io_uring; verve counting through a local redis-server (pinned to the
# server's core: wrk saturates its own core, so Redis there would slow the load, not verve),
# at 64 connections and pipelining 16 (scripts/bench-redis.sh compares standalone, one Redis
# and a cluster in more detail);
# a fixed offered load of about 10K requests/s (10 connections pausing 1 ms between
# requests) for latency.
#
# Prints a markdown table of medians and verve/tokio ratios, and writes the raw rows to
# OUT/results.csv and a plot to OUT/bench.svg (OUT defaults to target/bench).
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
OUT=${OUT:-target/bench}
SERVER_CORE=${SERVER_CORE:-0}
WRK_CORE=${WRK_CORE:-1}
if [ "${1:-}" = "--quick" ]; then
  ROUNDS=1 DURATION=1s WARMUP=1s
fi

ensure_wrk
command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
cargo build --release --locked --bin verve
cargo build --release --locked --features tokio-baseline --bin verve-tokio
mkdir -p "$OUT"
tmp=$(mktemp -d)
redis_port=$(free_port)
taskset -c "$SERVER_CORE" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  >"$tmp/redis.log" 2>&1 &
redis_pid=$!
trap 'stop_server; kill "$redis_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
csv="$OUT/results.csv"
echo "scenario,server,requests_per_sec,p50_ms,p99_ms,user_us_per_req,sys_us_per_req" >"$csv"

# run SCENARIO SERVER BINARY "SERVER ARGS" WRK_ENV... -- WRK ARGS...
run() {
  local scenario=$1 server=$2 binary=$3 server_args=$4
  shift 4
  local env=()
  while [ "$1" != "--" ]; do env+=("$1"); shift; done
  shift
  # shellcheck disable=SC2086 # server_args is a word list
  start_server "$binary" "$SERVER_CORE" "$tmp/server.log" --workers 1 \
    --stats-log "$tmp/stats.log" --callback-log "$tmp/callbacks.log" $server_args
  env "${env[@]}" bash -c "source scripts/bench-lib.sh; SERVER_PID=$SERVER_PID SERVER_ADDR=$SERVER_ADDR; \
    measure warmup $WRK_CORE -t1 -d$WARMUP $* -s scripts/wrk/accept.lua" >/dev/null
  local row
  row=$(env "${env[@]}" bash -c "source scripts/bench-lib.sh; SERVER_PID=$SERVER_PID SERVER_ADDR=$SERVER_ADDR; \
    measure $scenario $WRK_CORE -t1 -d$DURATION $* -s scripts/wrk/accept.lua")
  stop_server
  echo "${row/$scenario,/$scenario,$server,}" | tee -a "$csv"
}

verve=target/release/verve
tokio=target/release/verve-tokio
for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  for server in verve tokio; do
    run c64 "$server" "${!server}" "" X=1 -- -c64
  done
  run c64-same-id verve "$verve" "" VERVE_BENCH_IDS=1 -- -c64
  run c64-epoll verve "$verve" "--driver epoll" X=1 -- -c64
  run c64-redis verve "$verve" "--redis-url redis://127.0.0.1:$redis_port" X=1 -- -c64
  for server in verve tokio; do
    run c256 "$server" "${!server}" "" X=1 -- -c256
  done
  for server in verve tokio; do
    run pipeline16 "$server" "${!server}" "" VERVE_BENCH_PIPELINE=16 -- -c64
  done
  run pipeline16-redis verve "$verve" "--redis-url redis://127.0.0.1:$redis_port" \
    VERVE_BENCH_PIPELINE=16 -- -c64
  for server in verve tokio; do
    run fixed10k "$server" "${!server}" "" VERVE_BENCH_DELAY_MS=1 -- -c10
  done
done

python3 scripts/bench-report.py "$csv" "$OUT/bench.svg"
