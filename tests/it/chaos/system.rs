//! The parts of a chaos run, all real: verve instances, a Redis (one server or a cluster), a
//! tansu broker on `SQLite`, fault proxies in front of Redis and the broker, and a callback
//! peer; and the faults applied to them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, SystemTime};

use verve::config::{CallbackMethod, Durability};

use super::schedule::{Fault, FaultKind, RedisMode};
use crate::common::redis_cluster::RedisCluster;
use crate::common::{
    CallbackPeer, Exited, FaultProxy, LinkFault, PeerBehaviour, RedisServer, Report, SharedRedis,
    TansuBroker, Verve, VerveOptions, free_port,
};

pub(crate) const WINDOW_SECS: u64 = 2;
pub(crate) const GRACE: Duration = Duration::from_millis(300);
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(3);
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
pub(crate) const TOPIC: &str = "verve-unique-counts";
const SHUTDOWN: Duration = Duration::from_secs(3);

/// Where the load sends an instance's requests: its address and incarnation, while it runs.
pub(crate) type Target = Arc<RwLock<Option<(SocketAddr, usize)>>>;

/// How an incarnation of an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Term,
    Kill,
    /// Still running when the run ended (then SIGTERM).
    RunEnd,
}

/// One process of an instance, from start to exit.
#[derive(Debug, Clone)]
pub(crate) struct Incarnation {
    pub(crate) instance: usize,
    /// Its process id, which names it in Redis (report claims).
    pub(crate) pid: i32,
    /// When it was signalled, and how.
    pub(crate) exited: Option<(SystemTime, Exit)>,
    pub(crate) reports: Vec<Report>,
    /// What it wrote to stderr.
    pub(crate) log: Vec<String>,
    /// Its callback log.
    pub(crate) callback_log: Vec<String>,
}

/// A fault as it was applied: when it began and ended, really.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) kind: FaultKind,
    pub(crate) instance: usize,
    pub(crate) began: SystemTime,
    pub(crate) ended: SystemTime,
    pub(crate) detail: String,
}

impl Applied {
    /// Whether it touched `instance`.
    pub(crate) fn touches(&self, instance: usize) -> bool {
        !self.kind.of_one_instance() || self.instance == instance
    }
}

enum SharedStore {
    /// Standalone instances: no Redis.
    None,
    Single(RedisServer),
    Cluster(RedisCluster),
}

struct Slot {
    options: VerveOptions,
    running: Option<Verve>,
    target: Target,
    incarnation: usize,
}

/// Every part of a run.
pub(crate) struct System {
    store: SharedStore,
    /// Single mode: one proxy per instance in front of the Redis.
    redis_links: Vec<FaultProxy>,
    broker: TansuBroker,
    broker_link: FaultProxy,
    pub(crate) peer: CallbackPeer,
    slots: Vec<Slot>,
    pub(crate) incarnations: Vec<Incarnation>,
    /// Where each incarnation's log is kept, for a failing run.
    out: PathBuf,
}

