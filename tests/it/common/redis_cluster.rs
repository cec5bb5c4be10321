//! A real Redis Cluster of three masters and three replicas (Debian's redis-server), on ports
//! chosen at run time, which a test can fail over and whose masters it can kill.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::process::{Killable, free_port, listens, wait_for_port};
use super::redis::{SharedRedis, redis_cli};

pub(crate) struct ClusterNode {
    pub(crate) port: u16,
    process: Killable,
}

pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<ClusterNode>,
    masters: usize,
    dir: tempfile::TempDir,
}

/// A port whose cluster-bus port (port + 10000) is free too.
fn node_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A cluster node on `port`, keeping its cluster configuration (`nodes.conf`) in a folder of
/// `dir` of its own; nothing else is saved.
fn spawn_node(port: u16, dir: &std::path::Path) -> Killable {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    Killable::spawn(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&node_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "redis-server (scripts/test.sh installs it)",
    )
}

/// The port of a `CLUSTER NODES` address field, `ip:port@cport`.
fn port_of(address: &str) -> Option<u16> {
    address.split(['@', ':']).nth(1)?.parse().ok()
}

impl RedisCluster {
    /// Three masters with a replica each, ready: every slot served, every replica in sync.
    pub(crate) fn start() -> RedisCluster {
        RedisCluster::start_with(3, 1)
    }

    /// `masters` masters with `replicas` replicas each.
    pub(crate) fn start_with(masters: usize, replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes: Vec<ClusterNode> = Vec::new();
        while nodes.len() < masters * (1 + replicas) {
            let port = node_port();
            let clashes = |n: &ClusterNode| [port, port + 10_000].contains(&n.port);
            if nodes.iter().any(clashes) {
                continue;
            }
            // Its port or bus port may have been taken since it was found free (another
            // test's server): the node exits at once, and another port is tried.
            let mut process = spawn_node(port, dir.path());
            if listens(&mut process, port, "redis-server (cluster node)") {
                nodes.push(ClusterNode { port, process });
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("redis-cli");
        create
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        assert!(
            create.status().unwrap().success(),
            "redis-cli --cluster create"
        );
        let cluster = RedisCluster {
            nodes,
            masters,
            dir,
        };
        cluster.wait_ready(Duration::from_secs(30));
        cluster
    }

    /// `--redis-cluster-nodes` for verve: every node as a seed.
    pub(crate) fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.process.is_running())
            .map(|n| n.port)
    }

    /// `(port, role, master port of a replica)` of every node, as a live node sees them.
    fn roles(&self) -> Vec<(u16, String, Option<u16>)> {
        let Some(nodes) = self
            .live_ports()
            .find_map(|p| redis_cli(p, &["cluster", "nodes"]))
        else {
            return Vec::new();
        };
        let lines: Vec<Vec<&str>> = nodes.lines().map(|l| l.split(' ').collect()).collect();
        lines
            .iter()
            .filter(|f| f.len() > 3 && !f[2].contains("fail"))
            .filter_map(|f| {
                let port = port_of(f[1])?;
                let role = if f[2].contains("master") {
                    "master"
                } else {
                    "replica"
                };
                let master = lines
                    .iter()
                    .find(|m| m[0] == f[3])
                    .and_then(|m| port_of(m[1]));
                Some((port, role.to_owned(), master))
            })
            .collect()
    }

    /// Ports of the masters.
    pub(crate) fn masters(&self) -> Vec<u16> {
        self.roles()
            .into_iter()
            .filter(|(_, role, _)| role == "master")
            .map(|(port, ..)| port)
            .collect()
    }

    /// The port of the master that serves `key`.
    pub(crate) fn master_of_key(&self, key: &str) -> u16 {
        let port = self.live_ports().next().expect("a live node");
        let slot: u16 = redis_cli(port, &["cluster", "keyslot", key])
            .and_then(|s| s.trim().parse().ok())
            .expect("CLUSTER KEYSLOT");
        let nodes = redis_cli(port, &["cluster", "nodes"]).expect("CLUSTER NODES");
        nodes
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .filter(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"))
            .find(|f| {
                f[8..].iter().any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    match (lo.parse::<u16>(), hi.parse::<u16>()) {
                        (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                        _ => false,
                    }
                })
            })
            .and_then(|f| port_of(f[1]))
            .expect("a master serves the slot")
    }

