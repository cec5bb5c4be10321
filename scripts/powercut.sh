#!/usr/bin/env bash
# Power cuts (tests/it/powercut/): verve and a load inside a Linux guest under QEMU (software
# emulation), its write-ahead log and stats log on a virtual ext4 disk, the guest killed
# mid-load; then the disk as the kill left it, and as of its last FLUSH, read back and checked
# by id against every id the guest printed as answered `ok`. scripts/test.sh runs it.
#
#   scripts/powercut.sh                                        every --durability, fixed seeds
#   scripts/powercut.sh --durability host --seed 7             one cut per scenario, to replay
#   scripts/powercut.sh --durability process --cuts 50         more cuts
#
# It installs what the guest needs, once: QEMU 10 from bookworm-backports (bookworm's 7.2
# would remove the machine's qemu-utils 10), busybox-static, e2fsprogs and kmod (depmod) with apt, and
# Debian's 6.1 kernel, unpacked into the tool cache (~/.cache/verve-test-tools/guest), never
# installed as the host's kernel.
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --durability) args+=("POWERCUT_DURABILITY=$2"); shift ;;
    --seed) args+=("POWERCUT_SEED=$2"); shift ;;
    --cuts) args+=("POWERCUT_CUTS=$2"); shift ;;
    *) echo "powercut.sh: unknown argument $1 (see the head of scripts/powercut.sh)" >&2; exit 2 ;;
  esac
  shift
done

tools=${VERVE_TEST_TOOLS:-$HOME/.cache/verve-test-tools}
guest="$tools/guest"

# Debian's packages through a private apt configuration with bookworm-backports added (for
# QEMU 10): the machine's own sources stay as they are.
apt="$guest/apt"
mkdir -p "$apt/lists/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
{
  for suite in bookworm bookworm-updates bookworm-backports; do
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian $suite main"
  done
  echo "deb [signed-by=$keyring] http://deb.debian.org/debian-security bookworm-security main"
} >"$apt/sources.list"
printf 'Dir::Etc::SourceList "%s";\nDir::Etc::SourceParts "/dev/null";\nDir::State::Lists "%s";\n' \
  "$apt/sources.list" "$apt/lists" >"$apt/apt.conf"
private_apt() { APT_CONFIG="$apt/apt.conf" DEBIAN_FRONTEND=noninteractive "$@"; }
updated=0
update_once() {
  if [ "$updated" = 0 ]; then
    private_apt apt-get update -qq
    updated=1
  fi
}

installed() { dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
if ! command -v qemu-system-x86_64 >/dev/null || ! installed busybox-static \
  || ! command -v e2fsck >/dev/null || ! command -v debugfs >/dev/null \
  || ! command -v depmod >/dev/null; then
  echo "installing qemu-system-x86 (bookworm-backports), busybox-static, e2fsprogs, kmod"
  update_once
  private_apt apt-get install -y -qq -t bookworm-backports \
    qemu-system-x86 busybox-static e2fsprogs kmod >/dev/null
fi

# The guest's kernel: the one Debian's linux-image-amd64 names, unpacked, its modules indexed
# and its vmlinux taken out of the compressed image (booted directly, PVH: 3.5 s to /init).
kernel="$guest/kernel"
if [ ! -s "$kernel/vmlinux" ]; then
  update_once
  version=$(private_apt apt-cache depends linux-image-amd64 \
    | sed -n 's/.*Depends: linux-image-\(.*\)$/\1/p' | head -1)
  echo "unpacking the guest kernel $version into $kernel (once)"
  rm -rf "$kernel" && mkdir -p "$kernel"
  (cd "$kernel" && private_apt apt-get download -qq "linux-image-$version" 2>/dev/null)
  dpkg-deb -x "$kernel"/linux-image-*.deb "$kernel/root"
  rm -f "$kernel"/linux-image-*.deb
  depmod -b "$kernel/root" "$version"
  ln -s "root/lib/modules/$version" "$kernel/modules"
  python3 scripts/extract-vmlinux.py "$kernel/root/boot/vmlinuz-$version" "$kernel/vmlinux.part"
  mv "$kernel/vmlinux.part" "$kernel/vmlinux"
fi

# What runs in the guest: verve as production runs it (release), and the load.
cargo build --release --locked --bin verve --example acked_ids

export VERVE_GUEST_KERNEL="$kernel/vmlinux"
export VERVE_GUEST_MODULES="$kernel/modules"
export VERVE_GUEST_VERVE="$PWD/target/release/verve"
export VERVE_GUEST_LOAD="$PWD/target/release/examples/acked_ids"
env "${args[@]}" cargo test --locked --features tokio-baseline --test it powercut:: \
  -- --ignored --nocapture --test-threads 1