impl System {
    pub(crate) fn start(
        mode: RedisMode,
        durability: Durability,
        instances: usize,
        out: &Path,
    ) -> System {
        let store = match mode {
            RedisMode::Standalone => SharedStore::None,
            RedisMode::Single => SharedStore::Single(RedisServer::start()),
            RedisMode::Cluster => SharedStore::Cluster(RedisCluster::start()),
        };
        let redis_links: Vec<FaultProxy> = match &store {
            SharedStore::Single(redis) => (0..instances)
                .map(|_| FaultProxy::start(([127, 0, 0, 1], redis.port).into()))
                .collect(),
            SharedStore::None | SharedStore::Cluster(_) => Vec::new(),
        };
        // The broker tells clients to connect through the proxy, so that every connection
        // to it crosses the proxy.
        let broker_port = free_port();
        let broker_link = FaultProxy::start(([127, 0, 0, 1], broker_port).into());
        let mut broker =
            TansuBroker::on_port(broker_port, "sqlite://tansu.db").advertise(broker_link.port);
        broker.restart();
        broker.create_topic(TOPIC);
        let peer = CallbackPeer::start(PeerBehaviour::Status(200));
        let slots = (0..instances)
            .map(|i| {
                let options = Verve::options()
                    .workers(1)
                    .window_secs(WINDOW_SECS)
                    .report_grace(GRACE)
                    .report_max_delay(MAX_DELAY)
                    .redis_heartbeat(HEARTBEAT)
                    .shutdown_timeout(SHUTDOWN)
                    .instance_id(&format!("chaos-{i}"))
                    // One write-ahead log per instance, kept across its restarts, as a host's
                    // disk is: a killed instance's ids come back with the next one.
                    .wal_dir(&out.join(format!("wal-{i}")))
                    .durability(durability)
                    .kafka_brokers(&broker_link.addr())
                    .callback_allow_private()
                    .callback_method(CallbackMethod::Post)
                    .callback_timeout(Duration::from_millis(300))
                    .env("RUST_LOG", "info,verve::recorder=debug");
                let options = match &store {
                    SharedStore::None => options,
                    SharedStore::Single(_) => {
                        options.redis_url(&format!("redis://127.0.0.1:{}", redis_links[i].port))
                    }
                    SharedStore::Cluster(cluster) => options.redis(cluster),
                };
                Slot {
                    options,
                    running: None,
                    target: Arc::new(RwLock::new(None)),
                    incarnation: 0,
                }
            })
            .collect();
        let mut system = System {
            store,
            redis_links,
            broker,
            broker_link,
            peer,
            slots,
            incarnations: Vec::new(),
            out: out.to_owned(),
        };
        for i in 0..instances {
            system.start_instance(i);
        }
        system
    }

    /// The ports of every Redis server (every node of a cluster).
    pub(crate) fn redis_ports(&self) -> Vec<u16> {
        match &self.store {
            SharedStore::None => Vec::new(),
            SharedStore::Single(redis) => vec![redis.port],
            SharedStore::Cluster(cluster) => cluster.nodes.iter().map(|n| n.port).collect(),
        }
    }

    pub(crate) fn targets(&self) -> Vec<Target> {
        self.slots.iter().map(|s| Arc::clone(&s.target)).collect()
    }

    pub(crate) fn broker_bootstrap(&self) -> String {
        self.broker_link.addr()
    }

    fn start_instance(&mut self, i: usize) {
        let verve = self.slots[i].options.clone().start();
        let incarnation = self.incarnations.len();
        self.incarnations.push(Incarnation {
            instance: i,
            pid: verve.pid(),
            exited: None,
            reports: Vec::new(),
            log: Vec::new(),
            callback_log: Vec::new(),
        });
        let slot = &mut self.slots[i];
        *slot.target.write().unwrap() = Some((verve.addr, incarnation));
        slot.incarnation = incarnation;
        slot.running = Some(verve);
    }

    /// Stops an instance with `signal` and keeps what its incarnation wrote.
    fn stop_instance(&mut self, i: usize, signal: i32, exit: Exit) {
        let slot = &mut self.slots[i];
        *slot.target.write().unwrap() = None;
        let Some(verve) = slot.running.take() else {
            return;
        };
        verve.signal(signal);
        let signalled = SystemTime::now();
        let Exited {
            reports,
            log,
            callback_log,
            ..
        } = verve.wait_exit_with_logs(SHUTDOWN + Duration::from_secs(10));
        let path = self
            .out
            .join(format!("instance-{i}-{}.log", slot.incarnation));
        let reports_text: Vec<String> = reports.iter().map(|r| format!("{r:?}")).collect();
        let _ = std::fs::write(path.with_extension("reports"), reports_text.join("\n"));
        let _ = std::fs::write(path, log.join("\n"));
        let incarnation = &mut self.incarnations[slot.incarnation];
        incarnation.exited = Some((signalled, exit));
        incarnation.reports = reports;
        incarnation.log = log;
        incarnation.callback_log = callback_log;
    }

