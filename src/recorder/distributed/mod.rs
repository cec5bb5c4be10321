//! Distributed counting through Redis (one node or a Redis Cluster): the recorder's
//! bookkeeping of what Redis may lack (`replicator`), the thread that talks to Redis
//! (`client`), how connections are opened (`connect`), the routing of commands to nodes
//! (`nodes`) by a cluster's slot map (`slots`), the keys (`keys`), the health `/readyz`
//! reads (`health`) and the windows a condition was logged of (`said_once`).
//!
//! Data flows one way: the recorder hands ids, callbacks waiting for a global count, flush
//! marks and settle requests to the Redis thread, and reads its replies without waiting.

mod client;
mod connect;
mod health;
mod keys;
mod nodes;
mod protocol;
mod replicator;
mod said_once;
#[cfg(test)]
mod sim;
mod slots;

pub use client::{RedisLink, RedisSettings};
pub use health::RedisHealth;
pub use nodes::Topology;
pub(crate) use replicator::{Departure, LeaveStep, Leaving, Verdict};
pub use replicator::{ReadyCallback, Replicator};

use redis::{ConnectionInfo, IntoConnectionInfo};

#[derive(Debug, thiserror::Error)]
/// A Redis flag that cannot be used.
pub enum RedisConfigError {
    #[error("--redis-url: {0}")]
    /// `--redis-url` is not a Redis URL.
    Url(redis::RedisError),
    #[error("--redis-cluster-nodes: {0}")]
    /// A `--redis-cluster-nodes` entry is not a Redis URL.
    ClusterNode(redis::RedisError),
    #[error("--redis-cluster-nodes: a cluster node must be a redis:// URL of host and port")]
    /// A `--redis-cluster-nodes` entry is not a TCP address.
    ClusterNodeNotTcp,
}

impl Topology {
    /// One Redis at `url`.
    pub fn single(url: &str) -> Result<Topology, RedisConfigError> {
        Ok(Topology::Single(
            url.into_connection_info().map_err(RedisConfigError::Url)?,
        ))
    }

    /// A Redis Cluster known by some of its nodes.
    pub fn cluster(seeds: &[String]) -> Result<Topology, RedisConfigError> {
        let seeds = seeds
            .iter()
            .map(|url| {
                let info: ConnectionInfo = url
                    .as_str()
                    .into_connection_info()
                    .map_err(RedisConfigError::ClusterNode)?;
                match info.addr {
                    redis::ConnectionAddr::Tcp(..) => Ok(info),
                    _ => Err(RedisConfigError::ClusterNodeNotTcp),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Topology::Cluster(seeds))
    }
}
