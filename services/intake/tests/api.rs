//! The intake API end to end, in-process: intake, the saga coordinator and the provisioner on
//! the real RabbitMQ (own vhost) and Postgres (own database), against pvesim.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pvefleet_core::Settings;
use pvefleet_pvesim::{Sim, SimConfig};
use pvefleet_testkit::{TestDb, TestVhost, eventually, init_tracing, settings};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A problem's `field` (a JSON pointer) as the dotted path the cases name (`/interface/name`
/// is `interface.name`); not a pointer: `None`.
fn dotted(v: &Value) -> Option<String> {
    let p = v.as_str()?;
    if p.is_empty() {
        return Some("body".into());
    }
    Some(p.strip_prefix('/')?.replace('/', "."))
}

const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";
/// 32 bytes, base64.
const SECRETS_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

struct Api {
    _vhost: TestVhost,
    db: TestDb,
    sim: Sim,
    base: String,
    write: String,
    read: String,
    admin: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

async fn api() -> Api {
    init_tracing();
    pvefleet_proxmox::client::tls::provider();
    let vhost = TestVhost::new().unwrap();
    let db = TestDb::create().await.unwrap();
    let mut s: Settings = settings(&vhost, Some(&db));
    let (sim, addr) = Sim::spawn(SimConfig {
        token: Some(("f@pve!i".into(), "x".into())),
        record_requests: true,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    s.pve.url = format!("http://{addr}");
    s.pve.token_id = Some("f@pve!i".into());
    s.pve.token_secret = Some(pvefleet_core::Secret::new("x"));
    s.pve.templates = vec![TEMPLATE.into()];
    // No backup service here (these tests count every PVE read intake causes); the saga and
    // CLI tests run the final backup with it.
    s.saga.final_backup = false;
    s.saga.max_sites_per_owner = 3;
    s.installer.secrets_key = Some(pvefleet_core::Secret::new(SECRETS_KEY));
    let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
    pvefleet_core::db::migrate(&pool).await.unwrap();
    let client = pool.get().await.unwrap();
    let write = pvefleet_intake::create_token(&client, "alice", &["sites:write".into(), "sites:read".into()])
        .await
        .unwrap();
    let read = pvefleet_intake::create_token(&client, "viewer", &["sites:read".into()])
        .await
        .unwrap();
    let admin = pvefleet_intake::create_token(&client, "ops", &["admin".into()])
        .await
        .unwrap();
    drop(client);
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_intake::run(&s, pool, listener, Default::default(), sd).await }
    }));
    tasks.push(tokio::spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_saga::run(&s, pool, None, sd).await }
    }));
    tasks.push(tokio::spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_provisioner::run(&s, Some(pool), None, sd).await }
    }));
    Api {
        _vhost: vhost,
        db,
        sim,
        base,
        write,
        read,
        admin,
        http: reqwest::Client::new(),
        shutdown,
        tasks,
    }
}

