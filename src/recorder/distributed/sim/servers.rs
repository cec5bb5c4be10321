//! The simulated Redis deployment: one server, or a cluster of masters each with a replica,
//! with the faults the chaos harness applies to real servers: a server killed and restarted
//! empty, a failover that loses what the replica had not received, a server that stops
//! answering or answers late. The instances reach it through `connection`.

use std::collections::VecDeque;
use std::time::{Duration, UNIX_EPOCH};

use redis::Value;

use super::super::keys::slot_of;
use super::keyspace::{Keyspace, error};
use crate::clock::Clock;

/// What is wrong with a shard's master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    None,
    /// Refuses connections; open ones break.
    Down,
    /// Takes commands and never answers: the client's response timeout ends each call.
    Hung,
    /// Answers each pipeline this much later.
    Slow(Duration),
}

/// A master, its replica's copy, and the slots it serves.
struct Shard {
    /// The two servers' addresses; `addresses[master]` is the master's.
    addresses: [String; 2],
    master: usize,
    /// Each server's run id, new at every start.
    run_ids: [u64; 2],
    /// When each server started (simulated time): a replica taking over keeps its own start,
    /// whatever data set it synced since.
    started: [Duration; 2],
    slots: (u16, u16),
    data: Keyspace,
    /// The replica's copy, and the writes it has not received yet.
    replica: Keyspace,
    unreplicated: VecDeque<(Vec<Vec<u8>>, Duration)>,
    fault: Fault,
    /// Grows whenever the master's open connections break.
    incarnation: u64,
}

/// Every simulated server, shared by the instances' connections and the simulator.
pub(super) struct Servers {
    shards: Vec<Shard>,
    cluster: bool,
    next_run_id: u64,
    /// The servers' wall clock (the simulation's, without an instance's skew).
    clock: Clock,
    moments: Vec<Moment>,
    /// A fault its server gets once it has taken a write to a key with this prefix.
    trip: Option<(&'static [u8], Fault)>,
}

/// A write the protocol turns on, as the server that took it saw it: of whose flush marks a
/// window's count has, of its report claim, of its published count, of a flush mark. The
/// simulator aims faults at these moments (world/faults.rs).
#[derive(Debug, Clone, Copy)]
pub(super) struct Moment {
    pub(super) shard: usize,
    /// The claimant's instance, for a report claim.
    pub(super) claimant: Option<usize>,
}

/// The keys whose writes are moments (keys.rs names them).
const MOMENT_KEYS: [&[u8]; 4] = [
    b"verve:counted:",
    b"verve:reported:",
    b"verve:count:",
    b"verve:flushed:",
];

/// The key a command names: a script's comes after the script and the number of keys.
fn key_of(command: &[Vec<u8>]) -> Option<&[u8]> {
    let key = command.get(if command[0] == b"EVAL" { 3 } else { 1 })?;
    Some(key)
}

/// The key a write command writes; `None` for a read.
fn written_key(command: &[Vec<u8>]) -> Option<&[u8]> {
    Keyspace::writes(&command[0])
        .then(|| key_of(command))
        .flatten()
}

impl Moment {
    fn of(shard: usize, command: &[Vec<u8>], reply: &Value) -> Option<Moment> {
        if matches!(reply, Value::Nil | Value::ServerError(_)) {
            return None;
        }
        let key = written_key(command)?;
        if !MOMENT_KEYS.iter().any(|k| key.starts_with(k)) {
            return None;
        }
        // A claim's value is its process, `i<instance>/<process>`.
        let claimant = key
            .starts_with(b"verve:reported:")
            .then(|| command.get(2))
            .flatten()
            .and_then(|value| std::str::from_utf8(value.strip_prefix(b"i")?).ok())
            .and_then(|process| process.split_once('/')?.0.parse().ok());
        Some(Moment { shard, claimant })
    }
}

/// The slots the `i`th of `count` masters serves.
fn slot_range(i: u16, count: u16) -> (u16, u16) {
    let edge = |i: u16| u16::try_from(16_384 * u32::from(i) / u32::from(count)).expect("a slot");
    (edge(i), edge(i + 1) - 1)
}

impl Servers {
    /// One server (`masters` = 0) or a cluster of `masters` masters with a replica each, at
    /// `sim-<n>:6379` addresses.
    pub(super) fn new(masters: u16, clock: Clock) -> Servers {
        let count = masters.max(1);
        let started = since_epoch(&clock);
        let shards = (0..count)
            .map(|i| Shard {
                addresses: [format!("sim-{i}:6379"), format!("sim-{i}r:6379")],
                master: 0,
                run_ids: [u64::from(i) * 2 + 1, u64::from(i) * 2 + 2],
                started: [started; 2],
                slots: slot_range(i, count),
                data: Keyspace::default(),
                replica: Keyspace::default(),
                unreplicated: VecDeque::new(),
                fault: Fault::None,
                incarnation: 0,
            })
            .collect();
        Servers {
            shards,
            cluster: masters > 0,
            next_run_id: u64::from(count) * 2 + 1,
            clock,
            moments: Vec::new(),
            trip: None,
        }
    }

