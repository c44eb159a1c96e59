//! The `pvefleet` binary against the real RabbitMQ and Postgres, each test in its own vhost
//! and database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pvefleet_contracts::Message;
use pvefleet_contracts::messages::{ContainerCreated, SiteProvision};
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::{Outgoing, Publisher};
use pvefleet_testkit::broker::take;
use pvefleet_testkit::{TestDb, TestVhost};

fn pvefleet(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pvefleet"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn topology_declare_is_idempotent_and_declares_quorum_queues_with_explicit_arguments() -> anyhow::Result<()> {
    let vhost = TestVhost::new()?;
    let url = vhost.url();
    let env = [
        ("PVEFLEET_BUS__URL", url.as_str()),
        ("PVEFLEET_BUS__DELIVERY_LIMIT", "12"),
    ];
    for run in 1..=2 {
        let out = pvefleet(&env, &["topology", "declare"]);
        assert!(out.status.success(), "run {run}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("Declared"), "{}", text(&out.stdout));
    }
    let queues = vhost.list_queues()?;
    for q in [
        "pvefleet.saga",
        "pvefleet.provisioner",
        "pvefleet.installer",
        "pvefleet.edge",
        "pvefleet.ha",
    ] {
        let (_, kind, args) = queues
            .iter()
            .find(|(n, _, _)| n == q)
            .unwrap_or_else(|| panic!("{q} missing"));
        assert_eq!(kind, "quorum", "{q}");
        let args = args.replace(' ', "");
        assert!(args.contains("x-delivery-limit\",12"), "{q}: {args}");
        assert!(
            args.contains("x-dead-letter-strategy\",\"at-least-once\""),
            "{q}: {args}"
        );
        assert!(args.contains("x-overflow\",\"reject-publish\""), "{q}: {args}");
    }
    let out = pvefleet(&env, &["topology", "show", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let saga = rows
        .as_array()
        .and_then(|r| r.iter().find(|q| q["queue"] == "pvefleet.saga"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(saga["declared"], true);
    assert_eq!(saga["messages"], 0);
    assert_eq!(saga["arguments"]["x-delivery-limit"], "12");
    Ok(())
}

#[test]
fn config_check_prints_the_effective_config_with_secrets_redacted() {
    let out = pvefleet(
        &[
            ("PVEFLEET_DB__URL", "postgres://app:topsecret@db:5432/pvefleet"),
            ("PVEFLEET_WORKER__CONCURRENCY", "7"),
        ],
        &["config", "check"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("topsecret"), "{stdout}");
    assert!(stdout.contains("postgres://app:redacted@db:5432/pvefleet"), "{stdout}");
    assert!(stdout.contains("concurrency = 7"), "{stdout}");
}

#[test]
fn config_check_refuses_unknown_keys_with_a_clear_error() {
    let out = pvefleet(&[("PVEFLEET_WORKER__CONCURENCY", "7")], &["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("concurency"), "{stderr}");
}

#[test]
fn migrate_creates_the_database_and_is_idempotent() -> anyhow::Result<()> {
    let db = TestDb::fresh_name();
    let url = db.url();
    let env = [("PVEFLEET_DB__URL", url.as_str())];
    let first = pvefleet(&env, &["migrate"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("applied V1__inbox_outbox"),
        "{}",
        text(&first.stdout)
    );
    let second = pvefleet(&env, &["migrate"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(text(&second.stdout).contains("up to date"), "{}", text(&second.stdout));
    Ok(())
}

#[tokio::test]
async fn bus_publish_validates_against_the_schema_before_publishing() -> anyhow::Result<()> {
    let vhost = TestVhost::new()?;
    let url = vhost.url();
    let env = [("PVEFLEET_BUS__URL", url.as_str())];
    let dir = std::env::temp_dir().join(format!("pvefleet-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;

    let mut bad = serde_json::to_value(SiteProvision::example())?;
    bad["subdomain"] = "Not_A_Label".into();
    let bad_file = dir.join("bad.json");
    std::fs::write(&bad_file, serde_json::to_vec(&bad)?)?;
    let out = pvefleet(
        &env,
        &[
            "bus",
            "publish",
            "--type",
            "site.provision",
            "--json",
            bad_file.to_str().unwrap_or_default(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/subdomain"), "{}", text(&out.stderr));
    // The body inline is checked the same way.
    let inline = serde_json::to_string(&bad)?;
    let out = pvefleet(&env, &["bus", "publish", "--type", "site.provision", "--json", &inline]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/subdomain"), "{}", text(&out.stderr));
    let out = pvefleet(
        &env,
        &["bus", "publish", "--type", "site.provision", "--json", "{not json"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("the body is not JSON"),
        "{}",
        text(&out.stderr)
    );

    let out = pvefleet(
        &env,
        &[
            "bus",
            "publish",
            "--type",
            "site.explode",
            "--json",
            bad_file.to_str().unwrap_or_default(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown message type 'site.explode'"),
        "{}",
        text(&out.stderr)
    );

    let good_file = dir.join("good.json");
    std::fs::write(&good_file, serde_json::to_vec(&SiteProvision::example())?)?;
    let out = pvefleet(
        &env,
        &[
            "bus",
            "publish",
            "--type",
            "site.provision",
            "--json",
            good_file.to_str().unwrap_or_default(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let ch = vhost.probe().await?;
    let got = take(&ch, "pvefleet.saga", 2, Duration::from_secs(3)).await?;
    assert_eq!(got.len(), 1, "only the valid message was published");
    assert_eq!(got[0].properties.kind.as_deref(), Some("site.provision"));
    assert_eq!(
        serde_json::from_slice::<SiteProvision>(&got[0].body)?,
        SiteProvision::example()
    );
    Ok(())
}

#[tokio::test]
async fn bus_tail_prints_events_as_they_are_published() -> anyhow::Result<()> {
    let vhost = TestVhost::new()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvefleet"))
        .args(["bus", "tail", "--key", "container.*", "--count", "1", "--json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PVEFLEET_BUS__URL", vhost.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Wait until tail says it is listening (its queue is bound), then publish.
    let stderr = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("Tailing"))
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(20), ready).await??,
        "tail never started"
    );

    let mut settings = pvefleet_core::Settings::default();
    settings.bus.url = pvefleet_core::Secret::new(vhost.url());
    let publisher = Publisher::new(&settings.bus, "test", None);
    let event = ContainerCreated::example();
    publisher
        .publish(&Outgoing::message(&event, &Origin::default())?)
        .await?;

    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await???;
    assert!(out.status.success());
    let line: serde_json::Value = serde_json::from_str(text(&out.stdout).lines().next().unwrap_or_default())?;
    assert_eq!(line["type"], "container.created");
    assert_eq!(line["body"], serde_json::to_value(&event)?);
    Ok(())
}

#[test]
fn pve_config_parse_prints_typed_json_and_names_invalid_keys() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("pvefleet-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let good = dir.join("101.conf");
    std::fs::write(
        &good,
        "#web\narch: amd64\nfeatures: nesting=1\nnet0: name=eth0,bridge=vmbr0,ip=10.0.0.5/24,gw=10.0.0.1,tag=20\nrootfs: local-lvm:vm-101-disk-0,size=8G\nmp0: local:vm-101-disk-1,mp=/srv\n\n[snap1]\narch: amd64\n",
    )?;
    let out = pvefleet(&[], &["pve", "config", "parse", good.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let main = &v["sections"][0];
    assert_eq!(main["description"], "web");
    assert_eq!(main["net"]["net0"]["tag"], 20);
    assert_eq!(main["net"]["net0"]["gw"], "10.0.0.1");
    assert_eq!(main["rootfs"]["size"], "8G");
    assert_eq!(main["mp"]["mp0"]["mp"], "/srv");
    assert_eq!(main["features"]["nesting"], true);
    assert_eq!(v["sections"][1]["name"], "snap1");

    let bad = dir.join("102.conf");
    std::fs::write(&bad, "arch: amd64\nnet1: name=eth1,tag=9999\n")?;
    let out = pvefleet(&[], &["pve", "config", "parse", bad.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("net1: option 'tag'"),
        "{}",
        text(&out.stderr)
    );

    let messy = dir.join("103.conf");
    std::fs::write(&messy, "arch:amd64\nmemory:   512\n[ s1 ]\nswap: 0")?;
    let out = pvefleet(
        &[],
        &["pve", "config", "fmt", messy.to_str().unwrap_or_default(), "--write"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&messy)?,
        "arch: amd64\nmemory: 512\n[s1]\nswap: 0\n"
    );
    Ok(())
}

/// Runs `pvefleet pve check` against a pvesim with the given privileges.
async fn pve_check(privileges: Option<Vec<String>>, templates: &str) -> Output {
    let mut config = pvefleet_pvesim::SimConfig {
        token: Some(("fleet@pve!check".into(), "b1946ac9-2222-4f1e-9b3a-000000000001".into())),
        ..Default::default()
    };
    if let Some(p) = privileges {
        config.privileges = p;
    }
    let (_sim, addr) = pvefleet_pvesim::Sim::spawn(config).await.unwrap();
    let url = format!("http://{addr}");
    let templates = templates.to_string();
    tokio::task::spawn_blocking(move || {
        pvefleet(
            &[
                ("PVEFLEET_PVE__URL", url.as_str()),
                ("PVEFLEET_PVE__TOKEN_ID", "fleet@pve!check"),
                ("PVEFLEET_PVE__TOKEN_SECRET", "b1946ac9-2222-4f1e-9b3a-000000000001"),
                ("PVEFLEET_PVE__TEMPLATES", templates.as_str()),
            ],
            &["pve", "check"],
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pve_check_passes_against_pvesim_with_every_privilege() {
    let out = pve_check(None, "[\"local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst\"]").await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("version:   9.1.3"), "{stdout}");
    assert!(stdout.contains("pve1 (online), pve2 (online)"), "{stdout}");
    assert!(
        stdout.contains("local:vztmpl/ubuntu-24.04-standard"),
        "templates are listed: {stdout}"
    );
    assert!(stdout.contains("PASS: this Proxmox is ready for pvefleet"), "{stdout}");
    assert!(!stdout.contains("b1946ac9"), "the token secret never appears");
}

#[tokio::test(flavor = "multi_thread")]
async fn pve_check_names_the_missing_privilege_and_template_and_fails() {
    let privileges: Vec<String> = pvefleet_pvesim::ALL_PRIVILEGES
        .iter()
        .filter(|p| **p != "VM.Snapshot")
        .map(|p| p.to_string())
        .collect();
    let out = pve_check(Some(privileges), "[\"local:vztmpl/alpine-3.20.tar.xz\"]").await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("missing VM.Snapshot (to take the initial snapshot)"),
        "{stdout}"
    );
    assert!(!stdout.contains("missing VM.Snapshot.Rollback"), "{stdout}");
    assert!(
        stdout.contains("not found: local:vztmpl/alpine-3.20.tar.xz"),
        "{stdout}"
    );
    assert!(stdout.contains("FAIL: this Proxmox is not ready"), "{stdout}");
}

#[test]
fn pve_check_without_credentials_says_which_settings_are_missing() {
    let out = pvefleet(
        &[("PVEFLEET_PVE__URL", "http://127.0.0.1:1")],
        &["pve", "check", "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["checks"][0]["status"], "fail");
    assert!(
        report["checks"][0]["detail"].as_str().unwrap().contains("pve.token_id"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sim_commands_inject_faults_into_pvesim() {
    let (sim, addr) = pvefleet_pvesim::Sim::spawn(pvefleet_pvesim::SimConfig::default())
        .await
        .unwrap();
    let url = format!("http://{addr}");
    let run = |args: Vec<&'static str>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || pvefleet(&[("PVEFLEET_PVE__URL", url.as_str())], &args))
    };
    let out = run(vec![
        "sim",
        "fault",
        "--path",
        "/version",
        "--status",
        "596",
        "--message",
        "Connection timed out",
    ])
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    pvefleet_proxmox::client::tls::provider();
    let http = reqwest::Client::new();
    let resp = http.get(format!("{url}/api2/json/version")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 596);
    assert!(resp.text().await.unwrap().contains("Connection timed out"));
    let resp = http.get(format!("{url}/api2/json/version")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "the fault hit one call");

    let out = run(vec!["sim", "node", "pve2", "down"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let resp = http
        .get(format!("{url}/api2/json/nodes/pve2/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 595);
    let out = run(vec!["sim", "node", "pve9", "down"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no such node 'pve9'"),
        "{}",
        text(&out.stderr)
    );

    sim.populate(1000, 1, pvefleet_pvesim::Load::default());
    let out = run(vec!["sim", "load", "1000", "--cpu", "0.75", "--mem-mib", "300"])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = http
        .get(format!("{url}/api2/json/cluster/resources?type=vm"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["data"][0]["cpu"].as_f64(), v["data"][0]["mem"].as_u64()),
        (Some(0.75), Some(300 << 20))
    );

    let out = run(vec![
        "sim",
        "task-error",
        "--kind",
        "vzstart",
        "--message",
        "bridge 'x' does not exist",
    ])
    .await
    .unwrap();
    assert!(out.status.success());
    let out = run(vec!["sim", "fault", "--path", "/nodes", "--count", "5"])
        .await
        .unwrap();
    assert!(out.status.success());
    let out = run(vec!["sim", "clear"]).await.unwrap();
    assert!(out.status.success());
    let resp = http.get(format!("{url}/api2/json/nodes")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "clear removed the queued faults");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_create_prints_a_token_once_and_stores_only_its_hash() {
    let db = TestDb::create().await.unwrap();
    let url = db.url();
    let out = tokio::task::spawn_blocking(move || {
        pvefleet(
            &[("PVEFLEET_DB__URL", url.as_str())],
            &["token", "create", "--name", "ops", "--scope", "sites:read"],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert!(token.starts_with("pvf_") && token.len() > 40, "{token}");
    let client = db.client().await.unwrap();
    let row = client
        .query_one("SELECT hash, scopes FROM api_tokens WHERE name = 'ops'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), pvefleet_intake::hash_token(&token));
    assert_eq!(row.get::<_, Vec<String>>(1), vec!["sites:read".to_string()]);
    let out = pvefleet(&[], &["token", "create", "--name", "x", "--scope", "root"]);
    assert_eq!(out.status.code(), Some(2), "an unknown scope is refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn saga_list_and_show_work_on_an_empty_fleet_and_retry_step_names_a_missing_saga() {
    let db = TestDb::create().await.unwrap();
    let url = db.url();
    let run = |args: Vec<&'static str>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || pvefleet(&[("PVEFLEET_DB__URL", url.as_str())], &args))
    };
    let out = run(vec!["saga", "list", "--json"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = run(vec!["saga", "list"]).await.unwrap();
    assert!(text(&out.stdout).contains("(no sagas)"));
    let out = run(vec!["saga", "retry-step", "01900000-0000-7000-8000-000000000000"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no saga 01900000-0000-7000-8000-000000000000"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_runs_the_fleet_and_site_create_wait_follows_the_saga_to_an_active_site() {
    let vhost = TestVhost::new().unwrap();
    let db = TestDb::create().await.unwrap();
    let home = std::env::temp_dir().join(format!("pvefleet-dev-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&home).unwrap();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_pvefleet"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--pvesim-listen",
            "127.0.0.1:0",
            "--task-ms",
            "20",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("PVEFLEET_BUS__URL", vhost.url())
        .env("PVEFLEET_DB__URL", db.url())
        // Five addresses: the sixth site finds the pool exhausted.
        .env("PVEFLEET_SAGA__IP_LAST", "104")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut api = None;
    for _ in 0..20 {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.trim().strip_prefix("intake") {
            api = rest.split_whitespace().next().map(str::to_string);
        }
        if line.contains("Stop with ctrl-c") {
            break;
        }
    }
    let api = api.expect("dev prints the intake address");
    let create = |name: &str| {
        let (api, home, name) = (api.clone(), home.clone(), name.to_string());
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_pvefleet"))
                .args([
                    "site",
                    "create",
                    &name,
                    "--app",
                    "none",
                    "--wait",
                    "--api",
                    api.as_str(),
                ])
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("HOME", &home)
                .output()
                .unwrap()
        })
    };
    let out = create("blog").await.unwrap();
    let mut others = Vec::new();
    for name in ["two", "three", "four", "five", "six"] {
        others.push(create(name).await.unwrap());
    }
    let _ = Command::new("kill").args(["-TERM", &dev.id().to_string()]).status();
    let _ = dev.wait();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    for o in &others[..4] {
        assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    }
    // The sixth: the pool is exhausted; --wait ends at once, exit 1, naming the reason.
    let sixth = &others[4];
    assert_eq!(
        sixth.status.code(),
        Some(1),
        "{}{}",
        text(&sixth.stdout),
        text(&sixth.stderr)
    );
    assert!(
        text(&sixth.stderr).contains("the saga ended failed: lease:")
            && text(&sixth.stderr).contains("(lease.ip_exhausted)"),
        "{}",
        text(&sixth.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("site blog is active: vmid 10000, ip 10.10.0.100/24"),
        "{stdout}"
    );
    for step in ["✓ container.create", "✓ container.start", "✓ container.snapshot"] {
        assert!(stdout.contains(step), "progress shows '{step}': {stdout}");
    }
    std::fs::remove_dir_all(&home).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_commands_list_group_show_replay_dry_archive_and_purge_with_json_and_exit_codes() {
    let db = TestDb::create().await.unwrap();
    let vhost = TestVhost::new().unwrap();
    let (url, bus) = (db.url(), vhost.url());
    let run = |args: Vec<String>| {
        let (url, bus) = (url.clone(), bus.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pvefleet(
                &[
                    ("PVEFLEET_DB__URL", url.as_str()),
                    ("PVEFLEET_BUS__URL", bus.as_str()),
                    ("PVEFLEET_OPERATOR", "night-shift"),
                ],
                &args,
            )
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // The schema first, then three dead letters in two groups.
    let out = run(args(&["dlq", "list", "--json"])).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let c = db.client().await.unwrap();
    let mut ids = Vec::new();
    for (i, group) in ["g/a/1", "g/a/1", "g/b/2"].iter().enumerate() {
        let id = uuid::Uuid::now_v7();
        c.execute(
            "INSERT INTO dead_letters (id, message_id, attempts, message_type, properties, body, origin_exchange,
                 origin_routing_key, origin_queue, fault_class, fault_message, fingerprint)
             VALUES ($1, $2, 3, 'container.create', '{}'::jsonb, '{\"vmid\": 1}'::bytea, 'pvefleet.commands',
                 'container.create', 'pvefleet.provisioner', 'retries-exhausted', 'PVE is down', $3)",
            &[&id, &format!("m{i}"), group],
        )
        .await
        .unwrap();
        ids.push(id);
    }
    let out = run(args(&["dlq", "list", "--json"])).await.unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    let out = run(args(&["dlq", "list", "--group", "g/b/2", "--json"])).await.unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let out = run(args(&["dlq", "groups", "--json"])).await.unwrap();
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(groups[0]["group"], "g/a/1");
    assert_eq!(groups[0]["count"], 2);
    let out = run(args(&["dlq", "show", &ids[0].to_string()])).await.unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["body"]["vmid"], 1, "the body, pretty as JSON");
    assert_eq!(shown["fault"]["class"], "retries-exhausted");
    // A replay without saying which is refused; a dry run names what it would replay.
    let out = run(args(&["dlq", "replay", "--json"])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("error"), "{}", text(&out.stdout));
    let out = run(args(&["dlq", "replay", "--group", "g/a/1", "--dry-run", "--json"]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dry["replayed"].as_array().unwrap().len(), 2);
    // Purge without --yes and without a terminal: not confirmed, nothing done.
    let out = run(args(&["dlq", "purge", "--group", "g/b/2"])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = run(args(&["dlq", "archive", "--group", "g/a/1", "--yes", "--json"]))
        .await
        .unwrap();
    let archived: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(archived["count"], 2);
    let out = run(args(&["dlq", "purge", "--group", "g/b/2", "--yes", "--json"]))
        .await
        .unwrap();
    let purged: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(purged["count"], 1);
    let out = run(args(&["dlq", "list", "--json"])).await.unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    // Both changes are in the audit log, with the operator.
    let out = run(args(&["audit", "list", "--json"])).await.unwrap();
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["dlq.purge", "dlq.archive"]);
    assert_eq!(audit[0]["actor"], "cli:night-shift");
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_show_gives_every_header_as_it_was_published_and_list_the_whole_fault() {
    use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
    let db = TestDb::create().await.unwrap();
    let vhost = TestVhost::new().unwrap();
    let mut s = pvefleet_testkit::settings(&vhost, Some(&db));
    s.bus.retry_tiers = vec![Duration::from_millis(100)];
    let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
    pvefleet_core::db::migrate(&pool).await.unwrap();
    let topology = pvefleet_core::bus::topology::Topology::fleet(&s.bus);
    let probe = pvefleet_core::bus::probe::Probe::connect_with(&s.bus).await.unwrap();
    probe.declare(&topology).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let keeper = tokio::spawn(pvefleet_saga::keeper::run(
        s.bus.clone(),
        topology,
        pool.clone(),
        None,
        shutdown.clone(),
    ));
    // A message parked the way an upstream publisher's AMQP client would send its headers.
    let long = "PVE answered 500: can't lock file '/run/lock/lxc/pve-config-300.lock' - got timeout; ".repeat(6);
    let mut nested = FieldTable::default();
    nested.insert("zone".into(), AMQPValue::LongString(LongString::from("eu-1")));
    nested.insert("weight".into(), AMQPValue::LongInt(3));
    let mut table = FieldTable::default();
    table.insert("tenant".into(), AMQPValue::LongString(LongString::from("acme")));
    table.insert("where".into(), AMQPValue::FieldTable(nested));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-upstream".into(),
        AMQPValue::LongString(LongString::from("invoicing")),
    );
    headers.insert("x-count".into(), AMQPValue::LongLongInt(42));
    headers.insert("x-small".into(), AMQPValue::ShortShortInt(-7));
    headers.insert("x-urgent".into(), AMQPValue::Boolean(true));
    headers.insert("x-quiet".into(), AMQPValue::Boolean(false));
    headers.insert("x-meta".into(), AMQPValue::FieldTable(table));
    headers.insert(
        "x-tags".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongString(LongString::from("blue")),
            AMQPValue::LongInt(2),
            AMQPValue::Boolean(false),
        ])),
    );
    headers.insert("x-raw".into(), AMQPValue::ByteArray(vec![0u8, 159, 146, 150].into()));
    headers.insert(
        "pvefleet-fault-class".into(),
        AMQPValue::LongString(LongString::from("retries-exhausted")),
    );
    headers.insert(
        "pvefleet-fault-message".into(),
        AMQPValue::LongString(LongString::from(long.as_str())),
    );
    let conn = lapin::Connection::connect(&vhost.url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        pvefleet_contracts::routing::PARKED_EXCHANGE.into(),
        "container.create".into(),
        Default::default(),
        br#"{"vmid": 300}"#,
        lapin::BasicProperties::default()
            .with_message_id("upstream-1".into())
            .with_type("container.create".into())
            .with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let client = db.client().await.unwrap();
    let stored = pvefleet_testkit::eventually(Duration::from_secs(20), || async {
        client
            .query_opt("SELECT id FROM dead_letters WHERE message_id = 'upstream-1'", &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, uuid::Uuid>(0))
    })
    .await
    .expect("the keeper stores the parked message");
    shutdown.cancel();
    keeper.await.unwrap();
    let _ = ch.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    let env = [("PVEFLEET_DB__URL", db.url()), ("PVEFLEET_BUS__URL", vhost.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = tokio::task::spawn_blocking({
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let id = stored.to_string();
        move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            (
                pvefleet(&env, &["dlq", "show", &id, "--json"]),
                pvefleet(&env, &["dlq", "list", "--json"]),
            )
        }
    })
    .await
    .unwrap();
    let (show, list) = out;
    assert!(show.status.success(), "{}", text(&show.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let h = &shown["properties"]["headers"];
    assert_eq!(h["x-upstream"], "invoicing", "{h}");
    assert_eq!(h["x-count"], 42);
    assert_eq!(h["x-small"], -7);
    assert_eq!(h["x-urgent"], true);
    assert_eq!(h["x-quiet"], false);
    assert_eq!(
        h["x-meta"],
        serde_json::json!({"tenant": "acme", "where": {"zone": "eu-1", "weight": 3}})
    );
    assert_eq!(h["x-tags"], serde_json::json!(["blue", 2, false]));
    assert_eq!(
        h["x-raw"],
        serde_json::json!({"bytes": "AJ+Slg=="}),
        "bytes that are no text are marked as bytes"
    );
    assert_eq!(shown["fault"]["message"], long.as_str(), "the fault whole");
    assert!(list.status.success(), "{}", text(&list.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed[0]["fault_message"], long.as_str(), "the list's fault whole too");
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_edit_checks_the_schema_and_export_import_moves_dead_letters_between_databases() {
    let (db, other) = (TestDb::create().await.unwrap(), TestDb::create().await.unwrap());
    let vhost = TestVhost::new().unwrap();
    let run = |url: String, args: Vec<String>| {
        let bus = vhost.url();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pvefleet(
                &[("PVEFLEET_DB__URL", url.as_str()), ("PVEFLEET_BUS__URL", bus.as_str())],
                &args,
            )
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(run(db.url(), args(&["migrate"])).await.unwrap().status.success());
    // A parked container.start, as the keeper stores one.
    let sent = Outgoing::message(
        &pvefleet_contracts::messages::ContainerStart {
            site_id: pvefleet_contracts::ids::SiteId::new(),
            vmid: pvefleet_contracts::Vmid(101),
            node: None,
        },
        &Origin::default(),
    )
    .unwrap();
    let id = uuid::Uuid::now_v7();
    let c = db.client().await.unwrap();
    c.execute(
        "INSERT INTO dead_letters (id, message_id, attempts, message_type, properties, body, origin_exchange,
             origin_routing_key, origin_queue, fault_class, fault_message, fingerprint)
         VALUES ($1, $2, 3, 'container.start', $3, $4, 'pvefleet.commands', 'container.start',
             'pvefleet.provisioner', 'retries-exhausted', 'PVE is down', 'container.start/retries-exhausted/x')",
        &[
            &id,
            &sent.message_id().unwrap().to_string(),
            &serde_json::to_value(&sent.properties).unwrap(),
            &sent.body.to_vec(),
        ],
    )
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("pvefleet-dlq-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // An edit that breaks the schema is refused with the validation error; nothing changes.
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"site_id": "01930c5e-7a10-7000-8000-000000000001", "vmid": "one hundred"}"#,
    )
    .unwrap();
    let out = run(
        db.url(),
        args(&["dlq", "edit", &id.to_string(), "--body", bad.to_str().unwrap()]),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/vmid"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("stays parked"), "{}", text(&out.stderr));
    // Export, then import into another database: the same dead letter, parked there.
    let file = dir.join("dl.ndjson");
    let out = run(db.url(), args(&["dlq", "export", "--out", file.to_str().unwrap()]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(run(other.url(), args(&["migrate"])).await.unwrap().status.success());
    let out = run(other.url(), args(&["dlq", "import", file.to_str().unwrap(), "--json"]))
        .await
        .unwrap();
    let imported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(imported["imported"], 1, "{}", text(&out.stderr));
    let out = run(other.url(), args(&["dlq", "import", file.to_str().unwrap(), "--json"]))
        .await
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (again["imported"].as_u64(), again["skipped"].as_u64()),
        (Some(0), Some(1))
    );
    let o = other.client().await.unwrap();
    let (body, props): (Vec<u8>, serde_json::Value) = {
        let r = o
            .query_one("SELECT body, properties FROM dead_letters", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(body, sent.body.to_vec(), "the body survives the move byte for byte");
    assert_eq!(props, serde_json::to_value(&sent.properties).unwrap());
    // A valid edit: a copy with a new message id goes out, the original is resolved.
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"site_id": "01930c5e-7a10-7000-8000-000000000001", "vmid": 102}"#,
    )
    .unwrap();
    let ch = vhost.probe().await.unwrap();
    let out = run(
        db.url(),
        args(&[
            "dlq",
            "edit",
            &id.to_string(),
            "--body",
            good.to_str().unwrap(),
            "--json",
        ]),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let edited: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let copy = edited["message_id"].as_str().unwrap().to_string();
    assert_ne!(copy, sent.message_id().unwrap());
    let queued = take(&ch, "pvefleet.provisioner", 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(queued[0].properties.message_id.as_ref().unwrap().as_str(), copy);
    assert_eq!(
        queued[0].properties.header_str("pvefleet-replay-of"),
        Some(id.to_string())
    );
    let state: String = c
        .query_one("SELECT state FROM dead_letters WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "resolved");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn autoscale_simulate_replays_decisions_and_policy_and_import_store_policies() {
    let db = TestDb::create().await.unwrap();
    let dir = std::env::temp_dir().join(format!("pvefleet-autoscale-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"evaluation_periods": 1, "cooldown_secs": 120, "max_cores": 3}"#,
    )
    .unwrap();
    let samples = dir.join("samples.ndjson");
    // A 2-core container whose load grows with it, one sample a minute.
    let lines: Vec<String> = [1.8, 2.7, 2.7, 2.7, 0.4]
        .iter()
        .enumerate()
        .map(|(i, cpu)| {
            format!(
                r#"{{"t": {}, "cores": 2, "memory_mb": 2048, "cpu_cores": {cpu}, "mem_mb": 1000}}"#,
                i * 60
            )
        })
        .collect();
    std::fs::write(&samples, lines.join("\n")).unwrap();
    let url = db.url();
    let run = |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pvefleet(&[("PVEFLEET_DB__URL", url.as_str())], &args)
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let out = run(args(&[
        "autoscale",
        "simulate",
        "--policy",
        policy.to_str().unwrap(),
        "--samples",
        samples.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ticks: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ticks.len(), 5);
    assert_eq!(ticks[0]["cores"]["to"], 3, "t=0: 90 %, up one step");
    assert_eq!(
        ticks[1]["cores"]["hold"], "cpu cooldown",
        "t=60: within the 120 s cooldown"
    );
    assert_eq!(ticks[2]["cores"]["hold"], "cores at their limit", "t=120: max_cores 3");
    assert_eq!(ticks[4]["cores"]["to"], 2, "t=240: the load dropped, down one step");
    // Policies: set, get, list, delete.
    let out = run(args(&[
        "autoscale",
        "policy",
        "set",
        "--tag",
        "web",
        "--json",
        r#"{"max_cores": 4}"#,
    ]))
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(args(&[
        "autoscale",
        "policy",
        "set",
        "--tag",
        "web",
        "--json",
        r#"{"max_cpus": 4}"#,
    ]))
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown key is refused");
    assert!(text(&out.stderr).contains("max_cpus"), "{}", text(&out.stderr));
    // A policy that cannot work is refused too, naming the key.
    let out = run(args(&[
        "autoscale",
        "policy",
        "set",
        "--tag",
        "web",
        "--json",
        r#"{"min_cores": 8, "max_cores": 2}"#,
    ]))
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "min above max is refused");
    assert!(text(&out.stderr).contains("min_cores"), "{}", text(&out.stderr));
    for (keys, key) in [
        (r#"{"cpu_up": 20, "cpu_down": 90}"#, "cpu_down"),
        (r#"{"cpu_up": 250}"#, "cpu_up"),
    ] {
        let out = run(args(&["autoscale", "policy", "set", "--tag", "web", "--json", keys]))
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{keys} is refused");
        assert!(text(&out.stderr).contains(key), "{keys}: {}", text(&out.stderr));
    }
    // `set` merges: a second key joins the first; `unset` removes one.
    let out = run(args(&[
        "autoscale",
        "policy",
        "set",
        "--tag",
        "web",
        "--json",
        r#"{"cooldown_secs": 90}"#,
    ]))
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(args(&["autoscale", "policy", "get", "--tag", "web", "--json"]))
        .await
        .unwrap();
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got["stored"],
        serde_json::json!({ "max_cores": 4, "cooldown_secs": 90 })
    );
    assert_eq!(
        (got["policy"]["max_cores"].as_u64(), got["policy"]["cpu_up"].as_f64()),
        (Some(4), Some(80.0))
    );
    assert_eq!(got["from"]["max_cores"], "tag:web");
    assert_eq!(got["from"]["cpu_up"], "default");
    let out = run(args(&["autoscale", "policy", "unset", "--tag", "web", "cooldown_secs"]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(args(&["autoscale", "policy", "get", "--tag", "web"]))
        .await
        .unwrap();
    let shown = text(&out.stdout);
    assert!(shown.contains(r#"tag:web: stored {"max_cores":4}"#), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("cooldown_secs") && l.ends_with("default")),
        "{shown}"
    );
    // Import of an lxc-autoscaler config: policies stored, the rest reported.
    let yaml = dir.join("config.yaml");
    std::fs::write(
        &yaml,
        "proxmox:\n  host: \"192.168.2.90\"\n  token_value: \"secret-value\"\ncontainers:\n  - vmid: 101\n    enabled: true\n    limits:\n      max_cpu_cores: 6\n    cooldown_seconds: 600\nglobal:\n  enable_dry_run: true\n",
    )
    .unwrap();
    let out = run(args(&["autoscale", "import", yaml.to_str().unwrap(), "--json"]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !text(&out.stdout).contains("secret-value"),
        "a credential is never printed"
    );
    assert_eq!(report["unmapped"].as_array().unwrap().len(), 2, "{report}");
    // The file was in dry run: container 101 is too, under its own policy, with the file's
    // keys and lxc-autoscaler's step for the rest.
    let effective = &report["effective"][0];
    assert_eq!(effective["vmid"], 101);
    assert_eq!(
        effective["policy"]["dry_run"],
        serde_json::json!({ "value": true, "from": "global" })
    );
    assert_eq!(effective["policy"]["max_cores"]["value"], 6);
    assert_eq!(effective["policy"]["memory_step_mb"]["value"], 256);
    let out = run(args(&["autoscale", "policy", "get", "--vmid", "101", "--json"]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["policy"]["dry_run"], true, "{got}");
    assert_eq!(got["from"]["dry_run"], "global");
    assert_eq!(got["policy"]["cooldown_secs"], 600);
    assert_eq!(got["from"]["cooldown_secs"], "vmid:101");
    assert!(
        got["note"].as_str().unwrap_or_default().contains("tags unknown"),
        "no PVE here: said so, {got}"
    );
    let out = run(args(&["autoscale", "policy", "list", "--json"])).await.unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scopes: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["scope"].as_str().unwrap())
        .collect();
    assert_eq!(scopes, ["global", "tag:web", "vmid:101"]);
    let out = run(args(&["autoscale", "policy", "delete", "--tag", "web"]))
        .await
        .unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

/// `autoscale status` shows each container's floor and ceiling and where each comes from: a
/// `small` site's plan, the policy's maximum, its `cpulimit`.
#[tokio::test(flavor = "multi_thread")]
async fn autoscale_status_shows_floors_and_ceilings_with_their_sources() {
    let db = TestDb::create().await.unwrap();
    let (sim, addr) = pvefleet_pvesim::Sim::spawn(pvefleet_pvesim::SimConfig {
        token: Some(("a@pve!s".into(), "x".into())),
        ..Default::default()
    })
    .await
    .unwrap();
    sim.populate(700, 2, pvefleet_pvesim::Load::default());
    let url = format!("http://{addr}");
    let pve = pvefleet_core::pve::client(&pvefleet_core::config::PveSettings {
        url: url.clone(),
        token_id: Some("a@pve!s".into()),
        token_secret: Some(pvefleet_core::Secret::new("x")),
        ..Default::default()
    })
    .unwrap();
    let node = pve
        .resources(None)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.vmid == Some(700))
        .and_then(|r| r.node)
        .unwrap();
    pve.lxc_set_config(
        &node,
        700,
        pvefleet_proxmox::client::Params::new()
            .set("cores", 1)
            .set("memory", 1024)
            .set("cpulimit", 3),
        None,
    )
    .await
    .unwrap();
    let c = db.client().await.unwrap();
    pvefleet_core::db::migrate(
        &pvefleet_core::db::connect(&pvefleet_core::config::DbSettings {
            url: pvefleet_core::Secret::new(db.url()),
            ..Default::default()
        })
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO sites (id, subdomain, owner, state, spec, vmid) VALUES (gen_random_uuid(), 'blog', 'alice', 'active', $1, 700)",
        &[&serde_json::json!({ "subdomain": "blog", "owner": "alice", "plan": "small", "template": "t" })],
    )
    .await
    .unwrap();
    let db_url = db.url();
    let run = |args: Vec<&'static str>| {
        let (url, db_url) = (url.clone(), db_url.clone());
        tokio::task::spawn_blocking(move || {
            pvefleet(
                &[
                    ("PVEFLEET_PVE__URL", url.as_str()),
                    ("PVEFLEET_PVE__TOKEN_ID", "a@pve!s"),
                    ("PVEFLEET_PVE__TOKEN_SECRET", "x"),
                    ("PVEFLEET_DB__URL", db_url.as_str()),
                ],
                &args,
            )
        })
    };
    let out = run(vec!["autoscale", "status", "--json"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let site = all.as_array().unwrap().iter().find(|c| c["vmid"] == 700).unwrap();
    assert_eq!(
        site["bounds"]["cores"]["floor"],
        serde_json::json!({ "value": 1, "from": "plan small" })
    );
    assert_eq!(
        site["bounds"]["memory"]["floor"],
        serde_json::json!({ "value": 1024, "from": "plan small" })
    );
    assert_eq!(
        site["bounds"]["cores"]["ceiling"],
        serde_json::json!({ "value": 3, "from": "cpulimit 3" })
    );
    assert_eq!(
        site["bounds"]["memory"]["ceiling"],
        serde_json::json!({ "value": 8192, "from": "policy max_memory_mb (default)" })
    );
    // Not a site: the policy's minimums.
    let other = all.as_array().unwrap().iter().find(|c| c["vmid"] == 701).unwrap();
    assert_eq!(
        other["bounds"]["memory"]["floor"]["from"],
        "policy min_memory_mb (default)"
    );
    let out = run(vec!["autoscale", "status"]).await.unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.contains("cores floor 1 (plan small), ceiling 3 (cpulimit 3)"),
        "{shown}"
    );
}

#[test]
fn the_binary_answers_help_and_version_and_starts_nothing() {
    let checked = pvefleet_testkit::cli::answers_help_and_version(env!("CARGO_BIN_EXE_pvefleet"), "pvefleet");
    assert_eq!(checked, Ok(()));
}

#[test]
fn a_closed_stdout_ends_the_command_quietly_with_the_sigpipe_status() {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pvefleet"))
        .args(["config", "check"])
        .env_remove("PVEFLEET_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the command writes, as `| head -1` does after its line.
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_publish_and_its_clean_close_log_no_error() -> anyhow::Result<()> {
    let vhost = TestVhost::new()?;
    let url = vhost.url();
    let env = [("PVEFLEET_BUS__URL", url.as_str()), ("RUST_LOG", "info")];
    let out = pvefleet(&env, &["topology", "declare"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto/examples/dns.upsert.v1.json");
    let out = pvefleet(&env, &["bus", "publish", "--type", "dns.upsert", "--json", example]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("published dns.upsert"),
        "{}",
        text(&out.stdout)
    );
    assert!(!text(&out.stderr).contains("ERROR"), "{}", text(&out.stderr));
    Ok(())
}

#[test]
fn a_site_command_without_a_running_intake_says_where_it_looked_and_why() {
    let out = pvefleet(&[], &["site", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no API token: pass --token, set PVEFLEET_TOKEN, or run `pvefleet dev`"),
        "{}",
        text(&out.stderr)
    );
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = format!("http://127.0.0.1:{port}");
    let out = pvefleet(&[("PVEFLEET_API", &api)], &["site", "list", "--token", "t"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("cannot reach intake at {api}")), "{stderr}");
    assert!(stderr.contains("is it running?"), "{stderr}");
}

#[test]
fn init_secrets_makes_each_missing_secret_in_its_format_and_keeps_what_is_there() {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("pvefleet-secrets-{}", uuid::Uuid::new_v4().simple()));
    let out = pvefleet(&[], &["init-secrets", dir.to_str().unwrap(), "--demo"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = std::fs::read_to_string(dir.join("installer-secrets-key")).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD.decode(key.trim()).unwrap();
    assert_eq!(bytes.len(), 32, "the installer's key is 32 bytes in base64");
    assert!(
        !std::fs::read_to_string(dir.join("pve-token-secret"))
            .unwrap()
            .trim()
            .is_empty()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("powerdns-api-key"))
            .unwrap()
            .trim()
            .len(),
        64
    );
    let owner_key = std::fs::read_to_string(dir.join("owner-webhook-key")).unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(owner_key.trim())
            .unwrap()
            .len(),
        32,
        "the owner webhook key is 32 bytes in base64"
    );
    assert_eq!(std::fs::read_to_string(dir.join("smtp-password")).unwrap(), "");
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    // A second run keeps every file.
    let out = pvefleet(&[], &["init-secrets", dir.to_str().unwrap(), "--demo"]);
    assert!(text(&out.stdout).matches("kept").count() == 6, "{}", text(&out.stdout));
    assert_eq!(std::fs::read_to_string(dir.join("installer-secrets-key")).unwrap(), key);
    // A malformed key that is there is named, with the command that makes one.
    std::fs::write(dir.join("installer-secrets-key"), "REPLACE-ME\n").unwrap();
    let out = pvefleet(&[], &["init-secrets", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("installer-secrets-key") && stderr.contains("pvefleet init-secrets"),
        "{stderr}"
    );
    // Without --demo a missing PVE secret is an empty file, for the user to fill.
    let other = dir.join("real");
    let out = pvefleet(&[], &["init-secrets", other.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(other.join("pve-token-secret")).unwrap(), "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_exits_zero_on_2xx_and_one_naming_why_otherwise() {
    let (_sim, addr) = pvefleet_pvesim::Sim::spawn(Default::default()).await.unwrap();
    let out = tokio::task::spawn_blocking(move || {
        (
            pvefleet(&[], &["health", &format!("http://{addr}/api2/json/version")]),
            pvefleet(&[], &["health", &format!("http://{addr}/api2/json/nowhere")]),
            pvefleet(&[], &["health", "http://127.0.0.1:1/readyz", "--timeout", "1s"]),
        )
    })
    .await
    .unwrap();
    assert!(out.0.status.success(), "{}", text(&out.0.stderr));
    assert_eq!(out.1.status.code(), Some(1));
    assert!(text(&out.1.stderr).contains("answered 501"), "{}", text(&out.1.stderr));
    assert_eq!(out.2.status.code(), Some(1));
    assert!(
        text(&out.2.stderr).starts_with("unhealthy: http://127.0.0.1:1/readyz"),
        "{}",
        text(&out.2.stderr)
    );
}

/// A scripted session touching every kind of change, through the API and the CLI, against
/// `pvefleet dev`: `audit list --json` then holds one row for each, with its actor and owner,
/// and no secret is anywhere in the audit table.
#[tokio::test(flavor = "multi_thread")]
async fn every_change_of_a_session_through_the_api_and_the_cli_is_one_audit_row_and_no_secret_is_in_the_table() {
    pvefleet_proxmox::client::tls::provider();
    let vhost = TestVhost::new().unwrap();
    let db = TestDb::create().await.unwrap();
    let home = std::env::temp_dir().join(format!("pvefleet-audit-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&home).unwrap();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_pvefleet"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--pvesim-listen",
            "127.0.0.1:0",
            "--task-ms",
            "20",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("PVEFLEET_BUS__URL", vhost.url())
        .env("PVEFLEET_DB__URL", db.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut api = None;
    for _ in 0..20 {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.trim().strip_prefix("intake") {
            api = rest.split_whitespace().next().map(str::to_string);
        }
        if line.contains("Stop with ctrl-c") {
            break;
        }
    }
    let api = api.expect("dev prints the intake address");
    let db_url = db.url();
    // Each command as the night shift, with dev's profile for everything else.
    let run = |args: Vec<String>| {
        let (home, db_url) = (home.clone(), db_url.clone());
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_pvefleet"))
                .args(&args)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("HOME", &home)
                .env("PVEFLEET_DB__URL", &db_url)
                .env("PVEFLEET_OPERATOR", "night-shift")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
            text(&out.stdout)
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // An owner's token, minted at the CLI with every owner scope.
    let mut create = s(&["token", "create", "--name", "alice-app", "--owner", "alice"]);
    for scope in pvefleet_policy::scopes::ALL.iter().filter(|s| !s.operator_only) {
        create.extend(["--scope".to_string(), scope.name.to_string()]);
    }
    let alice = run(create).await.unwrap().trim().to_string();
    // Through the API with alice's token: a WordPress site, its credentials, an interface.
    let out = run(s(&[
        "site", "create", "blog", "--wait", "--api", &api, "--token", &alice,
    ]))
    .await
    .unwrap();
    assert!(out.contains("site blog is active"), "{out}");
    let sites: serde_json::Value = reqwest::Client::new()
        .get(format!("{api}/v1/sites"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let site = sites[0]["id"].as_str().unwrap().to_string();
    let vmid = sites[0]["vmid"].to_string();
    let creds = run(s(&["site", "credentials", &site, "--api", &api, "--token", &alice]))
        .await
        .unwrap();
    let password = creds
        .lines()
        .find_map(|l| l.split_whitespace().skip_while(|w| !w.contains("password")).nth(1))
        .map(str::to_string);
    run(s(&[
        "net", "attach", &vmid, "--bridge", "vmbr0", "--wait", "--api", &api, "--token", &alice,
    ]))
    .await
    .unwrap();
    // At the CLI: an autoscale policy set and deleted, an lxc-autoscaler import, a token
    // rotated and one revoked.
    run(s(&[
        "autoscale",
        "policy",
        "set",
        "--vmid",
        &vmid,
        "--json",
        r#"{"cpu_up": 70.0}"#,
    ]))
    .await
    .unwrap();
    run(s(&["autoscale", "policy", "delete", "--vmid", &vmid]))
        .await
        .unwrap();
    let import = home.join("lxc-autoscaler.yaml");
    std::fs::write(
        &import,
        "containers:\n  - vmid: 4242\n    thresholds:\n      cpu_scale_up: 75.0\n",
    )
    .unwrap();
    run(s(&["autoscale", "import", import.to_str().unwrap()]))
        .await
        .unwrap();
    let spare = run(s(&[
        "token",
        "create",
        "--name",
        "spare",
        "--owner",
        "alice",
        "--scope",
        "sites:read",
    ]))
    .await
    .unwrap()
    .trim()
    .to_string();
    let list: serde_json::Value = serde_json::from_str(&run(s(&["token", "list", "--json"])).await.unwrap()).unwrap();
    let spare_id = list.as_array().unwrap().iter().find(|t| t["name"] == "spare").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rotated = run(s(&["token", "rotate", &spare_id]))
        .await
        .unwrap()
        .trim()
        .to_string();
    let list: serde_json::Value = serde_json::from_str(&run(s(&["token", "list", "--json"])).await.unwrap()).unwrap();
    let rotated_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "spare" && t["status"] == "active")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    run(s(&["token", "revoke", &rotated_id])).await.unwrap();
    // The site deleted with alice's token.
    run(s(&[
        "site", "delete", &site, "--wait", "--api", &api, "--token", &alice,
    ]))
    .await
    .unwrap();
    let _ = Command::new("kill").args(["-TERM", &dev.id().to_string()]).status();
    let _ = dev.wait();

    let rows: serde_json::Value =
        serde_json::from_str(&run(s(&["audit", "list", "--limit", "1000", "--json"])).await.unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    let by = |action: &str| rows.iter().filter(|r| r["action"] == action).collect::<Vec<_>>();
    let cli = "cli:night-shift";
    for (action, actor, owner, n) in [
        ("token.create", Some(cli), Some("alice"), 2),
        ("token.rotate", Some(cli), Some("alice"), 1),
        ("token.revoke", Some(cli), Some("alice"), 1),
        ("site.create", None, Some("alice"), 1),
        ("site.credentials.reveal", None, Some("alice"), 1),
        ("net.attach", None, Some("alice"), 1),
        ("site.delete", None, Some("alice"), 1),
        ("autoscale.policy.set", Some(cli), None, 1),
        ("autoscale.policy.delete", Some(cli), None, 1),
        ("autoscale.import", Some(cli), None, 1),
    ] {
        let got = by(action);
        assert_eq!(got.len(), n, "{action}: {got:#?}");
        for r in got {
            match actor {
                Some(a) => assert_eq!(r["actor"], a, "{r}"),
                // The API's rows name alice's token.
                None => assert!(
                    r["actor"].as_str().unwrap().contains("(alice-app)") && r["token_id"].is_string(),
                    "{r}"
                ),
            }
            if let Some(o) = owner {
                assert_eq!(r["owner"], o, "{r}");
            }
            assert!(r["outcome"].is_string() && r["at"].is_string(), "{r}");
        }
    }
    for r in by("site.create").iter().chain(by("net.attach").iter()) {
        assert!(r["request_id"].is_string(), "an API row names its request: {r}");
    }
    // No secret anywhere in the table: not a token, not the credentials.
    let client = db.client().await.unwrap();
    let table: String = client
        .query_one("SELECT coalesce(string_agg(a::text, E'\\n'), '') FROM audit_log a", &[])
        .await
        .unwrap()
        .get(0);
    for secret in [alice.as_str(), spare.as_str(), rotated.as_str()] {
        assert!(!table.contains(secret), "a token is in the audit table");
    }
    assert!(!table.contains("pvf_"), "a token is in the audit table");
    let password = password.expect("the credentials name a password");
    assert!(password.len() >= 16, "{creds}");
    assert!(!table.contains(&password), "a password is in the audit table");
    std::fs::remove_dir_all(&home).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_commands_queue_a_test_notice_resend_it_and_set_an_owners_contacts_with_its_signing_secret() {
    let db = TestDb::create().await.unwrap();
    let url = db.url();
    let dir = std::env::temp_dir().join(format!("pvefleet-notify-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("owner-webhook-key");
    std::fs::write(&key_file, "owner-key-for-the-test\n").unwrap();
    let key_path = key_file.to_str().unwrap().to_string();
    let run = |env: Vec<(&'static str, String)>, args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut all: Vec<(&str, &str)> = vec![("PVEFLEET_DB__URL", url.as_str())];
            all.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pvefleet(&all, &args)
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ops = (
        "PVEFLEET_NOTIFIER__OPERATOR__EMAIL",
        r#"["ops@example.org"]"#.to_string(),
    );
    let smtp = ("PVEFLEET_NOTIFIER__SMTP__HOST", "127.0.0.1".to_string());

    // No operator channel: a test notice has nowhere to go, and says so.
    let out = run(vec![], args(&["notify", "test"])).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("no route sends notify.test"),
        "{}",
        text(&out.stderr)
    );

    // With one, it is queued: a pending delivery and its notify.deliver in the outbox.
    let out = run(
        vec![ops.clone(), smtp.clone()],
        args(&["notify", "test", "--message", "hello"]),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("queued ").map(str::to_string))
        .expect("a queued delivery");
    let out = run(vec![], args(&["notify", "list", "--json"])).await.unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(
        (
            list[0]["id"].as_str(),
            list[0]["event_type"].as_str(),
            list[0]["channel"].as_str(),
            list[0]["target"].as_str(),
            list[0]["state"].as_str()
        ),
        (
            Some(id.as_str()),
            Some("notify.test"),
            Some("email"),
            Some("ops@example.org"),
            Some("pending")
        )
    );
    let c = db.client().await.unwrap();
    let queued: i64 = c
        .query_one("SELECT count(*) FROM outbox WHERE message_type = 'notify.deliver'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 1);

    // Failed for good, then sent again: pending, one more command, audited.
    c.execute(
        "UPDATE notifications SET state = 'failed', last_error = 'no SMTP server' WHERE id = $1::text::uuid",
        &[&id],
    )
    .await
    .unwrap();
    let out = run(vec![], args(&["notify", "resend", &id])).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(vec![], args(&["notify", "show", &id])).await.unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (shown["state"].as_str(), shown["last_error"].as_str()),
        (Some("pending"), None),
        "{shown}"
    );
    let queued: i64 = c
        .query_one("SELECT count(*) FROM outbox WHERE message_type = 'notify.deliver'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 2);
    let actions: Vec<(String, String)> = c
        .query("SELECT action, outcome FROM audit_log ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let pairs: Vec<(&str, &str)> = actions.iter().map(|(a, o)| (a.as_str(), o.as_str())).collect();
    assert_eq!(
        pairs,
        [
            ("notify.test", "no-route"),
            ("notify.test", "accepted"),
            ("notify.resend", "accepted")
        ]
    );

    // Bad arguments are named, exit 2; an unknown delivery is exit 1.
    let out = run(vec![], args(&["notify", "list", "--state", "lost"])).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--state lost"), "{}", text(&out.stderr));
    let out = run(
        vec![],
        args(&["notify", "show", "01900000-0000-7000-8000-000000000000"]),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = run(
        vec![],
        args(&["notify", "owner", "set", "alice", "--email", "not an address"]),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--email"), "{}", text(&out.stderr));
    let out = run(
        vec![],
        args(&["notify", "owner", "set", "alice", "--webhook", "ftp://x.example/"]),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--webhook"), "{}", text(&out.stderr));

    // An owner's contacts, with the signing secret derived from the configured key.
    let keyed = ("PVEFLEET_NOTIFIER__OWNER_WEBHOOK_KEY_FILE", key_path.clone());
    let out = run(
        vec![keyed.clone()],
        args(&[
            "notify",
            "owner",
            "set",
            "alice",
            "--email",
            "alice@example.org",
            "--webhook",
            "https://hooks.example.org/alice",
        ]),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = pvefleet_notifier::channels::owner_secret("owner-key-for-the-test", "alice");
    assert!(text(&out.stdout).contains(&secret), "{}", text(&out.stdout));
    let out = run(vec![keyed], args(&["notify", "owner", "show", "alice", "--json"]))
        .await
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            shown["email"].as_str(),
            shown["webhook_url"].as_str(),
            shown["webhook_secret"].as_str()
        ),
        (
            Some("alice@example.org"),
            Some("https://hooks.example.org/alice"),
            Some(secret.as_str())
        )
    );
    // The secret is shown, never stored or audited.
    let leaked: i64 = c
        .query_one(
            "SELECT count(*) FROM audit_log WHERE detail::text LIKE '%' || $1 || '%'",
            &[&secret],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
