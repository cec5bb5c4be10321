//! One segment being written: a file allocated ahead with `fallocate` and mapped `MAP_SHARED`,
//! so that appending a record is a copy into the kernel's page cache, with no system call. A
//! full disk is found when the space is claimed (an error, answered `503`), never by a
//! `SIGBUS` from a store into a hole.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{MmapMut, RemapOptions};

use super::record::{self, HEADER_LEN};
use crate::window::WindowIndex;

/// The first allocation of a segment: 16,382 ids.
const FIRST_LEN: usize = 128 * 1024;
/// A segment grows by doubling, by this much at most at a time.
const MAX_GROWTH: usize = 64 * 1024 * 1024;
/// What claims space where `fallocate` cannot.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// A segment open for appending.
pub struct Segment {
    path: PathBuf,
    window: WindowIndex,
    file: File,
    map: MmapMut,
    written: usize,
}

impl Segment {
    /// Creates the segment of `window` at `path` (which must not exist), claims its first
    /// space and writes its header. Nothing is left behind when that fails.
    pub fn create(path: &Path, window: WindowIndex) -> io::Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        let mapped = allocate(&file, 0, FIRST_LEN).and_then(|()| {
            // SAFETY: the file was created here (`create_new`) and is written only through
            // this mapping; its blocks are allocated, so no store faults for want of space.
            unsafe { MmapMut::map_mut(&file) }
        });
        let mut map = match mapped {
            Ok(map) => map,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        map[..HEADER_LEN].copy_from_slice(&record::header(window));
        Ok(Segment {
            path: path.to_owned(),
            window,
            file,
            map,
            written: HEADER_LEN,
        })
    }

    /// The window it logs.
    pub fn window(&self) -> WindowIndex {
        self.window
    }

    /// Its file, for syncing.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its file, the mapping gone.
    pub fn into_file(self) -> File {
        self.file
    }

    /// Bytes allocated to it on disk.
    pub fn allocated(&self) -> usize {
        self.map.len()
    }

    /// Bytes claimed and not written yet.
    pub fn room(&self) -> usize {
        self.map.len() - self.written
    }

    /// Makes room for `bytes` more; returns the bytes newly allocated. An error (no space, a
    /// read-only or failing file system) leaves the segment as it was.
    pub fn reserve(&mut self, bytes: usize) -> io::Result<usize> {
        let needed = self.written + bytes;
        let len = self.map.len();
        if needed <= len {
            return Ok(0);
        }
        let grown = (len + len.min(MAX_GROWTH)).max(needed);
        allocate(&self.file, len, grown)?;
        // SAFETY: no reference into the mapping outlives a call of this type's methods, so
        // moving it is sound; the file now has `grown` allocated bytes to map.
        unsafe { self.map.remap(grown, RemapOptions::new().may_move(true))? };
        Ok(grown - len)
    }

    /// Appends one record of `ids`; `reserve` made room for it.
    pub fn append(&mut self, ids: &[i64]) {
        let len = record::record_len(ids.len());
        record::encode(ids, &mut self.map[self.written..self.written + len]);
        self.written += len;
    }
}

/// Claims the bytes `from..to` of `file` on disk, growing it. File systems without
/// `fallocate` get zeros written instead, which claims the blocks as well.
fn allocate(file: &File, from: usize, to: usize) -> io::Result<()> {
    // SAFETY: a plain system call on a descriptor this function borrows.
    let claimed = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            0,
            from as libc::off_t,
            (to - from) as libc::off_t,
        )
    };
    if claimed == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(error);
    }
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len());
        file.write_all_at(&ZEROS[..n], at as u64)?;
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_through_the_mapping_read_back_from_the_file_across_growth() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wal");
        let mut segment = Segment::create(&path, 42).unwrap();
        let first = segment.allocated();
        let ids: Vec<i64> = (0..100_000).collect();
        for chunk in ids.chunks(1000) {
            segment.reserve(record::record_len(chunk.len())).unwrap();
            segment.append(chunk);
        }
        assert!(segment.allocated() > first);
        let decoded = record::decode(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(decoded.window, 42);
        assert_eq!(decoded.ids, ids);
        assert_eq!(decoded.torn_len, 0);
        assert!(Segment::create(&path, 42).is_err(), "never reopened");
    }
}