    /// The addresses the instances are given (`--redis-url`, or the cluster's seeds).
    pub(super) fn seeds(&self) -> Vec<String> {
        self.shards
            .iter()
            .map(|s| format!("redis://{}", s.addresses[s.master]))
            .collect()
    }

    /// The address of a shard's master.
    pub(super) fn master(&self, shard: usize) -> &str {
        let s = &self.shards[shard];
        &s.addresses[s.master]
    }

    /// The address of the master serving `key`'s slot.
    pub(super) fn master_of_key(&self, key: &[u8]) -> &str {
        self.master(self.shard_of_key(key))
    }

    /// The shard serving `key`'s slot.
    pub(super) fn shard_of_key(&self, key: &[u8]) -> usize {
        self.shard_of_slot(slot_of(key))
    }

    pub(super) fn shards(&self) -> usize {
        self.shards.len()
    }

    fn shard_of_slot(&self, slot: u16) -> usize {
        self.shards
            .iter()
            .position(|s| (s.slots.0..=s.slots.1).contains(&slot))
            .expect("every slot is served")
    }

    /// The shard whose server is at `node`, and whether it is the master there.
    fn at(&self, node: &str) -> Option<(usize, bool)> {
        self.shards.iter().enumerate().find_map(|(i, s)| {
            let which = s.addresses.iter().position(|a| a == node)?;
            Some((i, which == s.master))
        })
    }

    /// The master is killed and starts again with nothing; its replica syncs the emptiness.
    pub(super) fn restart_empty(&mut self, shard: usize) {
        let now = since_epoch(&self.clock);
        let run_id = self.fresh_run_id();
        let s = &mut self.shards[shard];
        s.run_ids[s.master] = run_id;
        s.started[s.master] = now;
        s.data = Keyspace::default();
        s.replica = Keyspace::default();
        s.unreplicated.clear();
        s.incarnation += 1;
        s.fault = Fault::None;
    }

    /// The replica takes over with what it has received; the writes it had not are lost.
    pub(super) fn fail_over(&mut self, shard: usize) {
        let s = &mut self.shards[shard];
        s.unreplicated.clear();
        s.data = s.replica.clone();
        s.master = 1 - s.master;
        s.incarnation += 1;
        s.fault = Fault::None;
    }

    pub(super) fn set_fault(&mut self, shard: usize, fault: Fault) {
        let s = &mut self.shards[shard];
        if fault == Fault::Down {
            s.incarnation += 1;
        }
        s.fault = fault;
    }

    /// The fault of `shard`'s master now.
    pub(super) fn fault(&self, shard: usize) -> Fault {
        self.shards[shard].fault
    }

    /// The replica receives the first `writes` writes it lacks.
    pub(super) fn replicate(&mut self, shard: usize, writes: usize) {
        let s = &mut self.shards[shard];
        for _ in 0..writes {
            let Some((args, at)) = s.unreplicated.pop_front() else {
                break;
            };
            s.replica.run(&args, at);
        }
    }

    fn fresh_run_id(&mut self) -> u64 {
        self.next_run_id += 1;
        self.next_run_id
    }

