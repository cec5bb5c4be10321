#!/usr/bin/env bash
# Puts back, one at a time, the defects of distributed counting that the chaos harness and the
# simulator found (each a patch in scripts/sim-mutants/ that undoes its fix on today's code,
# its first line naming the defect), and runs the simulation from seed 1 on each until a seed
# fails or --seconds pass. Prints, per defect, the seed that found it and how long that took:
# the README's table "Found again". Builds optimised without LTO in target/sim-mutants.
#   scripts/sim-mutants.sh [--seconds N] [NAME ...]     (NAME: a patch's name, e.g. 02)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=300
names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    -*) echo "sim-mutants.sh: unknown flag $1 (--seconds N, then patch names)" >&2; exit 2 ;;
    *) names+=("$1"); shift ;;
  esac
done

work=$PWD/target/sim-mutants
tree=$work/tree
mkdir -p "$work"
if [ ! -e "$tree/.git" ]; then
  git worktree prune
  git worktree add --force --detach "$tree" HEAD >/dev/null
fi

# The commit every patch applies to: commits made while this runs change nothing here.
base=$(git rev-parse HEAD)
patches=()
if [ ${#names[@]} -eq 0 ]; then
  patches=(scripts/sim-mutants/*.patch)
else
  for name in "${names[@]}"; do patches+=(scripts/sim-mutants/"$name"*.patch); done
fi

export CARGO_TARGET_DIR=$work/target CARGO_PROFILE_RELEASE_LTO=false \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_INCREMENTAL=true \
  CARGO_PROFILE_RELEASE_PANIC=unwind
printf '%-48s %s\n' "defect put back" "found by"
# First the code as committed, none put back: a seed that fails here fails for every patch.
for patch in none "${patches[@]}"; do
  name=$(basename "$patch" .patch)
  git -C "$tree" checkout --quiet --force --detach "$base"
  if [ "$patch" != none ] && ! git -C "$tree" apply "$PWD/$patch"; then
    printf '%-48s %s\n' "$name" "does not apply to $base: the code it undoes has changed"
    continue
  fi
  log=$work/$name.log
  (cd "$tree" && VERVE_SIM_SECONDS=$seconds VERVE_SIM_SEED=1 RUST_LOG=verve=off \
    cargo test --locked --release --lib recorder::distributed::sim::simulate -- \
    --ignored --exact --nocapture) > "$log" 2>&1 || true
  found=$(grep -o 'seed [0-9]* failed, [0-9]* seeds and [0-9.]* s into the run' "$log" || true)
  if [ -n "$found" ]; then
    printf '%-48s %s\n' "$name" "$found"
  elif grep -q '^simulated seeds' "$log"; then
    printf '%-48s %s\n' "$name" "not found: $(grep -o '^simulated seeds [0-9]* to [0-9]*' "$log") in $seconds s"
  else
    printf '%-48s %s\n' "$name" "did not run: $log"
  fi
done
git -C "$tree" checkout --quiet --force --detach "$base"
