//! The operator kit against the real tools: the alert rules (`scripts/prometheus/`) through
//! `promtool`, the Grafana dashboard's expressions (`scripts/grafana/verve.json`) parsed by
//! `promtool` and checked against what a real verve exposes, and a real Prometheus scraping
//! a real verve under load, queried for the dashboard's main series.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{
    CallbackPeer, Conn, JOB, PeerBehaviour, Prometheus, Verve, percent_encode, promtool, scrape,
};

fn kit(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const RULES: &str = "scripts/prometheus/verve-rules.yml";
const RULE_TESTS: &str = "scripts/prometheus/verve-rules.test.yml";
const DASHBOARD: &str = "scripts/grafana/verve.json";

/// The names after `key: ` on the lines of `text` that have it.
fn values_of(text: &str, key: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix(key))
        .map(|v| v.trim().to_owned())
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_with_a_test_for_every_alert() {
    let (ok, out) = promtool(&["check", "rules", kit(RULES).to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", kit(RULE_TESTS).to_str().unwrap()]);
    assert!(ok, "{out}");
    let alerts = values_of(&std::fs::read_to_string(kit(RULES)).unwrap(), "alert:");
    let tested = values_of(
        &std::fs::read_to_string(kit(RULE_TESTS)).unwrap(),
        "alertname:",
    );
    assert!(alerts.len() >= 9, "{alerts:?}");
    assert_eq!(
        alerts, tested,
        "every alert has a unit test, and only those"
    );
    // The compose Prometheus's configuration loads them, and scrapes job `verve`.
    let (ok, out) = promtool(&[
        "check",
        "config",
        kit("scripts/prometheus/prometheus.yml").to_str().unwrap(),
    ]);
    assert!(ok && out.contains("1 rule files found"), "{out}");
    let runbook = std::fs::read_to_string(kit("docs/operations.md")).unwrap();
    for alert in &alerts {
        assert!(
            runbook.contains(&format!("### {alert}")),
            "docs/operations.md has no section for {alert}"
        );
    }
}

/// Every query of the dashboard, by panel title, with Grafana's variables replaced as
/// Grafana would for "all jobs, all instances" and `rate_interval`.
fn dashboard_queries(rate_interval: &str) -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kit(DASHBOARD)).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$__rate_interval", rate_interval)
                .replace("$__range", "1h")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

/// The `verve_...` names an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("verve_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_dashboard_expression_parses_and_names_only_metrics_verve_exposes() {
    let queries = dashboard_queries("1m");
    assert!(queries.len() >= 20, "{queries:?}");
    // promtool parses PromQL in rule files: each query as a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, (_, expr)) in queries.iter().enumerate() {
        // A JSON string is a YAML scalar.
        let _ = writeln!(
            rules,
            "      - record: dashboard_query_{n}\n        expr: {}",
            serde_json::Value::from(expr.as_str())
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(ok, "a dashboard query does not parse:\n{out}");

    // What a real verve exposes: every family is described even before it has a sample.
    let verve = Verve::start();
    let exposed: BTreeSet<String> = scrape(verve.addr)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| match l.split_once(' ') {
            Some((name, "counter")) => format!("{name}_total"),
            Some((name, _)) => name.to_owned(),
            None => l.to_owned(),
        })
        .collect();
    let mut named = BTreeSet::new();
    for (title, expr) in &queries {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(&name),
                "panel {title:?} uses {name}, which verve does not expose ({exposed:?})"
            );
            named.insert(name);
        }
    }
    let rules = std::fs::read_to_string(kit(RULES)).unwrap();
    for name in metric_names(&rules) {
        assert!(exposed.contains(&name), "the rules use {name}");
    }
    // The dashboard shows every metric verve has.
    let unshown: Vec<&String> = exposed.difference(&named).collect();
    assert!(unshown.is_empty(), "no panel shows {unshown:?}");
}

#[test]
fn a_real_prometheus_scraping_verve_under_load_returns_the_dashboards_main_series() {
    let peer = CallbackPeer::start(PeerBehaviour::Status(200));
    let verve = Verve::options()
        .window_secs(1)
        .report_grace(Duration::from_millis(200))
        .callback_allow_private()
        .start();
    let prometheus = Prometheus::start(&[verve.addr], &[&kit(RULES)]);
    let endpoint = percent_encode(&peer.url("/hook"));
    let mut conn = Conn::open(verve.addr);
    // Six seconds of light load: new and repeated ids, a callback now and then, a bad request.
    for n in 0..600 {
        let target = if n % 50 == 0 {
            format!("/api/verve/accept?id={n}&endpoint={endpoint}")
        } else {
            format!("/api/verve/accept?id={}", n % 200)
        };
        assert_eq!(conn.get(&target).status, 200);
        if n % 100 == 0 {
            assert_eq!(conn.get("/api/verve/accept?id=x").status, 400);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let up = prometheus.wait_for(
        &format!("up{{job=\"{JOB}\"}} == 1"),
        Duration::from_secs(20),
    );
    assert_eq!(up.len(), 1, "{up:?}");

    let queries = dashboard_queries("5s");
    let query_of = |title: &str| -> Vec<String> {
        let found: Vec<String> = queries
            .iter()
            .filter(|(t, _)| t == title)
            .map(|(_, e)| e.clone())
            .collect();
        assert!(!found.is_empty(), "no panel {title:?}");
        found
    };
    let value = |series: &serde_json::Value| -> f64 {
        series["value"][1].as_str().unwrap().parse().unwrap()
    };
    for title in [
        "Ready",
        "Requests/s by route and status",
        "Refused (503) and 4xx/s",
        "Distinct ids of the current window",
        "Ids forwarded/s (new to their worker)",
        "Reports by mode",
        "Callbacks/s by outcome",
        "Ingest queue (share of capacity)",
        "Callback queue (share of capacity)",
        "Age of the newest report",
        "Window and report deadline",
        "I/O driver",
        "Build",
    ] {
        // A panel shows data once one of its queries returns some (a counter appears with
        // its first event: no 503 here).
        let exprs = query_of(title);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while exprs.iter().all(|e| prometheus.query(e).is_empty()) {
            assert!(
                std::time::Instant::now() < deadline,
                "panel {title:?}: no data from {exprs:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let ready = prometheus.query(&query_of("Ready")[0]);
    assert!((value(&ready[0]) - 1.0).abs() < f64::EPSILON, "{ready:?}");
    // Accept requests answered 200 at some rate; the 400s show in the 4xx series.
    let requests = prometheus.query(&query_of("Requests/s by route and status")[0]);
    let accept_ok = requests
        .iter()
        .find(|s| s["metric"]["route"] == "accept" && s["metric"]["status"] == "200")
        .unwrap_or_else(|| panic!("{requests:?}"));
    assert!(value(accept_ok) > 0.0, "{accept_ok:?}");
    let age = prometheus.query(&query_of("Age of the newest report")[0]);
    assert!(
        value(&age[0]) < 10.0,
        "1 s windows are reported within seconds: {age:?}"
    );

    // The rules load and evaluate against the real series, and none fires.
    let groups = prometheus.api("rules", &[]);
    let rules: Vec<&serde_json::Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(rules.len() >= 9, "{groups}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let firing = prometheus.api("alerts", &[]);
    assert_eq!(firing["alerts"], serde_json::json!([]), "{firing}");
}