    /// One command at the server at `node`.
    pub(super) fn run(&mut self, node: &str, args: &[Vec<u8>]) -> Value {
        let now = since_epoch(&self.clock);
        let Some((shard, is_master)) = self.at(node) else {
            return error("ERR no such server");
        };
        let name = args[0].to_ascii_uppercase();
        match name.as_slice() {
            b"ASKING" => return Value::Okay,
            b"INFO" => {
                let s = &self.shards[shard];
                let which = s.addresses.iter().position(|a| a == node).unwrap_or(0);
                // As Redis counts it: whole seconds of its clock now less those it started in.
                let uptime = now.as_secs() - s.started[which].as_secs();
                let info = format!(
                    "# Server\r\nrun_id:{:040x}\r\nserver_time_usec:{}\r\n\
                     uptime_in_seconds:{uptime}\r\n",
                    s.run_ids[which],
                    now.as_micros()
                );
                return Value::VerbatimString {
                    format: redis::VerbatimFormat::Text,
                    text: info,
                };
            }
            b"CLUSTER" if self.cluster => return self.slots_reply(),
            b"ROLE" => {
                let role = if is_master { "master" } else { "slave" };
                let replicas = if is_master && self.cluster {
                    vec![Value::Array(vec![Value::BulkString(b"sim".to_vec())])]
                } else {
                    Vec::new()
                };
                return Value::Array(vec![
                    Value::BulkString(role.into()),
                    Value::Int(0),
                    Value::Array(replicas),
                ]);
            }
            _ => {}
        }
        let mut named = args.to_vec();
        named[0] = name;
        if self.cluster {
            let slot = slot_of(key_of(&named).expect("a command with a key"));
            let owner = self.shard_of_slot(slot);
            if owner != shard || !is_master {
                let s = &self.shards[owner];
                return error(&format!("MOVED {slot} {}", s.addresses[s.master]));
            }
        } else if !is_master {
            return error("READONLY You can't write against a read only replica.");
        }
        let s = &mut self.shards[shard];
        let reply = s.data.run(&named, now);
        if let Some(moment) = Moment::of(shard, &named, &reply) {
            self.moments.push(moment);
        }
        if let Some((prefix, fault)) = self.trip
            && written_key(&named).is_some_and(|key| key.starts_with(prefix))
        {
            self.trip = None;
            s.fault = fault;
        }
        if self.cluster && Keyspace::writes(&named[0]) {
            s.unreplicated.push_back((named, now));
        }
        reply
    }

    /// Once a write to a key starting with `prefix` is taken, its server gets `fault`: the
    /// write's reply still goes out (Redis failed right after it).
    pub(super) fn fault_after_write(&mut self, prefix: &'static [u8], fault: Fault) {
        self.trip = Some((prefix, fault));
    }

    /// The moments the protocol turned on since the last call.
    pub(super) fn take_moments(&mut self) -> Vec<Moment> {
        std::mem::take(&mut self.moments)
    }

    /// What a connection to `node` finds there now: the server's incarnation and fault,
    /// where `node` is a shard's master; `None` where no server is.
    pub(super) fn reach(&self, node: &str) -> Option<(u64, Fault)> {
        let (shard, is_master) = self.at(node)?;
        let s = &self.shards[shard];
        // A connection made before a restart or a failover is broken, to whichever server.
        Some((s.incarnation, if is_master { s.fault } else { Fault::None }))
    }

    /// Whether the replica of the shard whose master is at `node` has every write.
    pub(super) fn replicated(&self, node: &str) -> bool {
        self.cluster
            && self
                .at(node)
                .is_some_and(|(shard, _)| self.shards[shard].unreplicated.is_empty())
    }

    fn slots_reply(&self) -> Value {
        let node = |address: &str| {
            let (host, port) = address.rsplit_once(':').expect("host:port");
            Value::Array(vec![
                Value::BulkString(host.into()),
                Value::Int(port.parse().expect("a port")),
            ])
        };
        Value::Array(
            self.shards
                .iter()
                .map(|s| {
                    Value::Array(vec![
                        Value::Int(i64::from(s.slots.0)),
                        Value::Int(i64::from(s.slots.1)),
                        node(&s.addresses[s.master]),
                        node(&s.addresses[1 - s.master]),
                    ])
                })
                .collect(),
        )
    }
}

/// A clock's time as Redis keeps it: since the Unix epoch.
fn since_epoch(clock: &Clock) -> Duration {
    clock.now().duration_since(UNIX_EPOCH).unwrap_or_default()
}
