//! A real Prometheus server (Debian's `prometheus`, which `scripts/test.sh` installs) on a
//! port chosen at run time, scraping given targets every second with given rule files; and
//! its `promtool`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{Killable, free_port, wait_for_port};

/// The job name the shipped rules expect.
pub(crate) const JOB: &str = "verve";

pub(crate) struct Prometheus {
    port: u16,
    _process: Killable,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `targets` (job `verve`) every second and evaluates `rule_files` every second.
    pub(crate) fn start(targets: &[SocketAddr], rule_files: &[&Path]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let quoted = |items: Vec<String>| -> String {
            let items: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
            format!("[{}]", items.join(", "))
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: {}\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: {}\n",
            quoted(
                rule_files
                    .iter()
                    .map(|p| p.canonicalize().unwrap().display().to_string())
                    .collect()
            ),
            quoted(targets.iter().map(ToString::to_string).collect()),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let process = Killable::spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "prometheus (scripts/test.sh installs Debian's prometheus)",
        );
        wait_for_port(port, "prometheus");
        // It listens before it is ready: its API answers 503 until its storage has started.
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&ready).call().is_err() {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Prometheus {
            port,
            _process: process,
            _dir: dir,
        }
    }

    /// `GET /api/v1/<path>` with `query`; the `data` of a successful answer.
    pub(crate) fn api(&self, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
        let mut request = ureq::get(format!("http://127.0.0.1:{}/api/v1/{path}", self.port));
        for (name, value) in query {
            request = request.query(*name, *value);
        }
        let body = request
            .call()
            .unwrap_or_else(|e| panic!("prometheus /api/v1/{path} {query:?}: {e}"))
            .body_mut()
            .read_to_string()
            .unwrap();
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["status"], "success", "{body}");
        answer["data"].clone()
    }

    /// The series an instant query returns.
    pub(crate) fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        self.api("query", &[("query", expr)])["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `expr` returns at least one series; returns them.
    pub(crate) fn wait_for(&self, expr: &str, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let series = self.query(expr);
            if !series.is_empty() || Instant::now() > deadline {
                return series;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Runs `promtool` with `args`; whether it succeeded, and what it printed.
pub(crate) fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (scripts/test.sh installs Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
