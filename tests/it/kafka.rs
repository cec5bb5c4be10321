//! Reports to Kafka: read back from a real Kafka-protocol broker (tansu, started by the test on
//! a port chosen at run time), and through rdkafka's mock cluster for injected produce errors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::{Conn, Report, TansuBroker, Verve, free_port, kafka_records, metric, scrape};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const TOPIC: &str = "verve-unique-counts";

/// Asserts that the records are exactly the reports, one per window, keyed by window start.
fn assert_records_match(records: &[(String, serde_json::Value)], reports: &[Report]) {
    let by_key: BTreeMap<&str, Vec<&serde_json::Value>> =
        records.iter().fold(BTreeMap::new(), |mut m, (k, v)| {
            m.entry(k.as_str()).or_default().push(v);
            m
        });
    assert_eq!(by_key.len(), reports.len(), "{records:?} vs {reports:?}");
    for r in reports {
        let values = &by_key[r.window_start.as_str()];
        assert_eq!(values.len(), 1, "window {}: {values:?}", r.window_start);
        let v = values[0];
        assert_eq!(v["window_start"], r.window_start.as_str());
        assert_eq!(v["window_secs"], r.window_secs);
        assert_eq!(v["unique_requests"], r.unique_requests);
        assert_eq!(v["mode"], r.mode.as_str());
        assert_eq!(v["partial"], r.partial);
        assert!(v["instance"].as_str().is_some_and(|i| !i.is_empty()), "{v}");
    }
}

/// verve reporting every second to `bootstrap`.
fn verve_reporting_to(bootstrap: &str) -> Verve {
    Verve::options()
        .window_secs(1)
        .report_grace(Duration::from_millis(100))
        .kafka_brokers(bootstrap)
        .start()
}

/// Stops verve and asserts that the records in the topic are exactly its reports.
fn stop_and_compare(verve: Verve, bootstrap: &str) {
    let (status, reports) = verve.terminate(Duration::from_secs(30));
    assert!(status.success());
    assert!(!reports.is_empty());
    let got = kafka_records(bootstrap, TOPIC, reports.len(), Duration::from_secs(30));
    assert_records_match(&got, &reports);
}

fn send_some_ids(verve: &Verve, ids: std::ops::Range<i64>) {
    let mut conn = Conn::open(verve.addr);
    for id in ids {
        assert_eq!(conn.get(&format!("/api/verve/accept?id={id}")).status, 200);
    }
}

#[test]
fn records_read_back_equal_the_stats_log() {
    let broker = TansuBroker::start_memory();
    broker.create_topic(TOPIC);
    let verve = Verve::options()
        .window_secs(2)
        .report_grace(Duration::from_millis(300))
        .kafka_brokers(&broker.bootstrap())
        .start();
    for round in 0..4 {
        send_some_ids(&verve, round * 10..round * 10 + 5 + round);
        std::thread::sleep(Duration::from_millis(1500));
    }
    verve.wait_for_reports(3, Duration::from_secs(10));
    assert!(
        verve
            .wait_for_log("kafka: delivered", Duration::from_secs(10))
            .is_some()
    );
    // Deliveries are counted with their round trips.
    let metrics = scrape(verve.addr);
    let delivered = metric(
        &metrics,
        r#"verve_kafka_deliveries_total{result="delivered"}"#,
    );
    assert!(delivered >= 1, "{metrics}");
    assert!(metric(&metrics, "verve_kafka_delivery_microseconds_total") > 0);
    assert_eq!(
        metric(&metrics, r#"verve_kafka_deliveries_total{result="failed"}"#),
        0
    );
    let (status, reports) = verve.terminate(Duration::from_secs(20));
    assert!(status.success());
    assert!(reports.len() >= 3);
    let got = kafka_records(
        &broker.bootstrap(),
        TOPIC,
        reports.len(),
        Duration::from_secs(20),
    );
    assert_records_match(&got, &reports);
}

#[test]
fn injected_produce_errors_are_retried_and_delivered_once() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, 1, 1).unwrap();
    let verve = verve_reporting_to(&mock.bootstrap_servers());
    assert!(
        verve
            .wait_for_log(
                "kafka: topic verve-unique-counts is ready",
                Duration::from_secs(10)
            )
            .is_some()
    );
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 4],
    );
    send_some_ids(&verve, 0..7);
    verve.wait_for_reports(3, Duration::from_secs(10));
    assert!(
        verve
            .wait_for_log("kafka: delivered", Duration::from_secs(20))
            .is_some()
    );
    let (status, reports) = verve.terminate(Duration::from_secs(20));
    assert!(status.success());
    let got = kafka_records(
        &mock.bootstrap_servers(),
        TOPIC,
        reports.len(),
        Duration::from_secs(20),
    );
    assert_records_match(&got, &reports);
}

