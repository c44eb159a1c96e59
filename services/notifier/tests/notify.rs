//! The notifier against real servers: an SMTP server (aiosmtpd, Debian's python3-aiosmtpd, delivering to a
//! maildir the test reads), a webhook receiver that checks Standard Webhooks signatures itself,
//! the real broker and Postgres (own vhost and database).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use hmac::{KeyInit, Mac};
use pvefleet_contracts::messages::{MessageParked, ResourceAlert, SiteProvisioned};
use pvefleet_contracts::{Message, SiteId, Vmid};
use pvefleet_core::config::WebhookEndpoint;
use pvefleet_testkit::{TestDb, TestVhost, eventually};

/// aiosmtpd on a loopback port, delivering into a maildir.
struct Smtp {
    port: u16,
    maildir: PathBuf,
    child: Option<Child>,
}

impl Smtp {
    fn start(port: u16, maildir: &Path) -> Self {
        let mut s = Self {
            port,
            maildir: maildir.to_path_buf(),
            child: None,
        };
        s.up();
        s
    }

    fn up(&mut self) {
        // Debian's python3, where its python3-aiosmtpd is (another may come first on the PATH).
        let python = if std::path::Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{}", self.port)])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd (apt-get install python3-aiosmtpd; scripts/test does)");
        self.child = Some(child);
        // Listening?
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("aiosmtpd did not listen on {}", self.port);
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every message in the maildir, as text.
    fn mails(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(dir) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in dir.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.down();
    }
}

/// A webhook receiver: answers 500 to the first `fail_first` requests, then 200; records each
/// request's headers and body.
/// One request a receiver saw: its headers and body.
type Seen = (HashMap<String, String>, Vec<u8>);

#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Seen>>>,
    fail_first: Arc<Mutex<usize>>,
}

