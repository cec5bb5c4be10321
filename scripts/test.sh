#!/usr/bin/env bash
# The test command of the README: installs what the tests need when it is missing, then runs
# every test (unit, integration against the real binaries, property tests), the short chaos
# schedule and the power cuts, and checks that the benchmarks build and that the main binary
# does not depend on tokio.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc g++ libc6-dev)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# verve builds its own OpenSSL and zlib (rdkafka's ssl-vendored, libz-static; OpenSSL's
# build wants perl); the tools built below (tansu, cargo-deny, cargo-deb) may want the
# system's headers.
command -v perl >/dev/null 2>&1 || need_apt+=(perl)
[ -e /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
[ -e /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# The durability tests delay fdatasync with strace (--durability host) and mount a small
# tmpfs (a full disk; the tests run as root, as CI does).
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
# The container tests: HAProxy with the cluster's configuration, and libseccomp's Python
# binding (for Debian's python3) to apply the seccomp profile as Docker does.
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
/usr/bin/python3 -c 'import seccomp' >/dev/null 2>&1 || need_apt+=(python3 python3-seccomp)
# The operator kit's tests: promtool for the alert rules and the dashboard's queries, and a
# real Prometheus scraping verve.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust from https://rustup.rs" >&2
  exit 1
fi

tools=${VERVE_TEST_TOOLS:-$HOME/.cache/verve-test-tools}
# cargo-deny, for the licence, ban and source checks (installed once into a cache outside the
# clone, like the tools below).
[ -x "$tools/bin/cargo-deny" ] || cargo install cargo-deny --version 0.20.2 --locked --root "$tools"

# The checks first, failing fast: formatting, every lint as an error, the docs, the import
# layers (ARCHITECTURE.md), and the dependencies' licences and sources (the advisory database
# cannot be fetched from these machines).
echo "checks: fmt, clippy, doc, layers, deny"
cargo fmt --check
cargo clippy --all-targets --locked --features tokio-baseline -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --features tokio-baseline
python3 scripts/check-layers.py
"$tools/bin/cargo-deny" --log-level error check licenses bans sources

# tansu, a Kafka-protocol broker the Kafka tests start: built once into a cache outside the
# clone (about 7 minutes and 2 GB the first time), reused after.
if [ ! -x "$tools/bin/tansu" ]; then
  echo "installing tansu 0.6.0 into $tools (once)"
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --root "$tools"
fi
export VERVE_TANSU="$tools/bin/tansu"

# The .deb the packaging test inspects (cargo-deb, installed into the same cache).
[ -x "$tools/bin/cargo-deb" ] || cargo install cargo-deb --version 3.8.0 --locked --root "$tools"
"$tools/bin/cargo-deb" --locked --output target/debian/verve.deb
export VERVE_DEB="$PWD/target/debian/verve.deb"

# Workers never run on tokio: in the default build tokio is only the runtime of the Redis
# thread (src/recorder/distributed/); the baseline binary (feature tokio-baseline) is the other user.
if grep -rlE 'tokio::|#\[tokio' src --include='*.rs' | grep -v -e '^src/recorder/distributed/' -e '^src/bin/verve-tokio.rs$'; then
  echo "tokio is used outside the Redis thread (src/recorder/distributed/): the workers must not run on it" >&2
  exit 1
fi

# With the baseline feature, the tokio baseline binary is built and tested too.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --all-targets --locked --features tokio-baseline "$@" 2>&1 | tee "$log" || status=$?
# Then the short chaos schedule (tests/it/chaos/, scripts/chaos.sh): load through a seeded
# schedule of every kind of fault, with one Redis, a cluster and standalone, and a check of
# every window.
if [ "$status" = 0 ] && [ $# = 0 ]; then
  scripts/chaos.sh --short 2>&1 | tee -a "$log" || status=$?
fi
# Then the distributed protocol's deterministic simulation for a minute (src/recorder/
# distributed/sim/, scripts/simulate.sh): seeds from 1 on, each a run of instances against a
# simulated Redis under faults, every window checked.
if [ "$status" = 0 ] && [ $# = 0 ]; then
  scripts/simulate.sh --seconds 60 2>&1 | tee -a "$log" || status=$?
fi
# Then power cuts (tests/it/powercut/, scripts/powercut.sh): verve in a QEMU guest, its log on
# a virtual disk, the guest killed under load, and what the disk kept checked by id against
# each --durability's promise (about 5 minutes; QEMU and the guest's kernel are installed once).
if [ "$status" = 0 ] && [ $# = 0 ]; then
  scripts/powercut.sh 2>&1 | tee -a "$log" || status=$?
fi
# One closing line over all test binaries (the last thing cargo prints is the benchmarks'
# smoke run).
awk '/^test result:/ {p += $4; f += $6} END {printf "%d passed, %d failed\n", p, f}' "$log"
exit "$status"
