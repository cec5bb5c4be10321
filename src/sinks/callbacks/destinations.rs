//! Callbacks isolated per destination (host and port), so that one slow or dead endpoint
//! cannot take every callback thread: a bulkhead (at most `max_in_flight` sends to one
//! destination; the jobs over it wait in that destination's line, sent by the threads that
//! finish its sends) and a circuit breaker (after `breaker_failures` consecutive timeouts or
//! connection errors the destination's callbacks are skipped as `circuit_open` for a
//! cool-down, then one probe is let through; its success closes the breaker).
//!
//! Hand-written rather than taken from a crate (`failsafe`): the breaker, the in-flight count
//! and the waiting line of a destination change together under one lock, and the breakers
//! live in a map keyed by whatever hosts requests name, which must be swept.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ureq::http::Uri;

/// Where a callback goes: the endpoint's host (lowercase) and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Destination {
    host: String,
    port: u16,
}

impl Destination {
    pub(super) fn of(endpoint: &Uri) -> Destination {
        let default_port = if endpoint.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        Destination {
            host: endpoint.host().unwrap_or_default().to_ascii_lowercase(),
            port: endpoint.port_u16().unwrap_or(default_port),
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The bulkhead's and the breakers' settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct IsolationSettings {
    /// Sends in flight to one destination at most.
    pub max_in_flight: usize,
    /// Consecutive timeouts or connection errors that open a destination's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker skips its destination before a probe.
    pub cooldown: Duration,
    /// Jobs waiting behind full bulkheads, all destinations together; past it, dropped.
    pub max_waiting: usize,
}

/// How one send ended, as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendResult {
    /// The destination answered (any status).
    Answered,
    /// A timeout or a connection error.
    Failed,
    /// Nothing was sent (the address policy refused it): says nothing of the destination.
    NotSent,
}

/// What to do with a job taken from the queue.
#[derive(Debug)]
pub(super) enum Admission<J> {
    /// Send it now.
    Send(J),
    /// It waits in its destination's line.
    Waiting,
    /// The destination's breaker is open: do not send it.
    CircuitOpen(J),
    /// Its destination's bulkhead is full and so is the waiting room.
    NoRoom(J),
}

/// A breaker changing state, to be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BreakerChange {
    Opened {
        destination: Destination,
        failures: u32,
    },
    Closed {
        destination: Destination,
    },
}

/// What follows the end of a send to a destination.
#[derive(Debug)]
pub(super) struct AfterSend<J> {
    /// The destination's next waiting job, to send now.
    pub next: Option<J>,
    /// Waiting jobs the breaker opening on: not to be sent.
    pub skipped: Vec<J>,
    pub change: Option<BreakerChange>,
}

impl<J> AfterSend<J> {
    fn none() -> AfterSend<J> {
        AfterSend {
            next: None,
            skipped: Vec::new(),
            change: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cool-down is over and one probe is in flight.
    Probing,
}

#[derive(Debug)]
struct DestinationState<J> {
    breaker: Breaker,
    in_flight: usize,
    waiting: VecDeque<J>,
}

impl<J> DestinationState<J> {
    fn is_idle(&self, now: Instant) -> bool {
        let breaker_idle = match self.breaker {
            Breaker::Closed { .. } => true,
            Breaker::Open { until } => now >= until,
            Breaker::Probing => false,
        };
        breaker_idle && self.in_flight == 0 && self.waiting.is_empty()
    }
}

#[derive(Debug)]
struct State<J> {
    destinations: HashMap<Destination, DestinationState<J>>,
    last_sweep: Option<Instant>,
}

/// Entries kept before idle ones are swept (at most once per cool-down).
const SWEEP_ABOVE: usize = 1024;

/// Every destination's bulkhead and breaker.
#[derive(Debug)]
pub(super) struct Destinations<J> {
    settings: IsolationSettings,
    state: Mutex<State<J>>,
    /// Jobs waiting behind full bulkheads and destinations whose breaker is not closed:
    /// changed under the lock, read without it (the recorder reads them for every callback
    /// and every gauge update).
    waiting: AtomicUsize,
    open: AtomicUsize,
}

impl<J> Destinations<J> {
    pub(super) fn new(settings: IsolationSettings) -> Destinations<J> {
        Destinations {
            settings,
            state: Mutex::new(State {
                destinations: HashMap::new(),
                last_sweep: None,
            }),
            waiting: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<J>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn cooldown(&self) -> Duration {
        self.settings.cooldown
    }

    /// Jobs waiting behind full bulkheads.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Destinations whose breaker is not closed.
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether the destination's breaker skips a job now (a probe is not due). Without a lock
    /// while no breaker is open.
    pub(super) fn is_open(&self, destination: &Destination, now: Instant) -> bool {
        self.open() > 0
            && self
                .lock()
                .destinations
                .get(destination)
                .is_some_and(|d| match d.breaker {
                    Breaker::Closed { .. } => false,
                    Breaker::Open { until } => now < until,
                    Breaker::Probing => true,
                })
    }

    /// Decides a job's fate; a job to send counts as in flight until [`Self::finished`].
    pub(super) fn admit(&self, job: J, destination: &Destination, now: Instant) -> Admission<J> {
        let mut state = self.lock();
        let state = &mut *state;
        self.sweep(state, now);
        let entry = state
            .destinations
            .entry(destination.clone())
            .or_insert_with(|| DestinationState {
                breaker: Breaker::Closed { failures: 0 },
                in_flight: 0,
                waiting: VecDeque::new(),
            });
        match entry.breaker {
            Breaker::Open { until } if now >= until => {
                entry.breaker = Breaker::Probing;
                entry.in_flight += 1;
                Admission::Send(job)
            }
            Breaker::Open { .. } | Breaker::Probing => Admission::CircuitOpen(job),
            Breaker::Closed { .. } if entry.in_flight < self.settings.max_in_flight => {
                entry.in_flight += 1;
                Admission::Send(job)
            }
            Breaker::Closed { .. } if self.waiting() < self.settings.max_waiting => {
                entry.waiting.push_back(job);
                self.waiting.fetch_add(1, Ordering::Relaxed);
                Admission::Waiting
            }
            Breaker::Closed { .. } => Admission::NoRoom(job),
        }
    }

    /// Forgets idle destinations once the map is large, so that hosts named once do not
    /// stay.
    fn sweep(&self, state: &mut State<J>, now: Instant) {
        if state.destinations.len() <= SWEEP_ABOVE
            || state
                .last_sweep
                .is_some_and(|t| now.duration_since(t) < self.settings.cooldown)
        {
            return;
        }
        state.last_sweep = Some(now);
        let mut forgotten_open = 0;
        state.destinations.retain(|_, d| {
            let idle = d.is_idle(now);
            if idle && matches!(d.breaker, Breaker::Open { .. }) {
                forgotten_open += 1;
            }
            !idle
        });
        self.open.fetch_sub(forgotten_open, Ordering::Relaxed);
    }

    /// Records how a send to `destination` ended; hands back its next waiting job, if any.
    pub(super) fn finished(
        &self,
        destination: &Destination,
        result: SendResult,
        now: Instant,
    ) -> AfterSend<J> {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(entry) = state.destinations.get_mut(destination) else {
            return AfterSend::none();
        };
        entry.in_flight -= 1;
        let was_open = !matches!(entry.breaker, Breaker::Closed { .. });
        let mut after = AfterSend::none();
        match (result, entry.breaker) {
            (SendResult::Answered, _) => {
                entry.breaker = Breaker::Closed { failures: 0 };
                if was_open {
                    after.change = Some(BreakerChange::Closed {
                        destination: destination.clone(),
                    });
                }
            }
            (SendResult::Failed, Breaker::Closed { failures }) => {
                let failures = failures + 1;
                if failures >= self.settings.breaker_failures {
                    entry.breaker = Breaker::Open {
                        until: now + self.settings.cooldown,
                    };
                    after.change = Some(BreakerChange::Opened {
                        destination: destination.clone(),
                        failures,
                    });
                } else {
                    entry.breaker = Breaker::Closed { failures };
                }
            }
            (SendResult::Failed, Breaker::Probing) => {
                entry.breaker = Breaker::Open {
                    until: now + self.settings.cooldown,
                };
            }
            // A probe that was not sent proved nothing: the next job probes.
            (SendResult::NotSent, Breaker::Probing) => {
                entry.breaker = Breaker::Open { until: now };
            }
            (SendResult::Failed, Breaker::Open { .. }) | (SendResult::NotSent, _) => {}
        }
        let is_open = !matches!(entry.breaker, Breaker::Closed { .. });
        if is_open {
            after.skipped = entry.waiting.drain(..).collect();
            self.waiting
                .fetch_sub(after.skipped.len(), Ordering::Relaxed);
        } else if entry.in_flight < self.settings.max_in_flight
            && let Some(job) = entry.waiting.pop_front()
        {
            entry.in_flight += 1;
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            after.next = Some(job);
        }
        if entry.is_idle(now) && entry.breaker == (Breaker::Closed { failures: 0 }) {
            state.destinations.remove(destination);
        }
        match (was_open, is_open) {
            (false, true) => self.open.fetch_add(1, Ordering::Relaxed),
            (true, false) => self.open.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
        after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    /// A job carrying the count it would send.
    #[derive(Debug)]
    struct Job {
        count: u64,
    }

    fn destinations(max_in_flight: usize, max_waiting: usize) -> Destinations<Job> {
        Destinations::new(IsolationSettings {
            max_in_flight,
            breaker_failures: 3,
            cooldown: COOLDOWN,
            max_waiting,
        })
    }

    fn job(endpoint: &str, count: u64) -> (Job, Destination) {
        let endpoint: Uri = endpoint.parse().unwrap();
        (Job { count }, Destination::of(&endpoint))
    }

    /// Sends to `endpoint` fail three times at `at`: its breaker opens.
    fn fail_three_times(d: &Destinations<Job>, endpoint: &str, at: Instant) -> Destination {
        let (_, dest) = job(endpoint, 0);
        for _ in 0..3 {
            let (j, _) = job(endpoint, 1);
            d.admit(j, &dest, at);
            d.finished(&dest, SendResult::Failed, at);
        }
        dest
    }

    fn count_of(admission: &Admission<Job>) -> Option<u64> {
        match admission {
            Admission::Send(j) => Some(j.count),
            _ => None,
        }
    }

    #[test]
    fn a_destination_is_its_host_and_port() {
        let (_, a) = job("http://Example.com/a", 1);
        let (_, b) = job("http://example.com:80/b?x=1", 1);
        let (_, c) = job("https://example.com/a", 1);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(c.to_string(), "example.com:443");
    }

    #[test]
    fn past_the_bulkhead_jobs_wait_and_the_thread_finishing_a_send_takes_the_next() {
        let d = destinations(2, 100);
        let now = Instant::now();
        let admitted: Vec<_> = (1..=4)
            .map(|n| {
                let (j, dest) = job("http://a.test/h", n);
                d.admit(j, &dest, now)
            })
            .collect();
        assert_eq!(count_of(&admitted[0]), Some(1));
        assert_eq!(count_of(&admitted[1]), Some(2));
        assert!(matches!(admitted[2], Admission::Waiting));
        assert!(matches!(admitted[3], Admission::Waiting));
        assert_eq!(d.waiting(), 2);
        // Another destination still gets sent at once.
        let (j, other) = job("http://b.test/h", 9);
        assert_eq!(count_of(&d.admit(j, &other, now)), Some(9));
        let (_, a) = job("http://a.test/h", 0);
        let after = d.finished(&a, SendResult::Answered, now);
        assert_eq!(after.next.map(|j| j.count), Some(3));
        assert_eq!(d.waiting(), 1);
    }

    #[test]
    fn the_waiting_room_is_bounded() {
        let d = destinations(1, 1);
        let now = Instant::now();
        let admit = |n| {
            let (j, dest) = job("http://a.test/h", n);
            d.admit(j, &dest, now)
        };
        assert!(matches!(admit(1), Admission::Send(_)));
        assert!(matches!(admit(2), Admission::Waiting));
        assert!(matches!(admit(3), Admission::NoRoom(j) if j.count == 3));
    }

    #[test]
    fn consecutive_failures_open_the_breaker_and_skip_what_waits() {
        let d = destinations(1, 100);
        let now = Instant::now();
        let (_, dest) = job("http://dead.test/h", 0);
        for n in 1..=5 {
            let (j, dest) = job("http://dead.test/h", n);
            d.admit(j, &dest, now);
        }
        for next in [2, 3] {
            let after = d.finished(&dest, SendResult::Failed, now);
            assert!(after.change.is_none());
            assert_eq!(after.next.map(|j| j.count), Some(next));
        }
        let third = d.finished(&dest, SendResult::Failed, now);
        assert_eq!(
            third.change,
            Some(BreakerChange::Opened {
                destination: dest.clone(),
                failures: 3
            })
        );
        let skipped: Vec<u64> = third.skipped.iter().map(|j| j.count).collect();
        assert_eq!(skipped, [4, 5]);
        assert_eq!(d.waiting(), 0);
        assert_eq!(d.open(), 1);
        assert!(d.is_open(&dest, now));
        assert!(!d.is_open(&dest, now + COOLDOWN));
        let (j, _) = job("http://dead.test/h", 6);
        assert!(matches!(d.admit(j, &dest, now), Admission::CircuitOpen(_)));
    }

    #[test]
    fn an_answer_between_failures_resets_the_count() {
        let d = destinations(1, 100);
        let now = Instant::now();
        let (_, dest) = job("http://flaky.test/h", 0);
        for result in [
            SendResult::Failed,
            SendResult::Failed,
            SendResult::Answered,
            SendResult::Failed,
            SendResult::Failed,
        ] {
            let (j, _) = job("http://flaky.test/h", 1);
            assert!(matches!(d.admit(j, &dest, now), Admission::Send(_)));
            assert!(d.finished(&dest, result, now).change.is_none());
        }
        assert_eq!(d.open(), 0);
    }

    #[test]
    fn after_the_cooldown_one_probe_goes_and_its_answer_closes_the_breaker() {
        let d = destinations(4, 100);
        let t0 = Instant::now();
        let dest = fail_three_times(&d, "http://dead.test/h", t0);
        assert_eq!(d.open(), 1);
        let later = t0 + COOLDOWN;
        let (probe, _) = job("http://dead.test/h", 7);
        assert_eq!(count_of(&d.admit(probe, &dest, later)), Some(7));
        let (during, _) = job("http://dead.test/h", 8);
        assert!(matches!(
            d.admit(during, &dest, later),
            Admission::CircuitOpen(_)
        ));
        // A failed probe opens it for another cool-down.
        assert!(
            d.finished(&dest, SendResult::Failed, later)
                .change
                .is_none()
        );
        let (j, _) = job("http://dead.test/h", 9);
        assert!(matches!(
            d.admit(j, &dest, later + COOLDOWN / 2),
            Admission::CircuitOpen(_)
        ));
        let again = later + COOLDOWN;
        let (probe, _) = job("http://dead.test/h", 10);
        assert!(matches!(d.admit(probe, &dest, again), Admission::Send(_)));
        let after = d.finished(&dest, SendResult::Answered, again);
        assert_eq!(
            after.change,
            Some(BreakerChange::Closed {
                destination: dest.clone()
            })
        );
        assert_eq!(d.open(), 0);
        let (j, _) = job("http://dead.test/h", 11);
        assert!(matches!(d.admit(j, &dest, again), Admission::Send(_)));
    }

    #[test]
    fn a_probe_the_address_policy_stopped_lets_the_next_job_probe() {
        let d = destinations(4, 100);
        let t0 = Instant::now();
        let dest = fail_three_times(&d, "http://dead.test/h", t0);
        let later = t0 + COOLDOWN;
        let (probe, _) = job("http://dead.test/h", 1);
        d.admit(probe, &dest, later);
        d.finished(&dest, SendResult::NotSent, later);
        let (next, _) = job("http://dead.test/h", 2);
        assert!(matches!(d.admit(next, &dest, later), Admission::Send(_)));
    }

    #[test]
    fn healthy_idle_destinations_are_forgotten() {
        let d = destinations(4, 100);
        let now = Instant::now();
        for n in 0..3000 {
            let (j, dest) = job(&format!("http://host{n}.test/h"), 1);
            d.admit(j, &dest, now);
            d.finished(&dest, SendResult::Answered, now);
        }
        assert!(d.lock().destinations.is_empty());
    }

    #[test]
    fn open_breakers_past_their_cooldown_are_swept_once_the_map_is_large() {
        let d = Destinations::new(IsolationSettings {
            max_in_flight: 4,
            breaker_failures: 1,
            cooldown: COOLDOWN,
            max_waiting: 100,
        });
        let t0 = Instant::now();
        for n in 0..=SWEEP_ABOVE {
            let (j, dest) = job(&format!("http://dead{n}.test/h"), 1);
            d.admit(j, &dest, t0);
            d.finished(&dest, SendResult::Failed, t0);
        }
        assert_eq!(d.open(), SWEEP_ABOVE + 1);
        let (j, dest) = job("http://new.test/h", 1);
        d.admit(j, &dest, t0 + COOLDOWN);
        assert_eq!(d.open(), 0);
        assert_eq!(d.lock().destinations.len(), 1);
    }
}
