//! A seeded schedule of faults: the same seed, mode and length give the same faults at the
//! same offsets, so that a failing run can be replayed.

use std::collections::BTreeMap;
use std::time::Duration;

/// Which Redis the instances share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedisMode {
    /// None: each instance counts and reports alone.
    Standalone,
    Single,
    Cluster,
}

impl RedisMode {
    pub(crate) fn label(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Single => "single",
            RedisMode::Cluster => "cluster",
        }
    }
}

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum FaultKind {
    /// SIGSTOP of the Redis (a master, in a cluster), SIGCONT when it ends.
    RedisPause,
    /// SIGKILL of every Redis server; they start again empty when it ends.
    RedisRestartEmpty,
    /// `CLUSTER FAILOVER` on a replica of a master.
    ClusterFailover,
    /// SIGKILL of a master; it starts again empty (and rejoins as a replica) when it ends.
    ClusterKillMaster,
    /// Delay, blackhole or reset on one instance's connection to Redis (one node only: a
    /// cluster's nodes tell clients their own addresses).
    RedisLinkDelay,
    RedisLinkBlackhole,
    RedisLinkReset,
    /// Delay, blackhole or reset between the instances and the broker.
    BrokerLinkDelay,
    BrokerLinkBlackhole,
    BrokerLinkReset,
    /// SIGSTOP of the broker, SIGCONT when it ends.
    BrokerPause,
    /// SIGKILL of the broker; it starts again on its `SQLite` storage when it ends.
    BrokerRestart,
    /// SIGTERM of an instance; it starts again when the fault ends.
    InstanceTerm,
    /// SIGKILL of an instance; it starts again when the fault ends.
    InstanceKill,
    /// The callback peer reads requests and never answers.
    PeerHang,
    /// The callback peer answers 500.
    PeerError,
}

impl FaultKind {
    const ALL: [FaultKind; 16] = [
        FaultKind::RedisPause,
        FaultKind::RedisRestartEmpty,
        FaultKind::ClusterFailover,
        FaultKind::ClusterKillMaster,
        FaultKind::RedisLinkDelay,
        FaultKind::RedisLinkBlackhole,
        FaultKind::RedisLinkReset,
        FaultKind::BrokerLinkDelay,
        FaultKind::BrokerLinkBlackhole,
        FaultKind::BrokerLinkReset,
        FaultKind::BrokerPause,
        FaultKind::BrokerRestart,
        FaultKind::InstanceTerm,
        FaultKind::InstanceKill,
        FaultKind::PeerHang,
        FaultKind::PeerError,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            FaultKind::RedisPause => "redis-pause",
            FaultKind::RedisRestartEmpty => "redis-restart-empty",
            FaultKind::ClusterFailover => "cluster-failover",
            FaultKind::ClusterKillMaster => "cluster-kill-master",
            FaultKind::RedisLinkDelay => "redis-link-delay",
            FaultKind::RedisLinkBlackhole => "redis-link-blackhole",
            FaultKind::RedisLinkReset => "redis-link-reset",
            FaultKind::BrokerLinkDelay => "broker-link-delay",
            FaultKind::BrokerLinkBlackhole => "broker-link-blackhole",
            FaultKind::BrokerLinkReset => "broker-link-reset",
            FaultKind::BrokerPause => "broker-pause",
            FaultKind::BrokerRestart => "broker-restart",
            FaultKind::InstanceTerm => "instance-sigterm",
            FaultKind::InstanceKill => "instance-sigkill",
            FaultKind::PeerHang => "callback-peer-hang",
            FaultKind::PeerError => "callback-peer-500",
        }
    }

    /// The kinds a run in `mode` applies.
    pub(crate) fn of_mode(mode: RedisMode) -> Vec<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .filter(|k| match k {
                FaultKind::ClusterFailover | FaultKind::ClusterKillMaster => {
                    mode == RedisMode::Cluster
                }
                FaultKind::RedisLinkDelay
                | FaultKind::RedisLinkBlackhole
                | FaultKind::RedisLinkReset => mode == RedisMode::Single,
                FaultKind::RedisPause | FaultKind::RedisRestartEmpty => {
                    mode != RedisMode::Standalone
                }
                _ => true,
            })
            .collect()
    }

    /// Whether it cuts `instance` (or every instance) off Redis for a while: a degraded
    /// report may follow.
    pub(crate) fn cuts_off_redis(self) -> bool {
        matches!(
            self,
            FaultKind::RedisPause
                | FaultKind::RedisRestartEmpty
                | FaultKind::ClusterFailover
                | FaultKind::ClusterKillMaster
                | FaultKind::RedisLinkDelay
                | FaultKind::RedisLinkBlackhole
                | FaultKind::RedisLinkReset
        )
    }

    /// Whether it is about one instance (its process, or its link to Redis).
    pub(crate) fn of_one_instance(self) -> bool {
        matches!(
            self,
            FaultKind::RedisLinkDelay
                | FaultKind::RedisLinkBlackhole
                | FaultKind::RedisLinkReset
                | FaultKind::InstanceTerm
                | FaultKind::InstanceKill
        )
    }

    /// Whether Redis may lose ids it acknowledged.
    pub(crate) fn loses_redis_data(self) -> bool {
        matches!(
            self,
            FaultKind::RedisRestartEmpty | FaultKind::ClusterKillMaster
        )
    }

    /// How long it lasts, in milliseconds (0: it happens at once).
    fn lasts_ms(self) -> (u64, u64) {
        match self {
            FaultKind::ClusterFailover | FaultKind::RedisLinkReset | FaultKind::BrokerLinkReset => {
                (0, 0)
            }
            FaultKind::RedisLinkDelay | FaultKind::BrokerLinkDelay => (1_000, 4_000),
            FaultKind::ClusterKillMaster => (1_000, 5_000),
            FaultKind::InstanceTerm | FaultKind::InstanceKill => (300, 3_000),
            _ => (300, 5_000),
        }
    }

    /// What it occupies: two faults on the same part do not overlap.
    fn part(self, instance: usize) -> Part {
        match self {
            FaultKind::RedisPause
            | FaultKind::RedisRestartEmpty
            | FaultKind::ClusterFailover
            | FaultKind::ClusterKillMaster => Part::Redis,
            FaultKind::RedisLinkDelay
            | FaultKind::RedisLinkBlackhole
            | FaultKind::RedisLinkReset => Part::RedisLink(instance),
            FaultKind::BrokerLinkDelay
            | FaultKind::BrokerLinkBlackhole
            | FaultKind::BrokerLinkReset => Part::BrokerLink,
            FaultKind::BrokerPause | FaultKind::BrokerRestart => Part::Broker,
            // One instance down at a time, so that some instance reports every window.
            FaultKind::InstanceTerm | FaultKind::InstanceKill => Part::Instances,
            FaultKind::PeerHang | FaultKind::PeerError => Part::Peer,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Redis,
    RedisLink(usize),
    BrokerLink,
    Broker,
    Instances,
    Peer,
}

/// One fault of the schedule.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    /// When it begins, from the start of the load.
    pub(crate) at: Duration,
    pub(crate) kind: FaultKind,
    /// The instance it is about, when it is about one.
    pub(crate) instance: usize,
    pub(crate) lasts: Duration,
    /// A number to pick with (which master, how much delay).
    pub(crate) pick: u64,
}

