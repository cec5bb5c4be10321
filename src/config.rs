//! Command-line and environment configuration: one clap definition, every flag also read from
//! `VERVE_<FLAG>`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::window::WindowClock;

/// Which io driver the worker runtimes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverChoice {
    /// `io_uring` with `SINGLE_ISSUER` and `DEFER_TASKRUN`; start-up fails if the kernel refuses it.
    Uring,
    /// epoll (monoio's legacy driver).
    Epoll,
    /// `io_uring` when the kernel allows it, else epoll with one log line saying why.
    Auto,
}

/// How callbacks are sent to the `endpoint` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CallbackMethod {
    /// POST with a JSON body `{"count":N,"window_start":"...","window_secs":L}`.
    Post,
    /// GET with `count=N` added to the endpoint's query.
    Get,
}

/// What an `ok` survives (`--durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// A crash of the process: the id's record is in the log's file (the kernel's page cache)
    /// before the answer; a crash of the host loses at most the answers of one
    /// `--wal-fsync-ms` span.
    Process,
    /// A crash of the host: the answer waits for the fdatasync that covers its record.
    Host,
    /// Nothing: no log; a crash loses the ids not yet reported.
    Off,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "verve", version, about, long_about = None)]
/// The command line and its environment variables (README, Configuration).
pub struct Config {
    /// Address every worker listens on (`SO_REUSEPORT`, one listener per worker).
    #[arg(long, env = "VERVE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Number of worker threads [default: number of cores].
    #[arg(long, env = "VERVE_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// Pin worker i to core i (modulo the number of cores).
    #[arg(long, env = "VERVE_PIN_CORES", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin_cores: bool,

    /// I/O driver of the worker runtimes.
    #[arg(long, env = "VERVE_DRIVER", value_enum, default_value_t = DriverChoice::Auto)]
    pub driver: DriverChoice,

    /// Length of a counting window in seconds; windows are aligned to the Unix epoch.
    #[arg(long, env = "VERVE_WINDOW_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub window_secs: u64,

    /// How long after a window closes its report is written.
    #[arg(long, env = "VERVE_REPORT_GRACE_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub report_grace_ms: u64,

    /// File the per-window stats lines are appended to.
    #[arg(long, env = "VERVE_STATS_LOG", default_value = "verve-stats.log")]
    pub stats_log: PathBuf,

