//! A Linux guest under QEMU's software emulation (this machine's KVM cannot run a stock
//! kernel: ../shared/powercut.md): an initramfs of busybox, verve and the load `acked_ids`;
//! verve's write-ahead log on a virtual disk with ext4, whose writes QEMU's `blklogwrites`
//! also logs (so that the disk can be rebuilt as of its last FLUSH); the guest's console read
//! line by line. A SIGKILL of QEMU is the power cut: the guest's page cache goes with it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant};

/// The kernel modules the guest loads, in the order of their dependencies: the virtio block
/// device and ext4 (modules in Debian's kernel).
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "crc16",
    "mbcache",
    "jbd2",
    "crc32c_generic",
    "ext4",
];

/// The guest's `/init`: the disk mounted on `/disk` with writeback of dirty pages held off
/// (so that the disk gets only what a program syncs, and what ext4's journal commits), verve
/// on loopback with its log on the disk, then the load, which prints `ok <id> <ms>` per id
/// answered `ok`; its stats log is on the disk too, as a host's would be. The kernel hands
/// `key=value` arguments to `/init` as its environment.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $modules; do insmod /lib/modules/$m.ko || echo "guest: insmod $m failed"; done
echo 360000 > /proc/sys/vm/dirty_expire_centisecs
echo 360000 > /proc/sys/vm/dirty_writeback_centisecs
mkdir -p /disk && mount -t ext4 /dev/vda /disk || { echo "guest: no disk"; poweroff -f; }
ip link set lo up
/verve --listen 127.0.0.1:8080 --workers 1 --window-secs "$window_secs" \
  --report-grace-ms "$grace_ms" --durability "$durability" --wal-fsync-ms "$fsync_ms" --wal-dir /disk/wal \
  --stats-log /disk/stats.log --callback-log /callbacks.log 2>/verve.log &
# The log's syncs so far (count, microseconds), for how long one takes in this guest.
while sleep 0.25; do
  wget -qO- http://127.0.0.1:8080/metrics 2>/dev/null | grep '^verve_wal_sync' | sed 's/^/metric /'
done &
echo "guest: load from $first_id"
/acked_ids 127.0.0.1:8080 "$first_id" 16
echo "guest: the load stopped"
cat /verve.log
poweroff -f
"#;

/// verve's flags in the guest.
pub(crate) struct GuestVerve {
    pub(crate) durability: &'static str,
    pub(crate) fsync_ms: u64,
    pub(crate) window_secs: u64,
    pub(crate) grace_ms: u64,
}

/// What the guest is made of (scripts/powercut.sh provides it).
pub(crate) struct Parts {
    kernel: PathBuf,
    modules: PathBuf,
    verve: PathBuf,
    load: PathBuf,
}

impl Parts {
    pub(crate) fn from_env() -> Parts {
        let var = |name: &str| -> PathBuf {
            std::env::var_os(name)
                .unwrap_or_else(|| panic!("{name} is not set: run scripts/powercut.sh"))
                .into()
        };
        Parts {
            kernel: var("VERVE_GUEST_KERNEL"),
            modules: var("VERVE_GUEST_MODULES"),
            verve: var("VERVE_GUEST_VERVE"),
            load: var("VERVE_GUEST_LOAD"),
        }
    }

    /// Builds the initramfs in `dir`: busybox, the modules, `/init`, verve and the load with
    /// the libraries they link.
    pub(crate) fn initramfs(&self, dir: &Path) -> PathBuf {
        let root = dir.join("root");
        for sub in ["bin", "lib/modules", "proc", "sys", "dev"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        let index = std::fs::read_to_string(self.modules.join("modules.dep")).unwrap();
        for module in MODULES {
            let file = format!("/{module}.ko");
            let path = index
                .lines()
                .filter_map(|l| l.split(':').next())
                .find(|p| p.ends_with(&file))
                .unwrap_or_else(|| panic!("{module} is not in the guest kernel's modules.dep"));
            std::fs::copy(
                self.modules.join(path),
                root.join(format!("lib/modules/{module}.ko")),
            )
            .unwrap();
        }
        std::fs::write(root.join("init"), INIT).unwrap();
        set_executable(&root.join("init"));
        for (program, name) in [(&self.verve, "verve"), (&self.load, "acked_ids")] {
            std::fs::copy(program, root.join(name)).unwrap();
            for library in linked_libraries(program) {
                let to = root.join(library.strip_prefix("/").unwrap());
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(&library, to).unwrap();
            }
        }
        let image = dir.join("initrd.gz");
        let packed = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null | gzip -1 > {}",
                root.display(),
                image.display()
            ))
            .status()
            .unwrap();
        assert!(packed.success(), "packing the initramfs failed");
        image
    }

    /// Boots the guest on `disk` (its writes logged to `writes`), with verve's flags and the
    /// load's first id.
    pub(crate) fn boot(
        &self,
        initramfs: &Path,
        (disk, writes): (&Path, &Path),
        verve: &GuestVerve,
        first_id: i64,
    ) -> Guest {
        std::fs::write(writes, b"").unwrap();
        let append = format!(
            "console=ttyS0 quiet panic=-1 modules=\"{}\" durability={} fsync_ms={} \
             window_secs={} grace_ms={} first_id={first_id}",
            MODULES.join(" "),
            verve.durability,
            verve.fsync_ms,
            verve.window_secs,
            verve.grace_ms,
        );
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "512", "-smp", "1", "-nodefaults"])
            .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(initramfs)
            .args(["-append", &append])
            .arg("-blockdev")
            .arg(format!(
                "driver=file,filename={},node-name=disk",
                disk.display()
            ))
            .arg("-blockdev")
            .arg(format!(
                "driver=file,filename={},node-name=writes",
                writes.display()
            ))
            .args([
                "-blockdev",
                "driver=blklogwrites,node-name=logged,file=disk,log=writes,log-sector-size=512",
            ])
            // With a write cache the guest sends FLUSHes, which the write log records.
            .args(["-device", "virtio-blk-pci,drive=logged,write-cache=on"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64: run scripts/powercut.sh");
        let stdout = qemu.stdout.take().unwrap();
        let (lines, console) = channel();
        thread::spawn(move || {
            let mut console = BufReader::new(stdout);
            let mut line = Vec::new();
            // Whole lines only: the power cut ends the last one anywhere. Read whole, a last
            // line `ok <id> 6081 6`, cut in its answer's time, was an answer 6 s before its
            // request, and a "loss" 6 s long (a CI run failed on such a line, 7.9 s).
            while matches!(console.read_until(b'\n', &mut line), Ok(n) if n > 0)
                && line.ends_with(b"\n")
            {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if lines.send(text).is_err() {
                    break;
                }
                line.clear();
            }
        });
        Guest { qemu, console }
    }
}

/// A running guest.
pub(crate) struct Guest {
    qemu: Child,
    console: Receiver<String>,
}

impl Guest {
    /// The console's lines until one starts with `prefix` (returned), within `timeout`.
    pub(crate) fn wait_for(
        &mut self,
        prefix: &str,
        timeout: Duration,
        seen: &mut Vec<String>,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.console.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => {
                    seen.push(line.clone());
                    return Some(line);
                }
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The power cut: SIGKILL of QEMU. Returns every line the console printed before it.
    pub(crate) fn cut(mut self, seen: &mut Vec<String>) {
        self.qemu.kill().unwrap();
        self.qemu.wait().unwrap();
        seen.extend(self.console.iter());
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// The shared libraries a program links (from `ldd`), the loader among them.
fn linked_libraries(program: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(program).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