#[test]
fn a_broker_absent_at_start_up_gets_the_held_reports_when_it_appears() {
    let port = free_port();
    let mut broker = TansuBroker::on_port(port, "memory://tansu/");
    let verve = verve_reporting_to(&broker.bootstrap());
    // verve serves all along, and says why it is not ready.
    send_some_ids(&verve, 0..3);
    let ready = Conn::open(verve.addr).get("/readyz");
    assert_eq!(ready.status, 503);
    assert!(ready.body_str().contains("kafka"), "{}", ready.body_str());
    std::thread::sleep(Duration::from_secs(5));
    send_some_ids(&verve, 3..6);
    assert!(
        verve.reports().len() >= 3,
        "reports were held while the broker was absent"
    );
    broker.restart();
    broker.create_topic(TOPIC);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Conn::open(verve.addr).get("/readyz").status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_and_compare(verve, &broker.bootstrap());
}

#[test]
fn a_broker_killed_and_restarted_gets_every_report_exactly_once() {
    let mut broker = TansuBroker::start_sqlite();
    broker.create_topic(TOPIC);
    let verve = verve_reporting_to(&broker.bootstrap());
    send_some_ids(&verve, 0..4);
    verve.wait_for_reports(2, Duration::from_secs(10));
    assert!(
        verve
            .wait_for_log("kafka: delivered", Duration::from_secs(20))
            .is_some()
    );
    broker.kill();
    send_some_ids(&verve, 4..9);
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    send_some_ids(&verve, 9..12);
    std::thread::sleep(Duration::from_secs(2));
    stop_and_compare(verve, &broker.bootstrap());
}

#[test]
fn a_missing_topic_is_named_or_created_on_request() {
    let broker = TansuBroker::start_memory();
    let plain = Verve::options().kafka_brokers(&broker.bootstrap()).start();
    let line = plain
        .wait_for_log("does not exist", Duration::from_secs(20))
        .expect("a clear error");
    assert!(
        line.contains(TOPIC) && line.contains("--kafka-create-topic"),
        "{line}"
    );
    assert_eq!(Conn::open(plain.addr).get("/readyz").status, 503);
    // Gone before the topic exists, so that only the next instance's reports are in it.
    drop(plain);

    let creating = Verve::options()
        .window_secs(1)
        .kafka_create_topic()
        .kafka_brokers(&broker.bootstrap())
        .start();
    assert!(
        creating
            .wait_for_log(
                "topic verve-unique-counts is ready",
                Duration::from_secs(20)
            )
            .is_some()
    );
    send_some_ids(&creating, 0..2);
    creating.wait_for_reports(2, Duration::from_secs(10));
    stop_and_compare(creating, &broker.bootstrap());
}

/// A broker that requires SASL SCRAM-SHA-512: verve authenticates and delivers every report;
/// a wrong password is refused by the broker and said in the log.
#[test]
fn sasl_scram_completes_its_handshake_with_a_broker_that_requires_it() {
    let mut broker = TansuBroker::start_requiring_scram("verve", "secret", TOPIC);
    let scram = |password: &str| {
        Verve::options()
            .window_secs(1)
            .report_grace(Duration::from_millis(100))
            .kafka_brokers(&broker.bootstrap())
            .kafka_option("security.protocol=SASL_PLAINTEXT")
            .kafka_option("sasl.mechanism=SCRAM-SHA-512")
            .kafka_option(&format!("sasl.username=verve;sasl.password={password}"))
            .start()
    };
    let wrong = scram("wrong");
    assert!(
        wrong
            .wait_for_log("SASL authentication error", Duration::from_secs(20))
            .is_some(),
        "{:#?}",
        wrong.log_lines()
    );
    drop(wrong);
    let verve = scram("secret");
    send_some_ids(&verve, 0..5);
    verve.wait_for_reports(2, Duration::from_secs(10));
    assert!(
        verve
            .wait_for_log("kafka: delivered", Duration::from_secs(20))
            .is_some(),
        "{:#?}",
        verve.log_lines()
    );
    let (status, reports) = verve.terminate(Duration::from_secs(30));
    assert!(status.success());
    broker.stop_requiring_authentication();
    let got = kafka_records(
        &broker.bootstrap(),
        TOPIC,
        reports.len(),
        Duration::from_secs(30),
    );
    assert_records_match(&got, &reports);
}

#[test]
fn sasl_over_tls_with_scram_or_plain_is_built_in() {
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] {
        // No broker needed: librdkafka refuses, at start-up, a mechanism it was built without.
        let verve = Verve::options()
            .kafka_brokers("127.0.0.1:1")
            .kafka_option("security.protocol=SASL_SSL")
            .kafka_option(&format!("sasl.mechanism={mechanism}"))
            .kafka_option("sasl.username=verve;sasl.password=secret")
            .start();
        assert_eq!(
            Conn::open(verve.addr).get("/healthz").status,
            200,
            "{mechanism}"
        );
    }
}
