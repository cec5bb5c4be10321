//! The load of a chaos run: one client per instance sending pipelined batches of known ids
//! (ids every instance gets and ids only one gets, some with a callback endpoint), and a
//! journal of what each request was answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, SystemTime};

use super::schedule::Seeded;
use super::system::Target;
use crate::common::{Conn, percent_encode};

/// What a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    Ok,
    /// `503 failed`: not counted.
    Refused,
    /// Any other answer, which the checker reports.
    Other(u16),
    /// No answer came (the connection failed): it may or may not have been counted.
    Unknown,
}

/// One pipelined batch and its answers.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub(crate) incarnation: usize,
    pub(crate) sent: SystemTime,
    /// When the last answer came, or the connection failed.
    pub(crate) done: SystemTime,
    pub(crate) answers: Vec<(i64, Answered)>,
    /// Its first request asked for a callback.
    pub(crate) with_callback: bool,
}

/// Requests per batch.
const BATCH: usize = 8;
/// Shared ids are drawn from this many, so that instances get the same ones.
const SHARED_IDS: u64 = 20_000;

/// The load: a thread per instance until `stop`.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Vec<Batch>>>,
}

impl Load {
    pub(crate) fn start(seed: u64, targets: Vec<Target>, callback_url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let endpoint = percent_encode(callback_url);
        let threads = targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| {
                let stop = Arc::clone(&stop);
                let endpoint = endpoint.clone();
                thread::spawn(move || drive(seed ^ (i as u64 + 1), i, &target, &endpoint, &stop))
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the load; every batch sent.
    pub(crate) fn finish(self) -> Vec<Batch> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

fn drive(
    seed: u64,
    instance: usize,
    target: &Target,
    endpoint: &str,
    stop: &AtomicBool,
) -> Vec<Batch> {
    let mut rng = Seeded::new(seed);
    let mut batches = Vec::new();
    let mut own: i64 = 0;
    let mut conn: Option<(Conn, usize)> = None;
    while !stop.load(Ordering::SeqCst) {
        let current = *target.read().unwrap();
        let Some((addr, incarnation)) = current else {
            conn = None;
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        if conn.as_ref().is_none_or(|(_, of)| *of != incarnation) {
            conn = Conn::try_open(addr).ok().map(|c| (c, incarnation));
        }
        let Some((c, _)) = conn.as_mut() else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let ids: Vec<i64> = (0..BATCH)
            .map(|k| {
                if k % 2 == 0 {
                    rng.between(0, SHARED_IDS) as i64
                } else {
                    own += 1;
                    (instance as i64 + 1) * 1_000_000_000_000 + own
                }
            })
            .collect();
        let with_callback = rng.between(0, 9) == 0;
        let mut raw = Vec::new();
        for (k, id) in ids.iter().enumerate() {
            let callback = if with_callback && k == 0 {
                format!("&endpoint={endpoint}")
            } else {
                String::new()
            };
            raw.extend_from_slice(
                format!("GET /api/verve/accept?id={id}{callback} HTTP/1.1\r\nHost: t\r\n\r\n")
                    .as_bytes(),
            );
        }
        let sent = SystemTime::now();
        let mut answers = Vec::with_capacity(BATCH);
        let mut failed = c.try_send(&raw).is_err();
        for &id in &ids {
            let answered = if failed {
                Answered::Unknown
            } else {
                match c.read_answer(false) {
                    Ok(a) if a.status == 200 && a.body_str() == "ok" => Answered::Ok,
                    Ok(a) if a.status == 503 => Answered::Refused,
                    Ok(a) => Answered::Other(a.status),
                    Err(_) => {
                        failed = true;
                        Answered::Unknown
                    }
                }
            };
            answers.push((id, answered));
        }
        batches.push(Batch {
            incarnation,
            sent,
            done: SystemTime::now(),
            answers,
            with_callback,
        });
        if failed {
            conn = None;
        }
        thread::sleep(Duration::from_millis(5));
    }
    batches
}
