//! The network endpoints end to end, in-process: intake, nethotplug and the saga coordinator
//! on the real RabbitMQ (own vhost) and Postgres (own database), against pvesim.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pvefleet_core::config::IpPool;
use pvefleet_proxmox::client::PveClient;
use pvefleet_proxmox::client::sdn::VnetSpec;
use pvefleet_pvesim::{Fault, Load, Sim, SimConfig};
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

const CT: u32 = 200;

struct Api {
    _vhost: TestVhost,
    _db: TestDb,
    sim: Sim,
    pve: PveClient,
    pool: deadpool_postgres::Pool,
    base: String,
    write: String,
    sites: String,
    dlq: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

async fn api() -> Api {
    init_tracing();
    let vhost = TestVhost::new().unwrap();
    let db = TestDb::create().await.unwrap();
    let mut s = settings(&vhost, Some(&db));
    let (sim, addr) = Sim::spawn(SimConfig {
        token: Some(("f@pve!n".into(), "x".into())),
        record_requests: true,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.populate(CT, 1, Load::default());
    pvefleet_testkit::use_pvesim(&mut s, addr, "f@pve!n", "x");
    s.pve.task_timeout = Duration::from_secs(10);
    s.nethotplug.pools.insert(
        "vmbr0".into(),
        IpPool {
            cidr: "10.20.0.0/24".into(),
            gateway: Some("10.20.0.1".into()),
            first: None,
            last: None,
        },
    );
    let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
    pvefleet_core::db::migrate(&pool).await.unwrap();
    let client = pool.get().await.unwrap();
    let write = pvefleet_intake::create_token(&client, "netops", &["network:write".into(), "network:read".into()])
        .await
        .unwrap();
    let sites = pvefleet_intake::create_token(&client, "alice", &["sites:write".into()])
        .await
        .unwrap();
    let dlq = pvefleet_intake::create_token(&client, "oncall", &["dlq:admin".into()])
        .await
        .unwrap();
    drop(client);
    let pve = pvefleet_core::pve::client(&s.pve).unwrap();
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
        async move { pvefleet_nethotplug::run(&s, pool, None, sd).await }
    }));
    Api {
        _vhost: vhost,
        _db: db,
        sim,
        pve,
        pool,
        base,
        write,
        sites,
        dlq,
        http: reqwest::Client::new(),
        shutdown,
        tasks,
    }
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, String) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|c| c.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, resp.json().await.unwrap_or(Value::Null), ctype)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value, String) {
        self.call(reqwest::Method::POST, path, Some(&self.write), Some(body))
            .await
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body, _) = self.call(reqwest::Method::GET, path, Some(&self.write), None).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// Follows an operation until it ends.
    async fn ended(&self, id: &str) -> Value {
        eventually(Duration::from_secs(30), || async {
            let op = self.get(&format!("/v1/operations/{id}")).await;
            matches!(
                op["status"].as_str(),
                Some("succeeded" | "failed" | "pending_reboot" | "parked")
            )
            .then_some(op)
        })
        .await
        .expect("the operation ends")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_nothing_reaches_pve() {
    let a = api().await;
    let config_before = a.sim.config_text(CT).unwrap();
    let path = format!("/v1/containers/{CT}/interfaces");
    for (body, status, field) in [
        // Options smuggled through a comma in a value are refused, never written.
        (json!({ "bridge": "vmbr0", "name": "vmbr0,firewall=1" }), 400, "name"),
        (json!({ "bridge": "vmbr0", "ip": "10.0.0.5/24,gw=10.0.0.1" }), 400, "ip"),
        (json!({ "bridge": "vmbr0", "name": "eth6,link_down=1" }), 400, "name"),
        (json!({ "bridge": "vmbr0,firewall=1" }), 400, "bridge"),
        (
            json!({ "bridge": "vmbr0", "ip6": "fd00::5/64,gw6=fd00::1" }),
            400,
            "ip6",
        ),
        (
            json!({ "bridge": "vmbr0", "name": "eth6\nlxc.init.cmd: /bin/sh" }),
            400,
            "name",
        ),
        (json!({ "index": 32, "bridge": "vmbr0" }), 400, "index"),
        (json!({ "index": 300, "bridge": "vmbr0" }), 400, "index"),
        (json!({ "bridge": "vmbr0", "tag": 4095 }), 400, "tag"),
        (json!({ "bridge": "vmbr0", "tag": 0 }), 400, "tag"),
        (
            json!({ "bridge": "vmbr0", "hwaddr": "BC:24:11:ZZ:00:01" }),
            400,
            "hwaddr",
        ),
        (json!({ "bridge": "vmbr0", "ip": "10.0.0.5/33" }), 400, "ip"),
        (json!({ "bridge": "vmbr0", "ip": "10.0.0.5" }), 400, "ip"),
        (json!({ "vnet": "averylongname" }), 400, "vnet"),
        (json!({ "bridge": "vmbr9" }), 422, "bridge"),
        (json!({ "vnet": "nosuch" }), 422, "vnet"),
        (json!({ "index": 0, "bridge": "vmbr0" }), 409, "index"),
        (json!({ "bridge": "vmbr0", "speed": 10 }), 400, "speed"),
    ] {
        let (got, problem, ctype) = a.post(&path, body.clone()).await;
        assert_eq!(got, status, "{body}: {problem}");
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(dotted(&problem["field"]).as_deref(), Some(field), "{body}: {problem}");
    }
    let (got, problem, _) = a.post("/v1/vnets/averylongname/bindings", json!({ "vmid": CT })).await;
    assert_eq!(
        (got, dotted(&problem["field"]).as_deref()),
        (400, Some("vnet")),
        "{problem}"
    );
    // The same smuggling through a binding's interface, and through an update.
    for (iface, field) in [
        (json!({ "name": "vmbr0,firewall=1" }), "interface.name"),
        (json!({ "ip": "10.0.0.5/24,gw=10.0.0.1" }), "interface.ip"),
        (json!({ "name": "eth6,link_down=1" }), "interface.name"),
    ] {
        let (got, problem, ctype) = a
            .post("/v1/vnets/web/bindings", json!({ "vmid": CT, "interface": iface }))
            .await;
        assert_eq!(
            (got, dotted(&problem["field"]).as_deref()),
            (400, Some(field)),
            "{iface}: {problem}"
        );
        assert_eq!(ctype, "application/problem+json");
    }
    for (changes, field) in [
        (json!({ "name": "eth6,link_down=1" }), "name"),
        (json!({ "ip": "10.0.0.5/24,gw=10.0.0.1" }), "ip"),
    ] {
        let (got, problem, _) = a
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/containers/{CT}/interfaces/net0"),
                Some(&a.write),
                Some(changes.clone()),
            )
            .await;
        assert_eq!(
            (got, dotted(&problem["field"]).as_deref()),
            (400, Some(field)),
            "{changes}: {problem}"
        );
    }
    let (got, problem, _) = a
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/containers/{CT}/interfaces/net0"),
            Some(&a.write),
            Some(json!({ "tag": 9999 })),
        )
        .await;
    assert_eq!(
        (got, dotted(&problem["field"]).as_deref()),
        (400, Some("tag")),
        "{problem}"
    );
    let (got, _, _) = a
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/containers/{CT}/interfaces/net7"),
            Some(&a.write),
            None,
        )
        .await;
    assert_eq!(got, 404);
    let (got, _, _) = a
        .post("/v1/containers/999/interfaces", json!({ "bridge": "vmbr0" }))
        .await;
    assert_eq!(got, 404);
    // Unbinding an interface that is not on the VNet.
    let (got, problem, _) = a
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/vnets/web/bindings?vmid={CT}&interface=net0"),
            Some(&a.write),
            None,
        )
        .await;
    assert_eq!(
        (got, dotted(&problem["field"]).as_deref()),
        (409, Some("interface")),
        "{problem}"
    );
    // Scopes.
    let (got, _, _) = a
        .call(reqwest::Method::POST, &path, None, Some(json!({ "bridge": "vmbr0" })))
        .await;
    assert_eq!(got, 401);
    let (got, _, _) = a
        .call(
            reqwest::Method::POST,
            &path,
            Some(&a.sites),
            Some(json!({ "bridge": "vmbr0" })),
        )
        .await;
    assert_eq!(got, 403);
    // Only reads reached PVE; no operation was recorded.
    let writes: Vec<String> = a
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert_eq!(
        a.sim.config_text(CT).unwrap(),
        config_before,
        "the container's config is unchanged"
    );
    let client = a.pool.get().await.unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM net_operations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    drop(client);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interface_is_attached_followed_listed_and_detached_over_http() {
    let a = api().await;
    let (status, accepted, _) = a
        .post(
            &format!("/v1/containers/{CT}/interfaces"),
            json!({ "bridge": "vmbr0", "ip": "pool", "tag": 30 }),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "pending");
    let id = accepted["operation_id"].as_str().unwrap().to_string();
    let op = a.ended(&id).await;
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(op["interface"], "net1");
    assert_eq!(op["requested_by"], "netops");
    let line = op["line"].as_str().unwrap();
    assert!(line.contains("ip=10.20.0.2/24") && line.contains("tag=30"), "{line}");
    let text = a.sim.config_text(CT).unwrap();
    assert!(text.lines().any(|l| l == format!("net1: {line}")), "{text}");

    let listed = a.get(&format!("/v1/containers/{CT}/operations")).await;
    assert_eq!(listed[0]["id"], id.as_str());
    let network = a.get(&format!("/v1/containers/{CT}/network")).await;
    assert_eq!(network["interfaces"][1]["interface"], "net1", "{network}");
    assert_eq!(network["interfaces"][1]["lease"]["ip"], "10.20.0.2");
    assert_eq!(network["drift"], json!([]), "{network}");

    // The request is in the audit log, with the token.
    let client = a.pool.get().await.unwrap();
    let audit = client
        .query_one("SELECT actor, action, target, detail FROM audit_log", &[])
        .await
        .unwrap();
    assert!(audit.get::<_, String>(0).contains("netops"));
    assert_eq!(audit.get::<_, String>(1), "net.attach");
    assert_eq!(audit.get::<_, String>(2), format!("lxc/{CT}"));
    assert_eq!(audit.get::<_, Value>(3)["operation_id"], id.as_str());

    // A binding recorded for an interface the config does not have is drift.
    client
        .execute(
            "INSERT INTO vnet_bindings (vnet, vmid, net_index, operation_id) VALUES ('lost', $1, 5, $2)",
            &[&(CT as i32), &uuid::Uuid::now_v7()],
        )
        .await
        .unwrap();
    let network = a.get(&format!("/v1/containers/{CT}/network")).await;
    assert_eq!(
        network["drift"],
        json!(["net5: bound to vnet 'lost' in the records, but the config has no net5"])
    );
    let containers = a.get("/v1/vnets/lost/containers").await;
    assert_eq!(containers["containers"][0]["state"], "stale", "{containers}");

    let (status, accepted, _) = a
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/containers/{CT}/interfaces/net1"),
            Some(&a.write),
            None,
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let op = a.ended(accepted["operation_id"].as_str().unwrap()).await;
    assert_eq!(op["status"], "succeeded", "{op}");
    assert!(!a.sim.config_text(CT).unwrap().contains("net1:"));
    let leases: i64 = client
        .query_one("SELECT count(*) FROM net_ip_leases", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(leases, 0);
    let stats = a.get("/v1/network/stats").await;
    let attached = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["event"] == "net.attached")
        .unwrap();
    assert_eq!(
        (attached["executions"].as_i64(), attached["successes"].as_i64()),
        (Some(1), Some(1))
    );
    drop(client);
    a.stop().await;
}

