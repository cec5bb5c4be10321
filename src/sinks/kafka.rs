//! Kafka: every report also goes to a topic, keyed by its window start, from an idempotent
//! `acks=all` producer that the recorder polls (no async runtime). A small thread watches the
//! topic's metadata for `/readyz` and, with `--kafka-create-topic`, creates a missing topic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::Serialize;

use super::ReportSink;
use crate::config::KafkaSettings;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::report::WindowReport;

/// How often the watcher checks the topic.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("--kafka-option {0}: expected key=value")]
    Option(String),
    #[error("kafka client (--kafka-brokers, --kafka-option): {0}")]
    Client(KafkaError),
}

/// The producer's and the admin client's configuration.
fn client_config(settings: &KafkaSettings) -> Result<ClientConfig, KafkaSetupError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", "verve")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "300000");
    for option in &settings.options {
        let (key, value) = option
            .split_once('=')
            .ok_or_else(|| KafkaSetupError::Option(option.clone()))?;
        config.set(key.trim(), value.trim());
    }
    Ok(config)
}

/// The record's value.
#[derive(Serialize)]
struct KafkaRecord<'a> {
    window_start: &'a str,
    window_secs: u64,
    unique_requests: u64,
    mode: &'a str,
    instance: &'a str,
    partial: bool,
    /// Present, `true`, only on a report counted from the write-ahead log after a restart.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    recovered: bool,
    /// Present, `true`, only on an amended report: with the same key, a compacted topic
    /// keeps the window's final count.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    amended: bool,
}

/// Logs and counts every delivery result.
pub(crate) struct DeliveryLog {
    metrics: Arc<Metrics>,
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    /// When the report was queued: delivery minus that is the round trip to the brokers.
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, queued_at: Box<Instant>) {
        match result {
            Ok(m) => {
                self.metrics.kafka_delivered(queued_at.elapsed());
                log::info!(
                    "kafka: delivered {} to {} partition {} offset {}",
                    key_of(m),
                    m.topic(),
                    m.partition(),
                    m.offset()
                );
            }
            Err((e, m)) => {
                self.metrics.kafka_failed();
                log::error!(
                    "kafka: delivery to {} failed: {e}; the report stays only in the stats log: {}",
                    m.topic(),
                    m.payload().map(String::from_utf8_lossy).unwrap_or_default()
                );
            }
        }
    }
}

fn key_of<M: Message>(m: &M) -> String {
    m.key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default()
}

/// The producer side, owned by the recorder.
pub(crate) struct KafkaSink {
    producer: BaseProducer<DeliveryLog>,
    topic: String,
    instance: String,
}

impl KafkaSink {
    /// Creates the producer and starts the topic watcher. Nothing here waits for a broker: a
    /// broker that is down at start-up only delays delivery.
    pub(crate) fn start(
        settings: &KafkaSettings,
        instance: String,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Result<KafkaSink, KafkaSetupError> {
        let config = client_config(settings)?;
        let producer: BaseProducer<DeliveryLog> = config
            .create_with_context(DeliveryLog { metrics })
            .map_err(KafkaSetupError::Client)?;
        let admin: AdminClient<DefaultClientContext> =
            config.create().map_err(KafkaSetupError::Client)?;
        let watched = settings.clone();
        std::thread::Builder::new()
            .name("verve-kafka-watch".into())
            .spawn(move || watch_topic(&admin, &watched, &health))
            .map_err(|e| KafkaSetupError::Client(KafkaError::ClientCreation(e.to_string())))?;
        Ok(KafkaSink {
            producer,
            topic: settings.topic.clone(),
            instance,
        })
    }
}

impl ReportSink for KafkaSink {
    /// Queues a report for delivery. A report the producer refuses outright is logged as an
    /// error with its content; it stays in the stats log.
    fn write(&mut self, report: &WindowReport) {
        let value = serde_json::to_string(&KafkaRecord {
            window_start: &report.window_start,
            window_secs: report.window_secs,
            unique_requests: report.unique_requests,
            mode: report.mode.as_str(),
            instance: &self.instance,
            partial: report.partial,
            recovered: report.recovered,
            amended: report.amended,
        })
        .expect("a record of numbers and strings serializes");
        let record = BaseRecord::with_opaque_to(&self.topic, Box::new(Instant::now()))
            .key(&report.window_start)
            .payload(&value);
        if let Err((e, _)) = self.producer.send(record) {
            self.producer.context().metrics.kafka_failed();
            log::error!(
                "kafka: cannot queue the report ({e}); it stays only in the stats log: {value}"
            );
        }
    }

    /// Serves delivery results.
    fn poll(&mut self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Waits up to `timeout` for every queued report to be delivered.
    fn finish(&mut self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            log::error!(
                "kafka: {} reports not delivered at shutdown: {e}",
                self.producer.in_flight_count()
            );
        }
        let (delivered, failed) = self.producer.context().metrics.kafka_totals();
        log::info!("kafka: {delivered} reports delivered, {failed} failed");
    }
}

/// Keeps `health` up to date with whether the topic can be written; creates it when asked.
fn watch_topic(
    admin: &AdminClient<DefaultClientContext>,
    settings: &KafkaSettings,
    health: &Health,
) {
    let mut said = String::new();
    loop {
        let state = match admin
            .inner()
            .fetch_metadata(Some(&settings.topic), METADATA_TIMEOUT)
        {
            Ok(metadata) => {
                let topic = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == settings.topic);
                match topic {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                        "ready".to_owned()
                    }
                    _ if settings.create_topic => create_topic(admin, &settings.topic),
                    _ => format!(
                        "topic {} does not exist: create it, or start verve with --kafka-create-topic",
                        settings.topic
                    ),
                }
            }
            Err(e) => format!("brokers {} unreachable: {e}", settings.brokers),
        };
        let ready = state == "ready";
        if ready {
            health.set_up();
        } else {
            health.set_down();
        }
        if state != said {
            if ready {
                log::info!("kafka: topic {} is ready", settings.topic);
            } else {
                log::error!("kafka: {state}");
            }
            said = state;
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
}

fn create_topic(admin: &AdminClient<DefaultClientContext>, topic: &str) -> String {
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    match block_on(admin.create_topics([&new], &options)) {
        Ok(results) => match results.into_iter().next() {
            Some(Ok(_)) => format!("created topic {topic}"),
            Some(Err((_, e))) => format!("cannot create topic {topic}: {e}"),
            None => format!("cannot create topic {topic}: no answer"),
        },
        Err(e) => format!("cannot create topic {topic}: {e}"),
    }
}

/// Runs a future to completion on this thread: the admin client's futures are driven by
/// librdkafka's own threads, so parking until woken is all it takes.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(output) => return output,
            std::task::Poll::Pending => std::thread::park(),
        }
    }
}
