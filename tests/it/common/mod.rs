//! Test helpers, one file per real part the tests start or speak to: the `verve` process, a
//! raw HTTP client, a callback peer, Redis (one server or a cluster), a Kafka-protocol broker,
//! and the child processes and ports under them.

mod callback_peer;
mod fault_proxy;
mod http_client;
mod kafka;
mod process;
mod prometheus;
mod redis;
pub(crate) mod redis_cluster;
mod tmpfs;
mod verve;
mod windows;

pub(crate) use callback_peer::*;
pub(crate) use fault_proxy::*;
pub(crate) use http_client::*;
pub(crate) use kafka::*;
pub(crate) use process::*;
pub(crate) use prometheus::*;
pub(crate) use redis::*;
pub(crate) use tmpfs::*;
pub(crate) use verve::*;
pub(crate) use windows::*;
