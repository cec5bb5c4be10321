#!/usr/bin/env bash
# What a Redis outage costs in memory when every request names a callback: verve counting
# through a local redis-server, one worker on core 0, wrk on core 1 (64 connections, every
# request with an endpoint, as fast as it sends), Redis stopped (SIGSTOP: no answer, no
# error) for the whole run. Callbacks wait for their window's global count; verve bounds
# them by --callback-queue (10,000) and sheds the rest. For contrast, the same outage with no
# endpoint on the requests: what the ids alone take (the window's sets, the ids Redis has not
# confirmed, the write-ahead log's mapped pages).
#
#   scripts/bench-callback-outage.sh          SECS=60
#
# Prints, per setting: requests/s, verve's resident memory before and at its peak during the
# outage (sampled every second), and the callbacks shed while waiting.
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

SECS=${SECS:-60}
ensure_wrk
cargo build --release --locked --bin verve >&2
tmp=$(mktemp -d)
redis_port=$(free_port)
taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  >"$tmp/redis.log" 2>&1 &
redis_pid=$!
trap 'kill -CONT "$redis_pid" 2>/dev/null; kill "$redis_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 0.5
# Nothing listens on the discard port: a callback that is sent fails at once.
endpoint=$(python3 -c 'import urllib.parse; print(urllib.parse.quote("http://127.0.0.1:9/hook", safe=""))')

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

run() { # LABEL ENDPOINT
  start_server target/release/verve 0 "$tmp/server.log" --workers 1 \
    --redis-url "redis://127.0.0.1:$redis_port" --callback-allow-private \
    --stats-log "$tmp/stats.log" --callback-log "$tmp/callbacks.log"
  sleep 1
  local before peak rss row shed
  before=$(rss_kib "$SERVER_PID")
  kill -STOP "$redis_pid"
  peak=$before
  (
    source scripts/bench-lib.sh
    SERVER_PID=$SERVER_PID SERVER_ADDR=$SERVER_ADDR
    if [ -n "${2:-}" ]; then export VERVE_BENCH_ENDPOINT=$2; fi
    measure "$1" 1 -t1 -c64 -d"${SECS}s" -s scripts/wrk/accept.lua
  ) >"$tmp/row" &
  local wrk_job=$!
  while kill -0 "$wrk_job" 2>/dev/null; do
    rss=$(rss_kib "$SERVER_PID")
    [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 1
  done
  row=$(cat "$tmp/row")
  shed=$(curl -s "http://$SERVER_ADDR/metrics" |
    awk '/^verve_callbacks_shed_total\{reason="waiting_for_count"\}/ {print $2}')
  kill -CONT "$redis_pid"
  stop_server
  echo "$1: $(echo "$row" | cut -d, -f2) requests/s; RSS ${before} KiB before, ${peak} KiB at the peak of a ${SECS} s outage; ${shed:-0} callbacks shed while waiting"
}

run "an endpoint on every request" "$endpoint"
run "no endpoint" 