    /// The slot ranges the master on `master` serves, as `CLUSTER NODES` lists them
    /// (`first-last`).
    pub(crate) fn slot_ranges(&self, master: u16) -> Vec<String> {
        let port = self.live_ports().next().expect("a live node");
        let nodes = redis_cli(port, &["cluster", "nodes"]).expect("CLUSTER NODES");
        nodes
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.len() > 8 && port_of(f[1]) == Some(master))
            .map(|f| f[8..].iter().map(|r| r.trim().to_owned()).collect())
            .unwrap_or_default()
    }

    /// The port of a replica of the master on `master`, if it has one now.
    fn replica_of(&self, master: u16) -> Option<u16> {
        self.roles()
            .into_iter()
            .find(|(_, role, of)| role == "replica" && *of == Some(master))
            .map(|(port, ..)| port)
    }

    /// Waits until every slot is served and every live replica is in sync with its master.
    pub(crate) fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.live_ports().all(|p| {
                let info = redis_cli(p, &["cluster", "info"]).unwrap_or_default();
                let repl = redis_cli(p, &["info", "replication"]).unwrap_or_default();
                info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            });
            if ok && self.masters().len() == self.masters {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ready"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `CLUSTER FAILOVER` on a replica of `master`: the replica takes over cleanly. Returns the
    /// new master's port once it is one.
    pub(crate) fn failover(&self, master: u16) -> u16 {
        self.try_failover(master, Duration::from_secs(10))
            .expect("the failover did not happen")
    }

    /// `CLUSTER FAILOVER` on a replica of `master`; the new master's port, or `None` if it
    /// has no replica now or the replica has not taken over within `timeout` (a replica that
    /// is behind may not).
    pub(crate) fn try_failover(&self, master: u16, timeout: Duration) -> Option<u16> {
        let replica = self.replica_of(master)?;
        redis_cli(replica, &["cluster", "failover"]).filter(|o| o.contains("OK"))?;
        let deadline = Instant::now() + timeout;
        while !self.masters().contains(&replica) {
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
        Some(replica)
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to every replica: a stopped replica stays
    /// connected and listed by its master, and acknowledges nothing.
    pub(crate) fn stop_replicas(&self, stop: bool) {
        let masters = self.masters();
        for node in self.nodes.iter().filter(|n| !masters.contains(&n.port)) {
            node.process
                .signal(if stop { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }

    /// A signal (SIGSTOP, SIGCONT) to the node on `port`.
    pub(crate) fn signal(&self, port: u16, sig: i32) {
        self.node(port).process.signal(sig);
    }

    /// Starts a killed node again, empty, with its cluster configuration: it rejoins, as a
    /// replica of the node that took its slots over.
    pub(crate) fn restart_node(&mut self, port: u16) {
        let dir = self.dir.path().to_owned();
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node");
        node.process = spawn_node(port, &dir);
        wait_for_port(port, "redis-server (cluster node)");
    }

    fn node(&self, port: u16) -> &ClusterNode {
        self.nodes.iter().find(|n| n.port == port).expect("a node")
    }

    /// SIGKILL of a node: what it held and had not replicated is gone.
    pub(crate) fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node");
        node.process.kill();
    }
}

impl SharedRedis for RedisCluster {
    fn flag(&self) -> (&'static str, String) {
        ("--redis-cluster-nodes", self.seeds())
    }

    fn kill_all(&mut self) {
        for node in &mut self.nodes {
            node.process.kill();
        }
    }

    fn port_of_key(&self, key: &str) -> u16 {
        self.master_of_key(key)
    }

    fn masters_with_slots(&self) -> Vec<(u16, Vec<String>)> {
        let masters = self.masters().into_iter();
        masters.map(|m| (m, self.slot_ranges(m))).collect()
    }

    /// Each node starts again with its cluster configuration (`nodes.conf`) but no data: the
    /// cluster comes back empty.
    fn start_all_empty(&mut self) {
        for node in &mut self.nodes {
            node.process = spawn_node(node.port, self.dir.path());
        }
        for node in &self.nodes {
            wait_for_port(node.port, "redis-server (cluster node)");
        }
        self.wait_ready(Duration::from_secs(30));
    }
}
