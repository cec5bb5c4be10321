//! The faults of a run: a seeded schedule (about one every two simulated seconds, each over
//! within 4 s), and faults aimed at the moments the protocol turns on, as `BUGGIFY` aims them
//! in `FoundationDB`'s simulation. A uniform schedule rarely lands in the millisecond a defect
//! needs (the README's table of the defects put back: most were not found in a minute), so
//! now and then a moment the servers saw (a window's count recorded, its report claimed, its
//! count published, a flush mark set) is followed within a few milliseconds by a kill, a
//! stop or a pause of the claimant (of any instance, for the other moments), by a kill of
//! the claimant inside the recorder's round that writes its report, or by the server that
//! took it restarting empty, failing over or hanging (a failover, and half the others,
//! before the write reached the replica). In one seed in four, an instance that claims a
//! report is cut off from Redis for longer than `--report-max-delay-secs` (`Cut`).

use std::time::Duration;

use super::super::servers::Fault;
use super::{FaultKind, World, steps};

/// A fault to apply.
#[derive(Debug, Clone, Copy)]
pub(super) enum Planned {
    RestartEmpty(usize),
    FailOver(usize),
    /// A shard's master refuses, hangs or is slow for `lasting` steps.
    Outage {
        shard: usize,
        fault: Fault,
        lasting: u64,
    },
    /// An instance is killed, stopped or paused, and starts again (resumes) `lasting` steps
    /// later.
    Instance {
        i: usize,
        signal: Signal,
        lasting: u64,
    },
    /// An instance is killed as it writes its next report.
    KillAtReport(usize),
    /// An instance's host is cut off from every server for `lasting` steps.
    CutOff {
        i: usize,
        lasting: u64,
    },
}

/// A cut-off of an instance from Redis for longer than `--report-max-delay-secs` (30 s; less
/// than twice it), in one seed in `CUT_ONE_IN`: from a stream of its own, so that the other
/// faults of a seed stay as they were. It strikes the first instance to claim a report after
/// step `after`, within the claim's round or just after it: what defects 3 and 11 turned on
/// (a claimant cut off with a claim no replica held yet, or with a claim it did not learn
/// the outcome of).
#[derive(Debug, Clone, Copy)]
pub(super) struct Cut {
    after: u64,
    lasting: u64,
}

const CUT_ONE_IN: u8 = 4;

impl Cut {
    pub(super) fn of(seed: u64) -> Option<Cut> {
        let mut cuts = fastrand::Rng::with_seed(seed ^ 0xc075_0ff5);
        (cuts.u8(0..CUT_ONE_IN) == 0).then(|| Cut {
            after: cuts.u64(3_000..12_000),
            lasting: steps(Duration::from_millis(cuts.u64(31_000..45_000))),
        })
    }
}

/// How an instance's process is struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    Kill,
    /// SIGTERM: it leaves Redis within `--shutdown-timeout-ms`.
    Stop,
    /// SIGSTOP, then SIGCONT: nothing of it runs meanwhile, not even its Redis thread's
    /// timers, and what it sent before waits for it.
    Pause,
}

/// One moment in this many is aimed at.
const AIM_ONE_IN: u8 = 8;
/// Steps after an aimed fault before the next: the run must still settle windows.
const AIMED_APART: u64 = 1_000;
/// How long after its moment an aimed fault comes, at most, in steps.
const AIMED_WITHIN: u64 = 20;

impl World {
    /// The schedule's fault of this step, if any.
    pub(super) fn fault(&mut self) {
        if self.rng.u32(0..2_000) != 0 {
            return;
        }
        let shards = self.shared.servers.lock().unwrap().shards();
        let shard = self.rng.usize(0..shards);
        let lasting = steps(Duration::from_millis(self.rng.u64(200..4_000)));
        let planned = match self.rng.u8(0..6) {
            0 => Planned::RestartEmpty(shard),
            1 if self.scenario.masters > 0 => Planned::FailOver(shard),
            1..=3 => {
                let fault = match self.rng.u8(0..3) {
                    0 => Fault::Down,
                    1 => Fault::Hung,
                    _ => Fault::Slow(Duration::from_millis(self.rng.u64(5..300))),
                };
                Planned::Outage {
                    shard,
                    fault,
                    lasting,
                }
            }
            _ => {
                let i = self.rng.usize(0..self.instances.len());
                if !self.instances[i].is_live() {
                    return;
                }
                let signal = match self.stops.u8(0..4) {
                    0 => Signal::Stop,
                    1 => Signal::Pause,
                    _ => Signal::Kill,
                };
                Planned::Instance { i, signal, lasting }
            }
        };
        self.apply(planned, "");
    }

