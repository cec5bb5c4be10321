#!/usr/bin/env bash
# Two verve builds against each other, for a change that must not cost speed: one worker on
# core 0, wrk on core 1, 64 connections with and without pipelining 16, ROUNDS rounds in
# mirrored order (A B, B A, ...) so that the machine's drift falls on both alike.
#
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY
#
# Prints one CSV row per run (scenario-build, requests/s, p50 ms, p99 ms, user and system
# CPU microseconds per request), then the medians and the new/old ratios.
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
ensure_wrk
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
declare -A binary=([old]=$1 [new]=$2)

run() { # LABEL BINARY WRK_ENV
  start_server "$2" 0 "$tmp/server.log" --workers 1 --stats-log "$tmp/stats.log" \
    --callback-log "$tmp/callbacks.log"
  env "$3" bash -c "source scripts/bench-lib.sh; SERVER_PID=$SERVER_PID SERVER_ADDR=$SERVER_ADDR; \
    measure warmup 1 -t1 -d1s -c64 -s scripts/wrk/accept.lua" >/dev/null
  env "$3" bash -c "source scripts/bench-lib.sh; SERVER_PID=$SERVER_PID SERVER_ADDR=$SERVER_ADDR; \
    measure $1 1 -t1 -d$DURATION -c64 -s scripts/wrk/accept.lua"
  stop_server
}

for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="old new"; else order="new old"; fi
  for which in $order; do run "c64-$which" "${binary[$which]}" X=1; done
  for which in $order; do run "pipeline16-$which" "${binary[$which]}" VERVE_BENCH_PIPELINE=16; done
done | tee "$tmp/rows.csv"

python3 - "$tmp/rows.csv" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, rps, _p50, _p99, user, system = line.strip().split(",")
    runs[label].append((float(rps), float(user) + float(system)))
for scenario in ("c64", "pipeline16"):
    old, new = runs[scenario + "-old"], runs[scenario + "-new"]
    rps = [statistics.median(r for r, _ in runs_) for runs_ in (old, new)]
    cpu = [statistics.median(c for _, c in runs_) for runs_ in (old, new)]
    print(f"{scenario}: requests/s old {rps[0]:.0f} new {rps[1]:.0f} ({rps[1] / rps[0]:.3f}x), "
          f"CPU us/request old {cpu[0]:.3f} new {cpu[1]:.3f} ({cpu[1] / cpu[0]:.3f}x)")
PY
