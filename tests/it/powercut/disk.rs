//! The guest's disk: a fresh ext4 image per cut, the image rebuilt as of the guest's last
//! FLUSH from the write log QEMU's `blklogwrites` kept (dm-log-writes' format), and the
//! write-ahead log read back from an image the way a host would after the cut: the journal
//! replayed by `e2fsck`, the files copied out with `debugfs` (no mount: a loop mount of an
//! image that needs recovery is refused, and one without its journal shows an older state).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use verve::wal::record;

const DISK_BYTES: u64 = 64 << 20;
/// `log-sector-size` of the write log.
const SECTOR: usize = 512;
const LOG_MAGIC: u64 = 0x006a_7366_7773_6872;
const FLUSH: u64 = 1;
const DISCARD: u64 = 1 << 2;

/// A fresh ext4 image, every inode table and the journal written out now, so that the guest
/// writes nothing in the background.
pub(crate) fn fresh(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(DISK_BYTES).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(path));
}

/// `base` with every write of the log `writes` applied up to its last FLUSH: the disk as a
/// drive with a volatile write cache may have kept it. How many writes that kept, and how
/// many after the last FLUSH it dropped.
pub(crate) fn as_of_last_flush(base: &Path, writes: &Path, out: &Path) -> (usize, usize) {
    let log = std::fs::read(writes).unwrap();
    let word = |at: usize| u64::from_le_bytes(log[at..at + 8].try_into().unwrap());
    assert!(
        log.len() >= SECTOR && word(0) == LOG_MAGIC,
        "not a write log"
    );
    let entries = usize::try_from(word(16)).unwrap();
    // Each entry: a sector of (sector, sectors, flags, data length), then its data.
    let mut parsed = Vec::with_capacity(entries);
    let mut at = SECTOR;
    for _ in 0..entries {
        let (sector, sectors, flags) = (word(at), word(at + 8), word(at + 16));
        let data = if flags & (FLUSH | DISCARD) == 0 {
            usize::try_from(sectors).unwrap() * SECTOR
        } else {
            0
        };
        parsed.push((sector, flags, at + SECTOR..at + SECTOR + data));
        at += SECTOR + data;
    }
    let last_flush = parsed
        .iter()
        .rposition(|(_, flags, _)| flags & FLUSH != 0)
        .map_or(0, |i| i + 1);
    let mut image = std::fs::read(base).unwrap();
    let mut kept = 0;
    for (sector, flags, data) in &parsed[..last_flush] {
        if flags & (FLUSH | DISCARD) == 0 {
            let from = usize::try_from(*sector).unwrap() * SECTOR;
            image[from..from + data.len()].copy_from_slice(&log[data.clone()]);
            kept += 1;
        }
    }
    std::fs::write(out, image).unwrap();
    let dropped = parsed[last_flush..]
        .iter()
        .filter(|(_, flags, _)| flags & (FLUSH | DISCARD) == 0)
        .count();
    (kept, dropped)
}

/// What a host reads from a copy of `image` after the cut, into `into`: the journal replayed
/// (`e2fsck -fy`), then the write-ahead log's directory and the stats log copied out
/// (`debugfs`). The directory, and the stats log's lines.
pub(crate) fn read_back(image: &Path, into: &Path) -> (PathBuf, String) {
    let copy = into.join("image");
    std::fs::copy(image, &copy).unwrap();
    let fsck = Command::new("e2fsck")
        .args(["-f", "-y"])
        .arg(&copy)
        .output()
        .unwrap();
    // 0: clean, 1: errors corrected; anything else leaves the file system unusable.
    assert!(
        matches!(fsck.status.code(), Some(0 | 1)),
        "e2fsck: {}\n{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout)
    );
    let files = into.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let stats = files.join("stats.log");
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump /wal {}", files.display()))
        .arg(&copy));
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /stats.log {}", stats.display()))
        .arg(&copy));
    let wal = files.join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    (wal, std::fs::read_to_string(stats).unwrap_or_default())
}

/// The ids of each window in the segments of `wal`, read as verve reads them (whole records
/// only).
pub(crate) fn logged_ids(wal: &Path) -> BTreeMap<u64, Vec<i64>> {
    let mut windows: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for entry in std::fs::read_dir(wal).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        if let Ok(decoded) = record::decode(&bytes) {
            windows
                .entry(decoded.window)
                .or_default()
                .extend(decoded.ids);
        }
    }
    windows
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
