//! A real Kafka-protocol broker (tansu) on a port chosen at run time, and records read back.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::process::{Killable, free_port, wait_for_port};

/// A real Kafka-protocol broker (tansu) on a port chosen at run time. `scripts/test.sh`
/// installs tansu into `~/.cache/verve-test-tools` (or set `VERVE_TANSU`).
pub(crate) struct TansuBroker {
    pub(crate) port: u16,
    /// The port it tells clients to connect to: its own, or a proxy's in front of it.
    advertised_port: u16,
    process: Killable,
    storage: String,
    /// Clients must authenticate (SASL SCRAM-SHA-512, the users it stores).
    authentication: bool,
    dir: tempfile::TempDir,
}

impl TansuBroker {
    pub(crate) fn binary() -> PathBuf {
        std::env::var_os("VERVE_TANSU").map_or_else(
            || {
                let home = std::env::var_os("HOME").expect("HOME");
                PathBuf::from(home).join(".cache/verve-test-tools/bin/tansu")
            },
            PathBuf::from,
        )
    }

    /// A broker keeping everything in memory.
    pub(crate) fn start_memory() -> TansuBroker {
        TansuBroker::start_with("memory://tansu/")
    }

    /// A broker on `SQLite` in its own directory: it keeps topics and producer state over a
    /// kill and restart.
    pub(crate) fn start_sqlite() -> TansuBroker {
        TansuBroker::start_with("sqlite://tansu.db")
    }

    fn start_with(storage: &str) -> TansuBroker {
        let port = free_port();
        let mut broker = TansuBroker::on_port(port, storage);
        broker.restart();
        broker
    }

    /// A broker on `SQLite` with `topic`, that takes only clients authenticated with SASL
    /// SCRAM-SHA-512 as `user` with `password`. (tansu takes the user and the topic from a
    /// client without authentication, so they are made before it requires it.)
    pub(crate) fn start_requiring_scram(user: &str, password: &str, topic: &str) -> TansuBroker {
        let mut broker = TansuBroker::start_sqlite();
        broker.create_topic(topic);
        broker.tansu(&["user", "create", user, password]);
        broker.kill();
        broker.authentication = true;
        broker.restart();
        broker
    }

    /// Starts it again on the same storage without requiring authentication (to read back
    /// what was written with it).
    pub(crate) fn stop_requiring_authentication(&mut self) {
        self.kill();
        self.authentication = false;
        self.restart();
    }

    /// Runs `tansu <args> --broker <this broker>`; it must succeed.
    fn tansu(&self, args: &[&str]) {
        let status = Command::new(TansuBroker::binary())
            .args(args)
            .arg("--broker")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "tansu {args:?} failed");
    }

    /// A broker to start later, on a port chosen now.
    pub(crate) fn on_port(port: u16, storage: &str) -> TansuBroker {
        TansuBroker {
            port,
            advertised_port: port,
            process: Killable::default(),
            storage: storage.to_owned(),
            authentication: false,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Clients are told to connect to `port` (a proxy in front of the broker) instead.
    pub(crate) fn advertise(mut self, port: u16) -> TansuBroker {
        self.advertised_port = port;
        self
    }

    pub(crate) fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised_port);
        self.process = Killable::spawn(
            Command::new(TansuBroker::binary())
                .current_dir(self.dir.path())
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &advertised,
                ])
                .args(["--storage-engine", &self.storage])
                .args(self.authentication.then_some("--authentication"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "tansu (scripts/test.sh installs it)",
        );
        wait_for_port(self.port, "tansu");
    }

    pub(crate) fn create_topic(&self, topic: &str) {
        self.tansu(&["topic", "create", topic, "--partitions", "1"]);
    }

    pub(crate) fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a stopped broker keeps its connections and
    /// answers nothing.
    pub(crate) fn pause(&self, stop: bool) {
        self.process
            .signal(if stop { libc::SIGSTOP } else { libc::SIGCONT });
    }
}

/// Every record of partition 0 of `topic`, as (key, value), reading until `n` have arrived
/// (and a moment more, to catch duplicates) or `timeout` passes.
pub(crate) fn kafka_records(
    bootstrap: &str,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<(String, serde_json::Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "verve-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&partitions).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut settle: Option<Instant> = None;
    while Instant::now() < deadline && settle.is_none_or(|t| Instant::now() < t) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            let value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            got.push((key, value));
        }
        if got.len() >= n && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    got
}