impl Api {
    async fn post(&self, token: Option<&str>, body: &str, key: Option<&str>) -> (u16, Option<String>, Value, String) {
        let mut req = self
            .http
            .post(format!("{}/v1/sites", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let location = resp.headers().get("location").map(|l| l.to_str().unwrap().to_string());
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|c| c.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        (status, location, body, ctype)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.read)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_requested_over_http_becomes_active_with_a_timeline_and_an_event_stream_then_is_deleted() {
    let a = api().await;
    let body = json!({ "subdomain": "blog", "plan": "small", "app": "none" }).to_string();
    let (status, location, accepted, _) = a.post(Some(&a.write), &body, Some("k1")).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    assert_eq!(location.as_deref(), Some(format!("/v1/sites/{id}").as_str()));
    // The same key and body: the same site.
    let (status, _, again, _) = a.post(Some(&a.write), &body, Some("k1")).await;
    assert_eq!((status, again["id"].as_str()), (202, Some(id.as_str())));
    // The same key, another body: 409.
    let other = json!({ "subdomain": "blog2", "plan": "small", "app": "none" }).to_string();
    let (status, _, problem, ctype) = a.post(Some(&a.write), &other, Some("k1")).await;
    assert_eq!((status, ctype.as_str()), (409, "application/problem+json"), "{problem}");

    // The event stream follows the saga to its end.
    let saga = accepted["saga_id"].as_str().unwrap().to_string();
    let sse = a
        .http
        .get(format!("{}/v1/sagas/{saga}/events", a.base))
        .bearer_auth(&a.read)
        .send()
        .await
        .unwrap();
    let text = tokio::time::timeout(Duration::from_secs(30), sse.text())
        .await
        .unwrap()
        .unwrap();
    assert!(
        text.contains("event: step") && text.contains("container.create"),
        "{text}"
    );
    assert!(
        text.contains("event: saga") && text.contains("\"state\":\"completed\""),
        "{text}"
    );

    let (status, site) = a.get(&format!("/v1/sites/{id}")).await;
    assert_eq!((status, site["state"].as_str()), (200, Some("active")), "{site}");
    let steps = site["sagas"][0]["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["container.create", "container.start", "container.snapshot"]);
    assert!(
        steps.iter().all(|s| s["finished_at"].is_string()),
        "times in the timeline"
    );
    let vmid = site["vmid"].as_u64().unwrap() as u32;
    assert!(a.sim.config_text(vmid).unwrap().contains("hostname: blog"));
    let (status, list) = a.get("/v1/sites?owner=alice").await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(1)));

    let resp = a
        .http
        .delete(format!("{}/v1/sites/{id}", a.base))
        .bearer_auth(&a.write)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let gone = eventually(Duration::from_secs(30), || async {
        let (_, site) = a.get(&format!("/v1/sites/{id}")).await;
        (site["state"] == "deleted").then_some(())
    })
    .await;
    assert!(gone.is_some(), "the site is deleted");
    assert!(a.sim.config_text(vmid).is_none(), "and its container");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_problem_naming_the_field() {
    let a = api().await;
    let cases = [
        (
            json!({ "subdomain": "Bad_Name", "plan": "small" }),
            422,
            Some("subdomain"),
        ),
        // Shell metacharacters never get past intake.
        (
            json!({ "subdomain": "x;rm -rf /", "plan": "small" }),
            422,
            Some("subdomain"),
        ),
        (json!({ "subdomain": "$(id)", "plan": "small" }), 422, Some("subdomain")),
        (json!({ "subdomain": "ok", "plan": "huge" }), 422, Some("plan")),
        (
            json!({ "subdomain": "ok", "cores": 64, "memory_mb": 1024, "disk_gb": 8 }),
            422,
            Some("cores"),
        ),
        (
            json!({ "subdomain": "ok", "plan": "small", "template": "local:vztmpl/windows.tar.zst" }),
            422,
            Some("template"),
        ),
        (
            json!({ "subdomain": "ok", "plan": "small", "unprivileged": false }),
            422,
            Some("unprivileged"),
        ),
        (
            json!({ "subdomain": "ok", "plan": "small", "app": "drupal" }),
            422,
            Some("app"),
        ),
        (
            json!({ "subdomain": "ok", "plan": "small", "colour": "red" }),
            400,
            Some("colour"),
        ),
    ];
    for (body, status, field) in cases {
        let (got, _, problem, ctype) = a.post(Some(&a.write), &body.to_string(), None).await;
        assert_eq!(
            (got, ctype.as_str()),
            (status, "application/problem+json"),
            "{body}: {problem}"
        );
        assert_eq!(dotted(&problem["field"]).as_deref(), field, "{body}: {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let (status, _, problem, _) = a.post(Some(&a.write), "this is not json", None).await;
    assert_eq!(status, 400, "{problem}");
    let (status, _, _, _) = a
        .post(None, &json!({ "subdomain": "ok", "plan": "small" }).to_string(), None)
        .await;
    assert_eq!(status, 401);
    let (status, _, problem, _) = a
        .post(
            Some(&a.read),
            &json!({ "subdomain": "ok", "plan": "small" }).to_string(),
            None,
        )
        .await;
    assert_eq!(status, 403, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("sites:write"));
    let (status, _, _, _) = a
        .post(
            Some("pvf_forged"),
            &json!({ "subdomain": "ok", "plan": "small" }).to_string(),
            None,
        )
        .await;
    assert_eq!(status, 401);
    // Quota: three live sites per owner in this test's config.
    for i in 0..3 {
        let (status, _, p, _) = a
            .post(
                Some(&a.write),
                &json!({ "subdomain": format!("q{i}"), "plan": "small", "app": "none" }).to_string(),
                None,
            )
            .await;
        assert_eq!(status, 202, "{p}");
    }
    let (status, _, problem, _) = a
        .post(
            Some(&a.write),
            &json!({ "subdomain": "q4", "plan": "small" }).to_string(),
            None,
        )
        .await;
    assert_eq!(
        (status, dotted(&problem["field"]).as_deref()),
        (422, Some("owner")),
        "{problem}"
    );
    assert_eq!(problem["field"], "/owner", "a JSON pointer");
    let (status, doc) = a.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/sites"]["post"].is_object(), "{doc}");
    let (status, _) = a.get("/v1/sites/not-a-uuid").await;
    assert_eq!(status, 400);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_no_pve_node_name_is_a_422_naming_node_and_pve_is_never_asked() {
    let a = api().await;
    for node in [
        "../../etc/passwd",
        "x,rootfs=local:100",
        "--help",
        "pve1/../pve2",
        "pve1?x=1",
    ] {
        let body = json!({ "subdomain": "shop", "plan": "small", "node": node }).to_string();
        let (status, _, problem, ctype) = a.post(Some(&a.write), &body, None).await;
        assert_eq!(
            (status, dotted(&problem["field"]).as_deref(), ctype.as_str()),
            (422, Some("node"), "application/problem+json"),
            "{node}: {problem}"
        );
    }
    // (The saga's lease sync reads `/cluster/resources` on its own; nothing else may be asked.)
    let about_nodes = || -> Vec<String> {
        a.sim
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/nodes"))
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    };
    assert!(about_nodes().is_empty(), "PVE was asked: {:?}", about_nodes());
    // A well-formed name PVE does not know is asked about once, and refused naming the node.
    let body = json!({ "subdomain": "shop", "plan": "small", "node": "pve9" }).to_string();
    let (status, _, problem, _) = a.post(Some(&a.write), &body, None).await;
    assert_eq!(
        (status, dotted(&problem["field"]).as_deref()),
        (422, Some("node")),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap_or_default().contains("pve9"),
        "{problem}"
    );
    assert_eq!(about_nodes(), ["GET /nodes"]);
    // A node PVE knows and has online is taken.
    let body = json!({ "subdomain": "shop", "plan": "small", "node": "pve1" }).to_string();
    let (status, _, problem, _) = a.post(Some(&a.write), &body, None).await;
    assert_eq!(status, 202, "{problem}");
    let c = a.db.client().await.unwrap();
    let sites: i64 = c.query_one("SELECT count(*) FROM sites", &[]).await.unwrap().get(0);
    assert_eq!(sites, 1, "only the site on a known node was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_or_bad_utf8_anywhere_is_a_400_naming_the_field_never_a_database_error() {
    let a = api().await;
    for (path, field) in [
        ("/v1/sites?owner=a%00b", "owner"),
        ("/v1/sites?state=%00", "state"),
        ("/v1/sites?owner=%FF%FE", "owner"),
        ("/v1/dead-letters?queue=q%00", "queue"),
    ] {
        let resp = a
            .http
            .get(format!("{}{path}", a.base))
            .bearer_auth(&a.read)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(
            (status, ctype.as_str()),
            (400, "application/problem+json"),
            "{path}: {problem}"
        );
        assert_eq!(dotted(&problem["field"]).as_deref(), Some(field), "{path}: {problem}");
    }
    for (body, field) in [
        (r#"{"subdomain":"nul","plan":"small","owner":"a\u0000b"}"#, "owner"),
        (r#"{"subdomain":"nul","plan":"small","node":"pve\u00001"}"#, "node"),
        (r#"{"subdomain":"nul","plan":"small","template":"\u0000"}"#, "template"),
    ] {
        let (status, _, problem, ctype) = a.post(Some(&a.write), body, None).await;
        assert_eq!(
            (status, ctype.as_str()),
            (400, "application/problem+json"),
            "{body}: {problem}"
        );
        assert_eq!(dotted(&problem["field"]).as_deref(), Some(field), "{body}: {problem}");
    }
    // A body over the limit is a problem too, not plain text.
    let huge = format!(
        r#"{{"subdomain":"big","plan":"small","owner":"{}"}}"#,
        "x".repeat(3 << 20)
    );
    let (status, _, problem, ctype) = a.post(Some(&a.write), &huge, None).await;
    assert_eq!((status, ctype.as_str()), (413, "application/problem+json"), "{problem}");
    // Nothing was written, and the sites list still answers.
    let c = a.db.client().await.unwrap();
    let sites: i64 = c.query_one("SELECT count(*) FROM sites", &[]).await.unwrap().get(0);
    assert_eq!(sites, 0);
    let (status, _) = a.get("/v1/sites?owner=alice").await;
    assert_eq!(status, 200);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_revealed_only_to_an_admin_token_and_every_reveal_is_audited() {
    use pvefleet_core::site_secrets::{Credentials, SecretBox};
    let a = api().await;
    let site = uuid::Uuid::now_v7();
    let creds = Credentials {
        admin_user: "admin".into(),
        admin_password: "Zq3mWk9TrXvB4nLpHs7yFd2c".into(),
        db_password: "Nn4Rp8VxTq2KmWz6HsJd3LfYc9BgTa5e".into(),
    };
    let sealed = SecretBox::from_base64(SECRETS_KEY).unwrap().seal(site, &creds).unwrap();
    let c = a.db.client().await.unwrap();
    c.execute(
        "INSERT INTO sites (id, subdomain, owner, state, spec) VALUES ($1, 'creds', 'alice', 'active', '{}')",
        &[&site],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO site_secrets (site_id, sealed) VALUES ($1, $2)",
        &[&site, &sealed],
    )
    .await
    .unwrap();
    let url = format!("{}/v1/sites/{site}/credentials", a.base);
    // A token without the admin scope is refused, with a problem naming the scope.
    let denied = a.http.get(&url).bearer_auth(&a.read).send().await.unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    let problem: Value = denied.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("sites:credentials"),
        "{problem}"
    );
    // The admin token gets them, uncached.
    let shown = a.http.get(&url).bearer_auth(&a.admin).send().await.unwrap();
    assert_eq!(shown.status().as_u16(), 200);
    assert_eq!(shown.headers()["cache-control"], "no-store");
    let body: Value = shown.json().await.unwrap();
    assert_eq!(body["admin_password"], creds.admin_password.as_str());
    assert_eq!(body["db_password"], creds.db_password.as_str());
    // The reveal is audited with the token; the refused attempt revealed nothing.
    let rows = c
        .query("SELECT actor, action, target, owner FROM audit_log ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let (actor, action, target): (String, String, String) = (rows[0].get(0), rows[0].get(1), rows[0].get(2));
    assert!(actor.contains("ops"), "{actor}");
    assert_eq!(action, "site.credentials.reveal");
    assert_eq!(target, format!("site/{site}"));
    assert_eq!(rows[0].get::<_, Option<String>>(3).as_deref(), Some("alice"));
    // An unknown site: 404 problem.
    let missing = a
        .http
        .get(format!("{}/v1/sites/{}/credentials", a.base, uuid::Uuid::now_v7()))
        .bearer_auth(&a.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_over_http_need_the_dlq_admin_scope_and_every_change_is_audited() {
    let a = api().await;
    let c = a.db.client().await.unwrap();
    let id = uuid::Uuid::now_v7();
    c.execute(
        "INSERT INTO dead_letters (id, message_id, attempts, message_type, properties, body, origin_exchange,
             origin_routing_key, origin_queue, fault_class, fault_message, fingerprint)
         VALUES ($1, 'm1', 3, 'container.start', '{}'::jsonb, '{}'::bytea, 'pvefleet.commands', 'container.start',
             'pvefleet.provisioner', 'retries-exhausted', 'PVE is down', 'container.start/retries-exhausted/x')",
        &[&id],
    )
    .await
    .unwrap();
    let ops = {
        let client = pvefleet_core::db::connect(&pvefleet_core::config::DbSettings {
            url: pvefleet_core::Secret::new(a.db.url()),
            ..Default::default()
        })
        .await
        .unwrap()
        .get()
        .await
        .unwrap();
        pvefleet_intake::create_token(&client, "night-shift", &["dlq:admin".into()])
            .await
            .unwrap()
    };
    let url = |p: &str| format!("{}{p}", a.base);
    // Without the scope: 403 problem naming it.
    let denied = a
        .http
        .get(url("/v1/dead-letters"))
        .bearer_auth(&a.read)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    assert_eq!(denied.headers()["content-type"], "application/problem+json");
    // With it: list, groups, show.
    let list: Value = a
        .http
        .get(url("/v1/dead-letters?queue=pvefleet.provisioner"))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let groups: Value = a
        .http
        .get(url("/v1/dead-letters/groups"))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(groups[0]["count"], 1);
    let shown = a
        .http
        .get(url(&format!("/v1/dead-letters/{id}")))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status().as_u16(), 200);
    // A bad query and a bad body get problems, not panics.
    let bad = a
        .http
        .get(url("/v1/dead-letters?id=not-a-uuid"))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    let bad = a
        .http
        .post(url("/v1/dead-letters/replay"))
        .bearer_auth(&ops)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let unnamed = a
        .http
        .post(url("/v1/dead-letters/archive"))
        .bearer_auth(&ops)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unnamed.status().as_u16(), 422, "a change must say which dead letters");
    // A dry run, then an archive: the archive is audited with the token.
    let dry: Value = a
        .http
        .post(url("/v1/dead-letters/replay"))
        .bearer_auth(&ops)
        .json(&json!({ "id": id, "dry_run": true }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dry["replayed"], json!([id]));
    let archived: Value = a
        .http
        .post(url("/v1/dead-letters/archive"))
        .bearer_auth(&ops)
        .json(&json!({ "id": id }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(archived["count"], 1);
    let row = c
        .query_one("SELECT actor, action FROM audit_log ORDER BY id DESC LIMIT 1", &[])
        .await
        .unwrap();
    let (actor, action): (String, String) = (row.get(0), row.get(1));
    assert!(actor.contains("night-shift"), "{actor}");
    assert_eq!(action, "dlq.archive");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_autoscaling_policy_is_put_read_and_deleted_with_the_autoscale_scopes() {
    let a = api().await;
    let client = pvefleet_core::db::connect(&pvefleet_core::config::DbSettings {
        url: pvefleet_core::Secret::new(a.db.url()),
        ..Default::default()
    })
    .await
    .unwrap()
    .get()
    .await
    .unwrap();
    let writer = pvefleet_intake::create_token(&client, "ops", &["autoscale:write".into(), "autoscale:read".into()])
        .await
        .unwrap();
    let url = format!("{}/v1/containers/101/autoscale", a.base);
    let denied = a
        .http
        .put(&url)
        .bearer_auth(&a.read)
        .body(r#"{"max_cores": 4}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    let bad = a
        .http
        .put(&url)
        .bearer_auth(&writer)
        .body(r#"{"max_cpus": 4}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 422);
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["field"], "/max_cpus");
    assert!(problem["detail"].as_str().unwrap().contains("max_cpus"), "{problem}");
    // A policy that cannot work is refused naming the key, and nothing is stored.
    for (body, key) in [
        (r#"{"min_cores": 8, "max_cores": 2}"#, "/min_cores"),
        (r#"{"cpu_up": 20, "cpu_down": 90}"#, "/cpu_down"),
        (r#"{"cpu_up": 250}"#, "/cpu_up"),
    ] {
        let bad = a.http.put(&url).bearer_auth(&writer).body(body).send().await.unwrap();
        assert_eq!(bad.status().as_u16(), 422, "{body}");
        let problem: Value = bad.json().await.unwrap();
        assert_eq!(problem["field"], key, "{body}: {problem}");
    }
    let ok = a
        .http
        .put(&url)
        .bearer_auth(&writer)
        .body(r#"{"max_cores": 4}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let got: Value = a
        .http
        .get(&url)
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["stored"], json!({ "max_cores": 4 }));
    assert_eq!(got["policy"]["max_cores"], 4);
    assert_eq!(got["policy"]["cpu_up"], 80.0, "the rest from the default");
    let gone = a.http.delete(&url).bearer_auth(&writer).send().await.unwrap();
    assert_eq!(gone.status().as_u16(), 204);
    let missing = a.http.get(&url).bearer_auth(&writer).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    a.stop().await;
}

#[test]
fn the_binary_answers_help_and_version_and_starts_nothing() {
    let checked =
        pvefleet_testkit::cli::answers_help_and_version(env!("CARGO_BIN_EXE_pvefleet-intake"), "pvefleet-intake");
    assert_eq!(checked, Ok(()));
    assert_eq!(
        pvefleet_testkit::cli::refuses_arguments(env!("CARGO_BIN_EXE_pvefleet-intake")),
        Ok(())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_bound_to_fail_are_refused_naming_the_field_and_nothing_holds_the_subdomain() {
    let a = api().await;
    let huge_template = format!("local:vztmpl/{}.tar.zst", "t".repeat(1_000_000));
    for (body, field) in [
        (
            json!({ "subdomain": "held", "plan": "small", "owner": "o".repeat(300) }),
            "/owner",
        ),
        (json!({ "subdomain": "held", "plan": "small", "node": "pve9" }), "/node"),
        (
            json!({ "subdomain": "held", "plan": "small", "template": huge_template }),
            "/template",
        ),
        (json!({ "plan": "small" }), "/subdomain"),
        (json!({ "subdomain": "held", "cores": "two" }), "/cores"),
    ] {
        let (status, _, problem, ctype) = a.post(Some(&a.write), &body.to_string(), None).await;
        assert!(
            (status == 422 || status == 400) && ctype == "application/problem+json",
            "{status} {ctype} {problem}"
        );
        assert_eq!(problem["field"], field, "{problem}");
        // The value at fault is never echoed beyond a short prefix.
        assert!(problem.to_string().len() < 1_000, "{} bytes", problem.to_string().len());
    }
    let c = a.db.client().await.unwrap();
    let held: i64 = c.query_one("SELECT count(*) FROM sites", &[]).await.unwrap().get(0);
    assert_eq!(held, 0, "a refused request writes no site");
    // The subdomain is free: the same request, right, is accepted and provisioned.
    let (status, _, ok, _) = a
        .post(
            Some(&a.write),
            &json!({ "subdomain": "held", "plan": "small", "app": "none" }).to_string(),
            None,
        )
        .await;
    assert_eq!(status, 202, "{ok}");
    let id = ok["id"].as_str().unwrap().to_string();
    let active = eventually(Duration::from_secs(60), || async {
        let (_, site) = a.get(&format!("/v1/sites/{id}")).await;
        (site["state"] == "active").then_some(site)
    })
    .await;
    assert!(active.is_some(), "the site went active");

    // A second DELETE while the first deprovision runs answers with that one's saga, which
    // GET /v1/sagas/{id} knows.
    let delete = || async {
        let r = a
            .http
            .delete(format!("{}/v1/sites/{id}", a.base))
            .bearer_auth(&a.write)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (first, one) = delete().await;
    let (second, two) = delete().await;
    assert_eq!((first, second), (202, 202), "{one} {two}");
    assert_eq!(one["saga_id"], two["saga_id"], "{one} {two}");
    let (status, saga) = a.get(&format!("/v1/sagas/{}", one["saga_id"].as_str().unwrap())).await;
    assert_eq!(status, 200, "{saga}");
    let gone = eventually(Duration::from_secs(60), || async {
        let (_, site) = a.get(&format!("/v1/sites/{id}")).await;
        (site["state"] == "deleted").then_some(())
    })
    .await;
    assert!(gone.is_some(), "the site was deleted once");
    let deprovisions: i64 = c
        .query_one(
            "SELECT count(*) FROM sagas WHERE site_id = $1 AND kind = 'deprovision'",
            &[&uuid::Uuid::parse_str(&id).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(deprovisions, 1);

    // An unknown saga's event stream is a 404 problem, not keep-alives.
    let r = a
        .http
        .get(format!("{}/v1/sagas/{}/events", a.base, uuid::Uuid::now_v7()))
        .bearer_auth(&a.read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_methods_and_bad_queries_are_problems_too() {
    let a = api().await;
    let send = |m: reqwest::Method, path: &str| {
        a.http
            .request(m, format!("{}{path}", a.base))
            .bearer_auth(&a.admin)
            .send()
    };
    let r = send(reqwest::Method::PUT, "/v1/sites").await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = send(reqwest::Method::GET, "/v1/nothing-here").await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // Every answer names its request; a caller's own id is kept.
    assert!(r.headers().contains_key("x-request-id"));
    let r = a
        .http
        .get(format!("{}/v1/sites", a.base))
        .bearer_auth(&a.admin)
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-42");
    let r = send(reqwest::Method::GET, "/v1/dead-letters?limit=many").await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["field"], "/limit", "{p}");
    let r = send(reqwest::Method::DELETE, "/v1/vnets/web/bindings").await.unwrap();
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["field"], "/vmid", "{p}");
    a.stop().await;
}