fn refuse_next_config_write(sim: &Sim) {
    sim.inject(Fault {
        method: Some("PUT".into()),
        path: format!("/nodes/pve1/lxc/{CT}/config"),
        count: 1,
        status: 500,
        message: "unable to hotplug net1: vm vlans are not allowed on vnet".into(),
        latency_ms: 0,
        rate: 0.0,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vnet_saga_binds_and_compensates_only_a_vnet_it_created() {
    let a = api().await;
    // Created and bound.
    let (status, accepted, _) = a
        .post(
            "/v1/vnets/apps/bindings",
            json!({ "vmid": CT, "interface": { "ip": "dhcp" }, "ensure": { "zone": "fleet" } }),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["kind"], "vnet.provision");
    let op = a.ended(accepted["operation_id"].as_str().unwrap()).await;
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(op["result"]["created_vnet"], true, "{op}");
    assert!(a.sim.config_text(CT).unwrap().contains("bridge=apps,"));
    let vnets = a.pve.vnets().await.unwrap();
    assert!(vnets.iter().any(|v| v.vnet == "apps" && v.state.is_none()), "applied");

    // Created, then the binding fails: the VNet is removed again.
    refuse_next_config_write(&a.sim);
    let (status, accepted, _) = a
        .post(
            "/v1/vnets/temp/bindings",
            json!({ "vmid": CT, "ensure": { "zone": "fleet" } }),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let op = a.ended(accepted["operation_id"].as_str().unwrap()).await;
    assert_eq!(op["status"], "failed", "{op}");
    assert_eq!(op["result"]["saga"], "compensated", "{op}");
    assert_eq!(op["error"]["code"], "proxmox.hotplug", "{op}");
    let vnets = a.pve.vnets().await.unwrap();
    assert!(!vnets.iter().any(|v| v.vnet == "temp"), "{vnets:?}");

    // Existed before, the binding fails: the VNet is left alone.
    a.pve
        .vnet_create(
            "keep",
            &VnetSpec {
                zone: "fleet".into(),
                ..VnetSpec::default()
            },
        )
        .await
        .unwrap();
    a.pve.sdn_apply().await.unwrap();
    refuse_next_config_write(&a.sim);
    let (status, accepted, _) = a
        .post(
            "/v1/vnets/keep/bindings",
            json!({ "vmid": CT, "ensure": { "zone": "fleet" } }),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let op = a.ended(accepted["operation_id"].as_str().unwrap()).await;
    assert_eq!(op["status"], "failed", "{op}");
    assert_eq!(op["result"]["created_vnet"], false, "{op}");
    let vnets = a.pve.vnets().await.unwrap();
    assert!(vnets.iter().any(|v| v.vnet == "keep" && v.state.is_none()), "{vnets:?}");
    let containers = a.get("/v1/vnets/apps/containers").await;
    assert_eq!(containers["containers"][0]["state"], "bound", "{containers}");

    // Created, but the apply fails on a node: the saga removes what it created.
    a.sim.fail_sdn_on("pve2");
    let (status, accepted, _) = a
        .post(
            "/v1/vnets/flaky/bindings",
            json!({ "vmid": CT, "ensure": { "zone": "fleet" } }),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let op = a.ended(accepted["operation_id"].as_str().unwrap()).await;
    assert_eq!(op["status"], "failed", "{op}");
    assert_eq!(op["failed_nodes"], json!(["pve2"]), "{op}");
    assert_eq!(op["result"]["saga"], "compensated", "{op}");
    let vnets = a.pve.vnets().await.unwrap();
    assert!(!vnets.iter().any(|v| v.vnet == "flaky"), "{vnets:?}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_command_parks_its_operation_and_a_replay_finishes_it() {
    let a = api().await;
    // Every config write fails transiently until the faults are cleared.
    a.sim.inject(Fault {
        method: Some("PUT".into()),
        path: format!("/nodes/pve1/lxc/{CT}/config"),
        count: 0,
        status: 503,
        message: "proxy loop detected".into(),
        latency_ms: 0,
        rate: 1.0,
    });
    let (status, accepted, _) = a
        .post(
            &format!("/v1/containers/{CT}/interfaces"),
            json!({ "bridge": "vmbr0", "ip": "dhcp" }),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["operation_id"].as_str().unwrap().to_string();
    let op = a.ended(&id).await;
    assert_eq!(op["status"], "parked", "{op}");
    assert_eq!(op["error"]["code"], "parked");
    let dead_letter = op["error"]["dead_letter_id"].as_str().unwrap().to_string();
    assert!(op["error"]["message"].as_str().unwrap().contains(&dead_letter), "{op}");

    a.sim.clear_faults();
    let (status, done, _) = a
        .call(
            reqwest::Method::POST,
            "/v1/dead-letters/replay",
            Some(&a.dlq),
            Some(json!({ "id": dead_letter })),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["replayed"], json!([dead_letter]), "{done}");
    let op = eventually(Duration::from_secs(30), || async {
        let op = a.get(&format!("/v1/operations/{id}")).await;
        matches!(op["status"].as_str(), Some("succeeded" | "failed" | "pending_reboot")).then_some(op)
    })
    .await
    .expect("the replayed operation ends");
    assert_eq!(op["status"], "succeeded", "{op}");
    assert!(a.sim.config_text(CT).unwrap().contains("net1: "));
    a.stop().await;
}
