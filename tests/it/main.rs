//! verve's integration tests, in one binary: each module starts the real `verve` (or
//! `verve-tokio`) and the real parts it talks to (`common`, one file per part) on ports chosen
//! at run time, and checks what a user would see: answers, counts, log lines, records.
//!
//! `tests/hot_path_allocations.rs` stays a binary of its own: it installs a counting global
//! allocator, which would count every other test's allocations too.

mod common;

#[cfg(feature = "tokio-baseline")]
mod baseline;
mod callbacks;
mod chaos;
mod config;
mod conformance;
mod container;
mod counting;
mod distributed;
mod durability;
mod http_surface;
mod kafka;
mod metrics;
mod monitoring;
mod package;
mod parser_props;
mod powercut;
mod redis_stall;
mod restarts;
mod shutdown;
mod systemd;
