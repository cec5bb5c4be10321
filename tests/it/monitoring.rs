//! The operator kit against the real tools: the alert rules (`scripts/prometheus/`) through
//! `promtool`, the Grafana dashboard's expressions (`scripts/grafana/verve.json`) parsed by
//! `promtool` and checked against what a real verve exposes, and a real Prometheus scraping
//! a real verve under load, each panel queried for the series the load caused, with its value.

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
    // One request of each kind first, scraped before the load: a counter's rate counts from
    // its first sample, so the load's requests are all in the rates below.
    let warm_up = [
        format!("/api/verve/accept?id=100000&endpoint={endpoint}"),
        "/api/verve/accept?id=x".to_owned(),
    ];
    for target in &warm_up {
        conn.get(target);
    }
    let scraped = prometheus.wait_for(
        "verve_callbacks_total{outcome=\"2xx\"} == 1 and on() \
         verve_requests_total{route=\"accept\",status=\"400\"} == 1",
        Duration::from_secs(20),
    );
    assert_eq!(scraped.len(), 1, "the warm-up was not scraped: {scraped:?}");
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
    // Each panel shows the series the load caused, with its value. Every sample of the load
    // scraped, a panel's rates over a minute that covers the whole load, times 60, are what
    // was sent, within the extrapolation of half a scrape at each end (a few percent here).
    let scraped = prometheus.wait_for(
        "verve_requests_total{route=\"accept\",status=\"200\"} == 601",
        Duration::from_secs(20),
    );
    assert_eq!(scraped.len(), 1, "the load was not scraped whole");
    let minute = dashboard_queries("1m");
    let panel = |title: &str, query: usize| -> Vec<serde_json::Value> {
        let exprs: Vec<&String> = minute
            .iter()
            .filter(|(t, _)| t == title)
            .map(|(_, e)| e)
            .collect();
        prometheus.query(exprs[query])
    };
    // The series of a panel that show something, by `label` (every counter of a family is
    // exported from the start, at 0).
    let labelled = |series: &[serde_json::Value], label: &str| -> Vec<(String, f64)> {
        series
            .iter()
            .map(|s| {
                let name = s["metric"][label].as_str().unwrap_or_default().to_owned();
                (name, value(s))
            })
            .filter(|(_, v)| *v > 0.0)
            .collect()
    };
    let per_minute = |rate: f64, sent: f64, what: &str| {
        let got = rate * 60.0;
        assert!(
            (sent * 0.8..=sent * 1.25).contains(&got),
            "{what}: {got:.1} a minute, {sent} sent"
        );
    };
    let requests = panel("Requests/s by route and status", 0);
    let of = |route: &str, status: &str| {
        requests
            .iter()
            .find(|s| s["metric"]["route"] == route && s["metric"]["status"] == status)
            .map_or(0.0, value)
    };
    per_minute(of("accept", "200"), 600.0, "accept 200");
    per_minute(of("accept", "400"), 6.0, "accept 400");
    assert!(
        panel("Refused (503) and 4xx/s", 0).is_empty(),
        "no 503 was answered"
    );
    per_minute(value(&panel("Refused (503) and 4xx/s", 1)[0]), 6.0, "4xx");
    // Each 1 s window saw about 100 consecutive ids of the 200 cycled: all new to it.
    per_minute(
        value(&panel("Ids forwarded/s (new to their worker)", 0)[0]),
        600.0,
        "ids forwarded",
    );
    let callbacks = labelled(&panel("Callbacks/s by outcome", 0), "outcome");
    assert_eq!(callbacks.len(), 1, "only answered callbacks: {callbacks:?}");
    assert_eq!(callbacks[0].0, "2xx");
    per_minute(callbacks[0].1, 12.0, "callbacks answered 2xx");
    let modes = labelled(&panel("Reports by mode", 0), "mode");
    assert_eq!(modes.len(), 1, "{modes:?}");
    assert_eq!(modes[0].0, "standalone");
    assert!(modes[0].1 >= 6.0, "a report a second: {modes:?}");
    let distinct = value(&panel("Distinct ids of the current window", 0)[0]);
    assert!(
        distinct <= 100.0,
        "{distinct} distinct ids in a window of 100 requests"
    );
    for queue in [
        "Ingest queue (share of capacity)",
        "Callback queue (share of capacity)",
    ] {
        let share = value(&panel(queue, 0)[0]);
        assert!(share < 0.01, "{queue}: {share}");
    }
    let ready = value(&panel("Ready", 0)[0]);
    assert!((ready - 1.0).abs() < f64::EPSILON, "ready {ready}");
    let window = value(&panel("Window and report deadline", 0)[0]);
    assert!((window - 1.0).abs() < f64::EPSILON, "window {window} s");
    let deadline = value(&panel("Window and report deadline", 1)[0]);
    assert!(
        deadline >= 0.2,
        "report deadline {deadline} s, the grace 0.2 s"
    );
    let driver = labelled(&panel("I/O driver", 0), "driver");
    let said = verve
        .log_lines()
        .iter()
        .any(|l| l.contains(&format!("workers ({})", driver[0].0)));
    assert!(said, "driver {driver:?} is not the one verve logged");
    let build = labelled(&panel("Build", 0), "version");
    assert_eq!(build[0].0, env!("CARGO_PKG_VERSION"));
    let age = value(&panel("Age of the newest report", 0)[0]);
    assert!(age < 10.0, "1 s windows are reported within seconds: {age}");

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