    /// SIGTERM of every instance at the end of the run.
    pub(crate) fn stop_all(&mut self) {
        for i in 0..self.slots.len() {
            self.stop_instance(i, libc::SIGTERM, Exit::RunEnd);
        }
    }

    /// Every report written so far, by incarnation.
    pub(crate) fn reports_so_far(&self) -> Vec<Report> {
        let running = self
            .slots
            .iter()
            .filter_map(|s| s.running.as_ref())
            .flat_map(Verve::reports);
        self.incarnations
            .iter()
            .flat_map(|i| i.reports.clone())
            .chain(running)
            .collect()
    }

    fn cluster(&mut self) -> &mut RedisCluster {
        match &mut self.store {
            SharedStore::Cluster(cluster) => cluster,
            _ => panic!("a cluster fault without a cluster"),
        }
    }

    /// Waits until the cluster serves every slot with a replica in sync, before a fault on
    /// it (a failover needs a replica).
    fn cluster_ready(&mut self) -> &mut RedisCluster {
        let cluster = self.cluster();
        cluster.wait_ready(Duration::from_mins(1));
        cluster
    }

    /// Applies the beginning of `fault`; returns what it picked.
    pub(crate) fn begin(&mut self, fault: &Fault) -> String {
        let i = fault.instance;
        match fault.kind {
            FaultKind::RedisPause => match &mut self.store {
                SharedStore::None => unreachable!("no Redis fault in standalone mode"),
                SharedStore::Single(redis) => {
                    redis.pause();
                    "the server".to_owned()
                }
                SharedStore::Cluster(_) => {
                    let cluster = self.cluster_ready();
                    let masters = cluster.masters();
                    let port = masters[fault.pick as usize % masters.len()];
                    cluster.signal(port, libc::SIGSTOP);
                    format!("master {port}")
                }
            },
            FaultKind::RedisRestartEmpty => {
                match &mut self.store {
                    SharedStore::None => unreachable!("no Redis fault in standalone mode"),
                    SharedStore::Single(redis) => redis.kill_all(),
                    SharedStore::Cluster(_) => self.cluster_ready().kill_all(),
                }
                "every node".to_owned()
            }
            FaultKind::ClusterFailover => {
                let cluster = self.cluster_ready();
                let masters = cluster.masters();
                let port = masters[fault.pick as usize % masters.len()];
                match cluster.try_failover(port, Duration::from_secs(30)) {
                    Some(new) => format!("master {port} to {new}"),
                    None => format!("master {port}: no replica took over within 30 s"),
                }
            }
            FaultKind::ClusterKillMaster => {
                let cluster = self.cluster_ready();
                let masters = cluster.masters();
                let port = masters[fault.pick as usize % masters.len()];
                cluster.kill(port);
                format!("master {port}")
            }
            FaultKind::RedisLinkDelay => {
                let delay = Duration::from_millis(20 + fault.pick % 300);
                self.redis_links[i].set(LinkFault::Delay(delay));
                format!("{delay:?}")
            }
            FaultKind::RedisLinkBlackhole => {
                self.redis_links[i].set(LinkFault::Blackhole);
                String::new()
            }
            FaultKind::RedisLinkReset => {
                self.redis_links[i].reset();
                String::new()
            }
            FaultKind::BrokerLinkDelay => {
                let delay = Duration::from_millis(20 + fault.pick % 300);
                self.broker_link.set(LinkFault::Delay(delay));
                format!("{delay:?}")
            }
            FaultKind::BrokerLinkBlackhole => {
                self.broker_link.set(LinkFault::Blackhole);
                String::new()
            }
            FaultKind::BrokerLinkReset => {
                self.broker_link.reset();
                String::new()
            }
            FaultKind::BrokerPause => {
                self.broker.pause(true);
                String::new()
            }
            FaultKind::BrokerRestart => {
                self.broker.kill();
                String::new()
            }
            FaultKind::InstanceTerm => {
                self.stop_instance(i, libc::SIGTERM, Exit::Term);
                String::new()
            }
            FaultKind::InstanceKill => {
                self.stop_instance(i, libc::SIGKILL, Exit::Kill);
                String::new()
            }
            FaultKind::PeerHang => {
                self.peer.set_behaviour(PeerBehaviour::Hang);
                String::new()
            }
            FaultKind::PeerError => {
                self.peer.set_behaviour(PeerBehaviour::Status(500));
                String::new()
            }
        }
    }

