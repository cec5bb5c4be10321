//! Where each command goes: to the one Redis, or to the master that owns its key's slot in a
//! Redis Cluster, over one multiplexed connection per node (commands from several requests
//! share it, so many pipelines are in flight at once).
//!
//! Written here rather than taken from redis-rs's cluster client, which follows redirections
//! and reconnects out of sight: verve must learn of every error and every topology change
//! (a failover after `kill -9` can lose writes the old master acknowledged, which verve then
//! replays), and count redirections and errors per node for `/metrics`. redis-rs's sync
//! cluster pipelines do not follow MOVED at all (see the README). Every error drops the node's
//! connection; the next command reconnects.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use redis::aio::ConnectionLike;
use redis::{Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, Value};

use super::connect::Connect;
use super::health::RedisHealth;
use super::keys::SLOTS;
use super::slots::{Target, a_slot_of_each, masters_of, parse_slots, redirect, served_by};
use crate::metrics::Metrics;

/// Redirections followed for one command before the call fails.
const MAX_REDIRECTS: usize = 5;

/// The `run_id` field of an `INFO server` reply.
pub(super) fn run_id(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(str::trim)
}

/// When the server of an `INFO server` reply started, to the whole second it started in:
/// Redis's uptime is its clock's whole seconds now less those when it started, so the two
/// fields give that second exactly. Windows end on whole seconds, so "started before a
/// window's end" holds of the second as of the moment. A server without `server_time_usec`
/// (before Redis 6.2) is read on this instance's clock (`here`) instead.
pub(super) fn server_started(info: &str, here: SystemTime) -> Option<SystemTime> {
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    let uptime = field("uptime_in_seconds")?;
    let here = here.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let now = field("server_time_usec").map_or(here, |us| us / 1_000_000);
    Some(UNIX_EPOCH + Duration::from_secs(now.saturating_sub(uptime)))
}

/// A master a failover replaced: the slots it served, and when this process found it so.
#[derive(Debug, Clone)]
struct Replaced {
    slots: Vec<(u16, u16)>,
    found_at: SystemTime,
}

/// What verve talks to.
#[derive(Debug, Clone)]
pub enum Topology {
    /// One Redis server.
    Single(ConnectionInfo),
    /// Seed nodes; the masters are learnt from `CLUSTER SLOTS`.
    Cluster(Vec<ConnectionInfo>),
}

/// A command and the slot of the key it touches, which routes it in a cluster (a command
/// without a key, such as `WAIT`, is given the slot of the key it is about).
pub(crate) struct Routed {
    pub(crate) slot: u16,
    pub(crate) cmd: Cmd,
}

pub(crate) struct Nodes<C: Connect> {
    connect: C,
    topology: Topology,
    /// Cluster: the first slot of each range → its last slot and its master (`host:port`).
    slots: RefCell<BTreeMap<u16, (u16, String)>>,
    conns: RefCell<HashMap<String, C::Connection>>,
    /// Set by an error or a redirection: the slot map is read again before the next call.
    refresh_wanted: Cell<bool>,
    /// The `run_id` each master (`host:port`) last answered the probe with: a new one at the
    /// same address is a restarted server, which may have come back empty.
    run_ids: RefCell<HashMap<String, String>>,
    /// Masters a failover replaced, not asked yet whether they restarted: the next probe asks.
    replaced: RefCell<BTreeMap<String, Replaced>>,
    health: Arc<RedisHealth>,
    metrics: Arc<Metrics>,
}

impl<C: Connect> Nodes<C> {
    pub(crate) fn new(
        connect: C,
        topology: Topology,
        health: Arc<RedisHealth>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Nodes {
            connect,
            topology,
            slots: RefCell::new(BTreeMap::new()),
            conns: RefCell::new(HashMap::new()),
            refresh_wanted: Cell::new(true),
            run_ids: RefCell::new(HashMap::new()),
            replaced: RefCell::new(BTreeMap::new()),
            health,
            metrics,
        }
    }

