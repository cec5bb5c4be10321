//! The report claims this process made in Redis (distributed), kept beside the log: Redis
//! may lose a claim (restarted empty) while its claimant is down, and the claimant's next
//! process sets it again, in the claimant's name, so that nobody reports the window a second
//! time (the 30-minute chaos run of seed 101 did, 2026-12-06: a reporter killed (SIGKILL), Redis
//! restarted empty, another instance reported the window again). One small file a window,
//! `<window>.claim`: the claimant's name on the first line, the count it read on the second,
//! then the instances whose flush marks that count had; its modification time is when the
//! claim was made (on the clock the claimant reads). The same record is kept as
//! `<window>.claiming` before the claim is sent: a process killed before Redis answered may
//! hold the claim, which the others leave the window to, forgetting their ids, so its next
//! process counts the window at least as high (the simulator's seed 1195 found it reported
//! with the ids Redis had left after losing some). Once the claimed window's report is
//! written, an empty `<window>.reported` beside the claim says so: a process killed after
//! writing the report and before the window's segments went leaves the window in the log,
//! and its next process, finding its earlier process's claim, would otherwise take it for a
//! claimant killed before the report (defect 16) and report the window again (the 30-minute
//! chaos runs of 2026-12-07 did, 3 s apart, with the same count). An amendment is kept so
//! too, as an empty `<window>.amending`, before its count is published, and deleted once the
//! window's report is written: a process killed between the count published in Redis and the
//! amended report's line left a count in Redis that its next process found equal to its own
//! and took for reported, the amendment in no report (the simulator's seed 1275).

use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use crate::window::WindowIndex;

/// A claim's file's name ends so.
const SUFFIX: &str = ".claim";
/// The name of a claim's file while Redis has not answered ends so.
const CLAIMING: &str = ".claiming";
/// The name of the file that says a claimed window's report is written ends so.
const REPORTED: &str = ".reported";
/// The name of the file that says an amended count may be published, not reported, ends so.
const AMENDING: &str = ".amending";

/// A report claim made in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The window whose report was claimed.
    pub window: WindowIndex,
    /// The process that claimed the report (`verve:reported:<w>`).
    pub holder: String,
    /// The window's global count the claimant read.
    pub count: u64,
    /// The processes whose flush marks the count had (`verve:counted:<w>`), one a line.
    pub marks: String,
    /// When the claim was made.
    pub made_at: SystemTime,
    /// Redis answered that the claim is this process's; `false` while it has not.
    pub confirmed: bool,
    /// The claimant wrote the window's report.
    pub report_written: bool,
}

/// Keeps `claim` in `dir` (written whole, then renamed into place); a confirmed claim
/// replaces the record kept while it was being made.
pub(super) fn keep(dir: &Path, claim: &Claim) -> io::Result<()> {
    let suffix = if claim.confirmed { SUFFIX } else { CLAIMING };
    let path = dir.join(format!("{}{suffix}", claim.window));
    let part = path.with_extension("claim.part");
    fs::write(
        &part,
        format!("{}\n{}\n{}", claim.holder, claim.count, claim.marks),
    )?;
    fs::File::options()
        .write(true)
        .open(&part)?
        .set_modified(claim.made_at)?;
    fs::rename(&part, &path)?;
    if claim.confirmed {
        remove(&dir.join(format!("{}{CLAIMING}", claim.window)))?;
    }
    Ok(())
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Says, beside the claim kept for `window` if there is one, that its report is written;
/// an amendment being published is reported too.
pub(super) fn report_written(dir: &Path, window: WindowIndex) -> io::Result<()> {
    if dir.join(format!("{window}{SUFFIX}")).exists() {
        fs::write(dir.join(format!("{window}{REPORTED}")), "")?;
    }
    remove(&dir.join(format!("{window}{AMENDING}")))
}

/// Keeps that an amended count of `window` is about to be published.
pub(super) fn keep_amending(dir: &Path, window: WindowIndex) -> io::Result<()> {
    fs::write(dir.join(format!("{window}{AMENDING}")), "")
}

/// Deletes the claim kept for `window`, if any, made or being made, and its amendment.
pub(super) fn forget(dir: &Path, window: WindowIndex) -> io::Result<()> {
    remove(&dir.join(format!("{window}{SUFFIX}")))?;
    remove(&dir.join(format!("{window}{CLAIMING}")))?;
    remove(&dir.join(format!("{window}{REPORTED}")))?;
    remove(&dir.join(format!("{window}{AMENDING}")))
}

/// What an earlier process kept of the reports it was making.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Kept {
    /// Its report claims.
    pub claims: Vec<Claim>,
    /// The windows whose amended count it may have published without writing the amended
    /// report.
    pub amending: Vec<WindowIndex>,
}