    /// Applies the end of `fault`: what it stopped serves again.
    pub(crate) fn end(&mut self, fault: &Fault, picked: &str) {
        let i = fault.instance;
        match fault.kind {
            FaultKind::RedisPause => match &mut self.store {
                SharedStore::None => unreachable!("no Redis fault in standalone mode"),
                SharedStore::Single(redis) => redis.resume(),
                SharedStore::Cluster(cluster) => {
                    let port = picked["master ".len()..].parse().unwrap();
                    cluster.signal(port, libc::SIGCONT);
                }
            },
            FaultKind::RedisRestartEmpty => match &mut self.store {
                SharedStore::None => unreachable!("no Redis fault in standalone mode"),
                SharedStore::Single(redis) => redis.start_all_empty(),
                SharedStore::Cluster(cluster) => cluster.start_all_empty(),
            },
            FaultKind::ClusterKillMaster => {
                let port = picked["master ".len()..].parse().unwrap();
                self.cluster().restart_node(port);
            }
            FaultKind::RedisLinkDelay | FaultKind::RedisLinkBlackhole => {
                self.redis_links[i].set(LinkFault::Pass);
            }
            FaultKind::BrokerLinkDelay | FaultKind::BrokerLinkBlackhole => {
                self.broker_link.set(LinkFault::Pass);
            }
            FaultKind::BrokerPause => self.broker.pause(false),
            FaultKind::BrokerRestart => self.broker.restart(),
            FaultKind::InstanceTerm | FaultKind::InstanceKill => self.start_instance(i),
            FaultKind::PeerHang | FaultKind::PeerError => {
                self.peer.set_behaviour(PeerBehaviour::Status(200));
            }
            FaultKind::ClusterFailover | FaultKind::RedisLinkReset | FaultKind::BrokerLinkReset => {
            }
        }
    }

    /// Runs the schedule from `start`: each fault begins and ends at its offset (or as soon
    /// as the one before it has been applied). Returns the faults as applied.
    pub(crate) fn run_schedule(&mut self, start: SystemTime, faults: &[Fault]) -> Vec<Applied> {
        enum Step {
            Begin,
            End,
        }
        let mut steps: Vec<(Duration, usize, Step)> = faults
            .iter()
            .enumerate()
            .flat_map(|(n, f)| [(f.at, n, Step::Begin), (f.at + f.lasts, n, Step::End)])
            .collect();
        steps.sort_by_key(|(at, n, step)| (*at, *n, matches!(step, Step::End)));
        let mut applied: Vec<Option<Applied>> = vec![None; faults.len()];
        for (at, n, step) in steps {
            if let Ok(wait) = (start + at).duration_since(SystemTime::now()) {
                thread::sleep(wait);
            }
            let fault = &faults[n];
            match step {
                Step::Begin => {
                    let began = SystemTime::now();
                    let detail = self.begin(fault);
                    eprintln!(
                        "chaos: {:>7.1}s {} {} {detail}",
                        at.as_secs_f64(),
                        fault.kind.label(),
                        fault.instance
                    );
                    applied[n] = Some(Applied {
                        kind: fault.kind,
                        instance: fault.instance,
                        began,
                        ended: began,
                        detail,
                    });
                }
                Step::End => {
                    let done = applied[n].as_mut().expect("begun before it ends");
                    let detail = done.detail.clone();
                    self.end(fault, &detail);
                    done.ended = SystemTime::now();
                }
            }
        }
        applied.into_iter().map(|a| a.expect("applied")).collect()
    }
}
