#!/usr/bin/env bash
# The distributed protocol's deterministic simulation (src/recorder/distributed/sim/): seeds
# from --seed on, until --seconds have passed, each a run of 2 to 4 instances (the real
# recorder, replicator, Redis thread and log of each) against a simulated Redis server or
# cluster, with Redis restarts, failovers, outages, slow answers, instance kills and clock
# skew, every window checked. Prints the steps run per second and the windows checked; a
# failing seed prints what went wrong and the faults applied, and replays exactly:
#   scripts/simulate.sh --seed 7 --seconds 0 --log
# --release builds the simulation optimised (a few minutes once; then about ten times faster).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
seed=1
profile=()
log=warn
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --release) profile=(--release); shift ;;
    --log) log=info; shift ;;
    *) echo "simulate.sh: unknown flag $1 (--seconds N, --seed S, --release, --log)" >&2; exit 2 ;;
  esac
done
VERVE_SIM_SECONDS=$seconds VERVE_SIM_SEED=$seed RUST_LOG="verve=$log" \
  cargo test --locked "${profile[@]}" --lib recorder::distributed::sim::simulate -- \
  --ignored --exact --nocapture
