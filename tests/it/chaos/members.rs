//! What Redis shows of each window while the run goes on: its ids and who claimed its report,
//! read from every node (every master and replica of a cluster) a few times a second, since
//! a reported window's ids stay only for the amend horizon. The checker compares ids with
//! these sets, not counts, and ties a window left unreported to the process that claimed it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use redis::{Commands, Connection};

use super::system::WINDOW_SECS;
use crate::common::window_of;

/// How often every node is read.
const EVERY: Duration = Duration::from_millis(250);
/// A node that does not answer within this is left until the next round. Long: ids stay in
/// Redis for seconds, and a short timeout on a loaded machine missed whole windows (three
/// 30-minute runs side by side with builds, 2026-12-07, found thousands of ids "never in
/// Redis" whose counts were right).
const TIMEOUT: Duration = Duration::from_secs(2);

/// What Redis was seen to hold, by window.
#[derive(Debug, Default)]
pub(crate) struct SeenInRedis {
    /// Every id of the window's sets, at some moment.
    pub(crate) ids: BTreeMap<u64, HashSet<i64>>,
    /// The process that claimed the window's report (`verve:reported:<w>`), last seen.
    pub(crate) claimed_by: BTreeMap<u64, String>,
}

/// Reads the windows' ids from the nodes on a thread of its own until `finish`.
pub(crate) struct Members {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<SeenInRedis>,
}

impl Members {
    /// Reads the Redis servers on `ports` (the same ports across their restarts).
    pub(crate) fn start(ports: Vec<u16>) -> Members {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut seen = SeenInRedis::default();
            let mut conns: Vec<Option<Connection>> = ports.iter().map(|_| None).collect();
            while !stopping.load(Ordering::Relaxed) {
                for (port, conn) in ports.iter().zip(&mut conns) {
                    if read_node(*port, conn, &mut seen).is_err() {
                        *conn = None;
                    }
                }
                thread::sleep(EVERY);
            }
            seen
        });
        Members { stop, thread }
    }

    /// Stops reading; what was seen.
    pub(crate) fn finish(self) -> SeenInRedis {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Adds the ids of every window key the node holds to `seen`.
fn read_node(
    port: u16,
    conn: &mut Option<Connection>,
    seen: &mut SeenInRedis,
) -> redis::RedisResult<()> {
    let conn = if let Some(conn) = conn {
        conn
    } else {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut opened = client.get_connection_with_timeout(TIMEOUT)?;
        opened.set_read_timeout(Some(TIMEOUT))?;
        opened.set_write_timeout(Some(TIMEOUT))?;
        // A cluster's replica answers reads of its master's keys only so; a server outside a
        // cluster refuses it, which changes nothing.
        let _: redis::RedisResult<()> = redis::cmd("READONLY").query(&mut opened);
        conn.insert(opened)
    };
    let keys: Vec<String> = conn.keys("verve:w:*")?;
    for key in keys {
        let Some(window) = window_of_key("verve:w:", &key) else {
            continue;
        };
        let ids: Vec<i64> = conn.smembers(&key)?;
        seen.ids.entry(window).or_default().extend(ids);
    }
    let claims: Vec<String> = conn.keys("verve:reported:*")?;
    for key in claims {
        let Some(window) = window_of_key("verve:reported:", &key) else {
            continue;
        };
        let holder: Option<String> = conn.get(&key)?;
        if let Some(holder) = holder {
            seen.claimed_by.insert(window, holder);
        }
    }
    Ok(())
}

/// The window of `<prefix><start>` or `<prefix><start>:<shard>`.
fn window_of_key(prefix: &str, key: &str) -> Option<u64> {
    let rest = key.strip_prefix(prefix)?;
    let start = &rest[..=rest.find('Z')?];
    let at = humantime::parse_rfc3339(start).ok()?;
    Some(window_of(at, WINDOW_SECS))
}
