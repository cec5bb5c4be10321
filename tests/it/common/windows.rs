//! Ids sent and answered `ok`, by the window they arrived in, and waiting for a window.

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::http_client::Conn;

/// Ids answered `ok`, by the window they arrived in. A batch whose round trip crossed a
/// window boundary could have landed in either window; its ids are kept apart.
#[derive(Debug, Default, Clone)]
pub(crate) struct WindowedIds {
    pub(crate) sure: std::collections::BTreeMap<u64, std::collections::HashSet<i64>>,
    pub(crate) ambiguous: std::collections::BTreeMap<u64, std::collections::HashSet<i64>>,
    pub(crate) requests: usize,
}

impl WindowedIds {
    pub(crate) fn merge(&mut self, other: WindowedIds) {
        for (w, ids) in other.sure {
            self.sure.entry(w).or_default().extend(ids);
        }
        for (w, ids) in other.ambiguous {
            self.ambiguous.entry(w).or_default().extend(ids);
        }
        self.requests += other.requests;
    }

    /// The distinct ids that may be in window `w`: the sure ones and the ambiguous ones.
    pub(crate) fn upper(&self, w: u64) -> u64 {
        let sure = self.sure.get(&w).cloned().unwrap_or_default();
        let maybe = self.ambiguous.get(&w).cloned().unwrap_or_default();
        sure.union(&maybe).count() as u64
    }

    /// Asserts that `count` is the number of distinct ids of window `w`: exactly, when no
    /// batch was ambiguous about it.
    pub(crate) fn assert_count(&self, w: u64, count: u64) {
        let sure = self.sure.get(&w).map_or(0, |ids| ids.len() as u64);
        if self.ambiguous.get(&w).is_none_or(HashSet::is_empty) {
            assert_eq!(count, sure, "window {w}");
        } else {
            assert!(
                (sure..=self.upper(w)).contains(&count),
                "window {w}: {count}"
            );
        }
    }
}

/// Sends `ids` pipelined on `conn`, asserts every answer is `200 ok`, and records them.
pub(crate) fn send_ids(conn: &mut Conn, ids: &[i64], window_secs: u64, seen: &mut WindowedIds) {
    let mut batch = Vec::new();
    for id in ids {
        batch.extend_from_slice(
            format!("GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
    }
    let sent = SystemTime::now();
    conn.send(&batch);
    for _ in ids {
        let a = conn.read_answer(false).expect("an answer");
        assert_eq!((a.status, a.body_str()), (200, "ok"));
    }
    let received = SystemTime::now();
    seen.requests += ids.len();
    let (w0, w1) = (
        window_of(sent, window_secs),
        window_of(received, window_secs),
    );
    if w0 == w1 {
        seen.sure.entry(w0).or_default().extend(ids);
    } else {
        for w in [w0, w1] {
            seen.ambiguous.entry(w).or_default().extend(ids);
        }
    }
}

/// The window (of length `secs`) that `t` falls in.
pub(crate) fn window_of(t: SystemTime, secs: u64) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() / secs
}

/// Sleeps until `offset` after the start of the next window of length `secs`.
pub(crate) fn sleep_until_next_window(secs: u64, offset: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let next = (now.as_secs() / secs + 1) * secs;
    let target = Duration::from_secs(next) + offset;
    thread::sleep(target.checked_sub(now).unwrap());
    next / secs
}
