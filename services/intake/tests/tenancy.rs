//! Tenancy, route by route from the router's own list: one owner's token cannot read or change
//! another owner's resources (403 or 404), an operator's token can; tokens are minted with
//! every scope intake checks, and a revoked or expired token gets 401 saying so. Intake on the
//! real Postgres (own database) and RabbitMQ (own vhost), against pvesim.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use pvefleet_core::audit::Actor;
use pvefleet_pvesim::{Load, Sim, SimConfig};
use pvefleet_testkit::{TestDb, TestVhost, init_tracing, settings};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const CT: u32 = 200;
/// 32 bytes, base64.
const SECRETS_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";

struct Fleet {
    _vhost: TestVhost,
    db: TestDb,
    _sim: Sim,
    pool: deadpool_postgres::Pool,
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn fleet() -> Fleet {
    fleet_with(|_| {}).await
}

async fn fleet_with(tune: impl FnOnce(&mut pvefleet_core::Settings)) -> Fleet {
    init_tracing();
    pvefleet_proxmox::client::tls::provider();
    let vhost = TestVhost::new().unwrap();
    let db = TestDb::create().await.unwrap();
    let mut s = settings(&vhost, Some(&db));
    let (sim, addr) = Sim::spawn(SimConfig {
        token: Some(("f@pve!t".into(), "x".into())),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.populate(CT, 1, Load::default());
    pvefleet_testkit::use_pvesim(&mut s, addr, "f@pve!t", "x");
    s.pve.templates = vec![TEMPLATE.into()];
    s.installer.secrets_key = Some(pvefleet_core::Secret::new(SECRETS_KEY));
    // An operator channel, so a test notice has somewhere to go (no notifier sends it here).
    s.notifier.operator.email = vec!["ops@example.org".into()];
    s.notifier.smtp.host = "127.0.0.1".into();
    tune(&mut s);
    let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
    pvefleet_core::db::migrate(&pool).await.unwrap();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_intake::run(&s, pool, listener, Default::default(), sd).await }
    });
    Fleet {
        _vhost: vhost,
        db,
        _sim: sim,
        pool,
        base,
        http: reqwest::Client::new(),
        shutdown,
        task,
    }
}

impl Fleet {
    async fn mint(&self, name: &str, owner: Option<&str>, scopes: &[&str]) -> pvefleet_intake::Minted {
        let mut client = self.pool.get().await.unwrap();
        let t = pvefleet_intake::NewToken {
            name: name.into(),
            owner: owner.map(str::to_string),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_in: None,
        };
        pvefleet_intake::mint(&mut client, &t, &Actor::from("cli:test"))
            .await
            .unwrap()
    }

