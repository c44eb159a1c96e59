//! The installer in-process against the real RabbitMQ (its own vhost), Postgres (its own
//! database, for the sealed credentials), pvesim (to find the container's node) and a real
//! OpenSSH sshd on loopback, whose sessions find a stand-in `pct` that records its argv and
//! stdin (`pvefleet_testkit::ssh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use pvefleet_contracts::Message;
use pvefleet_contracts::ids::SiteId;
use pvefleet_contracts::messages::AppInstall;
use pvefleet_contracts::{Vmid, routing::PARKED_QUEUE};
use pvefleet_core::Settings;
use pvefleet_core::bus::Publisher;
use pvefleet_installer::{SecretBox, WORDPRESS_SETUP};
use pvefleet_pvesim::{Sim, SimConfig};
use pvefleet_testkit::ssh::Sshd;
use pvefleet_testkit::{TestDb, TestVhost, init_tracing, settings};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";

fn key() -> String {
    base64::engine::general_purpose::STANDARD.encode([42u8; 32])
}

struct Rig {
    _vhost: TestVhost,
    db: TestDb,
    sim: Sim,
    publisher: Publisher,
    events: (pvefleet_core::bus::probe::Probe, String),
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The installer reaching every pvesim node through `sshd`, with a container 300 on pve2.
async fn rig(sshd: &Sshd, tune: impl FnOnce(&mut Settings)) -> Rig {
    init_tracing();
    let vhost = TestVhost::new().unwrap();
    let db = TestDb::create().await.unwrap();
    let mut s = settings(&vhost, Some(&db));
    let (sim, addr) = Sim::spawn(SimConfig {
        token: Some(("fleet@pve!inst".into(), "s3cret".into())),
        task_duration: Duration::from_millis(10),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    s.pve.url = format!("http://{addr}");
    s.pve.token_id = Some("fleet@pve!inst".into());
    s.pve.token_secret = Some(pvefleet_core::Secret::new("s3cret"));
    s.installer.ssh_port = sshd.port;
    s.installer.ssh_key = Some(sshd.client_key.clone());
    s.installer.known_hosts = Some(sshd.known_hosts.clone());
    s.installer.node_addresses = ["pve1", "pve2", "pve3"]
        .into_iter()
        .map(|n| (n.to_string(), "127.0.0.1".to_string()))
        .collect();
    s.installer.ready_delay = Duration::from_millis(50);
    s.installer.secrets_key = Some(pvefleet_core::Secret::new(key()));
    s.bus.max_attempts = 2;
    s.bus.retry_tiers = vec![Duration::from_millis(200)];
    tune(&mut s);
    let pve = pvefleet_core::pve::client(&s.pve).unwrap();
    pve.lxc_create(
        "pve2",
        pvefleet_proxmox::client::Params::new()
            .set("vmid", 300)
            .set("hostname", "blog")
            .set("ostemplate", TEMPLATE)
            .set("rootfs", "local-lvm:8"),
    )
    .await
    .unwrap();
    pve.lxc_power("pve2", 300, "start", pvefleet_proxmox::client::Params::new())
        .await
        .unwrap();
    let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
    pvefleet_core::db::migrate(&pool).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (s, sd) = (s.clone(), shutdown.clone());
        async move { pvefleet_installer::run(&s, pool, None, sd).await }
    });
    let publisher = Publisher::new(
        &s.bus,
        "test",
        Some(pvefleet_core::bus::topology::Topology::fleet(&s.bus)),
    );
    publisher.connect().await.unwrap();
    let ch = vhost.probe().await.unwrap();
    let q = pvefleet_testkit::broker::event_queue(&ch, &["app.*"]).await.unwrap();
    Rig {
        _vhost: vhost,
        db,
        sim,
        publisher,
        events: (ch, q),
        shutdown,
        task,
    }
}

impl Rig {
    async fn send<M: Message>(&self, msg: &M) {
        pvefleet_testkit::broker::send(&self.publisher, msg).await.unwrap();
    }

