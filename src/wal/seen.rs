//! The instances this instance's processes have read live in Redis (distributed), kept beside
//! the log. After a Redis server lost data, an election waits for the instances that could
//! have claimed a window's report to set their claims again (defect 15); a process started
//! after the window ended knows them only from its predecessors: without them it took a
//! claimant cut off from Redis for gone and reported the window a second time (the
//! simulator's seed 40, defect 31). One file, `seen-live`, written whole then renamed into
//! place at every read: the first read's time and the last's (Unix milliseconds), then an
//! instance and when it was last read live, a line each.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FILE: &str = "seen-live";

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
    let part = dir.join(format!("{FILE}.part"));
    fs::write(&part, text)?;
    fs::rename(&part, dir.join(FILE))
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
}
