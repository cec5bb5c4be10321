#!/usr/bin/env bash
# What durability costs: one verve build with --durability off, process and host, one worker
# pinned to core 0, wrk pinned to core 1, ROUNDS rounds with the modes' order rotating so
# that the machine's drift falls on all alike. Scenarios, each at saturation (as fast as one
# wrk thread sends) and at one fixed offered load (each connection pausing 1 ms between
# writes), where the server is not saturated and CPU per request compares like with like:
# 64 connections with random ids (c64, c64-fixed), and pipelining 16 requests of ids never
# sent before, every id new (pipeline16 on 64 connections, pipeline16-fixed on 16). Also
# measures this disk's fdatasync latency (4 KiB appended, then synced), and, from /metrics,
# how many requests each of host mode's syncs covered (the group commit).
#
#   scripts/bench-durability.sh        3 rounds of 5 s runs (about 5 minutes once built)
#
# Prints one CSV row per run (scenario-mode, requests/s, p50 ms, p99 ms, user and system CPU
# microseconds per request, requests per sync), then the medians, the server's CPU % and the
# ratios against off.
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
ensure_wrk
cargo build --release --locked --bin verve >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "fdatasync of 4 KiB appended, this disk ($tmp):" >&2
python3 - "$tmp/sync-probe" <<'PY' >&2
import os, statistics, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_APPEND)
took = []
for _ in range(200):
    os.write(fd, b"x" * 4096)
    t = time.perf_counter()
    os.fdatasync(fd)
    took.append((time.perf_counter() - t) * 1e6)
took.sort()
print(f"  median {statistics.median(took):.0f} us, p99 {took[int(len(took) * 0.99)]:.0f} us over {len(took)}")
PY

# metric NAME: the value of an unlabelled sample of the running server's /metrics.
metric() {
  curl -s "http://$SERVER_ADDR/metrics" | awk -v name="$1" '$1 == name {print $2}'
}

run() { # SCENARIO MODE CONNECTIONS WRK_ENV...
  local scenario=$1 mode=$2 connections=$3
  shift 3
  start_server target/release/verve 0 "$tmp/server.log" --workers 1 --durability "$mode" \
    --stats-log "$tmp/stats.log" --callback-log "$tmp/callbacks.log"
  env "$@" bash -c "source scripts/bench-lib.sh; SERVER_PID=$SERVER_PID SERVER_ADDR=$SERVER_ADDR; \
    measure warmup 1 -t1 -d1s -c$connections -s scripts/wrk/accept.lua" >/dev/null
  local syncs_before requests_before row syncs requests
  syncs_before=$(metric verve_wal_syncs_total)
  requests_before=$(curl -s "http://$SERVER_ADDR/metrics" |
    awk '/^verve_requests_total\{route="accept",status="200"\}/ {print $2}')
  row=$(env "$@" bash -c "source scripts/bench-lib.sh; SERVER_PID=$SERVER_PID SERVER_ADDR=$SERVER_ADDR; \
    measure $scenario-$mode 1 -t1 -d$DURATION -c$connections -s scripts/wrk/accept.lua")
  syncs=$(( $(metric verve_wal_syncs_total) - syncs_before ))
  requests=$(( $(curl -s "http://$SERVER_ADDR/metrics" |
    awk '/^verve_requests_total\{route="accept",status="200"\}/ {print $2}') - requests_before ))
  stop_server
  if [ "$mode" = host ] && [ "$syncs" -gt 0 ]; then
    echo "$row,$((requests / syncs))"
  else
    echo "$row,"
  fi
}

modes=(off process host)
for round in $(seq "$ROUNDS"); do
  order=("${modes[@]:$((round % 3))}" "${modes[@]:0:$((round % 3))}")
  for mode in "${order[@]}"; do run c64 "$mode" 64 X=1; done
  for mode in "${order[@]}"; do run c64-fixed "$mode" 64 VERVE_BENCH_DELAY_MS=1; done
  for mode in "${order[@]}"; do
    run pipeline16 "$mode" 64 VERVE_BENCH_PIPELINE=16 VERVE_BENCH_IDS=unique
  done
  for mode in "${order[@]}"; do
    run pipeline16-fixed "$mode" 16 VERVE_BENCH_PIPELINE=16 VERVE_BENCH_IDS=unique \
      VERVE_BENCH_DELAY_MS=1
  done
done | tee "$tmp/rows.csv"

python3 - "$tmp/rows.csv" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, rps, p50, p99, user, sys_, per_sync = line.strip().split(",")
    runs[label].append((float(rps), float(p50), float(p99), float(user) + float(sys_),
                        float(per_sync) if per_sync else None))
print("\n| scenario | mode | req/s | p50 ms | p99 ms | CPU us/req | server CPU % | CPU/req vs off | requests per sync |")
print("|---|---|---|---|---|---|---|---|---|")
for scenario in ("c64", "c64-fixed", "pipeline16", "pipeline16-fixed"):
    base = statistics.median(r[3] for r in runs[f"{scenario}-off"])
    for mode in ("off", "process", "host"):
        rows = runs[f"{scenario}-{mode}"]
        med = [statistics.median(r[i] for r in rows) for i in range(4)]
        per_sync = [r[4] for r in rows if r[4] is not None]
        per = f"{statistics.median(per_sync):.0f}" if per_sync else ""
        print(f"| {scenario} | {mode} | {med[0]:.0f} | {med[1]:.3f} | {med[2]:.3f} | {med[3]:.2f} "
              f"| {med[0] * med[3] / 1e4:.0f} | {med[3] / base:.3f} | {per} |")
PY