    async fn event(&self) -> (String, Value) {
        pvefleet_testkit::broker::next_json(&self.events.0, &self.events.1, WAIT)
            .await
            .unwrap()
            .expect("an event arrives")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn install(site: SiteId, title: &str) -> AppInstall {
    AppInstall {
        site_id: site,
        vmid: Vmid(300),
        app: "wordpress".into(),
        site_url: "https://blog.sites.test".into(),
        title: title.into(),
        admin_email: "alice@sites.test".into(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wordpress_is_installed_through_ssh_and_pct_with_the_exact_argv_and_script() {
    let sshd = Sshd::start().await.unwrap();
    sshd.not_ready_for(2);
    let r = rig(&sshd, |_| {}).await;
    let site = SiteId::new();
    r.send(&install(site, "blog")).await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "app.installed", "{body}");
    let calls = sshd.pct_calls();
    let argv: Vec<Vec<String>> = calls.iter().map(|c| c.argv.clone()).collect();
    // Two "not running" answers, the probe that passes, the script, the verification.
    assert_eq!(
        argv,
        vec![
            strings(&["exec", "300", "--", "true"]),
            strings(&["exec", "300", "--", "true"]),
            strings(&["exec", "300", "--", "true"]),
            strings(&[
                "exec",
                "300",
                "--",
                "bash",
                "-s",
                "--",
                "https://blog.sites.test",
                "blog",
                "alice@sites.test",
                "admin"
            ]),
            strings(&[
                "exec",
                "300",
                "--",
                "wp",
                "core",
                "is-installed",
                "--path=/var/www/html",
                "--allow-root"
            ]),
        ]
    );
    // The script's bytes arrive whole, after the two lines that carry the secrets.
    let stdin = calls[3].stdin.clone().unwrap();
    assert!(
        stdin.ends_with(WORDPRESS_SETUP.as_bytes()),
        "the script bytes are received"
    );
    let preamble = String::from_utf8(stdin[..stdin.len() - WORDPRESS_SETUP.len()].to_vec()).unwrap();
    let lines: Vec<&str> = preamble.lines().collect();
    assert_eq!(lines.len(), 2, "{preamble}");
    assert!(lines[0].starts_with("export PVEFLEET_DB_PASSWORD='"));
    assert!(lines[1].starts_with("export PVEFLEET_ADMIN_PASSWORD='"));
    // The credentials are sealed in Postgres, and open to the same passwords.
    let c = r.db.client().await.unwrap();
    let sealed: Vec<u8> = c
        .query_one("SELECT sealed FROM site_secrets WHERE site_id = $1", &[&site.as_uuid()])
        .await
        .unwrap()
        .get(0);
    let creds = SecretBox::from_base64(&key())
        .unwrap()
        .open(site.as_uuid(), &sealed)
        .unwrap();
    assert!(lines[1].contains(&creds.admin_password));
    assert!(lines[0].contains(&creds.db_password));
    assert!(!String::from_utf8_lossy(&sealed).contains(&creds.admin_password));
    // A redelivered install runs again with the same passwords.
    r.send(&install(site, "blog")).await;
    assert_eq!(r.event().await.0, "app.installed");
    let again = sshd.pct_calls();
    let rerun = again.iter().rev().find(|c| c.stdin.is_some()).unwrap();
    assert_eq!(
        rerun.stdin.as_ref().unwrap(),
        &stdin,
        "the same secrets and script on a re-run"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_metacharacters_reach_pct_as_one_literal_argument() {
    let sshd = Sshd::start().await.unwrap();
    let r = rig(&sshd, |_| {}).await;
    let title = "x'; touch /tmp/pvefleet-pwned; echo \"$(id)\" `id` & | > <";
    r.send(&install(SiteId::new(), title)).await;
    assert_eq!(r.event().await.0, "app.installed");
    let script_call = sshd.pct_calls().into_iter().find(|c| c.stdin.is_some()).unwrap();
    assert_eq!(
        script_call.argv[7], title,
        "escaped for the remote shell, received verbatim"
    );
    assert_eq!(script_call.argv.len(), 10);
    assert!(
        !std::path::Path::new("/tmp/pvefleet-pwned").exists(),
        "nothing was injected"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_key_is_refused_and_retried_never_run() {
    let sshd = Sshd::start().await.unwrap();
    let r = rig(&sshd, |s| {
        s.installer.known_hosts = Some(sshd.wrong_known_hosts.clone());
    })
    .await;
    r.send(&install(SiteId::new(), "blog")).await;
    let parked = pvefleet_testkit::broker::take(&r.events.0, PARKED_QUEUE, 1, WAIT)
        .await
        .unwrap();
    assert_eq!(
        parked.len(),
        1,
        "a connection failure retries, then parks; it never fails the step"
    );
    let reason = parked[0]
        .properties
        .header_str(pvefleet_contracts::headers::fault::MESSAGE)
        .unwrap();
    assert!(reason.contains("cannot connect to 127.0.0.1"), "{reason}");
    assert!(sshd.pct_calls().is_empty(), "nothing ran on the node");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_script_fails_the_step_with_the_tail_of_its_stderr() {
    let sshd = Sshd::start().await.unwrap();
    sshd.fail_scripts(Some(
        "==> Installing nginx, PHP-FPM and MariaDB\nE: Unable to locate package php-fpm\nwordpress-setup: failed at line 48: apt_get install\n",
    ));
    let r = rig(&sshd, |_| {}).await;
    r.send(&install(SiteId::new(), "blog")).await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "app.install_failed", "{body}");
    assert_eq!(body["error"]["code"], "app.script_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("exit 3"), "{message}");
    assert!(message.contains("E: Unable to locate package php-fpm"), "{message}");
    assert!(!message.contains("PVEFLEET_ADMIN_PASSWORD="), "no secret in the event");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_app_runs_its_own_script_and_the_local_transport_runs_pct_here() {
    let sshd = Sshd::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("pvefleet-app-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("static-site.sh");
    std::fs::write(&script, "#!/bin/bash\nset -eu\necho \"static site for $1\"\n").unwrap();
    // The worker on the node itself: no ssh, `pct` straight from this machine.
    let pct = sshd.state.parent().unwrap().join("bin/pct");
    let r = rig(&sshd, |s| {
        s.installer.transport = "local".into();
        s.installer.pct = pct.display().to_string();
        s.installer.apps.insert(
            "static".into(),
            pvefleet_core::config::AppSettings { script: script.clone() },
        );
    })
    .await;
    let mut cmd = install(SiteId::new(), "docs");
    cmd.app = "static".into();
    r.send(&cmd).await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "app.installed", "{body}");
    let calls = sshd.pct_calls();
    let run = calls.iter().find(|c| c.stdin.is_some()).unwrap();
    assert!(run.stdin.as_ref().unwrap().ends_with(&std::fs::read(&script).unwrap()));
    assert!(
        !calls.iter().any(|c| c.argv.contains(&"wp".to_string())),
        "only WordPress is verified with wp-cli"
    );
    // An app nobody configured fails the step.
    let mut unknown = install(SiteId::new(), "x");
    unknown.app = "joomla".into();
    r.send(&unknown).await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "app.install_failed");
    assert_eq!(body["error"]["code"], "app.unknown");
    r.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pvesim_transport_installs_in_the_simulation_and_fails_with_the_scripts_stderr() {
    let sshd = Sshd::start().await.unwrap();
    let r = rig(&sshd, |s| s.installer.transport = "pvesim".into()).await;
    r.send(&install(SiteId::new(), "blog")).await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "app.installed", "{body}");
    let runs = r.sim.execs();
    let script = runs
        .iter()
        .find(|e| e.argv.get(4).is_some_and(|a| a == "bash"))
        .expect("the setup script went to the simulated pct exec");
    assert_eq!(script.node, "pve2");
    assert_eq!(script.vmid, Some(300));
    assert_eq!(
        script.argv,
        strings(&[
            "pct",
            "exec",
            "300",
            "--",
            "bash",
            "-s",
            "--",
            "https://blog.sites.test",
            "blog",
            "alice@sites.test",
            "admin"
        ])
    );
    assert!(
        script.script.contains("export PVEFLEET_ADMIN_PASSWORD='***'"),
        "{}",
        script.script
    );
    assert!(
        script.script.ends_with(WORDPRESS_SETUP.trim_end()),
        "the whole script is recorded"
    );
    assert!(
        runs.last().unwrap().argv.contains(&"is-installed".to_string()),
        "WordPress is verified after the script"
    );
    assert!(sshd.pct_calls().is_empty(), "nothing went over ssh");
    // Made to fail: the step fails with the script's stderr.
    r.sim.fail_exec(pvefleet_pvesim::ExecFault {
        command: Some("bash".into()),
        code: 3,
        stdout: String::new(),
        stderr: "E: Unable to locate package php-fpm\n".into(),
        count: 1,
    });
    r.send(&install(SiteId::new(), "shop")).await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "app.install_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("exit 3") && message.contains("E: Unable to locate package php-fpm"),
        "{message}"
    );
    r.stop().await;
}

#[test]
fn the_binary_answers_help_and_version_and_starts_nothing() {
    let checked =
        pvefleet_testkit::cli::answers_help_and_version(env!("CARGO_BIN_EXE_pvefleet-installer"), "pvefleet-installer");
    assert_eq!(checked, Ok(()));
    assert_eq!(
        pvefleet_testkit::cli::refuses_arguments(env!("CARGO_BIN_EXE_pvefleet-installer")),
        Ok(())
    );
}
