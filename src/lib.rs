//! verve: a thread-per-core HTTP service that counts the distinct ids it receives per
//! wall-clock window, exactly, and reports each window's count.
//!
//! # The pipeline
//!
//! Data flows one way, and so do the imports: a module uses only modules below it here.
//!
//! ```text
//!  clients ─HTTP─▶ worker (one thread per core: monoio runtime, SO_REUSEPORT listener)
//!                    connection ▶ handler ▶ http (parse, route) ▶ router ▶ batch (first-seen set)
//!                                                                          │
//!                              ingest: bounded channel of batches + watermarks
//!                                                                          ▼
//!                  recorder (one thread): the window sets, the reports, the callbacks' counts
//!                    └─ distributed (Redis thread, tokio): ids, flush marks, the report election
//!                                                                          │
//!                  sinks: stats log, Kafka (ReportSink) · callbacks (a pool of threads)
//! ```
//!
//! - [`service`] wires the parts together at start-up and stops them in order.
//! - [`worker`] reads and answers requests; only ids new to the worker in the current window
//!   go on, a batch per event-loop round ([`worker::batch`]).
//! - [`http`] is the codec and the routing: bytes in, a request head or a refusal out; no
//!   state, no sockets.
//! - [`ingest`] is the only way from the workers to the recorder: a bounded channel of batches,
//!   one watermark per worker (the oldest window it still holds ids of), and the per-window
//!   counts `--max-window-ids` bounds.
//! - [`recorder`] owns every open window's set, reports a window once it has closed, its grace
//!   has passed and every watermark is past it, and stamps callbacks with their count.
//! - [`sinks`] are where the reports and callbacks go; nothing there blocks the recorder.
//! - [`wal`] is the write-ahead log: each worker appends the ids new to it before their
//!   `ok` goes out, and the segments are read back at start.
//! - Below them all: [`clock`] (the system's time, or the simulator's), [`answer`] (routes and
//!   statuses), [`health`] (what `/readyz` checks), [`metrics`], [`window`] (the wall-clock
//!   windows), [`id_set`], [`config`], [`logs`], [`shutdown`] and [`systemd`].
//!
//! # Ordering rules
//!
//! - A worker stores its watermark before it queues an id and clears it only after the batch
//!   is sent; the recorder loads the watermarks before draining the channel, so a window it
//!   reports has every id a worker answered `ok` for.
//! - Shutdown runs top down: workers stop accepting, drain their connections and hand over
//!   their last batch, then drop their end of the channel; the recorder sees the channel
//!   disconnected, writes the last reports (or pushes the last ids to Redis), and the callback
//!   pool sends what is queued, each within `--shutdown-timeout-ms`.
//!
//! `ARCHITECTURE.md` has the same map with the threads and their channels.

pub mod answer;
pub mod clock;
pub mod config;
pub mod health;
pub mod http;
pub mod id_set;
pub mod ingest;
pub mod logs;
pub mod metrics;
mod rate_limit;
pub mod recorder;
mod report;
pub mod service;
pub mod shutdown;
pub mod sinks;
pub mod systemd;
pub mod trace;
pub mod wal;
pub mod window;
pub mod worker;

pub use service::{BackendSetup, Service, StartError, start};
