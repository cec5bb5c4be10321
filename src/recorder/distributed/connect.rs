//! How a connection to a Redis server is opened, and how long it may take.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, ConnectionInfo, RedisError};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A Redis that takes longer than this to answer counts as failed: its ids are replayed once
/// it answers again. A stalled Redis (a partition without a reset) is found out after this.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a connection to a Redis server is opened: redis-rs's multiplexed connection
/// ([`RedisClients`]), or, in the protocol's simulation, a simulated server. Everything above
/// talks to what it opens through redis-rs's `ConnectionLike`, so the real and the simulated
/// servers are driven by the same code.
pub(crate) trait Connect {
    type Connection: ConnectionLike + Clone;

    /// Opens a connection to the server at `info`, `node` (`host:port`) by name.
    async fn connect(
        &self,
        node: &str,
        info: ConnectionInfo,
    ) -> Result<Self::Connection, RedisError>;
}

/// Connections over TCP with redis-rs, each bounded by the connect and response timeouts.
pub(crate) struct RedisClients;

impl Connect for RedisClients {
    type Connection = MultiplexedConnection;

    async fn connect(
        &self,
        _node: &str,
        info: ConnectionInfo,
    ) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT);
        Client::open(info)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}