async fn receiver(fail_first: usize) -> (Receiver, String) {
    let r = Receiver {
        fail_first: Arc::new(Mutex::new(fail_first)),
        ..Default::default()
    };
    let state = r.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let h = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                    .collect();
                state.seen.lock().unwrap().push((h, body.to_vec()));
                let mut left = state.fail_first.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

/// The receiver's side of Standard Webhooks, written from the scheme (not the notifier's
/// code): HMAC-SHA256 with the base64-decoded secret over `id.timestamp.body`, base64, `v1,`.
fn verify(secret: &str, headers: &HashMap<String, String>, body: &[u8]) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(headers["webhook-id"].as_bytes());
    mac.update(b".");
    mac.update(headers["webhook-timestamp"].as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    headers["webhook-signature"]
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

struct Rig {
    db: TestDb,
    _vhost: TestVhost,
    settings: pvefleet_core::Settings,
    smtp: Smtp,
    hooks: Receiver,
    secret: String,
    dir: PathBuf,
    publisher: pvefleet_core::bus::Publisher,
}

async fn rig(webhook_failures: usize) -> Rig {
    pvefleet_testkit::init_tracing();
    let db = TestDb::create().await.unwrap();
    let vhost = TestVhost::new().unwrap();
    let mut s = pvefleet_testkit::settings(&vhost, Some(&db));
    s.bus.max_attempts = 12;
    let dir = std::env::temp_dir().join(format!("pvefleet-notify-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let smtp = Smtp::start(pvefleet_testkit::edge::free_port().unwrap(), &dir.join("mail"));
    let (hooks, url) = receiver(webhook_failures).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string();
    std::fs::write(dir.join("hook.secret"), &secret).unwrap();
    std::fs::write(dir.join("owner.key"), "owner-webhook-key").unwrap();
    let n = &mut s.notifier;
    n.smtp.host = "127.0.0.1".into();
    n.smtp.port = smtp.port;
    n.smtp.security = pvefleet_core::config::SmtpSecurity::None;
    n.smtp.from = "pvefleet <fleet@example.org>".into();
    n.smtp.timeout = Duration::from_secs(5);
    n.operator.email = vec!["ops@example.org".into()];
    n.operator.webhooks = vec![WebhookEndpoint {
        name: "ops".into(),
        url,
        secret_file: Some(dir.join("hook.secret")),
    }];
    n.owner_webhook_key_file = Some(dir.join("owner.key"));
    s.saga.domain = "example.org".into();
    let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
    pvefleet_core::db::migrate(&pool).await.unwrap();
    let publisher = pvefleet_testkit::broker::fleet_publisher(&s).await.unwrap();
    Rig {
        db,
        _vhost: vhost,
        settings: s,
        smtp,
        hooks,
        secret,
        dir,
        publisher,
    }
}

impl Rig {
    fn start(
        &self,
    ) -> (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (s, sd) = (self.settings.clone(), shutdown.clone());
        let task = tokio::spawn(async move {
            let pool = pvefleet_core::db::connect(&s.db).await?;
            pvefleet_notifier::run(&s, pool, None, sd).await
        });
        (shutdown, task)
    }

    async fn site(&self, owner: &str, subdomain: &str, email: &str) -> SiteId {
        let c = self.db.client().await.unwrap();
        let id = uuid::Uuid::now_v7();
        c.execute(
            "INSERT INTO sites (id, subdomain, owner, state, spec, vmid, node) VALUES ($1, $2, $3, 'active', '{}', 123, 'pve1')",
            &[&id, &subdomain, &owner],
        )
        .await
        .unwrap();
        c.execute(
            "INSERT INTO owner_contacts (owner, email) VALUES ($1, $2) ON CONFLICT (owner) DO UPDATE SET email = $2",
            &[&owner, &email],
        )
        .await
        .unwrap();
        SiteId(id)
    }

    async fn states(&self) -> Vec<(String, String, String)> {
        let c = self.db.client().await.unwrap();
        c.query("SELECT channel, target, state FROM notifications ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    async fn settled(&self, n: usize) -> Vec<(String, String, String)> {
        eventually(Duration::from_secs(30), || async {
            let s = self.states().await;
            (s.len() >= n
                && s.iter()
                    .all(|(_, _, st)| st == "sent" || st == "failed" || st == "suppressed"))
            .then_some(s)
        })
        .await
        .expect("the deliveries settle within 30 s")
    }
}

fn parked(n: u128) -> MessageParked {
    MessageParked {
        dead_letter_id: uuid::Uuid::from_u128(n),
        message_type: Some("container.create".into()),
        correlation_id: None,
        queue: "pvefleet.provisioner".into(),
        group: "container.create/retries-exhausted/3f2a9c1d".into(),
        fault_class: "retries-exhausted".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_gets_one_mail_with_the_url_and_operators_get_parked_messages_by_mail_and_signed_webhook() {
    let r = rig(2).await;
    let (shutdown, task) = r.start();
    let site = r.site("alice", "blog", "alice@example.org").await;
    let provisioned = SiteProvisioned {
        site_id: site,
        vmid: Vmid(123),
        node: "pve1".into(),
        fqdn: None,
    };
    pvefleet_testkit::broker::send(&r.publisher, &provisioned)
        .await
        .unwrap();
    pvefleet_testkit::broker::send(&r.publisher, &parked(1)).await.unwrap();
    let states = r.settled(3).await;
    assert_eq!(
        states
            .iter()
            .filter(|(c, t, _)| c == "email" && t == "alice@example.org")
            .count(),
        1
    );
    let mails = r.smtp.mails();
    let to_alice: Vec<&String> = mails.iter().filter(|m| m.contains("To: alice@example.org")).collect();
    assert_eq!(to_alice.len(), 1, "{mails:?}");
    assert!(
        to_alice[0].contains("Subject: Your site blog is ready"),
        "{}",
        to_alice[0]
    );
    assert!(
        to_alice[0].contains("https://blog.example.org"),
        "the site's URL: {}",
        to_alice[0]
    );
    assert!(to_alice[0].contains("text/html"), "an HTML body too");
    let to_ops: Vec<&String> = mails.iter().filter(|m| m.contains("To: ops@example.org")).collect();
    assert_eq!(to_ops.len(), 1, "one mail for the parked message: {mails:?}");
    assert!(to_ops[0].contains("pvefleet dlq show"), "{}", to_ops[0]);
    // The webhook: two 500s, then a 200; three tries of the same webhook-id, each signed.
    let seen = r.hooks.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "retried on 500 until a 200");
    assert!(seen.iter().all(|(h, _)| h["webhook-id"] == seen[0].0["webhook-id"]));
    for (h, body) in &seen {
        assert!(verify(&r.secret, h, body), "a valid signature");
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["type"], "message.parked");
    }
    // A tampered body fails the same check.
    let (h, body) = &seen[0];
    let mut tampered = body.clone();
    tampered[2] ^= 1;
    assert!(!verify(&r.secret, h, &tampered), "a tampered body is rejected");
    let c = r.db.client().await.unwrap();
    let attempts: i32 = c
        .query_one("SELECT attempts FROM notifications WHERE channel = 'webhook'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 3);
    // No secret in the table.
    let dump: String = c
        .query_one(
            "SELECT string_agg(payload::text || subject, ' ') FROM notifications",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!dump.contains("MfKQ9r8"), "{dump}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&r.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_smtp_server_down_a_mail_waits_and_goes_when_it_is_back_and_alerts_are_not_repeated() {
    let mut r = rig(0).await;
    r.settings.notifier.operator.webhooks.clear();
    let (shutdown, task) = r.start();
    r.smtp.down();
    pvefleet_testkit::broker::send(&r.publisher, &parked(2)).await.unwrap();
    let retrying = eventually(Duration::from_secs(20), || async {
        let c = r.db.client().await.unwrap();
        c.query_opt(
            "SELECT last_error FROM notifications WHERE state = 'retrying' AND attempts >= 2",
            &[],
        )
        .await
        .unwrap()
        .map(|row| row.get::<_, Option<String>>(0))
    })
    .await;
    assert!(
        retrying.flatten().is_some_and(|e| e.contains("SMTP")),
        "retried with the error"
    );
    r.smtp.up();
    let states = r.settled(1).await;
    assert_eq!(states[0].2, "sent", "{states:?}");
    assert_eq!(r.smtp.mails().len(), 1);
    // An alert raised twice within the resend interval is mailed once; its clearing goes out.
    let mut alert = ResourceAlert::example();
    pvefleet_testkit::broker::send(&r.publisher, &alert).await.unwrap();
    r.settled(2).await;
    pvefleet_testkit::broker::send(&r.publisher, &alert).await.unwrap();
    // The repeat settled before the clearing is sent: the notifier handles events at once, so
    // two sent together may be recorded in either order.
    r.settled(3).await;
    alert.state = "cleared".into();
    pvefleet_testkit::broker::send(&r.publisher, &alert).await.unwrap();
    let states = r.settled(4).await;
    let alerts: Vec<&String> = states.iter().skip(1).map(|(_, _, s)| s).collect();
    assert_eq!(alerts, ["sent", "suppressed", "sent"], "{states:?}");
    assert_eq!(r.smtp.mails().len(), 3);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&r.dir);
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on a loopback port.
struct Alertmanager {
    url: String,
    child: Child,
    dir: PathBuf,
}

impl Alertmanager {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("pvefleet-am-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("am.yml"),
            "route:\n  receiver: nobody\n  group_wait: 1s\nreceivers:\n  - name: nobody\n",
        )
        .unwrap();
        let port = pvefleet_testkit::edge::free_port().unwrap();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", dir.join("am.yml").display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager (apt-get install prometheus-alertmanager; scripts/test does)");
        Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        }
    }

    /// The alerts it holds with `alertname`; `None` when it does not answer.
    async fn alerts(&self) -> Option<Vec<serde_json::Value>> {
        let r = reqwest::get(format!(
            "{}/api/v2/alerts?filter=alertname%3D%22PvefleetResourceAlert%22",
            self.url
        ))
        .await
        .ok()?;
        r.json::<Vec<serde_json::Value>>().await.ok()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_receives_a_raised_alert_with_its_labels_and_then_its_resolution() {
    let _ = rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    let am = Alertmanager::start();
    let ready = eventually(Duration::from_secs(20), || async {
        reqwest::get(format!("{}/-/ready", am.url))
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    assert!(ready.is_some(), "alertmanager is ready");
    let mut r = rig(0).await;
    r.settings.notifier.operator.alertmanager_url = am.url.clone();
    let (shutdown, task) = r.start();
    let mut alert = ResourceAlert {
        subject: "lxc/101".into(),
        kind: "memory".into(),
        state: "raised".into(),
        value: 91.5,
        threshold: 85.0,
        node: Some("pve2".into()),
    };
    pvefleet_testkit::broker::send(&r.publisher, &alert).await.unwrap();
    let firing = eventually(Duration::from_secs(20), || async {
        am.alerts()
            .await?
            .into_iter()
            .find(|a| a["status"]["state"] == "active")
    })
    .await
    .expect("the alert reaches alertmanager");
    assert_eq!(firing["labels"]["vmid"], "101");
    assert_eq!(firing["labels"]["node"], "pve2");
    assert_eq!(firing["labels"]["kind"], "memory");
    assert_eq!(firing["labels"]["severity"], "warning");
    assert!(
        firing["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("lxc/101 memory raised"),
        "{firing}"
    );
    alert.state = "cleared".into();
    alert.value = 60.0;
    pvefleet_testkit::broker::send(&r.publisher, &alert).await.unwrap();
    let c = r.db.client().await.unwrap();
    let sent = eventually(Duration::from_secs(20), || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM notifications WHERE channel = 'alertmanager' AND state = 'sent'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 2).then_some(())
    })
    .await;
    assert!(sent.is_some(), "the raise and the clearing are both delivered");
    // Resolved: Alertmanager no longer lists it as active.
    let resolved = eventually(Duration::from_secs(20), || async {
        let all = am.alerts().await?;
        all.iter().all(|a| a["status"]["state"] != "active").then_some(all)
    })
    .await;
    assert!(resolved.is_some(), "the alert is resolved");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&r.dir);
}

/// The notifier as a process, killed with SIGKILL while it sends a batch, then started again:
/// every delivery ends sent or failed (in doubt), and no mail arrives twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_twice_after_a_sigkill_mid_batch() {
    let r = rig(0).await;
    let config = r.dir.join("pvefleet.toml");
    std::fs::write(
        &config,
        format!(
            "[notifier]\noperator.email = [\"ops@example.org\"]\n[notifier.smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\nfrom = \"pvefleet <fleet@example.org>\"\n",
            r.smtp.port
        ),
    )
    .unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_pvefleet-notifier"))
            .env("PVEFLEET_CONFIG", &config)
            .env("PVEFLEET_DB__URL", r.db.url())
            .env("PVEFLEET_BUS__URL", r.settings.bus.url.expose())
            // The test vhost's topology, as the rig declared it.
            .env("PVEFLEET_BUS__RETRY_TIERS", "[\"300ms\", \"600ms\", \"900ms\"]")
            .env(
                "PVEFLEET_BUS__DELIVERY_LIMIT",
                r.settings.bus.delivery_limit.to_string(),
            )
            .env("PVEFLEET_BUS__MAX_ATTEMPTS", r.settings.bus.max_attempts.to_string())
            .env("PVEFLEET_HTTP__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    const N: u128 = 40;
    for i in 0..N {
        pvefleet_testkit::broker::send(&r.publisher, &parked(100 + i))
            .await
            .unwrap();
    }
    // Killed once some mails are out, and before all are.
    let some = eventually(Duration::from_secs(30), || async {
        (r.smtp.mails().len() >= 3).then_some(())
    })
    .await;
    assert!(some.is_some(), "the notifier sends");
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = r.smtp.mails().len();
    let mut child = spawn();
    let states = r.settled(N as usize).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mails = r.smtp.mails();
    let ids: Vec<&str> = mails
        .iter()
        .filter_map(|m| m.lines().find(|l| l.starts_with("Message-ID:")))
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(ids.len(), mails.len(), "every mail has its Message-ID");
    assert_eq!(unique.len(), ids.len(), "no mail twice ({at_kill} out at the kill)");
    let sent = states.iter().filter(|(_, _, s)| s == "sent").count();
    let in_doubt = states.iter().filter(|(_, _, s)| s == "failed").count();
    assert_eq!(sent + in_doubt, N as usize, "{states:?}");
    assert!(
        mails.len() >= sent && mails.len() <= sent + in_doubt,
        "{} mails, {sent} sent, {in_doubt} in doubt",
        mails.len()
    );
    let _ = std::fs::remove_dir_all(&r.dir);
}