/// The claims and amendments kept in `dir` made at or after `since`; older ones are deleted.
pub(super) fn kept(dir: &Path, since: SystemTime) -> io::Result<Kept> {
    let mut kept = Kept::default();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let amending = name.strip_suffix(AMENDING).and_then(|w| w.parse().ok());
        if name.ends_with(REPORTED) || amending.is_some() {
            // Goes with its claim or report; one left alone (its claim deleted first) goes
            // when old.
            if fs::metadata(&path)?.modified()? < since {
                fs::remove_file(&path)?;
            } else if let Some(window) = amending {
                kept.amending.push(window);
            }
            continue;
        }
        let (window, confirmed) = match (name.strip_suffix(SUFFIX), name.strip_suffix(CLAIMING)) {
            (Some(w), _) => (w, true),
            (_, Some(w)) => (w, false),
            _ => continue,
        };
        let Ok(window) = window.parse() else {
            continue;
        };
        let made_at = fs::metadata(&path)?.modified()?;
        if made_at < since {
            fs::remove_file(&path)?;
            continue;
        }
        let text = fs::read_to_string(&path)?;
        let (holder, rest) = text.split_once('\n').unwrap_or((&text, ""));
        // A claim kept before the count was (a line of marks is a process's name, never a
        // number): its count is not known.
        let (count, marks) = match rest.split_once('\n').unwrap_or((rest, "")) {
            (count, marks) if count.parse::<u64>().is_ok() => (count.parse().unwrap_or(0), marks),
            _ => (0, rest),
        };
        kept.claims.push(Claim {
            window,
            holder: holder.to_owned(),
            count,
            marks: marks.to_owned(),
            made_at,
            confirmed,
            report_written: confirmed && dir.join(format!("{window}{REPORTED}")).exists(),
        });
    }
    // A claim confirmed after its record of being made: the confirmed one.
    kept.claims.sort_by_key(|c| (c.window, !c.confirmed));
    kept.claims.dedup_by_key(|c| c.window);
    kept.amending.sort_unstable();
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_kept_claim_reads_back_and_an_old_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let claim = Claim {
            window: 7,
            holder: "a:1/2-3".to_owned(),
            count: 4_183,
            marks: "a:1/2-3\nb:1/4-5".to_owned(),
            made_at: SystemTime::now() - Duration::from_secs(20),
            confirmed: false,
            report_written: false,
        };
        keep(dir.path(), &claim).unwrap();
        let since = SystemTime::now() - Duration::from_mins(1);
        let claims = |since| kept(dir.path(), since).unwrap().claims;
        assert_eq!(claims(since), vec![claim.clone()]);
        let confirmed = Claim {
            confirmed: true,
            ..claim.clone()
        };
        keep(dir.path(), &confirmed).unwrap();
        assert_eq!(claims(since), vec![confirmed.clone()]);
        report_written(dir.path(), 7).unwrap();
        let written = Claim {
            report_written: true,
            ..confirmed
        };
        assert_eq!(claims(since), vec![written]);
        // No claim kept, nothing to say.
        report_written(dir.path(), 8).unwrap();
        assert!(!dir.path().join("8.reported").exists());
        assert!(claims(SystemTime::now() + Duration::from_mins(1)).is_empty());
        assert!(claims(SystemTime::UNIX_EPOCH).is_empty());
    }

    #[test]
    fn an_amendment_kept_until_its_report_is_written_and_an_old_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let since = SystemTime::now() - Duration::from_mins(1);
        let amending = |since| kept(dir.path(), since).unwrap().amending;
        keep_amending(dir.path(), 9).unwrap();
        keep_amending(dir.path(), 7).unwrap();
        assert_eq!(amending(since), [7, 9]);
        report_written(dir.path(), 9).unwrap();
        forget(dir.path(), 6).unwrap();
        assert_eq!(amending(since), [7]);
        assert!(amending(SystemTime::now() + Duration::from_mins(1)).is_empty());
        assert!(amending(SystemTime::UNIX_EPOCH).is_empty());
    }
}