    /// File each callback's outcome (status, timeout, error) is appended to, one line each;
    /// reopened on SIGHUP like the stats log.
    #[arg(
        long,
        env = "VERVE_CALLBACK_LOG",
        default_value = "verve-callbacks.log"
    )]
    pub callback_log: PathBuf,

    /// HTTP method of callbacks to a request's `endpoint`.
    #[arg(long, env = "VERVE_CALLBACK_METHOD", value_enum, default_value_t = CallbackMethod::Post)]
    pub callback_method: CallbackMethod,

    /// Threads sending callbacks.
    #[arg(long, env = "VERVE_CALLBACK_THREADS", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub callback_threads: u16,

    /// Callbacks waiting for a thread, and as many again waiting behind full bulkheads
    /// (`--callback-max-in-flight`); past either, callbacks are dropped (counted and logged).
    #[arg(long, env = "VERVE_CALLBACK_QUEUE", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub callback_queue: u64,

    /// Total time one callback may take: resolve, connect, send, receive.
    #[arg(long, env = "VERVE_CALLBACK_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub callback_timeout_ms: u64,

    /// Callbacks in flight to one destination (host and port) at most; the others wait in that
    /// destination's line (counted in `--callback-queue`), so that one slow endpoint cannot
    /// hold every callback thread.
    #[arg(long, env = "VERVE_CALLBACK_MAX_IN_FLIGHT", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub callback_max_in_flight: u16,

    /// Consecutive timeouts or connection errors after which a destination's circuit breaker
    /// opens: its callbacks are skipped (outcome `circuit_open`) for the cool-down.
    #[arg(long, env = "VERVE_CALLBACK_BREAKER_FAILURES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub callback_breaker_failures: u32,

    /// How long an open circuit breaker skips its destination before one callback probes it.
    #[arg(long, env = "VERVE_CALLBACK_BREAKER_COOLDOWN_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub callback_breaker_cooldown_ms: u64,

    /// Allow callbacks to loopback, private (RFC 1918, unique-local) and CGNAT addresses.
    /// Link-local, multicast, broadcast and unspecified addresses are always refused.
    #[arg(long, env = "VERVE_CALLBACK_ALLOW_PRIVATE")]
    pub callback_allow_private: bool,

    /// Redis shared by every instance counting together, e.g. `redis://127.0.0.1:6379/0`.
    /// Without it (or `--redis-cluster-nodes`), verve counts standalone.
    #[arg(long, env = "VERVE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Seed nodes of a Redis Cluster shared by every instance counting together, instead of
    /// `--redis-url`, e.g. `redis://10.0.0.1:6379,redis://10.0.0.2:6379`.
    #[arg(
        long,
        env = "VERVE_REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        conflicts_with = "redis_url"
    )]
    pub redis_cluster_nodes: Vec<String>,

    /// Keys each window's ids are spread over in Redis, by a hash of the id [default: 1 with
    /// `--redis-url`, 64 with `--redis-cluster-nodes`, so that a window spreads over every
    /// master].
    #[arg(long, env = "VERVE_REDIS_SHARDS",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub redis_shards: Option<u32>,

    /// How long after a window's end its report may wait: for Redis to answer (then the local
    /// count is reported as `mode=degraded`), or for every live instance's flush mark.
    #[arg(long, env = "VERVE_REPORT_MAX_DELAY_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub report_max_delay_secs: u64,

    /// An instance whose heartbeat in Redis is older than this counts as gone.
    #[arg(long, env = "VERVE_REDIS_HEARTBEAT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub redis_heartbeat_ms: u64,

    /// Kafka bootstrap servers, e.g. `broker-1:9092,broker-2:9092`. Without it, reports go
    /// only to the stats log.
    #[arg(long, env = "VERVE_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// Topic the reports are produced to.
    #[arg(long, env = "VERVE_KAFKA_TOPIC", default_value = "verve-unique-counts")]
    pub kafka_topic: String,

    /// A librdkafka setting, `key=value`, e.g. `security.protocol=SASL_SSL`. Repeatable;
    /// several in one value (or in the environment) are separated by `;`.
    #[arg(long = "kafka-option", env = "VERVE_KAFKA_OPTION", value_delimiter = ';',
          value_parser = parse_kafka_option)]
    pub kafka_options: Vec<String>,

    /// Create the topic (1 partition, replication 1) when it does not exist.
    #[arg(long, env = "VERVE_KAFKA_CREATE_TOPIC")]
    pub kafka_create_topic: bool,

    /// Name of this instance in Redis and in Kafka records [default: hostname:port].
    #[arg(long, env = "VERVE_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Close a keep-alive connection that sends nothing for this long.
    #[arg(long, env = "VERVE_IDLE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub idle_timeout_ms: u64,

    /// Close a connection whose request head takes longer than this to arrive.
    #[arg(long, env = "VERVE_HEAD_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub head_timeout_ms: u64,

    /// Open connections per worker; a connection over the cap gets `503` and is closed.
    #[arg(long, env = "VERVE_MAX_CONNECTIONS", default_value_t = 16_384,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Batches of ids waiting for the recorder (all workers together); when it is full,
    /// requests with ids new to their worker get `503 failed`.
    #[arg(long, env = "VERVE_INGEST_QUEUE", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub ingest_queue: u64,

    /// The most distinct ids this instance holds for one window; past it a new id gets
    /// `503 failed` (an id already counted still gets `ok`). Each id costs about 25-50 bytes
    /// (the recorder's and the workers' sets): the default is about 0.6 GiB.
    #[arg(long, env = "VERVE_MAX_WINDOW_IDS", default_value_t = 10_000_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
    pub max_window_ids: u64,

    /// What an `ok` survives: `process` (a crash of the process), `host` (a crash of the
    /// host: the answer waits for the log's fdatasync) or `off` (no log).
    #[arg(long, env = "VERVE_DURABILITY", value_enum, default_value_t = Durability::Process)]
    pub durability: Durability,

    /// Directory of the write-ahead log [default: `$STATE_DIRECTORY/wal` under systemd, else
    /// `./verve-wal`].
    #[arg(long, env = "VERVE_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// With `--durability process`, the most a crash of the host loses: the answers given
    /// within this span. The log is synced in the background every half of it, and answers
    /// wait for a sync that ends later.
    #[arg(long, env = "VERVE_WAL_FSYNC_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub wal_fsync_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight requests and queued callbacks may take to finish.
    #[arg(long, env = "VERVE_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_timeout_ms: u64,
}