/// `SplitMix64`: a seeded sequence that no crate upgrade can change, so that a seed replays
/// the same schedule for as long as it is kept as a regression case.
pub(crate) struct Seeded(u64);

impl Seeded {
    pub(crate) fn new(seed: u64) -> Seeded {
        Seeded(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Time a part is left alone after a fault on it ends, so that the next one finds it serving.
const SETTLE: Duration = Duration::from_millis(1_500);
/// No fault begins in the first moments of the load, nor ends in its last.
const QUIET: Duration = Duration::from_secs(3);

/// The faults of a run of `span` against `instances` instances: every kind of the mode once,
/// in a seeded order, then seeded picks until the span is full.
pub(crate) fn schedule(seed: u64, mode: RedisMode, instances: usize, span: Duration) -> Vec<Fault> {
    let mut rng = Seeded::new(seed);
    let kinds = FaultKind::of_mode(mode);
    let mut first_round = kinds.clone();
    for i in (1..first_round.len()).rev() {
        first_round.swap(i, rng.between(0, i as u64) as usize);
    }
    let mut busy: BTreeMap<Part, Duration> = BTreeMap::new();
    let mut faults = Vec::new();
    let mut at = QUIET;
    let mut misses = 0;
    while misses < 50 {
        let covering = !first_round.is_empty();
        let kind = if covering {
            first_round.remove(0)
        } else {
            kinds[rng.between(0, kinds.len() as u64 - 1) as usize]
        };
        let instance = rng.between(0, instances as u64 - 1) as usize;
        let (lo, hi) = kind.lasts_ms();
        let mut lasts = Duration::from_millis(rng.between(lo, hi));
        let part = kind.part(instance);
        let begins = at.max(busy.get(&part).copied().unwrap_or_default());
        if covering && begins + lasts + QUIET > span {
            lasts = Duration::from_millis(lo);
        }
        if begins + lasts + QUIET > span {
            misses += 1;
            continue;
        }
        busy.insert(part, begins + lasts + SETTLE);
        faults.push(Fault {
            at: begins,
            kind,
            instance,
            lasts,
            pick: rng.next(),
        });
        at += Duration::from_millis(rng.between(300, 2_500));
    }
    faults.sort_by_key(|f| f.at);
    faults
}

#[test]
fn a_seed_gives_the_same_schedule_and_every_kind_of_its_mode() {
    for mode in [RedisMode::Standalone, RedisMode::Single, RedisMode::Cluster] {
        let span = Duration::from_secs(50);
        let a = schedule(7, mode, 3, span);
        let b = schedule(7, mode, 3, span);
        let key = |s: &[Fault]| -> Vec<(Duration, FaultKind, usize, Duration)> {
            s.iter()
                .map(|f| (f.at, f.kind, f.instance, f.lasts))
                .collect()
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&schedule(8, mode, 3, span)));
        for kind in FaultKind::of_mode(mode) {
            assert!(a.iter().any(|f| f.kind == kind), "{mode:?}: no {kind:?}");
        }
        assert!(a.iter().all(|f| f.at + f.lasts + QUIET <= span));
    }
}