    /// Now and then plans a fault aimed at a moment the servers saw since the last step, and
    /// applies the aimed faults now due. From a stream of its own, so that the schedule's
    /// faults stay as they were.
    pub(super) fn aim(&mut self) {
        let moments = self.shared.servers.lock().unwrap().take_moments();
        for moment in moments {
            if let (Some(i), Some(cut)) = (moment.claimant, self.cut)
                && self.step >= cut.after
            {
                self.cut = None;
                let lasting = cut.lasting;
                self.apply(Planned::CutOff { i, lasting }, " (aimed at a claim)");
            }
            if self.step < self.aimed_quiet_until || self.aim.u8(0..AIM_ONE_IN) != 0 {
                continue;
            }
            self.aimed_quiet_until = self.step + AIMED_APART;
            let lasting = steps(Duration::from_millis(self.aim.u64(100..2_000)));
            let i = moment
                .claimant
                .unwrap_or_else(|| self.aim.usize(0..self.instances.len()));
            let planned = match self.aim.u8(0..8) {
                0 | 1 => Planned::Instance {
                    i,
                    signal: Signal::Kill,
                    lasting,
                },
                2 => Planned::Instance {
                    i,
                    signal: Signal::Stop,
                    lasting,
                },
                7 => Planned::Instance {
                    i,
                    signal: Signal::Pause,
                    lasting,
                },
                3 => Planned::RestartEmpty(moment.shard),
                4 if self.scenario.masters > 0 => Planned::FailOver(moment.shard),
                5 => Planned::KillAtReport(i),
                _ => Planned::Outage {
                    shard: moment.shard,
                    fault: Fault::Hung,
                    lasting,
                },
            };
            // A failover, and half the other faults of a server, strike before the write the
            // moment was reaches the replica (a claim's `WAIT` then waits through the fault).
            let held = match planned {
                Planned::FailOver(_) => true,
                Planned::RestartEmpty(_) | Planned::Outage { .. } => self.aim.bool(),
                Planned::Instance { .. } | Planned::KillAtReport(_) | Planned::CutOff { .. } => {
                    false
                }
            };
            if held && self.scenario.masters > 0 {
                self.held.push(moment.shard);
            }
            let at = self.step + self.aim.u64(0..=AIMED_WITHIN);
            self.aimed.push((at, planned));
        }
        let step = self.step;
        let due: Vec<Planned> = self
            .aimed
            .extract_if(.., |&mut (at, _)| at <= step)
            .map(|(_, planned)| planned)
            .collect();
        for planned in due {
            self.apply(planned, " (aimed)");
        }
    }

    fn apply(&mut self, planned: Planned, aimed: &str) {
        let mut servers = self.shared.servers.lock().unwrap();
        let (what, kind) = match planned {
            Planned::RestartEmpty(shard) => {
                servers.restart_empty(shard);
                self.held.retain(|&s| s != shard);
                (
                    format!("redis shard {shard} restarted empty"),
                    FaultKind::RedisLostData,
                )
            }
            Planned::FailOver(shard) => {
                servers.fail_over(shard);
                self.held.retain(|&s| s != shard);
                (
                    format!("redis shard {shard} failed over"),
                    FaultKind::RedisLostData,
                )
            }
            Planned::Outage {
                shard,
                fault,
                lasting,
            } => {
                servers.set_fault(shard, fault);
                self.held.retain(|&s| s != shard);
                self.healing.push((self.step + lasting, shard));
                (
                    format!("redis shard {shard}: {fault:?} for {lasting} ms"),
                    FaultKind::RedisOutage,
                )
            }
            Planned::KillAtReport(i) => {
                self.instances[i].kill_at_next_report();
                return;
            }
            Planned::CutOff { i, lasting } => {
                self.instances[i].cut_off(true);
                self.rejoin = Some((self.step + lasting, i));
                (
                    format!("instance {i} cut off from redis for {lasting} ms"),
                    FaultKind::CutOff(i, Duration::from_millis(lasting)),
                )
            }
            Planned::Instance { i, signal, lasting } => {
                if !self.instances[i].is_live() {
                    return;
                }
                let back = self.step + lasting;
                let (kind, how) = match signal {
                    Signal::Stop => {
                        self.instances[i].stop(super::SHUTDOWN_TIMEOUT);
                        self.restarts.push((back, i));
                        let process = (i, self.instances[i].process());
                        (FaultKind::Stopped(process), "stopped (SIGTERM)")
                    }
                    Signal::Pause => {
                        self.instances[i].pause();
                        self.resumes.push((back, i));
                        (FaultKind::Paused(i), "paused (SIGSTOP)")
                    }
                    Signal::Kill => {
                        self.instances[i].kill();
                        self.restarts.push((back, i));
                        (FaultKind::Killed(i), "killed")
                    }
                };
                (format!("instance {i} {how}, back in {lasting} ms"), kind)
            }
        };
        drop(servers);
        let at = self.now();
        self.faults.push(super::Applied {
            at,
            what: format!("{what}{aimed}"),
            kind,
        });
    }

    /// An armed kill struck instance `i` inside its round: it starts again later.
    pub(super) fn killed_mid_round(&mut self, i: usize) {
        let lasting = steps(Duration::from_millis(self.aim.u64(100..2_000)));
        self.restarts.push((self.step + lasting, i));
        let at = self.now();
        self.faults.push(super::Applied {
            at,
            what: format!("instance {i} killed writing a report, back in {lasting} ms (aimed)"),
            kind: FaultKind::Killed(i),
        });
    }

    /// Every fault cleared and every instance started again (a stopping one once it exits),
    /// but for a cut-off, which lasts longer than the load: it ends on its own.
    pub(super) fn heal(&mut self) {
        let shards = self.shared.servers.lock().unwrap().shards();
        for shard in 0..shards {
            let mut servers = self.shared.servers.lock().unwrap();
            servers.set_fault(shard, Fault::None);
        }
        self.healing.clear();
        self.restarts.clear();
        self.aimed.clear();
        self.held.clear();
        self.resumes.clear();
        for (i, instance) in self.instances.iter_mut().enumerate() {
            instance.disarm();
            instance.resume();
            if !instance.is_running() {
                instance.start(&self.shared);
            } else if !instance.is_live() {
                // Stopping: back once it has exited.
                self.restarts.push((self.step, i));
            }
        }
    }
}
