//! The monitoring the fleet ships, against real servers: a real Prometheus (Debian's
//! `prometheus`) scrapes a running `pvefleet dev` with the alert rules of
//! `deploy/prometheus/rules.yml` while sites are provisioned, a message is parked and a notice
//! is delivered (after a retry); then every PromQL expression of every Grafana dashboard in
//! `deploy/grafana/dashboards` returns at least one series, and every alert rule evaluates
//! without error. `promtool test rules deploy/prometheus/tests.yml` (scripts/test) covers every
//! alert rule; a test here holds it to that.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

mod common;

use common::{Dev, text};

/// The alert names of a rules file, and the alert names a promtool test file tests.
fn names(path: &Path, key: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.trim()
                .trim_start_matches("- ")
                .strip_prefix(key)
                .map(|n| n.trim().to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_alert_rule_has_a_promtool_test_and_links_its_runbook_in_the_readme() {
    let rules = names(&repo().join("deploy/prometheus/rules.yml"), "alert:");
    let tested = names(&repo().join("deploy/prometheus/tests.yml"), "alertname:");
    assert!(rules.len() >= 9, "{rules:?}");
    assert_eq!(rules, tested, "every alert rule, and only those, is tested");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for r in &rules {
        let anchor = format!("runbook-{}", r.to_lowercase());
        assert!(
            readme.contains(&format!("#### Runbook: {r}\n")),
            "the README's Runbooks section has a heading for {r} (anchor #{anchor})"
        );
        let rule = std::fs::read_to_string(repo().join("deploy/prometheus/rules.yml")).unwrap();
        assert!(rule.contains(&format!("README.md#{anchor}")), "{r} links #{anchor}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An ntfy stand-in: answers 500 to the first POST, then 200; counts what it got.
fn ntfy_receiver() -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/fleet", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            let n = count.fetch_add(1, Ordering::SeqCst);
            let status = if n == 0 { "500 Internal Server Error" } else { "200 OK" };
            let _ = write!(s, "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, seen)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

async fn query(http: &reqwest::Client, prom: &str, expr: &str) -> Value {
    http.get(format!("{prom}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_pvefleet_dev_and_every_dashboard_panel_returns_series() {
    let (ntfy, ntfy_seen) = ntfy_receiver();
    let dev = Dev::start(&[
        ("PVEFLEET_NOTIFIER__OPERATOR__NTFY__URL", &ntfy),
        ("PVEFLEET_AUTOSCALER__INTERVAL", "1s"),
        ("PVEFLEET_AUTOSCALER__POLICY__EVALUATION_PERIODS", "1"),
    ])
    .await;
    let (api, home) = (dev.api.clone(), dev.home.clone());
    let target = api.trim_start_matches("http://").to_string();

    // Prometheus, scraping dev every second, with the shipped rules.
    let dir = home.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let rules = repo().join("deploy/prometheus/rules.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: pvefleet\n    static_configs:\n      - targets: ['{target}']\n        labels: {{ service: dev }}\n",
        rules.canonicalize().unwrap().display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let prom_child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt-get install prometheus; scripts/test does)");
    let _prom = Killed(prom_child);
    let prom = format!("http://127.0.0.1:{port}");
    pvefleet_proxmox::client::tls::provider();
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{prom}/-/ready")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "prometheus is ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A few sagas, a parked message, a test notice (its first try refused, then sent).
    // The CLI runs with dev's settings (the operator channels), as an operator's has them.
    for name in ["one", "two"] {
        let out = dev
            .cli(&["site", "create", name, "--app", "none", "--wait", "--api", &api])
            .await;
        assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    }
    let bogus = format!("{{\"notification_id\":\"{}\"}}", uuid::Uuid::now_v7());
    let out = dev
        .cli(&["bus", "publish", "--type", "notify.deliver", "--json", &bogus])
        .await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let out = dev.cli(&["notify", "test", "--message", "monitoring"]).await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));

    // Every panel's expression returns a series once the fleet has done that, and what the
    // test did shows: the notice sent after one retry, the message parked.
    let dashboards: Vec<(String, Value)> = std::fs::read_dir(repo().join("deploy/grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap(),
            )
        })
        .collect();
    assert!(dashboards.len() >= 5, "the five dashboards");
    let exprs: Vec<(String, String)> = dashboards
        .iter()
        .flat_map(|(file, d)| {
            d["panels"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|p| {
                    let title = p["title"].as_str().unwrap_or_default().to_string();
                    p["targets"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| (format!("{file}: {title}"), t["expr"].as_str().unwrap().to_string()))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut empty: Vec<String>;
    loop {
        empty = Vec::new();
        for (panel, expr) in &exprs {
            let v = query(&http, &prom, expr).await;
            assert_eq!(v["status"], "success", "{panel}: {expr}: {v}");
            if v["data"]["result"].as_array().is_none_or(Vec::is_empty) {
                empty.push(format!("{panel}: {expr}"));
            }
        }
        let sent = query(
            &http,
            &prom,
            "sum(pvefleet_notifier_deliveries_total{channel=\"ntfy\", outcome=\"sent\"})",
        )
        .await;
        let sent_ok = sent["data"]["result"][0]["value"][1].as_str() == Some("1");
        // The keeper counts parked dead letters every 15 s.
        let parked = query(&http, &prom, "max(pvefleet_dead_letters_parked)").await;
        let parked_ok = parked["data"]["result"][0]["value"][1].as_str() == Some("1");
        if (empty.is_empty() && sent_ok && parked_ok) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(empty.is_empty(), "panels with no series: {empty:#?}");
    let sent = query(
        &http,
        &prom,
        "sum(pvefleet_notifier_deliveries_total{channel=\"ntfy\", outcome=\"sent\"})",
    )
    .await;
    assert_eq!(
        sent["data"]["result"][0]["value"][1], "1",
        "the test notice sent once: {sent}"
    );
    let retried = query(
        &http,
        &prom,
        "sum(pvefleet_notifier_deliveries_total{channel=\"ntfy\", outcome=\"retried\"})",
    )
    .await;
    assert_eq!(
        retried["data"]["result"][0]["value"][1], "1",
        "after one retry: {retried}"
    );
    assert!(
        ntfy_seen.load(Ordering::SeqCst) >= 2,
        "ntfy saw the refused try and the sent one"
    );
    let parked = query(&http, &prom, "max(pvefleet_dead_letters_parked)").await;
    assert_eq!(parked["data"]["result"][0]["value"][1], "1", "{parked}");

    // Every alert rule loaded and evaluates against the fleet's own series without error; once
    // the keeper's gauges have seen the workers consuming (every 15 s; one taken before they
    // started shows queues without consumers, which the rule's 5 minutes absorb), only the
    // message parked a moment ago makes an alert fire.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rules: Value = http
            .get(format!("{prom}/api/v1/rules"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let all: Vec<Value> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().iter().cloned())
            .collect();
        assert!(all.len() >= 9, "{rules}");
        for r in &all {
            assert_eq!(r["health"], "ok", "{r}");
        }
        let wrong: Vec<&Value> = all
            .iter()
            .filter(|r| {
                let expected = if r["name"] == "PvefleetParkedRising" {
                    "firing"
                } else {
                    "inactive"
                };
                r["state"] != expected
            })
            .collect();
        if wrong.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "rules not as expected: {wrong:#?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(dev);
}
