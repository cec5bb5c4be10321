//! What this instance's processes have seen of Redis (distributed), kept beside the log for
//! the next process. After a Redis server lost data, an election waits for the instances that
//! could have claimed a window's report to set their claims again (defect 15); a process
//! started after the window ended knows them only from its predecessors: without them it
//! took a claimant cut off from Redis for gone and reported the window a second time (the
//! simulator's seed 40, defect 31). Nor does it know, but from them, of a master that
//! restarted empty and whose replica took over since, keeping its own earlier start (the
//! simulator's seed 1213, defect 32). Two files, each written whole then renamed into place:
//! `seen-live`, at every read of the live instances: the first read's time and the last's
//! (Unix milliseconds), then an instance and when it was last read live, a line each; and
//! `seen-restarts`, the masters found restarted: the first and last slot each served and
//! when it started, a line each.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FILE: &str = "seen-live";
const RESTARTS_FILE: &str = "seen-restarts";

/// The live instances read, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sightings {
    /// When an instance's process first read them (the earliest kept).
    pub first_read_at: SystemTime,
    /// When they were last read.
    pub read_at: SystemTime,
    /// Each instance id, and when it was last read live.
    pub last_seen: Vec<(String, SystemTime)>,
}

/// A Redis master found restarted: the slot ranges it served, and the whole second it started
/// in. The data set serving those slots began then, whichever node serves them since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// The first and last slot of a range it served (0 to 16383: a single server).
    pub slots: (u16, u16),
    /// The whole second it started in.
    pub started: SystemTime,
}

impl Restart {
    /// Whether the master served `slot`.
    pub fn covers(&self, slot: u16) -> bool {
        (self.slots.0..=self.slots.1).contains(&slot)
    }
}

fn millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

fn time(millis: &str) -> Option<SystemTime> {
    Some(UNIX_EPOCH + Duration::from_millis(millis.parse().ok()?))
}

/// Keeps `sightings` in `dir`.
pub(super) fn keep(dir: &Path, sightings: &Sightings) -> io::Result<()> {
    let mut text = format!(
        "{}\n{}\n",
        millis(sightings.first_read_at),
        millis(sightings.read_at)
    );
    for (id, at) in &sightings.last_seen {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{id} {}", millis(*at));
    }
    write_whole(dir, FILE, &text)
}

/// Keeps the masters found restarted in `dir`.
pub(super) fn keep_restarts(dir: &Path, restarts: &[Restart]) -> io::Result<()> {
    let mut text = String::new();
    for r in restarts {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{} {} {}", r.slots.0, r.slots.1, millis(r.started));
    }
    write_whole(dir, RESTARTS_FILE, &text)
}

/// The masters found restarted kept in `dir` (a line not whole is passed over).
pub(super) fn read_restarts(dir: &Path) -> io::Result<Vec<Restart>> {
    let text = match fs::read_to_string(dir.join(RESTARTS_FILE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        read => read?,
    };
    let restart = |line: &str| {
        let mut fields = line.split(' ');
        let first = fields.next()?.parse().ok()?;
        let last = fields.next()?.parse().ok()?;
        let started = time(fields.next()?)?;
        Some(Restart {
            slots: (first, last),
            started,
        })
    };
    Ok(text.lines().filter_map(restart).collect())
}

/// `text` as the file `name` in `dir`, whole or not at all.
fn write_whole(dir: &Path, name: &str, text: &str) -> io::Result<()> {
    let part = dir.join(format!("{name}.part"));
    fs::write(&part, text)?;
    fs::rename(&part, dir.join(name))
}

/// The sightings kept in `dir`, if any (a file not whole is none).
pub(super) fn read(dir: &Path) -> io::Result<Option<Sightings>> {
    let text = match fs::read_to_string(dir.join(FILE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        read => read?,
    };
    let mut lines = text.lines();
    let (Some(first_read_at), Some(read_at)) =
        (lines.next().and_then(time), lines.next().and_then(time))
    else {
        return Ok(None);
    };
    let last_seen = lines
        .filter_map(|line| {
            let (id, at) = line.rsplit_once(' ')?;
            Some((id.to_owned(), time(at)?))
        })
        .collect();
    Ok(Some(Sightings {
        first_read_at,
        read_at,
        last_seen,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sightings_kept_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let at = |ms| UNIX_EPOCH + Duration::from_millis(ms);
        let sightings = Sightings {
            first_read_at: at(1_000),
            read_at: at(5_000),
            last_seen: vec![("a".to_owned(), at(5_000)), ("b c".to_owned(), at(3_000))],
        };
        keep(dir.path(), &sightings).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(sightings));
    }

    #[test]
    fn restarts_kept_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_restarts(dir.path()).unwrap(), []);
        let restarts = [
            Restart {
                slots: (0, 5_460),
                started: UNIX_EPOCH + Duration::from_secs(1_796_577_541),
            },
            Restart {
                slots: (5_461, 10_922),
                started: UNIX_EPOCH + Duration::from_secs(1_796_577_601),
            },
        ];
        keep_restarts(dir.path(), &restarts).unwrap();
        assert_eq!(read_restarts(dir.path()).unwrap(), restarts);
    }
}