impl Config {
    /// Parses the command line and environment. On a wrong value this prints one line naming
    /// the flag and exits with status 2; `--help` and `--version` print and exit 0.
    pub fn from_args() -> Self {
        match Self::try_parse() {
            Ok(config) => config,
            Err(e) => exit_with_one_line(&e),
        }
    }

    /// What the flags configure, validated and in the units and types the parts use: one
    /// settings struct per consumer, so that each takes only its own.
    pub fn settings(&self) -> Settings {
        let clock = WindowClock::new(self.window_secs);
        let shutdown_timeout = Duration::from_millis(self.shutdown_timeout_ms);
        // clap refuses both flags at once.
        let redis = match (&self.redis_url, self.redis_cluster_nodes.is_empty()) {
            (Some(url), _) => Some(RedisTarget::Single(url.clone())),
            (None, false) => Some(RedisTarget::Cluster(self.redis_cluster_nodes.clone())),
            (None, true) => None,
        };
        let distributed = redis.map(|redis| DistributedSettings {
            // One key per window on a single node; spread over the masters of a cluster.
            shards: self.redis_shards.unwrap_or(match redis {
                RedisTarget::Single(_) => 1,
                RedisTarget::Cluster(_) => 64,
            }),
            redis,
            report_max_delay: Duration::from_secs(self.report_max_delay_secs),
            heartbeat: Duration::from_millis(self.redis_heartbeat_ms),
        });
        Settings {
            workers: WorkerSettings {
                count: self
                    .workers
                    .and_then(|n| NonZeroUsize::new(n.into()))
                    .or_else(|| std::thread::available_parallelism().ok())
                    .unwrap_or(NonZeroUsize::MIN),
                listen: self.listen,
                pin_cores: self.pin_cores,
                driver: self.driver,
                idle_timeout: Duration::from_millis(self.idle_timeout_ms),
                head_timeout: Duration::from_millis(self.head_timeout_ms),
                max_connections: self.max_connections as usize,
                shutdown_timeout,
            },
            recorder: RecorderSettings {
                clock,
                grace: Duration::from_millis(self.report_grace_ms),
                ingest_queue: usize::try_from(self.ingest_queue).unwrap_or(usize::MAX),
                max_window_ids: self.max_window_ids,
                shutdown_timeout,
            },
            callbacks: CallbackSettings {
                method: self.callback_method,
                threads: usize::from(self.callback_threads),
                queue: usize::try_from(self.callback_queue).unwrap_or(usize::MAX),
                timeout: Duration::from_millis(self.callback_timeout_ms),
                max_in_flight: usize::from(self.callback_max_in_flight),
                breaker_failures: self.callback_breaker_failures,
                breaker_cooldown: Duration::from_millis(self.callback_breaker_cooldown_ms),
                allow_private: self.callback_allow_private,
            },
            distributed,
            kafka: self.kafka_brokers.as_ref().map(|brokers| KafkaSettings {
                brokers: brokers.clone(),
                topic: self.kafka_topic.clone(),
                options: self.kafka_options.clone(),
                create_topic: self.kafka_create_topic,
            }),
            instance_id: self.instance_id.clone(),
            wal: (self.durability != Durability::Off).then(|| WalSettings {
                dir: self.wal_dir.clone().unwrap_or_else(default_wal_dir),
                host: self.durability == Durability::Host,
                fsync_interval: Duration::from_millis(self.wal_fsync_ms),
            }),
        }
    }
}

