#!/usr/bin/env bash
# The chaos harness (tests/it/chaos/): three verve instances, a Redis (one server or a
# 3-master/3-replica cluster) and a tansu broker, load with known ids through a seeded schedule
# of faults, then a check of every window's reports and Kafka records. Prints a table per run;
# a failing seed replays with the same --mode, --seed and --secs.
#
#   scripts/chaos.sh --short                      the fixed seeds scripts/test.sh runs
#   scripts/chaos.sh --mode cluster --seed 7      one run (50 s of load unless --secs);
#                                                 --mode single, cluster or standalone
#   scripts/chaos.sh --long                       30 minutes in each mode, random seeds
#   scripts/chaos.sh --durability host ...        the instances' --durability (default process;
#                                                 with off, ids a SIGKILL loses are a figure)
#
# It needs what scripts/test.sh installs (redis-server, tansu in ~/.cache/verve-test-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

modes=(single) seed="" secs=50 short=0 durability=process
while [ $# -gt 0 ]; do
  case "$1" in
    --short) short=1 ;;
    --long) modes=(single cluster) secs=1800 ;;
    --mode) modes=("$2"); shift ;;
    --seed) seed="$2"; shift ;;
    --secs) secs="$2"; shift ;;
    --durability) durability="$2"; shift ;;
    *) echo "chaos.sh: unknown argument $1 (see the head of scripts/chaos.sh)" >&2; exit 2 ;;
  esac
  shift
done

tools=${VERVE_TEST_TOOLS:-$HOME/.cache/verve-test-tools}
export VERVE_TANSU=${VERVE_TANSU:-$tools/bin/tansu}
# The same features as scripts/test.sh, so that its build is reused.
run() { cargo test --locked --features tokio-baseline --test it "$@" -- --ignored --exact --nocapture; }

if [ "$short" = 1 ]; then
  run chaos::short_schedule
  exit
fi
for mode in "${modes[@]}"; do
  CHAOS_MODE=$mode CHAOS_DURABILITY=$durability CHAOS_SEED=${seed:-$RANDOM$RANDOM} CHAOS_SECS=$secs run chaos::schedule_from_env
done