    /// Runs the commands, one pipeline per node, the nodes concurrently, and returns their
    /// replies in order. Follows MOVED and ASK; any other error fails the whole call (some of
    /// the commands may have been applied).
    pub(crate) async fn run(&self, cmds: &[Routed]) -> Result<Vec<Value>, RedisError> {
        self.run_routed(cmds)
            .await
            .inspect_err(|e| self.health.failed(e))
    }

    /// Whether every node answers: in a cluster, the slot map is read again and every master
    /// answers `INFO server`. Redis counts as answering again only after this succeeds, so
    /// that one failed master does not make verve replay everything at every call the others
    /// answer. A master whose `run_id` changed since its last probe has restarted: what it
    /// held may be gone, report claims included, which the health records with the slots it
    /// served and its start. So does a master a failover replaced, found restarted before
    /// this process found it replaced, once it answers: a replica that synced what it came
    /// back with and then took over keeps its own, earlier start (defect 32 of
    /// docs/reliability.md).
    pub(crate) async fn probe(&self) -> Result<(), RedisError> {
        let masters: Vec<String> = match &self.topology {
            Topology::Single(info) => vec![info.addr.to_string()],
            Topology::Cluster(_) => {
                self.refresh_slots().await?;
                masters_of(&self.slots.borrow())
            }
        };
        let replaced = self.replaced.borrow().clone();
        let asked = masters.iter().map(|node| (node.clone(), None)).chain(
            replaced
                .into_iter()
                .map(|(node, replaced)| (node, Some(replaced))),
        );
        let infos = asked.map(|(node, replaced)| async move {
            let info = self.server_info(&node).await;
            (node, replaced, info)
        });
        // Every answer is read, a failed master's error returned after: a restart another
        // answer shows is not lost with the probe.
        let mut failed = Ok(());
        for (node, replaced, info) in join_all(infos).await {
            match info {
                Ok(info) => self.answered_probe(&node, replaced, &info),
                // A replaced master that does not answer is asked again at the next probe.
                Err(_) if replaced.is_some() => {}
                Err(e) => failed = failed.and(Err(e)),
            }
        }
        failed
    }

    /// A node's `INFO server` answer to the probe: where its run id changed, it restarted.
    fn answered_probe(&self, node: &str, replaced: Option<Replaced>, info: &str) {
        if replaced.is_some() {
            self.replaced.borrow_mut().remove(node);
        }
        let Some(run_id) = run_id(info) else {
            return;
        };
        let before = self
            .run_ids
            .borrow_mut()
            .insert(node.to_owned(), run_id.to_owned());
        if before.is_some_and(|before| before != run_id) {
            log::warn!(
                "redis: {node} restarted: what it held may be gone; ids and report claims are \
                 set again"
            );
            let now = self.health.time().now();
            let started = server_started(info, now).unwrap_or(now);
            match replaced {
                None => self.health.server_restarted(&self.served_by(node), started),
                // Restarted while it was master, it may have handed its empty data set to the
                // replica that took over. Restarted after it was replaced (it failed, and
                // came back as a replica), it lost nothing the slots hold.
                Some(replaced) if started <= replaced.found_at => {
                    self.health.server_restarted(&replaced.slots, started);
                }
                Some(_) => {}
            }
        }
    }

    /// `INFO server` of one node.
    async fn server_info(&self, node: &str) -> Result<String, RedisError> {
        let mut conn = self.connection(node).await?;
        redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .inspect_err(|e| self.node_failed(node, e))
    }

    /// A slot of each master, as far as this process knows the cluster's: `Routed` commands
    /// about no key reach every master by these.
    pub(crate) fn master_slots(&self) -> Vec<u16> {
        match &self.topology {
            Topology::Single(_) => vec![0],
            Topology::Cluster(_) => a_slot_of_each(&self.slots.borrow()),
        }
    }

