#!/usr/bin/env bash
# What does a flood of distinct ids cost in memory under the default --max-window-ids? Runs
# verve (WORKERS workers, core 0) in one long window (--window-secs 86400) under wrk (core 1)
# sending ids never sent before, 16 pipelined per write, until FLOOD_IDS requests were
# answered (ok or 503), then prints the distinct ids held, the ids refused and verve's peak
# and current resident memory.
#   FLOOD_IDS (12000000), WORKERS (1), CONNECTIONS (64), EXTRA_ARGS (none)
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
FLOOD_IDS=${FLOOD_IDS:-12000000}
WORKERS=${WORKERS:-1}
CONNECTIONS=${CONNECTIONS:-64}

ensure_wrk
cargo build --release --locked --bin verve
tmp=$(mktemp -d)
trap 'stop_server; rm -rf "$tmp"' EXIT

# A window of a day starts at midnight UTC; keep clear of its end.
if [ $(( $(date -u +%s) % 86400 )) -gt $(( 86400 - 600 )) ]; then
  echo "less than 10 minutes to midnight UTC: the flood would span two windows" >&2
  exit 1
fi
# shellcheck disable=SC2086
start_server target/release/verve 0 "$tmp/verve.log" --workers "$WORKERS" \
  --window-secs 86400 --stats-log "$tmp/stats.log" --callback-log "$tmp/callbacks.log" \
  ${EXTRA_ARGS:-}
metric() { curl -s "http://$SERVER_ADDR/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
answered() {
  curl -s "http://$SERVER_ADDR/metrics" |
    awk '/^verve_requests_total\{route="accept"/ {n += $2} END {printf "%.0f", n}'
}

started=$(date +%s)
while [ "$(answered)" -lt "$FLOOD_IDS" ]; do
  VERVE_BENCH_IDS=unique VERVE_BENCH_PIPELINE=16 taskset -c 1 wrk -t1 "-c$CONNECTIONS" -d5s \
    -s scripts/wrk/accept.lua "http://$SERVER_ADDR/api/verve/accept?id=1" >/dev/null
done
took=$(( $(date +%s) - started ))
status=/proc/$SERVER_PID/status
echo "| workers | requests | distinct ids held | refused (503) | peak RSS MiB | RSS MiB | seconds |"
echo "|---|---|---|---|---|---|---|"
echo "| $WORKERS | $(answered) | $(metric verve_window_distinct_ids) |" \
  "$(metric verve_window_ids_refused_total) |" \
  "$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "$status") |" \
  "$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "$status") | $took |"
grep -m1 'max-window-ids' "$tmp/verve.log" || true
