#!/usr/bin/env bash
# Does a callback peer that never answers slow verve down? Runs verve (one worker, core 0,
# default callback settings: 2 s timeout, breaker after 5 failures) under wrk (core 1) with
# and without an endpoint pointing at a peer that accepts connections and never answers,
# alternating A, B for ROUNDS rounds, and prints the medians, their ratio, verve's resident
# memory before and after and the callback outcomes.
#   ROUNDS (3), DURATION (5s), CONNECTIONS (64)
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}

ensure_wrk
cargo build --release --locked --bin verve
tmp=$(mktemp -d)
trap 'stop_server; kill "$peer_pid" 2>/dev/null; rm -rf "$tmp"' EXIT

python3 -u -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4096)
print(s.getsockname()[1])
held = []
while True:
    held.append(s.accept()[0])
' >"$tmp/peer.port" &
peer_pid=$!
until [ -s "$tmp/peer.port" ]; do sleep 0.1; done
endpoint="http%3A%2F%2F127.0.0.1%3A$(cat "$tmp/peer.port")%2Fhook"

start_server target/release/verve 0 "$tmp/verve.log" --workers 1 --stats-log "$tmp/stats.log" \
  --callback-allow-private --callback-log "$tmp/callbacks.log"
rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }

csv="$tmp/results.csv"
wrk_args=(-t1 "-c$CONNECTIONS" "-d$DURATION" -s scripts/wrk/accept.lua)
measure warmup 1 "${wrk_args[@]}" >/dev/null
rss_before=$(rss)
for _ in $(seq "$ROUNDS"); do
  measure no-callback 1 "${wrk_args[@]}" >>"$csv"
  VERVE_BENCH_ENDPOINT=$endpoint measure dead-endpoint 1 "${wrk_args[@]}" >>"$csv"
done
rss_after=$(rss)
outcomes=$(curl -s "http://$SERVER_ADDR/metrics" | grep '^verve_callbacks_total' | tr '\n' ' ')
dropped=$(grep -o 'dropped [0-9]* callbacks ([0-9]* in all)' "$tmp/verve.log" | tail -1 || true)

echo "| run | requests/s (median) | p99 ms | server CPU µs/request (user+sys) |"
echo "|---|---|---|---|"
for label in no-callback dead-endpoint; do
  rps=$(awk -F, -v l="$label" '$1 == l {print $2}' "$csv" | median)
  p99=$(awk -F, -v l="$label" '$1 == l {print $4}' "$csv" | median)
  cpu=$(awk -F, -v l="$label" '$1 == l {print $5 + $6}' "$csv" | median)
  echo "| $label | $rps | $p99 | $cpu |"
done
a=$(awk -F, '$1 == "no-callback" {print $2}' "$csv" | median)
b=$(awk -F, '$1 == "dead-endpoint" {print $2}' "$csv" | median)
echo
echo "dead-endpoint / no-callback requests/s: $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", b / a}')"
echo "verve RSS: ${rss_before} KiB before, ${rss_after} KiB after; last drop line: ${dropped:-none}"
echo "callback outcomes: $outcomes"
echo "raw rows (label,rps,p50_ms,p99_ms,user_us,sys_us):"
cat "$csv"