    /// The slot ranges a master serves.
    fn served_by(&self, node: &str) -> Vec<(u16, u16)> {
        match &self.topology {
            Topology::Single(_) => vec![(0, SLOTS - 1)],
            Topology::Cluster(_) => served_by(&self.slots.borrow(), node),
        }
    }

    async fn run_routed(&self, cmds: &[Routed]) -> Result<Vec<Value>, RedisError> {
        let mut replies: Vec<Option<Value>> = vec![None; cmds.len()];
        let mut todo: Vec<(usize, Target)> = (0..cmds.len()).map(|i| (i, Target::Owner)).collect();
        for _ in 0..=MAX_REDIRECTS {
            if todo.is_empty() {
                break;
            }
            if self.refresh_wanted.get() {
                self.refresh_slots().await?;
            }
            // In the order of the nodes' names: the simulation replays a seed exactly.
            let mut rounds: BTreeMap<(String, bool), Vec<usize>> = BTreeMap::new();
            for (i, target) in todo.drain(..) {
                let (node, asking) = match target {
                    Target::Owner => (self.owner(cmds[i].slot)?, false),
                    Target::Moved(node) => (node, false),
                    Target::Ask(node) => (node, true),
                };
                rounds.entry((node, asking)).or_default().push(i);
            }
            let sent = rounds
                .into_iter()
                .map(|((node, asking), indexes)| async move {
                    let result = self.send(&node, asking, &indexes, cmds).await;
                    (node, indexes, result)
                });
            for (node, indexes, result) in join_all(sent).await {
                let values = match result {
                    Ok(values) => values,
                    Err(e) => {
                        self.node_failed(&node, &e);
                        return Err(e);
                    }
                };
                for (i, value) in indexes.into_iter().zip(values) {
                    match redirect(&value) {
                        Some(target) => {
                            self.metrics
                                .redis_redirect(matches!(target, Target::Ask(_)));
                            if matches!(target, Target::Moved(_)) {
                                // Reading the new map tells the recorder to replay.
                                self.refresh_wanted.set(true);
                            }
                            todo.push((i, target));
                        }
                        None => replies[i] = Some(value),
                    }
                }
            }
        }
        if !todo.is_empty() {
            return Err(RedisError::from((
                ErrorKind::ClientError,
                "redis cluster: too many redirections",
            )));
        }
        replies
            .into_iter()
            .map(|reply| {
                let value = reply.expect("every command answered");
                match value {
                    Value::ServerError(e) => Err(RedisError::from(e)),
                    value => Ok(value),
                }
            })
            .collect()
    }

    /// One pipeline to one node; the replies of `ASKING` are dropped.
    async fn send(
        &self,
        node: &str,
        asking: bool,
        indexes: &[usize],
        cmds: &[Routed],
    ) -> Result<Vec<Value>, RedisError> {
        let mut conn = self.connection(node).await?;
        let mut pipe = redis::pipe();
        for &i in indexes {
            if asking {
                pipe.cmd("ASKING");
            }
            pipe.add_command(cmds[i].cmd.clone());
        }
        let started = std::time::Instant::now();
        let values = conn.req_packed_commands(&pipe, 0, pipe.len()).await?;
        self.metrics.redis_round_trip(started.elapsed());
        if values.len() != pipe.len() {
            return Err(RedisError::from((
                ErrorKind::ParseError,
                "redis: a pipeline's replies do not match its commands",
            )));
        }
        Ok(if asking {
            values.into_iter().skip(1).step_by(2).collect()
        } else {
            values
        })
    }

    /// The node's connection, opened when there is none.
    async fn connection(&self, node: &str) -> Result<C::Connection, RedisError> {
        if let Some(conn) = self.conns.borrow().get(node) {
            return Ok(conn.clone());
        }
        let conn = self
            .connect
            .connect(node, self.connection_info(node)?)
            .await
            .inspect_err(|e| self.node_failed(node, e))?;
        self.metrics.redis_node_connected(node);
        self.conns
            .borrow_mut()
            .insert(node.to_owned(), conn.clone());
        Ok(conn)
    }