/// `$STATE_DIRECTORY/wal` under systemd (the first directory when it names several), else
/// `./verve-wal`.
fn default_wal_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|dirs| {
            let first = dirs.to_string_lossy().split(':').next()?.to_owned();
            (!first.is_empty()).then(|| PathBuf::from(first).join("wal"))
        })
        .unwrap_or_else(|| PathBuf::from("verve-wal"))
}

/// Everything the flags configure, by consumer.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The worker threads.
    pub workers: WorkerSettings,
    /// The recorder.
    pub recorder: RecorderSettings,
    /// The callback pool.
    pub callbacks: CallbackSettings,
    /// Counting through Redis, when `--redis-url` or `--redis-cluster-nodes` is given.
    pub distributed: Option<DistributedSettings>,
    /// Reports to Kafka, when `--kafka-brokers` is given.
    pub kafka: Option<KafkaSettings>,
    /// `--instance-id`.
    pub instance_id: Option<String>,
    /// The write-ahead log, unless `--durability off`.
    pub wal: Option<WalSettings>,
}

/// What the write-ahead log runs with.
#[derive(Debug, Clone)]
pub struct WalSettings {
    /// `--wal-dir`.
    pub dir: PathBuf,
    /// `--durability host`: answers wait for the sync of their records.
    pub host: bool,
    /// `--wal-fsync-ms`: with `--durability process`, how long a record may go unsynced
    /// before answers wait for its sync.
    pub fsync_interval: Duration,
}

impl Settings {
    /// This instance's name: `--instance-id`, else the hostname and the port of `listen`
    /// (the bound port, when `--listen` asked for port 0).
    pub fn instance_id(&self, listen: SocketAddr) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_or_else(|_| "localhost".to_owned(), |h| h.trim().to_owned());
            format!("{host}:{}", listen.port())
        })
    }
}

/// What the workers run with.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// `--workers`, or one per core.
    pub count: NonZeroUsize,
    /// `--listen`.
    pub listen: SocketAddr,
    /// `--pin-cores`.
    pub pin_cores: bool,
    /// `--driver`.
    pub driver: DriverChoice,
    /// `--idle-timeout-ms`.
    pub idle_timeout: Duration,
    /// `--head-timeout-ms`.
    pub head_timeout: Duration,
    /// `--max-connections`, per worker.
    pub max_connections: usize,
    /// `--shutdown-timeout-ms`: how long open connections may take to finish.
    pub shutdown_timeout: Duration,
}

/// What the recorder and the ingest channel run with.
#[derive(Debug, Clone)]
pub struct RecorderSettings {
    /// `--window-secs`.
    pub clock: WindowClock,
    /// `--report-grace-ms`.
    pub grace: Duration,
    /// `--ingest-queue`: batches the channel holds.
    pub ingest_queue: usize,
    /// `--max-window-ids`.
    pub max_window_ids: u64,
    /// `--shutdown-timeout-ms`: how long the last reports and pushes may take.
    pub shutdown_timeout: Duration,
}

/// What the callback pool runs with.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    /// `--callback-method`.
    pub method: CallbackMethod,
    /// `--callback-threads`.
    pub threads: usize,
    /// `--callback-queue`.
    pub queue: usize,
    /// `--callback-timeout-ms`.
    pub timeout: Duration,
    /// `--callback-max-in-flight`, per destination.
    pub max_in_flight: usize,
    /// `--callback-breaker-failures`.
    pub breaker_failures: u32,
    /// `--callback-breaker-cooldown-ms`.
    pub breaker_cooldown: Duration,
    /// `--callback-allow-private`.
    pub allow_private: bool,
}