    async fn call(&self, token: &str, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let sse = resp
            .headers()
            .get("content-type")
            .is_some_and(|c| c.to_str().unwrap_or_default().starts_with("text/event-stream"));
        // A stream is not read to its end: its status and type are the answer.
        let body = if sse {
            json!("(event stream)")
        } else {
            resp.json().await.unwrap_or(Value::Null)
        };
        (status, body)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// One request on a route, and what it must get from the other owner.
struct Case {
    path: String,
    body: Option<Value>,
    /// What the other owner's token gets: denied (403 or 404), or (for routes with nothing of
    /// anyone's in them) a check of its own answer.
    other: Other,
}

enum Other {
    Denied,
    /// 200, and the answer holds nothing of alice's.
    OwnOnly,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owners_token_reaches_nothing_of_another_owners_on_any_route_and_an_operators_reaches_all() {
    let f = fleet().await;
    let owner_scopes = [
        "sites:read",
        "sites:write",
        "sites:credentials",
        "network:read",
        "network:write",
        "autoscale:read",
        "autoscale:write",
        "notifications:read",
        "notifications:write",
    ];
    let alice = f.mint("alice-ci", Some("alice"), &owner_scopes).await.token;
    let bob = f.mint("bob-ci", Some("bob"), &owner_scopes).await.token;
    let ops = f.mint("ops", None, &["admin"]).await.token;

    // alice's site on container CT, with a saga accepted for it, its sealed credentials, and
    // a dead letter of the fleet.
    let c = f.db.client().await.unwrap();
    let site = Uuid::now_v7();
    let saga = Uuid::now_v7();
    c.execute(
        "INSERT INTO sites (id, subdomain, owner, state, vmid, node, spec) VALUES ($1, 'alpha', 'alice', 'active', $2, 'pve1', '{}')",
        &[&site, &(CT as i32)],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO accepted_sagas (saga_id, kind, site_id, owner) VALUES ($1, 'provision', $2, 'alice')",
        &[&saga, &site],
    )
    .await
    .unwrap();
    let creds = pvefleet_core::site_secrets::Credentials {
        admin_user: "admin".into(),
        admin_password: "Zq3mWk9TrXvB4nLpHs7yFd2c".into(),
        db_password: "Nn4Rp8VxTq2KmWz6HsJd3LfYc9BgTa5e".into(),
    };
    let sealed = pvefleet_core::site_secrets::SecretBox::from_base64(SECRETS_KEY)
        .unwrap()
        .seal(site, &creds)
        .unwrap();
    c.execute(
        "INSERT INTO site_secrets (site_id, sealed) VALUES ($1, $2)",
        &[&site, &sealed],
    )
    .await
    .unwrap();
    let letter = Uuid::now_v7();
    c.execute(
        "INSERT INTO dead_letters (id, message_id, attempts, message_type, properties, body, origin_exchange,
             origin_routing_key, origin_queue, fault_class, fault_message, fingerprint)
         VALUES ($1, 'm1', 3, 'container.start', '{}'::jsonb, '{}'::bytea, 'pvefleet.commands', 'container.start',
             'pvefleet.provisioner', 'retries-exhausted', 'PVE is down', 'container.start/retries-exhausted/x')",
        &[&letter],
    )
    .await
    .unwrap();
    // A delivery of alice's: the mail telling her the site is ready.
    let notice = Uuid::now_v7();
    c.execute(
        "INSERT INTO notifications (id, event_id, event_type, severity, audience, owner, channel, target, subject, payload, state)
         VALUES ($1, 'e1', 'site.provisioned', 'info', 'owner', 'alice', 'email', 'alice@example.org',
             'Your site alpha is ready', '{}'::jsonb, 'failed')",
        &[&notice],
    )
    .await
    .unwrap();
    // The operators' copy of a notice about alice's site: not hers to see.
    let ops_copy = Uuid::now_v7();
    c.execute(
        "INSERT INTO notifications (id, event_id, event_type, severity, audience, owner, channel, target, subject, payload, state)
         VALUES ($1, 'e2', 'saga.suspended', 'warning', 'operator', 'alice', 'email', 'ops@example.org',
             'saga suspended', '{}'::jsonb, 'failed')",
        &[&ops_copy],
    )
    .await
    .unwrap();
    // Two recorded versions of her container's config, and a restore of the first.
    for (v, memory) in [(1, 512), (2, 1024)] {
        c.execute(
            "INSERT INTO config_versions (site_id, version, vmid, node, digest, config, cause)
             VALUES ($1, $2, $3, 'pve1', 'd', jsonb_build_object('memory', $4::int), 'schedule')",
            &[&site, &v, &(CT as i32), &memory],
        )
        .await
        .unwrap();
    }
    let config_restore = Uuid::now_v7();
    c.execute(
        "INSERT INTO config_restores (id, site_id, version, state) VALUES ($1, $2, 1, 'done')",
        &[&config_restore, &site],
    )
    .await
    .unwrap();
    // alice's own token works on her container: an interface attached (an operation) and a
    // policy set.
    let (status, attached) = f
        .call(
            &alice,
            Method::POST,
            &format!("/v1/containers/{CT}/interfaces"),
            Some(&json!({ "bridge": "vmbr0" })),
        )
        .await;
    assert_eq!(status, 202, "{attached}");
    let op = attached["operation_id"].as_str().unwrap().to_string();
    let (status, body) = f
        .call(
            &alice,
            Method::PUT,
            &format!("/v1/containers/{CT}/autoscale"),
            Some(&json!({ "cpu_up": 70.0 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let nobody = Uuid::now_v7();
    let mut cases: BTreeMap<(String, &str), Case> = BTreeMap::new();
    let mut case = |m: Method, route: &'static str, path: String, body: Option<Value>, other: Other| {
        cases.insert((m.to_string(), route), Case { path, body, other });
    };
    use Other::*;
    case(Method::GET, "/v1/whoami", "/v1/whoami".into(), None, OwnOnly);
    case(Method::GET, "/openapi.json", "/openapi.json".into(), None, OwnOnly);
    case(Method::GET, "/v1/sites", "/v1/sites?owner=alice".into(), None, Denied);
    case(
        Method::POST,
        "/v1/sites",
        "/v1/sites".into(),
        Some(json!({ "subdomain": "beta", "plan": "small", "owner": "alice", "app": "none" })),
        Denied,
    );
    case(Method::GET, "/v1/sites/{id}", format!("/v1/sites/{site}"), None, Denied);
    case(
        Method::GET,
        "/v1/sites/{id}/credentials",
        format!("/v1/sites/{site}/credentials"),
        None,
        Denied,
    );
    case(
        Method::GET,
        "/v1/sites/{id}/backups",
        format!("/v1/sites/{site}/backups"),
        None,
        Denied,
    );
    case(
        Method::POST,
        "/v1/sites/{id}/backups",
        format!("/v1/sites/{site}/backups"),
        None,
        Denied,
    );
    case(
        Method::POST,
        "/v1/sites/{id}/restores",
        format!("/v1/sites/{site}/restores"),
        None,
        Denied,
    );
    case(
        Method::GET,
        "/v1/sites/{id}/config/versions",
        format!("/v1/sites/{site}/config/versions"),
        None,
        Denied,
    );
    case(
        Method::GET,
        "/v1/sites/{id}/config/versions/{version}",
        format!("/v1/sites/{site}/config/versions/1"),
        None,
        Denied,
    );
    case(
        Method::GET,
        "/v1/sites/{id}/config/diff",
        format!("/v1/sites/{site}/config/diff?from=1&to=2"),
        None,
        Denied,
    );
    case(
        Method::POST,
        "/v1/sites/{id}/config/restores",
        format!("/v1/sites/{site}/config/restores"),
        Some(json!({ "version": 1 })),
        Denied,
    );
    case(
        Method::GET,
        "/v1/sites/{id}/config/restores/{restore_id}",
        format!("/v1/sites/{site}/config/restores/{config_restore}"),
        None,
        Denied,
    );
    case(Method::GET, "/v1/sagas/{id}", format!("/v1/sagas/{saga}"), None, Denied);
    case(
        Method::GET,
        "/v1/sagas/{id}/events",
        format!("/v1/sagas/{saga}/events"),
        None,
        Denied,
    );
    case(Method::GET, "/v1/dead-letters", "/v1/dead-letters".into(), None, Denied);
    case(
        Method::GET,
        "/v1/dead-letters/groups",
        "/v1/dead-letters/groups".into(),
        None,
        Denied,
    );
    case(
        Method::GET,
        "/v1/dead-letters/{id}",
        format!("/v1/dead-letters/{letter}"),
        None,
        Denied,
    );
    case(
        Method::POST,
        "/v1/dead-letters/replay",
        "/v1/dead-letters/replay".into(),
        Some(json!({ "id": letter, "dry_run": true })),
        Denied,
    );
    case(
        Method::POST,
        "/v1/dead-letters/archive",
        "/v1/dead-letters/archive".into(),
        Some(json!({ "id": nobody })),
        Denied,
    );
    case(
        Method::POST,
        "/v1/dead-letters/purge",
        "/v1/dead-letters/purge".into(),
        Some(json!({ "id": nobody })),
        Denied,
    );
    case(
        Method::GET,
        "/v1/notifications",
        "/v1/notifications".into(),
        None,
        OwnOnly,
    );
    case(
        Method::GET,
        "/v1/notifications/{id}",
        format!("/v1/notifications/{notice}"),
        None,
        Denied,
    );
    case(
        Method::POST,
        "/v1/notifications/{id}/resend",
        format!("/v1/notifications/{notice}/resend"),
        None,
        Denied,
    );
    case(
        Method::POST,
        "/v1/notifications/test",
        "/v1/notifications/test".into(),
        Some(json!({ "message": "tenancy" })),
        Denied,
    );
    case(
        Method::GET,
        "/v1/owners/{owner}/contacts",
        "/v1/owners/alice/contacts".into(),
        None,
        Denied,
    );
    case(
        Method::PUT,
        "/v1/owners/{owner}/contacts",
        "/v1/owners/alice/contacts".into(),
        Some(json!({ "email": "alice@example.org" })),
        Denied,
    );
    let ct = format!("/v1/containers/{CT}");
    case(
        Method::GET,
        "/v1/containers/{vmid}/autoscale",
        format!("{ct}/autoscale"),
        None,
        Denied,
    );
    case(
        Method::PUT,
        "/v1/containers/{vmid}/autoscale",
        format!("{ct}/autoscale"),
        Some(json!({ "cpu_up": 80.0 })),
        Denied,
    );
    case(
        Method::POST,
        "/v1/containers/{vmid}/interfaces",
        format!("{ct}/interfaces"),
        Some(json!({ "bridge": "vmbr0" })),
        Denied,
    );
    case(
        Method::PATCH,
        "/v1/containers/{vmid}/interfaces/{name}",
        format!("{ct}/interfaces/net0"),
        Some(json!({ "rate": 10.0 })),
        Denied,
    );
    case(
        Method::GET,
        "/v1/containers/{vmid}/operations",
        format!("{ct}/operations"),
        None,
        Denied,
    );
    case(
        Method::GET,
        "/v1/containers/{vmid}/network",
        format!("{ct}/network"),
        None,
        Denied,
    );
    case(
        Method::POST,
        "/v1/vnets/{vnet}/bindings",
        "/v1/vnets/apps/bindings".into(),
        Some(json!({ "vmid": CT, "interface": { "ip": "dhcp" }, "ensure": { "zone": "fleet" } })),
        Denied,
    );
    case(
        Method::DELETE,
        "/v1/vnets/{vnet}/bindings",
        format!("/v1/vnets/apps/bindings?vmid={CT}"),
        None,
        Denied,
    );
    case(
        Method::GET,
        "/v1/vnets/{vnet}/containers",
        "/v1/vnets/apps/containers".into(),
        None,
        Denied,
    );
    case(
        Method::GET,
        "/v1/operations/{id}",
        format!("/v1/operations/{op}"),
        None,
        Denied,
    );
    case(
        Method::GET,
        "/v1/network/stats",
        "/v1/network/stats".into(),
        None,
        Denied,
    );
    // The destructive ones last, in this order: the policy, the interface, the site.
    case(
        Method::DELETE,
        "/v1/containers/{vmid}/autoscale",
        format!("{ct}/autoscale"),
        None,
        Denied,
    );
    case(
        Method::DELETE,
        "/v1/containers/{vmid}/interfaces/{name}",
        format!("{ct}/interfaces/net0"),
        None,
        Denied,
    );
    case(
        Method::DELETE,
        "/v1/sites/{id}",
        format!("/v1/sites/{site}"),
        None,
        Denied,
    );

    // Every route the router serves has its case: a new route cannot skip this test.
    let routes = pvefleet_intake::routes();
    let missing: Vec<String> = routes
        .iter()
        .filter(|(m, p)| !cases.contains_key(&(m.to_string(), *p)))
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(missing.is_empty(), "routes without a tenancy case: {missing:?}");
    assert_eq!(
        cases.len(),
        routes.len(),
        "a case for a route the router does not serve"
    );

    // The other owner first: denied everywhere, nothing changes.
    for (m, p) in &routes {
        let k = (m.to_string(), *p);
        let c = &cases[&k];
        let (status, body) = f.call(&bob, m.clone(), &c.path, c.body.as_ref()).await;
        match c.other {
            Denied => assert!(
                status == 403 || status == 404,
                "bob's token on alice's {m} {}: {status} {body}",
                c.path
            ),
            OwnOnly => {
                assert_eq!(status, 200, "{m} {}: {body}", c.path);
                assert!(!body.to_string().contains("alice"), "{m} {}: {body}", c.path);
            }
        }
    }
    // bob's list of sites holds none of alice's; bob cannot create a site for alice.
    let (status, list) = f.call(&bob, Method::GET, "/v1/sites", None).await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(0)), "{list}");
    let (_, me) = f.call(&bob, Method::GET, "/v1/whoami", None).await;
    assert_eq!(
        (me["owner"].as_str(), me["operator"].as_bool()),
        (Some("bob"), Some(false)),
        "{me}"
    );
    // A site bob creates is bob's, whatever the body leaves out.
    let (status, made) = f
        .call(
            &bob,
            Method::POST,
            "/v1/sites",
            Some(&json!({ "subdomain": "bobs", "plan": "small", "app": "none" })),
        )
        .await;
    assert_eq!(status, 202, "{made}");
    let (_, bobs) = f
        .call(
            &ops,
            Method::GET,
            &format!("/v1/sites/{}", made["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(bobs["owner"], "bob", "{bobs}");
    let (status, _) = f
        .call(
            &alice,
            Method::GET,
            &format!("/v1/sagas/{}", made["saga_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 404, "alice cannot see bob's saga");
    // bob asked for no backup of alice's site; alice can, and sees it.
    let (status, list) = f
        .call(&alice, Method::GET, &format!("/v1/sites/{site}/backups"), None)
        .await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(0)), "{list}");
    let (status, asked) = f
        .call(&alice, Method::POST, &format!("/v1/sites/{site}/backups"), None)
        .await;
    assert_eq!((status, asked["state"].as_str()), (202, Some("requested")), "{asked}");
    let (_, list) = f
        .call(&alice, Method::GET, &format!("/v1/sites/{site}/backups"), None)
        .await;
    assert_eq!(list[0]["id"], asked["backup_id"], "{list}");
    assert_eq!(
        (list[0]["kind"].as_str(), list[0]["state"].as_str()),
        (Some("on_demand"), Some("requested"))
    );
    // One at a time: another while it has not ended is a 409 (no backup service runs here, so
    // the test ends it as the service would).
    let (status, p) = f
        .call(&alice, Method::POST, &format!("/v1/sites/{site}/backups"), None)
        .await;
    assert_eq!(status, 409, "{p}");
    c.execute(
        "UPDATE backups SET state = 'ok', volid = 'local:backup/vzdump-lxc-1-2026_12_07-02_00_00.tar.zst' WHERE site_id = $1",
        &[&site],
    )
    .await
    .unwrap();
    // A restore names one backup, or none for the latest; alice may restore her own site (no saga runs
    // here: the request is queued), bob was refused above.
    let restores = format!("/v1/sites/{site}/restores");
    let (status, p) = f
        .call(
            &alice,
            Method::POST,
            &restores,
            Some(&json!({ "latest": true, "volid": "x" })),
        )
        .await;
    assert_eq!((status, p["field"].as_str()), (400, Some("/latest")), "{p}");
    let (status, p) = f
        .call(
            &alice,
            Method::POST,
            &restores,
            Some(&json!({ "volid": "local:backup/other.tar.zst" })),
        )
        .await;
    assert_eq!(status, 404, "{p}");
    let (status, asked) = f.call(&alice, Method::POST, &restores, None).await;
    assert_eq!((status, asked["state"].as_str()), (202, Some("restoring")), "{asked}");
    let queued: i64 = c
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action = 'site.restore' AND target = $1 AND detail->>'volid' LIKE 'local:backup/vzdump-lxc-1-%'",
            &[&site.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 1, "one restore asked for and audited, naming the latest backup");
    // Her config history: two versions, newest first; a diff between them; a version put back
    // once at a time (no backup service runs here: the request stays queued).
    let hist = format!("/v1/sites/{site}/config");
    let (status, list) = f.call(&alice, Method::GET, &format!("{hist}/versions"), None).await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(2)), "{list}");
    assert_eq!(list[0]["version"], 2, "{list}");
    let (status, d) = f.call(&alice, Method::GET, &format!("{hist}/diff?from=1"), None).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(
        d["changes"],
        json!([{ "key": "memory", "from": "512", "to": "1024" }]),
        "{d}"
    );
    let (status, p) = f.call(&alice, Method::GET, &format!("{hist}/versions/x"), None).await;
    assert_eq!((status, p["field"].as_str()), (400, Some("/version")), "{p}");
    let (status, p) = f.call(&alice, Method::GET, &format!("{hist}/versions/9"), None).await;
    assert_eq!(status, 404, "{p}");
    let (status, p) = f
        .call(
            &alice,
            Method::POST,
            &format!("{hist}/restores"),
            Some(&json!({ "version": 9 })),
        )
        .await;
    assert_eq!(status, 404, "{p}");
    let (status, asked) = f
        .call(
            &alice,
            Method::POST,
            &format!("{hist}/restores"),
            Some(&json!({ "version": 1 })),
        )
        .await;
    assert_eq!((status, asked["state"].as_str()), (202, Some("requested")), "{asked}");
    let (status, p) = f
        .call(
            &alice,
            Method::POST,
            &format!("{hist}/restores"),
            Some(&json!({ "version": 1 })),
        )
        .await;
    assert_eq!(status, 409, "{p}");
    let (status, r) = f
        .call(
            &alice,
            Method::GET,
            &format!("{hist}/restores/{}", asked["restore_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        (status, r["state"].as_str(), r["version"].as_i64()),
        (200, Some("requested"), Some(1)),
        "{r}"
    );
    // Ended, as the backup service would end it, so the operator's restore below is taken.
    c.execute("UPDATE config_restores SET state = 'done' WHERE site_id = $1", &[&site])
        .await
        .unwrap();
    // The policy, the interface and the site are untouched by bob.
    let (status, policy) = f.call(&alice, Method::GET, &format!("{ct}/autoscale"), None).await;
    assert_eq!(
        (status, policy["stored"]["cpu_up"].as_f64()),
        (200, Some(70.0)),
        "{policy}"
    );
    let (status, s) = f.call(&alice, Method::GET, &format!("/v1/sites/{site}"), None).await;
    assert_eq!((status, s["state"].as_str()), (200, Some("active")), "{s}");
    // bob neither resent alice's delivery nor set her contacts; alice sees and resends hers.
    let (status, d) = f
        .call(&alice, Method::GET, &format!("/v1/notifications/{notice}"), None)
        .await;
    assert_eq!((status, d["state"].as_str()), (200, Some("failed")), "{d}");
    let (status, contacts) = f.call(&alice, Method::GET, "/v1/owners/alice/contacts", None).await;
    assert_eq!((status, contacts["email"].as_str()), (200, None), "{contacts}");
    let (status, list) = f.call(&alice, Method::GET, "/v1/notifications", None).await;
    assert_eq!(
        (status, list.as_array().map(Vec::len), list[0]["id"].as_str()),
        (200, Some(1), Some(notice.to_string().as_str())),
        "{list}"
    );
    let (status, r) = f
        .call(
            &alice,
            Method::POST,
            &format!("/v1/notifications/{notice}/resend"),
            None,
        )
        .await;
    assert_eq!((status, r["state"].as_str()), (202, Some("pending")), "{r}");
    // Pending: on its way already, not queued twice.
    let (status, r) = f
        .call(
            &alice,
            Method::POST,
            &format!("/v1/notifications/{notice}/resend"),
            None,
        )
        .await;
    assert_eq!(status, 409, "{r}");
    // The operators' copy is neither listed (above: one), shown nor resent to her.
    for (m, path) in [
        (Method::GET, format!("/v1/notifications/{ops_copy}")),
        (Method::POST, format!("/v1/notifications/{ops_copy}/resend")),
    ] {
        let (status, body) = f.call(&alice, m, &path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    // A body must be an object: an array is not taken by position.
    let (status, p) = f
        .call(
            &alice,
            Method::PUT,
            "/v1/owners/alice/contacts",
            Some(&json!([null, null])),
        )
        .await;
    assert_eq!(status, 400, "{p}");
    // An owner's webhook cannot point into the stack's own network.
    let (status, p) = f
        .call(
            &alice,
            Method::PUT,
            "/v1/owners/alice/contacts",
            Some(&json!({ "webhook_url": "http://127.0.0.1:5672/" })),
        )
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("/webhook_url")), "{p}");
    c.execute("UPDATE notifications SET state = 'failed' WHERE id = $1", &[&notice])
        .await
        .unwrap();
    let (status, p) = f
        .call(
            &alice,
            Method::PUT,
            "/v1/owners/alice/contacts",
            Some(&json!({ "email": "not an address" })),
        )
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("/email")), "{p}");
    let (status, p) = f
        .call(&alice, Method::POST, "/v1/notifications/test", Some(&json!({})))
        .await;
    assert_eq!(status, 403, "a test notice is for operators: {p}");

    // The operator reaches everything.
    for (m, p) in &routes {
        let c = &cases[&(m.to_string(), *p)];
        let (status, body) = f.call(&ops, m.clone(), &c.path, c.body.as_ref()).await;
        assert!(
            (200..300).contains(&status),
            "the operator's token on {m} {}: {status} {body}",
            c.path
        );
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scope_intake_checks_can_be_minted_and_revoked_or_expired_tokens_get_401() {
    let f = fleet().await;
    // Every scope intake names is one the policy crate lists, and each can be minted (the
    // operator-only ones on an operator's token).
    let src: String = [
        "sites",
        "backups",
        "sagas",
        "network",
        "autoscale",
        "dead_letters",
        "notifications",
        "lib",
    ]
    .iter()
    .map(|m| std::fs::read_to_string(format!("{}/src/{m}.rs", env!("CARGO_MANIFEST_DIR"))).unwrap())
    .collect();
    for scope in pvefleet_policy::scopes::ALL {
        let konst = scope.name.replace(':', "_").to_uppercase();
        assert!(
            src.contains(&format!("scopes::{konst}")) || scope.name == "admin" || scope.name == "dlq:admin",
            "{} is listed but no route checks it",
            scope.name
        );
        let owner = (!scope.operator_only).then_some("carol");
        let m = f.mint(&format!("t-{konst}"), owner, &[scope.name]).await;
        let (status, me) = f.call(&m.token, Method::GET, "/v1/whoami", None).await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(me["scopes"], json!([scope.name]));
    }
    assert!(src.contains("DLQ_ADMIN"), "the dead letters check dlq:admin");
    // An owner's token cannot hold an operator-only scope.
    let mut client = f.pool.get().await.unwrap();
    let refused = pvefleet_intake::mint(
        &mut client,
        &pvefleet_intake::NewToken {
            name: "x".into(),
            owner: Some("carol".into()),
            scopes: vec!["dlq:admin".into()],
            expires_in: None,
        },
        &Actor::from("cli:test"),
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("operators"), "{refused}");

    // Revoke: the next call is 401, saying so.
    let t = f.mint("revokee", Some("carol"), &["sites:read"]).await;
    assert_eq!(f.call(&t.token, Method::GET, "/v1/sites", None).await.0, 200);
    assert!(
        pvefleet_intake::revoke(&mut client, t.id, "left the team", &Actor::from("cli:test"))
            .await
            .unwrap()
    );
    let (status, problem) = f.call(&t.token, Method::GET, "/v1/sites", None).await;
    assert_eq!(status, 401, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("revoked") && detail.contains("left the team"),
        "{detail}"
    );
    // Rotate: the new token works, the old one is revoked.
    let t = f.mint("rotatee", Some("carol"), &["sites:read"]).await;
    let new = pvefleet_intake::rotate(&mut client, t.id, &Actor::from("cli:test"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.call(&new.token, Method::GET, "/v1/sites", None).await.0, 200);
    let (status, problem) = f.call(&t.token, Method::GET, "/v1/sites", None).await;
    assert!(
        status == 401 && problem["detail"].as_str().unwrap().contains("rotated"),
        "{problem}"
    );
    // Expired: 401 saying when.
    let t = pvefleet_intake::mint(
        &mut client,
        &pvefleet_intake::NewToken {
            name: "brief".into(),
            owner: Some("carol".into()),
            scopes: vec!["sites:read".into()],
            expires_in: Some(std::time::Duration::from_millis(1)),
        },
        &Actor::from("cli:test"),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (status, problem) = f.call(&t.token, Method::GET, "/v1/sites", None).await;
    assert!(
        status == 401 && problem["detail"].as_str().unwrap().contains("expired"),
        "{problem}"
    );
    // The list shows each, never a secret; every change is in the audit trail.
    let list = pvefleet_intake::list_tokens(&client, Some("carol"), true)
        .await
        .unwrap();
    assert!(!list.to_string().contains("pvf_"), "{list}");
    let status_of = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"] == name)
            .map(|t| t["status"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(status_of("revokee"), ["revoked"]);
    assert_eq!(status_of("brief"), ["expired"]);
    let mut rotated = status_of("rotatee");
    rotated.sort();
    assert_eq!(rotated, ["active", "revoked"]);
    let audit = pvefleet_core::audit::list(
        &**client,
        &pvefleet_core::audit::Filter {
            action: Some("token.".into()),
            owner: Some("carol".into()),
            ..Default::default()
        },
        100,
    )
    .await
    .unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for a in ["token.create", "token.revoke", "token.rotate"] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    assert!(
        !audit.to_string().contains("pvf_"),
        "a token in the audit trail: {audit}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_and_an_owner_over_its_sagas_in_flight_get_429_with_retry_after() {
    let f = fleet_with(|s| {
        s.intake.rate_per_second = 1.0;
        s.intake.rate_burst = 2;
        s.intake.max_in_flight_per_owner = 1;
    })
    .await;
    let alice = f
        .mint("alice", Some("alice"), &["sites:read", "sites:write"])
        .await
        .token;
    let bob = f.mint("bob", Some("bob"), &["sites:read"]).await.token;
    // One saga in flight for alice: the second create waits its turn.
    let body = json!({ "subdomain": "one", "plan": "small", "app": "none" });
    assert_eq!(f.call(&alice, Method::POST, "/v1/sites", Some(&body)).await.0, 202);
    let body = json!({ "subdomain": "two", "plan": "small", "app": "none" });
    let r = f
        .http
        .post(format!("{}/v1/sites", f.base))
        .bearer_auth(&alice)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "5");
    let p: Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("in flight"), "{p}");
    // Two requests at once is alice's burst: the third is over the rate.
    let r = f
        .http
        .get(format!("{}/v1/sites", f.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // bob's token has its own bucket.
    assert_eq!(f.call(&bob, Method::GET, "/v1/sites", None).await.0, 200);
    f.stop().await;
}

/// The OpenAPI document lists every route the router serves, no other, and each operation
/// documents its problem answers as application/problem+json.
#[test]
fn the_openapi_document_lists_every_route_served_with_its_problem_answers() {
    let doc = pvefleet_intake::openapi_document(&pvefleet_core::Settings::default());
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            documented.push((method.to_uppercase(), path.clone()));
            if path == "/openapi.json" {
                continue;
            }
            for code in ["400", "401", "403", "404", "429", "500", "503"] {
                let r = &op["responses"][code];
                assert!(
                    r["content"]["application/problem+json"].is_object(),
                    "{method} {path} {code}: {r}"
                );
            }
            for (code, r) in op["responses"].as_object().unwrap() {
                if code.as_str() >= "400" {
                    let types: Vec<&String> = r["content"].as_object().unwrap().keys().collect();
                    assert_eq!(types, ["application/problem+json"], "{method} {path} {code}");
                }
            }
        }
    }
    let mut served: Vec<(String, String)> = pvefleet_intake::routes()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    let scopes = doc["components"]["securitySchemes"]["bearer"]["description"]
        .as_str()
        .unwrap();
    for s in pvefleet_policy::scopes::ALL {
        assert!(scopes.contains(s.name), "{} not in the document", s.name);
    }
}