    fn connection_info(&self, node: &str) -> Result<ConnectionInfo, RedisError> {
        match &self.topology {
            Topology::Single(info) => Ok(info.clone()),
            Topology::Cluster(seeds) => {
                let (host, port) = node
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                    .ok_or_else(|| {
                        RedisError::from((
                            ErrorKind::ClientError,
                            "bad node address",
                            node.to_owned(),
                        ))
                    })?;
                let mut info = seeds[0].clone();
                info.addr = ConnectionAddr::Tcp(host.to_owned(), port);
                Ok(info)
            }
        }
    }

    /// The node that owns a slot.
    fn owner(&self, slot: u16) -> Result<String, RedisError> {
        match &self.topology {
            Topology::Single(info) => Ok(info.addr.to_string()),
            Topology::Cluster(_) => self
                .slots
                .borrow()
                .range(..=slot)
                .next_back()
                .filter(|(_, (last, _))| slot <= *last)
                .map(|(_, (_, node))| node.clone())
                .ok_or_else(|| {
                    self.refresh_wanted.set(true);
                    RedisError::from((ErrorKind::ClusterDown, "redis cluster: slot not covered"))
                }),
        }
    }

    fn node_failed(&self, node: &str, e: &RedisError) {
        self.metrics.redis_node_error(node);
        self.conns.borrow_mut().remove(node);
        if matches!(self.topology, Topology::Cluster(_)) {
            self.refresh_wanted.set(true);
        }
        log::debug!("redis {node}: {e}");
    }

    /// Cluster: reads the slot map from a known master or a seed. A master that changed for
    /// any slot is a topology change.
    async fn refresh_slots(&self) -> Result<(), RedisError> {
        let Topology::Cluster(seeds) = &self.topology else {
            self.refresh_wanted.set(false);
            return Ok(());
        };
        let mut candidates = masters_of(&self.slots.borrow());
        candidates.extend(seeds.iter().map(|s| s.addr.to_string()));
        let mut last_error = None;
        for node in candidates {
            let reply = match self.connection(&node).await {
                Ok(mut conn) => {
                    redis::cmd("CLUSTER")
                        .arg("SLOTS")
                        .query_async::<Value>(&mut conn)
                        .await
                }
                Err(e) => Err(e),
            };
            match reply.and_then(|v| parse_slots(&v, &node)) {
                Ok(map) if !map.is_empty() => {
                    self.install(map);
                    self.refresh_wanted.set(false);
                    return Ok(());
                }
                Ok(_) => {
                    last_error = Some(RedisError::from((
                        ErrorKind::ClusterDown,
                        "redis cluster: no slots assigned",
                    )));
                }
                Err(e) => {
                    self.node_failed(&node, &e);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            RedisError::from((ErrorKind::ClusterDown, "redis cluster: no node answered"))
        }))
    }

    fn install(&self, map: BTreeMap<u16, (u16, String)>) {
        let mut slots = self.slots.borrow_mut();
        if !slots.is_empty() && *slots != map {
            log::info!("redis cluster: the slot map changed; replaying what it may lack");
            self.health.topology_changed();
        }
        let masters = masters_of(&map);
        let mut replaced = self.replaced.borrow_mut();
        replaced.retain(|node, _| !masters.contains(node));
        let found_at = self.health.time().now();
        for node in masters_of(&slots) {
            if !masters.contains(&node) {
                let slots = served_by(&slots, &node);
                replaced.entry(node).or_insert(Replaced { slots, found_at });
            }
        }
        self.conns
            .borrow_mut()
            .retain(|node, _| masters.contains(node));
        *slots = map;
    }
}