/// The Redis verve counts through.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// `--redis-url`: one Redis server.
    Single(String),
    /// `--redis-cluster-nodes`: some nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

/// What counting through Redis runs with.
#[derive(Debug, Clone)]
pub struct DistributedSettings {
    /// The Redis to count through.
    pub redis: RedisTarget,
    /// `--redis-shards`: keys each window's ids are spread over.
    pub shards: u32,
    /// `--report-max-delay-secs`.
    pub report_max_delay: Duration,
    /// `--redis-heartbeat-ms`.
    pub heartbeat: Duration,
}

/// What `--kafka-*` configure.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `--kafka-brokers`.
    pub brokers: String,
    /// `--kafka-topic`.
    pub topic: String,
    /// `--kafka-option`: librdkafka settings passed through, `key=value`.
    pub options: Vec<String>,
    /// `--kafka-create-topic`.
    pub create_topic: bool,
}

fn parse_kafka_option(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.trim().is_empty() => Ok(s.to_owned()),
        _ => Err("expected key=value".to_owned()),
    }
}

/// clap's own message spans several lines (usage, a hint); an operator reading a journal wants
/// one line that names the flag.
fn exit_with_one_line(e: &clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("error: invalid arguments");
    eprintln!("{first}");
    std::process::exit(2);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let c = Config::try_parse_from(["verve"]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.window_secs, 60);
        assert_eq!(c.report_grace_ms, 1000);
        assert_eq!(c.stats_log, PathBuf::from("verve-stats.log"));
        assert_eq!(c.driver, DriverChoice::Auto);
        assert_eq!(c.callback_method, CallbackMethod::Post);
        assert!(c.pin_cores);
        assert!(!c.callback_allow_private);
    }

    #[test]
    fn settings_carry_the_flags_in_durations_per_consumer() {
        let c = Config::try_parse_from([
            "verve",
            "--workers",
            "3",
            "--report-grace-ms",
            "250",
            "--redis-cluster-nodes",
            "redis://127.0.0.1:7000",
            "--callback-breaker-cooldown-ms",
            "1500",
        ])
        .unwrap();
        let settings = c.settings();
        assert_eq!(settings.workers.count.get(), 3);
        assert_eq!(settings.workers.idle_timeout, Duration::from_mins(1));
        assert_eq!(settings.recorder.grace, Duration::from_millis(250));
        assert_eq!(settings.recorder.clock.secs(), 60);
        assert_eq!(
            settings.callbacks.breaker_cooldown,
            Duration::from_millis(1500)
        );
        let distributed = settings.distributed.unwrap();
        assert_eq!(distributed.shards, 64);
        assert_eq!(distributed.report_max_delay, Duration::from_mins(1));
        assert!(settings.kafka.is_none());
        let single = Config::try_parse_from(["verve", "--redis-url", "redis://127.0.0.1:1"]);
        assert_eq!(single.unwrap().settings().distributed.unwrap().shards, 1);
        assert!(
            Config::try_parse_from(["verve"])
                .unwrap()
                .settings()
                .distributed
                .is_none()
        );
    }

    #[test]
    fn a_wrong_value_names_its_flag() {
        let e = Config::try_parse_from(["verve", "--window-secs", "0"]).unwrap_err();
        let first = e.render().to_string();
        assert!(
            first.lines().next().unwrap().contains("--window-secs"),
            "{first}"
        );
        let e = Config::try_parse_from([
            "verve",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--redis-cluster-nodes",
            "redis://127.0.0.1:2",
        ])
        .unwrap_err();
        let first = e.render().to_string();
        let first = first.lines().next().unwrap();
        assert!(
            first.contains("--redis-url") && first.contains("--redis-cluster-nodes"),
            "{first}"
        );
        let e = Config::try_parse_from(["verve", "--driver", "kqueue"]).unwrap_err();
        assert!(
            e.render()
                .to_string()
                .lines()
                .next()
                .unwrap()
                .contains("--driver")
        );
    }
}
