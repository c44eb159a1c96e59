//! Provisioning and deprovisioning end to end, in-process: the saga coordinator, the
//! provisioner and the ha service on the real RabbitMQ (own vhost) and Postgres (own database),
//! against pvesim. Failures are injected through pvesim.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use pvefleet_contracts::Message;
use pvefleet_contracts::ids::SiteId;
use pvefleet_contracts::messages::{App, SiteDeprovision, SiteProvision};
use pvefleet_core::Settings;
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::{Outgoing, Publisher};
use pvefleet_proxmox::client::PveClient;
use pvefleet_pvesim::{Fault, Sim, SimConfig};
use pvefleet_testkit::broker::take;
use pvefleet_testkit::{TestDb, TestVhost, init_tracing, settings};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";

struct Fleet {
    _vhost: TestVhost,
    pve_url: String,
    db: TestDb,
    sim: Sim,
    pve: PveClient,
    publisher: Publisher,
    events: (pvefleet_core::bus::probe::Probe, String),
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    settings: Settings,
    pool: deadpool_postgres::Pool,
}

async fn fleet() -> Fleet {
    fleet_with(|_| {}).await
}

async fn fleet_with(tune: impl FnOnce(&mut Settings)) -> Fleet {
    let mut f = fleet_without_provisioner(tune).await;
    f.start_provisioner();
    f
}

/// The fleet with the provisioner not (yet) consuming: its commands wait in its queue.
async fn fleet_without_provisioner(tune: impl FnOnce(&mut Settings)) -> Fleet {
    init_tracing();
    let vhost = TestVhost::new().unwrap();
    let db = TestDb::create().await.unwrap();
    let mut s: Settings = settings(&vhost, Some(&db));
    let (sim, addr) = Sim::spawn(SimConfig {
        nodes: vec!["pve1".into(), "pve2".into(), "pve3".into()],
        token: Some(("fleet@pve!e2e".into(), "s3cret".into())),
        task_duration: Duration::from_millis(20),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    s.pve.url = format!("http://{addr}");
    s.pve.token_id = Some("fleet@pve!e2e".into());
    s.pve.token_secret = Some(pvefleet_core::Secret::new("s3cret"));
    s.pve.templates = vec![TEMPLATE.into()];
    s.ha.nodes = vec!["pve1:2".into(), "pve2".into()];
    s.ha.reconcile_interval = Duration::from_secs(3600);
    s.saga.compensation_attempts = 3;
    tune(&mut s);
    let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
    pvefleet_core::db::migrate(&pool).await.unwrap();
    let pve = pvefleet_core::pve::client(&s.pve).unwrap();
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_saga::run(&s, pool, None, sd).await }
    }));
    tasks.push(tokio::spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_ha::run(&s, Some(pool), None, sd).await }
    }));
    // The backup service takes the deprovisioning's final backup.
    tasks.push(tokio::spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_backup::run(&s, pool, None, sd).await }
    }));
    tasks.push(tokio::spawn({
        let (s, sd) = (s.clone(), shutdown.clone());
        async move { pvefleet_edge::run(&s, None, sd).await }
    }));
    tasks.push(tokio::spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_installer::run(&s, pool, None, sd).await }
    }));
    let publisher = pvefleet_testkit::broker::fleet_publisher(&s).await.unwrap();
    let ch = vhost.probe().await.unwrap();
    let q = pvefleet_testkit::broker::event_queue(&ch, &["site.*"]).await.unwrap();
    Fleet {
        _vhost: vhost,
        pve_url: s.pve.url.clone(),
        db,
        sim,
        pve,
        publisher,
        events: (ch, q),
        shutdown,
        tasks,
        settings: s,
        pool,
    }
}

fn request(subdomain: &str, ha: bool) -> SiteProvision {
    SiteProvision {
        site_id: SiteId::new(),
        subdomain: subdomain.into(),
        owner: "alice".into(),
        plan: Some("small".into()),
        cores: None,
        memory_mb: None,
        disk_gb: None,
        template: TEMPLATE.into(),
        node: None,
        ha,
        app: App::none(),
    }
}

impl Fleet {
    fn start_provisioner(&mut self) {
        self.tasks.push(tokio::spawn({
            let (s, pool, sd) = (self.settings.clone(), self.pool.clone(), self.shutdown.clone());
            async move { pvefleet_provisioner::run(&s, Some(pool), None, sd).await }
        }));
    }

    async fn send<M: Message>(&self, msg: &M) -> uuid::Uuid {
        pvefleet_testkit::broker::send(&self.publisher, msg).await.unwrap()
    }

    /// The next `site.*` event.
    async fn event(&self) -> (String, Value) {
        pvefleet_testkit::broker::next_json(&self.events.0, &self.events.1, WAIT)
            .await
            .unwrap()
            .expect("a site event arrives")
    }

    async fn site(&self, id: SiteId) -> (String, Option<i32>, Option<String>, Option<String>, Option<Value>) {
        let c = self.db.client().await.unwrap();
        let r = c
            .query_one(
                "SELECT state, vmid, ip, node, error FROM sites WHERE id = $1",
                &[&id.as_uuid()],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    }

    async fn timeline(&self, saga: uuid::Uuid) -> Vec<(String, String, String)> {
        let c = self.db.client().await.unwrap();
        c.query(
            "SELECT name, phase, state FROM saga_steps WHERE saga_id = $1 ORDER BY started_at, phase",
            &[&saga],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    }

    /// The timeline as `name/phase/state`.
    async fn steps(&self, saga: uuid::Uuid) -> Vec<String> {
        self.timeline(saga)
            .await
            .into_iter()
            .map(|(n, p, s)| format!("{n}/{p}/{s}"))
            .collect()
    }

    /// The site's saga of `kind`.
    async fn saga_of(&self, id: SiteId, kind: &str) -> uuid::Uuid {
        let c = self.db.client().await.unwrap();
        c.query_one(
            "SELECT id FROM sagas WHERE site_id = $1 AND kind = $2",
            &[&id.as_uuid(), &kind],
        )
        .await
        .unwrap()
        .get(0)
    }

    async fn leases(&self, id: SiteId) -> i64 {
        let c = self.db.client().await.unwrap();
        c.query_one("SELECT count(*) FROM leases WHERE site_id = $1", &[&id.as_uuid()])
            .await
            .unwrap()
            .get(0)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_is_provisioned_step_by_step_then_deprovisioned_leaving_nothing() {
    let f = fleet().await;
    let req = request("blog", true);
    let saga = f.send(&req).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provisioned", "{body}");
    let (state, vmid, ip, node, _) = f.site(req.site_id).await;
    assert_eq!(state, "active");
    let vmid = vmid.unwrap() as u32;
    assert_eq!(vmid, 10_000, "the first vmid of the pool");
    assert_eq!(ip.as_deref(), Some("10.10.0.100/24"));
    assert_eq!(body["node"].as_str(), node.as_deref());
    let steps = f.steps(saga).await;
    assert_eq!(
        steps,
        [
            "container.create/forward/done",
            "container.start/forward/done",
            "container.snapshot/forward/done",
            "ha.enable/forward/done"
        ]
    );
    let text = f.sim.config_text(vmid).unwrap();
    for line in [
        "net0: bridge=vmbr0,gw=10.10.0.1,ip=10.10.0.100/24,name=eth0",
        "unprivileged: 1",
        "tags: pvefleet;site-blog",
        "[initial]",
    ] {
        assert!(text.contains(line), "missing '{line}' in:\n{text}");
    }
    assert_eq!(f.pve.ha_resources().await.unwrap().len(), 1);

    f.send(&SiteDeprovision { site_id: req.site_id }).await;
    let (kind, _) = f.event().await;
    assert_eq!(kind, "site.deprovisioned");
    assert_eq!(f.site(req.site_id).await.0, "deleted");
    assert!(f.sim.config_text(vmid).is_none(), "the container is gone");
    assert!(f.pve.ha_resources().await.unwrap().is_empty());
    assert!(f.pve.ha_rules().await.unwrap().is_empty());
    assert_eq!(f.leases(req.site_id).await, 0);
    // What the removal leaves behind: the final backup, taken first, protected and recorded.
    let finals: Vec<_> = f.sim.backups().into_iter().filter(|b| b.vmid == vmid).collect();
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert!(
        finals[0].protected && finals[0].config.contains("hostname: blog"),
        "{finals:?}"
    );
    let db = f.pool.get().await.unwrap();
    let row = db
        .query_one(
            "SELECT kind, state, volid, protected, keep_until IS NOT NULL FROM backups WHERE site_id = $1",
            &[&req.site_id.as_uuid()],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, bool>(3),
            row.get::<_, bool>(4)
        ),
        ("final".into(), "ok".into(), finals[0].volid.clone(), true, true)
    );
    let removal = f.saga_of(req.site_id, "deprovision").await;
    let steps = f.steps(removal).await;
    assert_eq!(
        steps.first().map(String::as_str),
        Some("backup.create/forward/done"),
        "{steps:?}"
    );
    f.stop().await;
}

/// A failure case: the subdomain, how the step fails, the failing step, PVE's message, and the
/// compensations expected.
type Case = (
    &'static str,
    Box<dyn Fn(&Sim)>,
    &'static str,
    &'static str,
    Vec<&'static str>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_at_each_step_compensates_the_completed_steps_in_reverse() {
    let f = fleet().await;
    let cases: Vec<Case> = vec![
        (
            "c1",
            Box::new(|s: &Sim| s.lock_task_error("vzcreate", "unable to create CT - storage full")),
            "container.create",
            "unable to create CT - storage full",
            vec![],
        ),
        (
            "c2",
            Box::new(|s: &Sim| s.lock_task_error("vzstart", "startup for container failed")),
            "container.start",
            "startup for container failed",
            vec!["container.destroy"],
        ),
        (
            "c3",
            Box::new(|s: &Sim| s.lock_task_error("vzsnapshot", "snapshot feature is not available")),
            "container.snapshot",
            "snapshot feature is not available",
            vec!["container.destroy"],
        ),
        (
            "c4",
            Box::new(|s: &Sim| {
                s.inject(serde_json::from_value::<Fault>(serde_json::json!({ "path": "/cluster/ha/resources", "method": "POST", "status": 403, "message": "Permission check failed (/, Sys.Console)" })).unwrap())
            }),
            "ha.enable",
            "Permission check failed (/, Sys.Console)",
            vec!["container.destroy"],
        ),
    ];
    for (sub, inject, step, message, compensations) in cases {
        inject(&f.sim);
        let req = request(sub, true);
        let saga = f.send(&req).await;
        let (kind, body) = f.event().await;
        assert_eq!(kind, "site.provision_failed", "{sub}: {body}");
        assert_eq!(body["failed_step"], step, "{sub}");
        assert_eq!(body["error"]["message"], message, "{sub}");
        let (state, vmid, _, _, error) = f.site(req.site_id).await;
        assert_eq!(state, "failed", "{sub}");
        assert_eq!(error.unwrap()["step"], step, "{sub}");
        let compensated: Vec<String> = f
            .timeline(saga)
            .await
            .into_iter()
            .filter(|(_, p, _)| p == "compensate")
            .map(|(n, _, s)| {
                assert_eq!(s, "done", "{sub}: {n}");
                n
            })
            .collect();
        assert_eq!(compensated, compensations, "{sub}");
        assert!(f.sim.config_text(vmid.unwrap() as u32).is_none(), "{sub}: no container");
        assert!(f.pve.ha_resources().await.unwrap().is_empty(), "{sub}: no HA resource");
        assert_eq!(f.leases(req.site_id).await, 0, "{sub}: leases released");
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_published_straight_to_the_bus_are_parked_with_a_reason_and_rejected() {
    let f = fleet().await;

    let mut bad = request("Bad_Name", false);
    f.send(&bad).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.rejected");
    assert_eq!(body["field"], "subdomain", "{body}");
    bad = request("fine", false);
    bad.template = "local:vztmpl/windows.tar.zst".into();
    f.send(&bad).await;
    let (_, body) = f.event().await;
    assert_eq!(body["field"], "template", "{body}");
    // Both are parked (and kept by the dead-letter keeper).
    let kept = pvefleet_testkit::eventually(WAIT, || async { (dead_letters(&f).await == 2).then_some(()) }).await;
    assert!(kept.is_some(), "both parked: {}", dead_letters(&f).await);
    // Valid traffic continues.
    let ok = request("fine", false);
    f.send(&ok).await;
    assert_eq!(f.event().await.0, "site.provisioned");
    // The same subdomain again, while the first is live: rejected.
    f.send(&request("fine", false)).await;
    let (kind, body) = f.event().await;
    assert_eq!(
        (kind.as_str(), body["field"].as_str()),
        ("site.rejected", Some("subdomain"))
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_publisher_meets_the_quota_and_the_node_rules_an_http_caller_meets() {
    let f = fleet_with(|s| s.saga.max_sites_per_owner = 1).await;
    // An unknown node is refused at once, naming the node (not retried against PVE).
    let mut nowhere = request("nowhere", false);
    nowhere.node = Some("pve9".into());
    f.send(&nowhere).await;
    let (kind, body) = f.event().await;
    assert_eq!(
        (kind.as_str(), body["field"].as_str()),
        ("site.rejected", Some("node")),
        "{body}"
    );
    // So is a name that is no PVE node name.
    let mut hostile = request("hostile", false);
    hostile.node = Some("x,rootfs=local:100".into());
    f.send(&hostile).await;
    let (kind, body) = f.event().await;
    assert_eq!(
        (kind.as_str(), body["field"].as_str()),
        ("site.rejected", Some("node")),
        "{body}"
    );
    // alice's one site is taken on a known node; a second is over her quota.
    let mut first = request("first", false);
    first.node = Some("pve2".into());
    f.send(&first).await;
    let (kind, body) = f.event().await;
    assert_eq!(
        (kind.as_str(), body["node"].as_str()),
        ("site.provisioned", Some("pve2")),
        "{body}"
    );
    f.send(&request("second", false)).await;
    let (kind, body) = f.event().await;
    assert_eq!(
        (kind.as_str(), body["field"].as_str()),
        ("site.rejected", Some("owner")),
        "{body}"
    );
    // Another owner is not counted against alice.
    let mut bobs = request("bobs", false);
    bobs.owner = "bob".into();
    f.send(&bobs).await;
    assert_eq!(f.event().await.0, "site.provisioned");
    // The refused requests are parked with their reasons, and made no container.
    let kept = pvefleet_testkit::eventually(WAIT, || async { (dead_letters(&f).await == 3).then_some(()) }).await;
    assert!(kept.is_some(), "three parked: {}", dead_letters(&f).await);
    let c = f.db.client().await.unwrap();
    let live: i64 = c
        .query_one("SELECT count(*) FROM sites WHERE state = 'active'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 2);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_quota_holds_when_their_requests_arrive_all_at_once() {
    let f = fleet_with(|s| {
        s.worker.concurrency = 16;
        s.saga.max_sites_per_owner = 4;
    })
    .await;
    for i in 0..12 {
        f.send(&request(&format!("rush{i}"), false)).await;
    }
    let mut kinds = std::collections::HashMap::<String, usize>::new();
    for _ in 0..12 {
        *kinds.entry(f.event().await.0).or_default() += 1;
    }
    assert_eq!(kinds.get("site.provisioned"), Some(&4), "{kinds:?}");
    assert_eq!(kinds.get("site.rejected"), Some(&8), "{kinds:?}");
    f.stop().await;
}

/// One malformed `site.provision` of kind `i % 10`: unreadable bodies, schema violations and
/// policy violations, ten of each.
fn malformed(i: usize) -> (&'static str, Vec<u8>) {
    let mut v = serde_json::to_value(request(&format!("bad{i}"), false)).unwrap();
    let o = v.as_object_mut().unwrap();
    match i % 10 {
        0 => return ("not json", format!("{{not json {i}").into_bytes()),
        1 => return ("empty body", Vec::new()),
        2 => return ("not an object", format!("[{i}, 2]").into_bytes()),
        3 => {
            o.remove("subdomain");
        }
        4 => {
            o.insert("cores".into(), "two".into());
            o.remove("plan");
        }
        5 => {
            o.insert("subdomain".into(), format!("Bad_Name{i}").into());
        }
        6 => {
            o.insert("subdomain".into(), format!("x{i};rm -rf /").into());
        }
        7 => {
            o.insert("plan".into(), "enormous".into());
        }
        8 => {
            o.remove("plan");
            o.insert("cores".into(), 512.into());
            o.insert("memory_mb".into(), 1024.into());
            o.insert("disk_gb".into(), 8.into());
        }
        _ => {
            o.insert("template".into(), "local:vztmpl/windows-11.tar.zst".into());
        }
    }
    ("invalid", serde_json::to_vec(&v).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_malformed_requests_on_the_bus_are_all_parked_with_reasons_while_valid_ones_provision() {
    let f = fleet().await;
    let ch = &f.events.0;
    let mut published = std::collections::BTreeMap::new();
    let mut valid = Vec::new();
    for i in 0..100 {
        let (kind, body) = malformed(i);
        let saga = uuid::Uuid::now_v7();
        let origin = Origin {
            correlation_id: Some(saga),
            ..Origin::default()
        };
        // A real envelope (type, message id, content type) around a bad body.
        let envelope = Outgoing::message(&request("envelope", false), &origin).unwrap();
        let id = envelope.properties.message_id.clone().unwrap().to_string();
        pvefleet_testkit::broker::publish_raw(
            ch,
            &envelope.exchange,
            &envelope.routing_key,
            envelope.properties.clone(),
            &body,
        )
        .await
        .unwrap();
        published.insert(id, (saga, i, kind, body));
        // Valid traffic goes on between them.
        if i % 20 == 10 {
            let r = request(&format!("good{i}"), false);
            f.send(&r).await;
            valid.push(r.site_id);
        }
    }
    // Every one is parked, and the dead-letter keeper stores it with the fault headers the
    // runtime put on it and the body as it was published.
    let kept = pvefleet_testkit::eventually(Duration::from_secs(120), || async {
        (dead_letters(&f).await == 100).then_some(())
    })
    .await;
    assert!(
        kept.is_some(),
        "every malformed message is parked: {}",
        dead_letters(&f).await
    );
    let c = f.db.client().await.unwrap();
    let parked = c
        .query("SELECT message_id, properties, body FROM dead_letters", &[])
        .await
        .unwrap();
    for p in &parked {
        let id: String = p.get(0);
        let props = pvefleet_core::bus::envelope::Properties::from_stored(&p.get(1)).unwrap();
        let data: Vec<u8> = p.get(2);
        let (_, i, kind, body) = published.get(&id).expect("a parked message is one we published");
        let class = props.header_str(pvefleet_contracts::headers::fault::CLASS);
        let reason = props.header_str(pvefleet_contracts::headers::fault::MESSAGE);
        assert_eq!(&data, body, "the parked body is the one published");
        // Unreadable bodies fail decoding, schema violations the schema check, and policy
        // violations (plan, sizes, template) the coordinator's validation.
        let expected_class = match (*kind, i % 10) {
            ("not json" | "empty body", _) => "decode",
            (_, 7..=9) => "rejected",
            _ => "invalid",
        };
        assert_eq!(class.as_deref(), Some(expected_class), "message {i}: {reason:?}");
        assert!(
            reason.is_some_and(|r| r.len() > 10),
            "message {i} is parked with a reason"
        );
    }
    // Every one was told back as site.rejected with its correlation id; the five valid
    // requests provisioned meanwhile.
    let events = take(ch, &f.events.1, 100 + valid.len(), Duration::from_secs(120))
        .await
        .unwrap();
    let sagas: std::collections::BTreeSet<uuid::Uuid> = published.values().map(|(s, ..)| *s).collect();
    let mut rejected = std::collections::BTreeSet::new();
    let mut provisioned = 0;
    for d in &events {
        let kind = d.properties.kind.clone().unwrap_or_default();
        let body: Value = serde_json::from_slice(&d.body).unwrap();
        match kind.as_str() {
            "site.rejected" => {
                assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
                let saga: uuid::Uuid = d.properties.correlation_id.as_deref().unwrap().parse().unwrap();
                assert!(
                    sagas.contains(&saga),
                    "site.rejected carries the request's correlation id"
                );
                rejected.insert(saga);
            }
            "site.provisioned" => provisioned += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(provisioned, valid.len());
    assert_eq!(rejected.len(), 100);
    for id in valid {
        assert_eq!(f.site(id).await.0, "active");
    }
    let c = f.db.client().await.unwrap();
    let sagas: i64 = c.query_one("SELECT count(*) FROM sagas", &[]).await.unwrap().get(0);
    assert_eq!(sagas, 5, "no saga was started for a malformed request");
    f.stop().await;
}

/// Takes `n` `site.*` events of one kind, failing on any other kind.
async fn expect_events(f: &Fleet, kind: &str, n: usize) -> Vec<Value> {
    let got = take(&f.events.0, &f.events.1, n, Duration::from_secs(120))
        .await
        .unwrap();
    let mut out = Vec::new();
    for d in got {
        let k = d.properties.kind.clone().unwrap_or_default();
        let body: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(k, kind, "{body}");
        out.push(body);
    }
    assert_eq!(out.len(), n, "{n} {kind} events");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_delivered_twice_gives_the_same_end_state() {
    // Every publish of every service goes out twice with the same message id: each command is
    // handled twice by the provisioner and ha (no inbox), and the saga's inbox drops the copy.
    let f = fleet_with(|s| s.bus.duplicate_publishes = true).await;
    let req = request("twice", true);
    let saga = f.send(&req).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provisioned", "{body}");
    let (state, vmid, ip, _, _) = f.site(req.site_id).await;
    assert_eq!(
        (state.as_str(), vmid, ip.as_deref()),
        ("active", Some(10_000), Some("10.10.0.100/24"))
    );
    let steps = f.steps(saga).await;
    assert_eq!(
        steps,
        [
            "container.create/forward/done",
            "container.start/forward/done",
            "container.snapshot/forward/done",
            "ha.enable/forward/done"
        ]
    );
    let containers = (10_000..10_010).filter(|v| f.sim.config_text(*v).is_some()).count();
    assert_eq!(containers, 1, "one container");
    assert_eq!(f.pve.ha_resources().await.unwrap().len(), 1, "one HA resource");
    assert_eq!(f.pve.ha_rules().await.unwrap().len(), 1, "one HA rule");
    let snapshots = f
        .pve
        .lxc_snapshots(body["node"].as_str().unwrap(), 10_000)
        .await
        .unwrap();
    assert_eq!(snapshots.len(), 2, "one snapshot and 'current'");
    // The site event itself arrives twice; the second copy is a duplicate, not a new saga.
    let (kind, _) = f.event().await;
    assert_eq!(kind, "site.provisioned");
    f.send(&SiteDeprovision { site_id: req.site_id }).await;
    let (kind, _) = f.event().await;
    assert_eq!(kind, "site.deprovisioned");
    assert_eq!((10_000..10_010).filter(|v| f.sim.config_text(*v).is_some()).count(), 0);
    assert!(f.pve.ha_resources().await.unwrap().is_empty());
    assert_eq!(f.leases(req.site_id).await, 0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_sagas_get_fifty_distinct_vmids_and_addresses() {
    let f = fleet_with(|s| {
        s.worker.concurrency = 16;
        s.saga.max_sites_per_owner = 1000;
    })
    .await;
    let requests: Vec<SiteProvision> = (0..50).map(|i| request(&format!("site{i}"), false)).collect();
    for r in &requests {
        f.send(r).await;
    }
    expect_events(&f, "site.provisioned", 50).await;
    let c = f.db.client().await.unwrap();
    let row = c
        .query_one(
            "SELECT count(*), count(DISTINCT vmid), count(DISTINCT ip) FROM sites WHERE state = 'active'",
            &[],
        )
        .await
        .unwrap();
    let (n, vmids, ips): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((n, vmids, ips), (50, 50, 50));
    let containers = f
        .pve
        .resources(Some(pvefleet_proxmox::client::api::ResourceType::Vm))
        .await
        .unwrap();
    assert_eq!(containers.len(), 50, "one container per site");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_sites_on_three_equal_nodes_spread_within_ten_percent_of_even() {
    let f = fleet_with(|s| {
        s.worker.concurrency = 16;
        s.saga.ip_cidr = "10.64.0.0/16".into();
        s.saga.gateway = "10.64.0.1".into();
        s.saga.ip_first = 2;
        s.saga.ip_last = 1000;
        s.saga.max_sites_per_owner = 1000;
    })
    .await;
    for i in 0..300 {
        f.send(&request(&format!("spread{i}"), false)).await;
    }
    expect_events(&f, "site.provisioned", 300).await;
    let containers = f
        .pve
        .resources(Some(pvefleet_proxmox::client::api::ResourceType::Vm))
        .await
        .unwrap();
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for c in &containers {
        *per_node.entry(c.node.clone().unwrap_or_default()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    for (node, n) in &per_node {
        assert!((90..=110).contains(n), "{node} has {n} of 300: {per_node:?}");
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_address_pool_fails_the_sites_it_cannot_serve_and_they_hold_nothing() {
    // Five addresses, eight sites.
    let f = fleet_with(|s| {
        s.saga.ip_first = 100;
        s.saga.ip_last = 104;
    })
    .await;
    let requests: Vec<SiteProvision> = (0..8).map(|i| request(&format!("pool{i}"), false)).collect();
    let mut sagas = Vec::new();
    for r in &requests {
        sagas.push(f.send(r).await);
    }
    let events = take(&f.events.0, &f.events.1, 8, Duration::from_secs(120))
        .await
        .unwrap();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for d in &events {
        let kind = d.properties.kind.clone().unwrap_or_default();
        if kind == "site.provision_failed" {
            let body: Value = serde_json::from_slice(&d.body).unwrap();
            assert_eq!(body["error"]["code"], "lease.ip_exhausted", "{body}");
            assert_eq!(body["failed_step"], "lease", "{body}");
        }
        *kinds.entry(kind).or_default() += 1;
    }
    assert_eq!(kinds.get("site.provisioned"), Some(&5), "{kinds:?}");
    assert_eq!(kinds.get("site.provision_failed"), Some(&3), "{kinds:?}");
    let c = f.db.client().await.unwrap();
    let failed = c
        .query(
            "SELECT s.id, s.error->'error'->>'code', g.state FROM sites s JOIN sagas g ON g.site_id = s.id
             WHERE s.state = 'failed'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(failed.len(), 3);
    for row in &failed {
        assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("lease.ip_exhausted"));
        assert_eq!(row.get::<_, String>(2), "failed", "the saga says it ended");
    }
    let held: i64 = c
        .query_one(
            "SELECT count(*) FROM leases l JOIN sites s ON s.id = l.site_id WHERE s.state = 'failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "no lease is held by a failed site");
    let leases: i64 = c
        .query_one("SELECT count(*) FROM leases WHERE site_id IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(leases, 10, "a vmid and an address for each of the five active sites");
    // The failed sites' subdomains are free again: one asked for again is accepted (and fails
    // the same way, the pool being still full).
    let retry = SiteProvision {
        site_id: SiteId::new(),
        ..requests
            .iter()
            .find(|r| {
                failed
                    .iter()
                    .any(|row| row.get::<_, uuid::Uuid>(0) == r.site_id.as_uuid())
            })
            .unwrap()
            .clone()
    };
    f.send(&retry).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provision_failed", "{body}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_request_the_saga_refuses_ends_its_site_rejected_and_frees_the_subdomain() {
    let f = fleet().await;
    // Intake recorded the site; the coordinator's policy refuses the request (an unknown plan).
    let mut req = request("refused", false);
    req.plan = Some("enormous".into());
    let c = f.db.client().await.unwrap();
    c.execute(
        "INSERT INTO sites (id, subdomain, owner, state, spec) VALUES ($1, $2, $3, 'requested', $4)",
        &[
            &req.site_id.as_uuid(),
            &req.subdomain,
            &req.owner,
            &serde_json::to_value(&req).unwrap(),
        ],
    )
    .await
    .unwrap();
    let saga = f.send(&req).await;
    let (kind, body) = f.event().await;
    assert_eq!(
        (kind.as_str(), body["field"].as_str()),
        ("site.rejected", Some("plan")),
        "{body}"
    );
    let ended = pvefleet_testkit::eventually(WAIT, || async {
        let row = c
            .query_opt("SELECT state FROM sagas WHERE id = $1", &[&saga])
            .await
            .unwrap()?;
        Some(row.get::<_, String>(0))
    })
    .await;
    assert_eq!(
        ended.as_deref(),
        Some("failed"),
        "the saga is recorded ended, for a follower"
    );
    let (state, .., error) = f.site(req.site_id).await;
    assert_eq!(state, "rejected");
    let error = error.unwrap();
    assert_eq!(error["error"]["code"], "rejected", "{error}");
    assert!(error["dead_letter_id"].is_string(), "{error}");
    // Its subdomain is free again.
    let again = request("refused", false);
    f.send(&again).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provisioned", "{body}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_thirty_percent_of_pve_calls_failing_transiently_twenty_sagas_all_end_active_without_duplicates() {
    let f = fleet_with(|s| {
        s.bus.max_attempts = 40;
        s.bus.retry_tiers = vec![Duration::from_millis(100), Duration::from_millis(200)];
    })
    .await;
    f.sim.fail_transiently(0.3);
    let requests: Vec<SiteProvision> = (0..20).map(|i| request(&format!("flaky{i}"), true)).collect();
    for r in &requests {
        f.send(r).await;
    }
    expect_events(&f, "site.provisioned", 20).await;
    let c = f.db.client().await.unwrap();
    let active: i64 = c
        .query_one("SELECT count(*) FROM sites WHERE state = 'active'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(active, 20);
    // Read pvesim directly (its faults only hit HTTP calls): exactly one container per site.
    let containers = (10_000..10_100).filter(|v| f.sim.config_text(*v).is_some()).count();
    assert_eq!(containers, 20, "no duplicate containers");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_keeps_failing_is_compensation_failed_and_retry_step_completes_it_then_deprovision_works() {
    let f = fleet().await;
    // The snapshot step fails permanently, but the compensation is blocked, so the site is left
    // half-built when the operator deprovisions it.
    f.sim.lock_task_error("vzsnapshot", "snapshot feature is not available");
    f.sim.inject(
        serde_json::from_value::<Fault>(serde_json::json!({ "path": "/nodes", "method": "DELETE", "status": 403, "message": "Permission check failed (/vms/10000, VM.Allocate)", "count": 1000 }))
            .unwrap(),
    );
    let req = request("half", false);
    let saga = f.send(&req).await;
    // Wait until the compensation has given up: compensation_failed.
    let c = f.db.client().await.unwrap();
    let gave_up = pvefleet_testkit::eventually(WAIT, || async {
        let state: String = c
            .query_one("SELECT state FROM sagas WHERE id = $1", &[&saga])
            .await
            .ok()?
            .get(0);
        (state == "compensation_failed").then_some(())
    })
    .await;
    assert!(gave_up.is_some(), "the compensation gave up");
    let vmid = f.site(req.site_id).await.1.unwrap() as u32;
    assert!(f.sim.config_text(vmid).is_some(), "the container is still there");
    // Operators see it (`pvefleet saga list --state compensation_failed` runs this).
    let listed = pvefleet_saga::ops::list(&c, Some("compensation_failed")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], saga.to_string());
    assert_eq!(listed[0]["step"], "container.destroy");
    clear_faults(&f).await;
    // `pvefleet saga retry-step` after the fault is cleared completes the compensation.
    let step = pvefleet_saga::ops::retry_step(&c, &pvefleet_core::config::SagaSettings::default(), saga, "tester")
        .await
        .unwrap();
    assert_eq!(step, "container.destroy");
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provision_failed", "{body}");
    assert_eq!(body["failed_step"], "container.snapshot");
    assert!(
        f.sim.config_text(vmid).is_none(),
        "the retried compensation removed the container"
    );
    let shown = pvefleet_saga::ops::show(&c, saga).await.unwrap().unwrap();
    assert_eq!(shown["state"], "failed");
    assert_eq!(shown["audit"][0]["action"], "retry-step");
    assert_eq!(shown["audit"][0]["actor"], "tester");
    // And in the audit trail, for the site's owner.
    let row = c
        .query_one(
            "SELECT actor, action, target, owner FROM audit_log WHERE action LIKE 'saga.%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        ("tester".into(), "saga.retry-step".into(), format!("saga/{saga}"))
    );
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some(req.owner.as_str()));
    f.send(&SiteDeprovision { site_id: req.site_id }).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.deprovisioned", "{body}");
    assert!(f.sim.config_text(vmid).is_none(), "the container is gone");
    assert_eq!(f.leases(req.site_id).await, 0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_provisioned_site_deprovisions_cleanly() {
    let f = fleet().await;
    // WordPress needs the installer, which is not running: the saga waits at app.install with
    // the container created and started.
    let mut req = request("half", true);
    req.app = App::wordpress();
    let saga = f.send(&req).await;
    let c = f.db.client().await.unwrap();
    let waiting = pvefleet_testkit::eventually(WAIT, || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM saga_steps WHERE saga_id = $1 AND name = 'app.install'",
                &[&saga],
            )
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    assert!(waiting.is_some(), "the saga reached app.install");
    let vmid = f.site(req.site_id).await.1.unwrap() as u32;
    assert!(f.sim.config_text(vmid).is_some());
    f.send(&SiteDeprovision { site_id: req.site_id }).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.deprovisioned", "{body}");
    assert!(f.sim.config_text(vmid).is_none(), "the container is gone");
    assert_eq!(f.leases(req.site_id).await, 0);
    assert_eq!(f.site(req.site_id).await.0, "deleted");
    let state: String = c
        .query_one("SELECT state FROM sagas WHERE id = $1", &[&saga])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "superseded", "the provisioning saga stopped");
    f.stop().await;
}

async fn clear_faults(f: &Fleet) {
    let url = format!("{}/_sim/faults", f.pve_url);
    pvefleet_proxmox::client::tls::provider();
    let resp = reqwest::Client::new().delete(url).send().await.unwrap();
    assert!(resp.status().is_success());
}

/// The saga's state, polled until it is `want` (or the wait runs out).
async fn saga_state(f: &Fleet, saga: uuid::Uuid, want: &str) -> String {
    let c = f.db.client().await.unwrap();
    let mut last = String::new();
    let got = pvefleet_testkit::eventually(WAIT, || {
        let c = &c;
        async move {
            let state: String = c
                .query_one("SELECT state FROM sagas WHERE id = $1", &[&saga])
                .await
                .ok()?
                .get(0);
            (state == want).then_some(state)
        }
    })
    .await;
    if let Some(s) = got {
        last = s;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_step_is_resent_at_its_deadline_then_suspended_and_resume_completes_it_with_one_container() {
    // The provisioner is down: container.create is never answered.
    let mut f = fleet_without_provisioner(|s| {
        s.saga.step_timeout = Duration::from_secs(1);
        s.saga.step_resends = 2;
        s.saga.deadline_scan_interval = Duration::from_millis(200);
    })
    .await;
    let req = request("deadline", false);
    let saga = f.send(&req).await;
    assert_eq!(
        saga_state(&f, saga, "suspended").await,
        "suspended",
        "the saga stops for an operator"
    );
    let c = f.db.client().await.unwrap();
    let row = c
        .query_one(
            "SELECT s.sends, s.state, g.error->'error'->>'code', g.error->'error'->>'message'
             FROM saga_steps s JOIN sagas g ON g.id = s.saga_id WHERE s.saga_id = $1 AND s.name = 'container.create'",
            &[&saga],
        )
        .await
        .unwrap();
    let (sends, step_state, code, message): (i32, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(sends, 3, "sent once and re-sent twice");
    assert_eq!(step_state, "failed");
    assert_eq!(code, "step.deadline");
    assert!(
        message.contains("container.create") && message.contains("3 sends"),
        "{message}"
    );
    assert_eq!(f.site(req.site_id).await.0, "provisioning");
    // The three commands wait in the provisioner's queue; when it comes back it handles them
    // all, creating one container, and the suspended saga ignores their answers.
    f.start_provisioner();
    let vmid = f.site(req.site_id).await.1.unwrap() as u32;
    let created = pvefleet_testkit::eventually(WAIT, || async { f.sim.config_text(vmid).map(|_| ()) }).await;
    assert!(created.is_some(), "the provisioner created the container");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        saga_state(&f, saga, "suspended").await,
        "suspended",
        "late answers do not move a suspended saga"
    );
    // `pvefleet saga resume`: the step is sent again and the saga completes.
    let step = pvefleet_saga::ops::resume(&c, &f.settings.saga, saga, "tester")
        .await
        .unwrap();
    assert_eq!(step, "container.create");
    // Recorded as a resume, not a retry-step.
    let actions: Vec<String> = c
        .query(
            "SELECT action FROM audit_log WHERE target = $1",
            &[&format!("saga/{saga}")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actions, ["saga.resume"]);
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provisioned", "{body}");
    assert_eq!(f.site(req.site_id).await.0, "active");
    let containers = (10_000..10_010).filter(|v| f.sim.config_text(*v).is_some()).count();
    assert_eq!(containers, 1, "exactly one container");
    f.stop().await;
}

/// A container in pvesim that is not the fleet's: no site marker in its description.
async fn foreign_container(f: &Fleet, vmid: u32) {
    f.pve
        .lxc_create(
            "pve2",
            pvefleet_proxmox::client::Params::new()
                .set("vmid", vmid)
                .set("hostname", "not-ours")
                .set("ostemplate", TEMPLATE)
                .set("rootfs", "local-lvm:4")
                .set("description", "a container someone made by hand"),
        )
        .await
        .unwrap();
}

async fn foreign_lease(f: &Fleet, vmid: u32) -> Option<String> {
    let c = f.db.client().await.unwrap();
    c.query_opt(
        "SELECT holder FROM leases WHERE kind = 'vmid' AND value = $1 AND site_id IS NULL",
        &[&vmid.to_string()],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_vmid_that_pve_already_uses_is_held_and_the_saga_leases_the_next_one() {
    // No ahead-of-time cross-check: the create meets the foreign container.
    let f = fleet_with(|s| s.saga.lease_sync_interval = Duration::ZERO).await;
    foreign_container(&f, 10_000).await;
    let before = f.sim.config_text(10_000).unwrap();
    let req = request("collide", false);
    f.send(&req).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provisioned", "{body}");
    assert_eq!(body["vmid"], 10_001);
    assert_eq!(f.site(req.site_id).await.1, Some(10_001));
    assert_eq!(
        f.sim.config_text(10_000).unwrap(),
        before,
        "the foreign container is untouched"
    );
    let holder = foreign_lease(&f, 10_000).await.expect("the taken vmid is held");
    assert!(holder.contains("10000"), "{holder}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmids_pve_uses_are_held_ahead_of_time_and_freed_when_pve_no_longer_uses_them() {
    let f = fleet_with(|s| s.saga.lease_sync_interval = Duration::from_millis(200)).await;
    foreign_container(&f, 10_000).await;
    let held = pvefleet_testkit::eventually(WAIT, || foreign_lease(&f, 10_000)).await;
    assert!(
        held.is_some_and(|h| h.contains("lxc/10000")),
        "the sync holds the used vmid"
    );
    let req = request("ahead", false);
    let saga = f.send(&req).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provisioned", "{body}");
    assert_eq!(body["vmid"], 10_001);
    let c = f.db.client().await.unwrap();
    let sends: i32 = c
        .query_one(
            "SELECT sends FROM saga_steps WHERE saga_id = $1 AND name = 'container.create'",
            &[&saga],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sends, 1, "no collision: the vmid was never leased");
    // The site's own container is not held as foreign.
    assert!(foreign_lease(&f, 10_001).await.is_none());
    f.pve.lxc_destroy("pve2", 10_000, true, false).await.unwrap();
    let freed = pvefleet_testkit::eventually(WAIT, || async {
        foreign_lease(&f, 10_000).await.is_none().then_some(())
    })
    .await;
    assert!(freed.is_some(), "a vmid PVE no longer uses is free again");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_wordpress_sites_with_real_sshd_dns_and_proxy_provision_and_deprovision_leaving_the_servers_as_they_were() {
    use pvefleet_testkit::edge::{Caddy, PowerDns};
    let pdns = PowerDns::start("sites.test").await.unwrap();
    let caddy = Caddy::start().await.unwrap();
    // The zone's records but its SOA, whose serial counts every change.
    let records = || async {
        let mut r = pdns.rrsets().await.unwrap();
        r.retain(|(_, kind, _)| kind != "SOA");
        r
    };
    let (zone_before, routes_before) = (records().await, caddy.routes().await.unwrap());
    let sshd = pvefleet_testkit::ssh::Sshd::start().await.unwrap();
    let f = fleet_with(|s| {
        through(&sshd, s);
        s.worker.concurrency = 16;
        to_edge(&pdns, &caddy, s);
    })
    .await;
    let requests: Vec<SiteProvision> = (0..10)
        .map(|i| SiteProvision {
            app: App::wordpress(),
            ..request(&format!("web{i}"), false)
        })
        .collect();
    for r in &requests {
        f.send(r).await;
    }
    let provisioned = expect_events(&f, "site.provisioned", 10).await;
    assert!(
        provisioned
            .iter()
            .all(|p| p["fqdn"].as_str().is_some_and(|d| d.ends_with(".sites.test")))
    );
    // Each site answers in DNS with its address, and has its route.
    for r in &requests {
        let (state, _, ip, ..) = f.site(r.site_id).await;
        assert_eq!(state, "active");
        let address: std::net::Ipv4Addr = ip.unwrap().split('/').next().unwrap().parse().unwrap();
        assert_eq!(
            pdns.query_a(&format!("{}.sites.test", r.subdomain)).unwrap(),
            vec![address]
        );
    }
    assert_eq!(caddy.routes().await.unwrap().len(), 10);
    let scripts = sshd.pct_calls().into_iter().filter(|c| c.stdin.is_some()).count();
    assert_eq!(scripts, 10, "WordPress was installed into each container through sshd");
    for r in &requests {
        f.send(&SiteDeprovision { site_id: r.site_id }).await;
    }
    expect_events(&f, "site.deprovisioned", 10).await;
    assert_eq!(records().await, zone_before, "PowerDNS is as it was");
    assert_eq!(caddy.routes().await.unwrap(), routes_before, "Caddy is as it was");
    assert!(
        (10_000..10_020).all(|v| f.sim.config_text(v).is_none()),
        "pvesim is as it was"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_edge_steps_compensates_the_dns_record_and_the_route() {
    use pvefleet_testkit::edge::{Caddy, PowerDns};
    let pdns = PowerDns::start("sites.test").await.unwrap();
    let caddy = Caddy::start().await.unwrap();
    let f = fleet_with(|s| {
        to_edge(&pdns, &caddy, s);
    })
    .await;
    // ha.enable, the last step, fails for good: dns.upsert and proxy.upsert are undone.
    f.sim.inject(
        serde_json::from_value::<Fault>(serde_json::json!({
            "path": "/cluster/ha/resources", "method": "POST", "status": 403,
            "message": "Permission check failed (/, Sys.Console)"
        }))
        .unwrap(),
    );
    let req = request("undone", true);
    let saga = f.send(&req).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provision_failed", "{body}");
    assert_eq!(body["failed_step"], "ha.enable");
    let compensated: Vec<String> = f
        .timeline(saga)
        .await
        .into_iter()
        .filter(|(_, phase, state)| phase == "compensate" && state == "done")
        .map(|(name, ..)| name)
        .collect();
    assert_eq!(compensated, vec!["proxy.delete", "dns.delete", "container.destroy"]);
    assert!(
        pdns.query_a("undone.sites.test").unwrap().is_empty(),
        "the record is gone"
    );
    assert!(caddy.routes().await.unwrap().is_empty(), "the route is gone");
    f.stop().await;
}

/// The fleet's DNS and proxy on a real PowerDNS (zone `sites.test`) and Caddy.
fn to_edge(pdns: &pvefleet_testkit::edge::PowerDns, caddy: &pvefleet_testkit::edge::Caddy, s: &mut Settings) {
    s.saga.dns_provider = "powerdns".into();
    s.saga.proxy_provider = "caddy".into();
    s.saga.domain = "sites.test".into();
    s.edge.powerdns_url = pdns.api_url.clone();
    s.edge.powerdns_api_key = Some(pvefleet_core::Secret::new(pdns.api_key.clone()));
    s.edge.caddy_admin_url = caddy.admin_url.clone();
}

/// Installer settings reaching every pvesim node through `sshd`.
fn through(sshd: &pvefleet_testkit::ssh::Sshd, s: &mut Settings) {
    s.installer.ssh_port = sshd.port;
    s.installer.ssh_key = Some(sshd.client_key.clone());
    s.installer.known_hosts = Some(sshd.known_hosts.clone());
    s.installer.node_addresses = ["pve1", "pve2", "pve3"]
        .into_iter()
        .map(|n| (n.to_string(), "127.0.0.1".to_string()))
        .collect();
    s.installer.ready_delay = Duration::from_millis(50);
    s.installer.secrets_key = Some(pvefleet_core::Secret::new(
        "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=",
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wordpress_site_is_installed_through_a_real_sshd_in_the_full_saga() {
    let sshd = pvefleet_testkit::ssh::Sshd::start().await.unwrap();
    let f = fleet_with(|s| through(&sshd, s)).await;
    let mut req = request("press", false);
    req.app = App::wordpress();
    let saga = f.send(&req).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provisioned", "{body}");
    let vmid = f.site(req.site_id).await.1.unwrap().to_string();
    let steps: Vec<String> = f.timeline(saga).await.into_iter().map(|(n, ..)| n).collect();
    assert_eq!(
        steps,
        [
            "container.create",
            "container.start",
            "app.install",
            "container.snapshot"
        ]
    );
    let script = sshd.pct_calls().into_iter().find(|c| c.stdin.is_some()).unwrap();
    assert_eq!(
        script.argv,
        [
            "exec",
            vmid.as_str(),
            "--",
            "bash",
            "-s",
            "--",
            "https://press.example.org",
            "press",
            "alice@example.org",
            "admin"
        ]
    );
    assert!(
        script
            .stdin
            .unwrap()
            .ends_with(pvefleet_installer::WORDPRESS_SETUP.as_bytes())
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_setup_script_fails_the_saga_with_its_stderr_and_compensates() {
    let sshd = pvefleet_testkit::ssh::Sshd::start().await.unwrap();
    sshd.fail_scripts(Some(
        "E: Unable to locate package php8.3-fpm\nwordpress-setup: failed at line 48\n",
    ));
    let f = fleet_with(|s| through(&sshd, s)).await;
    let mut req = request("broken", false);
    req.app = App::wordpress();
    let saga = f.send(&req).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provision_failed", "{body}");
    assert_eq!(body["failed_step"], "app.install");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Unable to locate package php8.3-fpm"),
        "{body}"
    );
    let compensated: Vec<String> = f
        .timeline(saga)
        .await
        .into_iter()
        .filter(|(_, phase, _)| phase == "compensate")
        .map(|(n, ..)| n)
        .collect();
    assert_eq!(compensated, ["container.destroy"]);
    assert!(
        (10_000..10_010).all(|v| f.sim.config_text(v).is_none()),
        "the container is gone"
    );
    let (state, ..) = f.site(req.site_id).await;
    assert_eq!(state, "failed");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_can_ask_for_an_app_of_the_operators_own() {
    let sshd = pvefleet_testkit::ssh::Sshd::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("pvefleet-apps-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("static.sh");
    std::fs::write(&script, "#!/bin/bash\nset -eu\necho \"a static site for $1\"\n").unwrap();
    let f = fleet_with(|s| {
        through(&sshd, s);
        s.installer.apps.insert(
            "static".into(),
            pvefleet_core::config::AppSettings { script: script.clone() },
        );
    })
    .await;
    let req = SiteProvision {
        app: App("static".into()),
        ..request("docs", false)
    };
    f.send(&req).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provisioned", "{body}");
    let run = sshd.pct_calls().into_iter().find(|c| c.stdin.is_some()).unwrap();
    assert!(run.stdin.unwrap().ends_with(&std::fs::read(&script).unwrap()));
    // An app nobody configured is refused with the field named.
    f.send(&SiteProvision {
        app: App("joomla".into()),
        ..request("other", false)
    })
    .await;
    let (kind, body) = f.event().await;
    assert_eq!(
        (kind.as_str(), body["field"].as_str()),
        ("site.rejected", Some("app")),
        "{body}"
    );
    f.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

// ------------------------------------------------------------------------------- dead letters

/// An envelope for `msg` with two headers of our own, to see them kept.
fn with_marks<M: Message>(msg: &M, i: usize) -> Outgoing {
    let origin = Origin {
        correlation_id: Some(uuid::Uuid::now_v7()),
        ..Origin::default()
    };
    let mut out = Outgoing::message(msg, &origin).unwrap();
    out.properties.set_header("x-tenant", format!("tenant-{i}"));
    out.properties.set_header("x-priority-class", i as i64);
    out
}

/// `out`'s properties with the fault headers the runtime puts on a message it parks from the
/// saga queue.
fn parked_from_saga(
    out: &Outgoing,
    class: &str,
    message: &str,
    attempts: i64,
) -> pvefleet_core::bus::envelope::Properties {
    out.properties
        .clone()
        .with_header("pvefleet-fault-class", class)
        .with_header("pvefleet-fault-message", message)
        .with_header("pvefleet-fault-attempts", attempts)
        .with_header("pvefleet-fault-origin-queue", "pvefleet.saga")
}

async fn dead_letters(f: &Fleet) -> i64 {
    let c = f.db.client().await.unwrap();
    c.query_one("SELECT count(*) FROM dead_letters", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_parked_messages_of_three_kinds_are_stored_byte_for_byte_and_replay_keeps_every_header() {
    // No provisioner: its queue is where the broker dead-letters by delivery limit.
    let f = fleet_without_provisioner(|s| {
        s.bus.delivery_limit = 2;
        s.bus.max_attempts = 2;
        s.bus.retry_tiers = vec![Duration::from_millis(100)];
    })
    .await;
    // HA's API answers 500 to everything: ha.enable retries, then parks (retries exhausted).
    f.sim.inject(
        serde_json::from_value::<Fault>(serde_json::json!({
            "path": "/cluster/ha", "status": 500, "message": "got no worker upid - start worker failed", "count": 1_000_000
        }))
        .unwrap(),
    );
    let mut published = std::collections::HashMap::new();
    // 100 refused by the coordinator's policy (Reject).
    for i in 0..100 {
        let mut r = request(&format!("dl{i}"), false);
        r.template = "local:vztmpl/not-allowed.tar.zst".into();
        let out = with_marks(&r, i);
        f.publisher.publish(&out).await.unwrap();
        published.insert(out.message_id().unwrap().to_string(), out);
    }
    // 40 that fail transiently until their attempts run out.
    for i in 100..140 {
        let cmd = pvefleet_contracts::messages::HaEnable {
            site_id: SiteId::new(),
            vmid: pvefleet_contracts::Vmid(20_000 + i as u32),
            group: None,
        };
        let out = with_marks(&cmd, i);
        f.publisher.publish(&out).await.unwrap();
        published.insert(out.message_id().unwrap().to_string(), out);
    }
    // 60 that a consumer keeps handing back until the broker's delivery limit dead-letters them.
    let ch = f._vhost.probe().await.unwrap();
    let nacker_probe = f._vhost.probe().await.unwrap();
    let mut nacker = nacker_probe.consume("pvefleet.provisioner", 16).await.unwrap();
    let nacking = tokio::spawn(async move {
        while let Ok(Some(d)) = nacker.next(Duration::from_secs(3600)).await {
            let _ = d.nack(true).await;
        }
        nacker
    });
    let mut broker_ids = Vec::new();
    for i in 140..200 {
        let cmd = pvefleet_contracts::messages::ContainerStart {
            site_id: SiteId::new(),
            vmid: pvefleet_contracts::Vmid(30_000 + i as u32),
            node: None,
        };
        let out = with_marks(&cmd, i);
        f.publisher.publish(&out).await.unwrap();
        broker_ids.push(out.message_id().unwrap().to_string());
        published.insert(out.message_id().unwrap().to_string(), out);
    }
    let all = pvefleet_testkit::eventually(Duration::from_secs(90), || async {
        (dead_letters(&f).await >= 200).then_some(())
    })
    .await;
    assert!(all.is_some(), "200 dead letters stored, got {}", dead_letters(&f).await);
    nacking.abort();
    nacker_probe.close();
    let c = f.db.client().await.unwrap();
    let rows = c
        .query(
            "SELECT message_id, properties, body, fault_class, origin_queue FROM dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 200, "each parked once");
    let mut classes = std::collections::BTreeMap::new();
    for row in &rows {
        let id: String = row.get(0);
        let sent = published.get(&id).expect("a dead letter we published");
        let props = pvefleet_core::bus::envelope::Properties::from_stored(&row.get(1)).unwrap();
        let body: Vec<u8> = row.get(2);
        assert_eq!(body, sent.body.to_vec(), "{id}: the body, byte for byte");
        assert_eq!(props.message_id, sent.properties.message_id);
        assert_eq!(props.correlation_id, sent.properties.correlation_id);
        assert_eq!(props.kind, sent.properties.kind);
        assert_eq!(props.content_type, sent.properties.content_type);
        assert_eq!(props.timestamp, sent.properties.timestamp);
        for (k, v) in &sent.properties.headers {
            if k == "pvefleet-attempt" {
                continue; // the runtime's own counter moves with each attempt
            }
            assert_eq!(props.headers.get(k), Some(v), "{id}: header {k} is kept");
        }
        *classes.entry(row.get::<_, String>(3)).or_insert(0) += 1;
    }
    assert_eq!(classes.get("rejected"), Some(&100), "{classes:?}");
    assert_eq!(classes.get("retries-exhausted"), Some(&40), "{classes:?}");
    assert_eq!(classes.get("broker-delivery_limit"), Some(&60), "{classes:?}");
    // Replay one of the broker's: it reaches its origin queue with its id and headers, plus the
    // replay headers.
    let one: uuid::Uuid = c
        .query_one("SELECT id FROM dead_letters WHERE message_id = $1", &[&broker_ids[0]])
        .await
        .unwrap()
        .get(0);
    let done = pvefleet_core::dlq::replay(
        &c,
        &f.publisher,
        &pvefleet_core::dlq::Filter {
            id: Some(one),
            ..Default::default()
        },
        &"tester".into(),
        false,
        None,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(done.replayed, vec![one]);
    let back = take(&ch, "pvefleet.provisioner", 1, WAIT).await.unwrap();
    assert_eq!(back.len(), 1);
    let sent = &published[&broker_ids[0]];
    assert_eq!(back[0].properties.message_id, sent.properties.message_id);
    assert_eq!(back[0].body, sent.body.to_vec());
    for (k, v) in &sent.properties.headers {
        assert_eq!(
            back[0].properties.headers.get(k),
            Some(v),
            "header {k} survives the replay"
        );
    }
    assert_eq!(
        back[0].properties.header_str("pvefleet-replay-of"),
        Some(one.to_string())
    );
    assert_eq!(back[0].properties.header_i64("pvefleet-replay-count"), Some(1));
    let state: String = c
        .query_one("SELECT state FROM dead_letters WHERE id = $1", &[&one])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "replayed", "kept for audit");
    f.stop().await;
}

/// A fleet whose container.create keeps failing transiently until its attempts run out.
async fn fleet_with_pve_down_for_creates() -> Fleet {
    let f = fleet_with(|s| {
        s.bus.max_attempts = 2;
        s.bus.retry_tiers = vec![Duration::from_millis(100)];
    })
    .await;
    f.sim.inject(
        serde_json::from_value::<Fault>(serde_json::json!({
            "path": "/nodes", "method": "POST", "status": 596, "message": "Connection timed out", "count": 1_000_000
        }))
        .unwrap(),
    );
    f
}

async fn parked_saga(f: &Fleet, req: &SiteProvision) -> (uuid::Uuid, uuid::Uuid, String) {
    let saga = f.send(req).await;
    assert_eq!(
        saga_state(f, saga, "suspended").await,
        "suspended",
        "the parked create suspends the saga"
    );
    let c = f.db.client().await.unwrap();
    let row = c
        .query_one(
            "SELECT d.id, d.fingerprint, g.error->>'dead_letter_id' FROM dead_letters d JOIN sagas g ON g.id = d.correlation_id
             WHERE d.correlation_id = $1",
            &[&saga],
        )
        .await
        .unwrap();
    let (dl, group, named): (uuid::Uuid, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(named, Some(dl.to_string()), "the saga names its dead letter");
    assert!(group.starts_with("container.create/retries-exhausted/"), "{group}");
    (saga, dl, group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_suspended_on_a_parked_create_resumes_when_its_group_is_replayed() {
    let f = fleet_with_pve_down_for_creates().await;
    let req = request("parked", false);
    let (saga, _dl, group) = parked_saga(&f, &req).await;
    clear_faults(&f).await;
    let c = f.db.client().await.unwrap();
    let done = pvefleet_core::dlq::replay(
        &c,
        &f.publisher,
        &pvefleet_core::dlq::Filter {
            group: Some(group),
            ..Default::default()
        },
        &"tester".into(),
        false,
        None,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(done.replayed.len(), 1);
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.provisioned", "{body}");
    assert_eq!(saga_state(&f, saga, "completed").await, "completed");
    assert_eq!(f.site(req.site_id).await.0, "active");
    let containers = (10_000..10_010).filter(|v| f.sim.config_text(*v).is_some()).count();
    assert_eq!(containers, 1, "exactly one container");
    let audited: i64 = c
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action = 'dlq.replay' AND actor = 'tester'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_saga_fails_and_a_late_replay_of_its_parked_create_does_nothing() {
    let f = fleet_with_pve_down_for_creates().await;
    let req = request("aborted", false);
    let (saga, dl, _group) = parked_saga(&f, &req).await;
    let c = f.db.client().await.unwrap();
    pvefleet_saga::ops::abort(&c, &f.settings.saga, saga, "tester")
        .await
        .unwrap();
    assert_eq!(saga_state(&f, saga, "failed").await, "failed");
    assert_eq!(f.site(req.site_id).await.0, "failed");
    assert_eq!(f.leases(req.site_id).await, 0, "the leases are released");
    clear_faults(&f).await;
    // The dead letter was archived with the abort: a replay by group or id finds nothing.
    let filter = pvefleet_core::dlq::Filter {
        id: Some(dl),
        ..Default::default()
    };
    let none = pvefleet_core::dlq::replay(&c, &f.publisher, &filter, &"tester".into(), false, None, |_, _| {})
        .await
        .unwrap();
    assert!(none.replayed.is_empty());
    // Even asked for explicitly among the archived, it is refused: its saga has ended.
    let archived = pvefleet_core::dlq::Filter {
        id: Some(dl),
        state: Some("archived".into()),
        ..Default::default()
    };
    let refused = pvefleet_core::dlq::replay(&c, &f.publisher, &archived, &"tester".into(), false, None, |_, _| {})
        .await
        .unwrap();
    assert!(refused.replayed.is_empty());
    assert_eq!(refused.skipped.len(), 1, "{refused:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        (10_000..10_010).all(|v| f.sim.config_text(v).is_none()),
        "no container for an aborted saga"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_park_of_the_same_message_and_attempt_is_stored_once() {
    let f = fleet().await;
    let ch = f._vhost.probe().await.unwrap();
    let out = with_marks(&request("twice", false), 1);
    let props = parked_from_saga(&out, "retries-exhausted", "gave up", 3);
    for _ in 0..2 {
        pvefleet_testkit::broker::publish_raw(&ch, "pvefleet.parked", "pvefleet.saga", props.clone(), &out.body)
            .await
            .unwrap();
    }
    let stored = pvefleet_testkit::eventually(WAIT, || async { (dead_letters(&f).await == 1).then_some(()) }).await;
    assert!(stored.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dead_letters(&f).await, 1, "stored once");
    f.stop().await;
}

/// `pvefleet-saga` as its own process on the test's vhost and database.
fn saga_process(f: &Fleet) -> std::process::Child {
    // The same queue arguments as the test's topology, or declaring them would be refused.
    let b = &f.settings.bus;
    let tiers: Vec<String> = b
        .retry_tiers
        .iter()
        .map(|t| format!("\"{}ms\"", t.as_millis()))
        .collect();
    let config = std::env::temp_dir().join(format!("pvefleet-keeper-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &config,
        format!(
            "[bus]\ndelivery_limit = {}\nmax_attempts = {}\nretry_tiers = [{}]\n",
            b.delivery_limit,
            b.max_attempts,
            tiers.join(", ")
        ),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_pvefleet-saga"))
        .env_clear()
        .env("PVEFLEET_CONFIG", &config)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PVEFLEET_BUS__URL", f.settings.bus.url.expose())
        .env("PVEFLEET_DB__URL", f.settings.db.url.expose())
        .env("PVEFLEET_HTTP__LISTEN", "127.0.0.1:0")
        .env("PVEFLEET_SAGA__LEASE_SYNC_INTERVAL", "0s")
        .env("PVEFLEET_TELEMETRY__FILTER", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(std::env::temp_dir().join("pvefleet-keeper-child.log")).unwrap())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keeper_killed_mid_stream_loses_no_dead_letter_and_stores_none_twice() {
    // The in-process coordinator (and its keeper) stops first: the parked queue is the child's.
    let mut f = fleet().await;
    f.shutdown.cancel();
    for t in f.tasks.drain(..) {
        t.await.unwrap().unwrap();
    }
    let ch = f._vhost.probe().await.unwrap();
    const N: usize = 2000;
    let mut sent = std::collections::BTreeSet::new();
    for i in 0..N {
        let out = with_marks(&request(&format!("kill{i}"), false), i);
        let props = parked_from_saga(&out, "rejected", "no", 1);
        pvefleet_testkit::broker::publish_raw(&ch, "pvefleet.parked", "pvefleet.saga", props, &out.body)
            .await
            .unwrap();
        sent.insert(out.message_id().unwrap().to_string());
    }
    let mut child = saga_process(&f);
    let some = pvefleet_testkit::eventually(Duration::from_secs(60), || async {
        (dead_letters(&f).await >= 100).then_some(())
    })
    .await;
    assert!(
        some.is_some(),
        "the keeper started storing: {}",
        std::fs::read_to_string(std::env::temp_dir().join("pvefleet-keeper-child.log")).unwrap_or_default()
    );
    child.kill().unwrap(); // SIGKILL, mid-stream
    child.wait().unwrap();
    let at_kill = dead_letters(&f).await;
    assert!(at_kill < N as i64, "killed before the end ({at_kill} of {N})");
    let mut child = saga_process(&f);
    let all = pvefleet_testkit::eventually(Duration::from_secs(120), || async {
        (dead_letters(&f).await >= N as i64).then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        all.is_some(),
        "every dead letter stored: {} of {N}",
        dead_letters(&f).await
    );
    let c = f.db.client().await.unwrap();
    let stored: std::collections::BTreeSet<String> = c
        .query("SELECT message_id FROM dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(dead_letters(&f).await, N as i64, "none twice");
    assert_eq!(stored, sent, "none lost");
    let events: i64 = c
        .query_one("SELECT count(*) FROM outbox WHERE message_type = 'message.parked'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        events, N as i64,
        "one message.parked per dead letter, committed with it"
    );
}

/// A handler that accepts every well-formed `container.create` and does nothing with it.
struct Accept;

#[async_trait::async_trait]
impl pvefleet_core::bus::Handler<pvefleet_contracts::messages::ContainerCreate> for Accept {
    async fn handle(
        &self,
        _msg: pvefleet_contracts::messages::ContainerCreate,
        _ctx: &pvefleet_core::bus::Context<'_>,
    ) -> pvefleet_core::bus::Handled {
        Ok(())
    }
}

/// Poison message `i`: the first 100 have an empty `message_id`, the next 100 none; the rest
/// are of the other five kinds in turn (wrong content type, bad JSON, schema-invalid, unknown
/// type, too large).
fn poison(i: usize) -> (pvefleet_core::bus::envelope::Properties, Vec<u8>) {
    use pvefleet_core::bus::envelope::Properties;
    let good_body = serde_json::to_vec(&serde_json::json!({
        "site_id": SiteId::new(), "vmid": 10_000 + i, "hostname": format!("p{i}"), "template": TEMPLATE,
        "cores": 1, "memory_mb": 512, "swap_mb": 0, "disk_gb": 8, "storage": "local-lvm",
        "net": { "bridge": "vmbr0", "ip": "dhcp" }, "unprivileged": true,
    }))
    .unwrap();
    let props = |id: Option<String>, kind: &str, ctype: &str| Properties {
        message_id: id,
        kind: Some(kind.into()),
        content_type: Some(ctype.into()),
        delivery_mode: Some(2),
        ..Properties::default()
    };
    let id = || Some(uuid::Uuid::now_v7().to_string());
    let json = "application/json";
    match i {
        0..100 => (props(Some(String::new()), "container.create", json), good_body),
        100..200 => (props(None, "container.create", json), good_body),
        _ => match i % 5 {
            0 => (props(id(), "container.create", "text/plain"), good_body),
            1 => (props(id(), "container.create", json), b"{not json".to_vec()),
            2 => (props(id(), "container.create", json), br#"{"vmid":"many"}"#.to_vec()),
            3 => (props(id(), "container.explode", json), good_body),
            _ => {
                let mut big = good_body;
                big.extend(std::iter::repeat_n(b' ', 8 * 1024));
                (props(id(), "container.create", json), big)
            }
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_poison_messages_are_each_stored_once_across_keeper_restarts_and_each_replays() {
    use pvefleet_core::bus::runner::{WorkerDeps, WorkerSpec, run_worker};
    // The in-process coordinator (and its keeper) stops: this test runs its own keeper.
    let mut f = fleet_without_provisioner(|_| {}).await;
    f.shutdown.cancel();
    for t in f.tasks.drain(..) {
        t.await.unwrap().unwrap();
    }
    let topology = pvefleet_core::bus::topology::Topology::fleet(&f.settings.bus);
    // A worker on the provisioner's queue, whose runner parks what it cannot read.
    let queue = pvefleet_contracts::routing::work_queue("provisioner");
    let spec = WorkerSpec {
        max_body_bytes: 4096,
        ..WorkerSpec::from_settings("provisioner", &queue, &f.settings)
    };
    let deps = WorkerDeps {
        bus: f.settings.bus.clone(),
        topology: topology.clone(),
        publisher: f.publisher.clone(),
        db: None,
        ready: None,
    };
    let router = pvefleet_core::bus::Router::new().command::<pvefleet_contracts::messages::ContainerCreate, _>(Accept);
    let worker_stop = CancellationToken::new();
    let worker = tokio::spawn(run_worker(deps, router, spec, worker_stop.clone()));
    let keeper = |stop: CancellationToken| {
        tokio::spawn(pvefleet_saga::keeper::run(
            f.settings.bus.clone(),
            topology.clone(),
            f.pool.clone(),
            None,
            stop,
        ))
    };
    let ch = f._vhost.probe().await.unwrap();
    const N: usize = 1000;
    let mut first = keeper(CancellationToken::new());
    let publish = async {
        for i in 0..N {
            let (props, body) = poison(i);
            pvefleet_testkit::broker::publish_raw(&ch, "pvefleet.commands", "container.create", props, &body)
                .await
                .unwrap();
        }
    };
    // Mid-stream, the keeper is killed (its task aborted, wherever it was), then a second one is
    // stopped; a third finishes.
    let fr = &f;
    let restarts = async {
        let at = |n: i64| {
            pvefleet_testkit::eventually(Duration::from_secs(120), move || async move {
                (dead_letters(fr).await >= n).then_some(())
            })
        };
        assert!(at(250).await.is_some(), "the first keeper stored some");
        first.abort();
        let _ = (&mut first).await;
        let stop = CancellationToken::new();
        let second = keeper(stop.clone());
        let before = dead_letters(fr).await;
        assert!(at(before + 250).await.is_some(), "the second keeper stored some");
        stop.cancel();
        second.await.unwrap();
        dead_letters(fr).await
    };
    let ((), at_second_stop) = tokio::join!(publish, restarts);
    assert!(
        at_second_stop < N as i64,
        "both restarts came mid-stream ({at_second_stop} of {N})"
    );
    let third_stop = CancellationToken::new();
    let third = keeper(third_stop.clone());
    let all = pvefleet_testkit::eventually(Duration::from_secs(180), || async {
        (dead_letters(&f).await >= N as i64).then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "every poison message stored: {} of {N}",
        dead_letters(&f).await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = f.db.client().await.unwrap();
    let row = c
        .query_one(
            "SELECT count(*), count(DISTINCT park_id), count(*) FILTER (WHERE message_id = ''),
                    count(DISTINCT fault_class)
             FROM dead_letters",
            &[],
        )
        .await
        .unwrap();
    let (rows, parks, without_id, classes): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(rows, N as i64, "exactly one row per poison message");
    assert_eq!(parks, N as i64);
    assert_eq!(
        without_id, 200,
        "the 100 with an empty and the 100 with no message_id are all kept"
    );
    assert!(classes >= 5, "{classes} fault classes");
    let parked_events: i64 = c
        .query_one("SELECT count(*) FROM outbox WHERE message_type = 'message.parked'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(parked_events, N as i64, "one message.parked per dead letter");

    // Each replays: back to its origin, where it is still poison and is parked again, as a new
    // dead letter of the next generation.
    let publisher = pvefleet_testkit::broker::fleet_publisher(&f.settings).await.unwrap();
    let replayed = pvefleet_core::dlq::replay(
        &c,
        &publisher,
        &pvefleet_core::dlq::Filter::default(),
        &"test".into(),
        false,
        None,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(replayed.replayed.len(), N, "skipped: {:?}", replayed.skipped.first());
    let again = pvefleet_testkit::eventually(Duration::from_secs(180), || async {
        let n: i64 = c
            .query_one("SELECT count(*) FROM dead_letters WHERE generation = 1", &[])
            .await
            .unwrap()
            .get(0);
        (n >= N as i64).then_some(n)
    })
    .await;
    assert_eq!(again, Some(N as i64), "every replay parked again, once");
    third_stop.cancel();
    third.await.unwrap();
    worker_stop.cancel();
    worker.await.unwrap().unwrap();
}

#[test]
fn the_binary_answers_help_and_version_and_starts_nothing() {
    let checked = pvefleet_testkit::cli::answers_help_and_version(env!("CARGO_BIN_EXE_pvefleet-saga"), "pvefleet-saga");
    assert_eq!(checked, Ok(()));
    assert_eq!(
        pvefleet_testkit::cli::refuses_arguments(env!("CARGO_BIN_EXE_pvefleet-saga")),
        Ok(())
    );
}

/// The container's memory and tags, as PVE has them now.
async fn memory_and_tags(f: &Fleet, node: &str, vmid: u32) -> (String, String) {
    let cfg = f.pve.lxc_config(node, vmid, true).await.unwrap();
    let s = |k: &str| {
        cfg.get(k)
            .map(|v| v.as_str().map_or(v.to_string(), str::to_string))
            .unwrap_or_default()
    };
    (s("memory"), s("tags"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_the_latest_backup_brings_back_the_config_the_site_had_and_re_applies_ha_and_tags() {
    let f = fleet().await;
    let req = request("restored", true);
    f.send(&req).await;
    assert_eq!(f.event().await.0, "site.provisioned");
    let (_, vmid, _, node, _) = f.site(req.site_id).await;
    let (vmid, node) = (vmid.unwrap() as u32, node.unwrap());
    let (memory, tags) = memory_and_tags(&f, &node, vmid).await;
    let volid = common::backed_up(&f.db, req.site_id, WAIT).await;
    // After the backup, the config changes (as an autoscaler would) and a tag goes.
    f.pve
        .lxc_set_config(
            &node,
            vmid,
            pvefleet_proxmox::client::Params::new()
                .set("memory", 4096)
                .set("tags", "pvefleet"),
            None,
        )
        .await
        .unwrap();
    let saga = common::restore(&f.db, req.site_id, None).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.restored", "{body}");
    assert_eq!(body["volid"], volid.as_str(), "the latest backup is the one restored");
    let steps = f.steps(saga).await;
    assert_eq!(
        steps,
        [
            "backup.create/forward/done",
            "ha.disable/forward/done",
            "backup.restore/forward/done",
            "container.start/forward/done",
            "ha.enable/forward/done",
        ]
    );
    let (_, _, _, node_now, _) = f.site(req.site_id).await;
    let node = node_now.unwrap();
    let (memory_now, tags_now) = memory_and_tags(&f, &node, vmid).await;
    assert_eq!(memory_now, memory, "the memory the backup holds is back");
    assert!(
        tags_now.contains("site-restored"),
        "the fleet's tags are back: {tags_now} (were {tags})"
    );
    assert!(!tags_now.contains("pvefleet-hold"), "{tags_now}");
    assert_eq!(f.pve.lxc_status(&node, vmid).await.unwrap().status, "running");
    assert_eq!(f.pve.ha_resources().await.unwrap().len(), 1, "HA manages it again");
    assert_eq!(f.site(req.site_id).await.0, "active");
    // The state before the restore was kept, and the restore audited.
    let c = f.db.client().await.unwrap();
    let kinds: Vec<String> = c
        .query(
            "SELECT kind FROM backups WHERE site_id = $1 AND state = 'ok' ORDER BY created_at",
            &[&req.site_id.as_uuid()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds, ["on_demand", "pre_restore"]);
    let audited: i64 = c
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action = 'backup.restore' AND outcome = 'ok' AND target = $1",
            &[&req.site_id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
    // The latest again is the same backup: the one taken before the restore is no candidate.
    common::restore(&f.db, req.site_id, None).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.restored", "{body}");
    assert_eq!(body["volid"], volid.as_str());
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_whose_start_fails_leaves_the_site_as_it_was_before_the_restore() {
    let f = fleet().await;
    let req = request("putback", false);
    f.send(&req).await;
    assert_eq!(f.event().await.0, "site.provisioned");
    let (_, vmid, _, node, _) = f.site(req.site_id).await;
    let (vmid, node) = (vmid.unwrap() as u32, node.unwrap());
    let volid = common::backed_up(&f.db, req.site_id, WAIT).await;
    // The site as it is before the restore: changed since its backup.
    f.pve
        .lxc_set_config(
            &node,
            vmid,
            pvefleet_proxmox::client::Params::new().set("memory", 3072),
            None,
        )
        .await
        .unwrap();
    let before = memory_and_tags(&f, &node, vmid).await;
    f.sim.lock_task_error("vzstart", "startup for container failed");
    let saga = common::restore(&f.db, req.site_id, Some(&volid)).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.restore_failed", "{body}");
    assert_eq!(body["failed_step"], "container.start");
    let compensated: Vec<String> = f
        .timeline(saga)
        .await
        .into_iter()
        .filter(|(_, phase, _)| phase == "compensate")
        .map(|(n, _, s)| format!("{n}/{s}"))
        .collect();
    assert_eq!(compensated, ["backup.restore/done"], "the pre-restore backup went back");
    let (state, _, _, node_now, _) = f.site(req.site_id).await;
    assert_eq!(state, "active");
    let node = node_now.unwrap();
    assert_eq!(
        memory_and_tags(&f, &node, vmid).await,
        before,
        "the config is as before the restore"
    );
    assert_eq!(
        f.pve.lxc_status(&node, vmid).await.unwrap().status,
        "running",
        "and it runs again"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_site_is_restored_from_its_final_backup_with_its_dns_record_and_route() {
    use pvefleet_testkit::edge::{Caddy, PowerDns};
    let pdns = PowerDns::start("sites.test").await.unwrap();
    let caddy = Caddy::start().await.unwrap();
    let f = fleet_with(|s| {
        to_edge(&pdns, &caddy, s);
    })
    .await;
    let req = request("phoenix", false);
    f.send(&req).await;
    assert_eq!(f.event().await.0, "site.provisioned");
    let (_, old_vmid, _, _, _) = f.site(req.site_id).await;
    f.send(&SiteDeprovision { site_id: req.site_id }).await;
    assert_eq!(f.event().await.0, "site.deprovisioned");
    assert!(pdns.query_a("phoenix.sites.test").unwrap().is_empty());
    assert!(caddy.routes().await.unwrap().is_empty());
    assert_eq!(f.leases(req.site_id).await, 0);
    let saga = common::restore(&f.db, req.site_id, None).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.restored", "{body}");
    let (state, vmid, ip, node, _) = f.site(req.site_id).await;
    assert_eq!(state, "active");
    let (vmid, ip, node) = (vmid.unwrap() as u32, ip.unwrap(), node.unwrap());
    assert_eq!(f.leases(req.site_id).await, 2, "a vmid and an address are leased again");
    let address: std::net::Ipv4Addr = ip.split('/').next().unwrap().parse().unwrap();
    assert_eq!(
        pdns.query_a("phoenix.sites.test").unwrap(),
        vec![address],
        "the record is back"
    );
    let routes = caddy.routes().await.unwrap();
    assert_eq!(routes.len(), 1, "the route is back");
    assert!(routes[0].to_string().contains(&format!("{address}:80")), "{routes:?}");
    let cfg = f.pve.lxc_config(&node, vmid, true).await.unwrap();
    assert_eq!(cfg["hostname"], "phoenix", "the archive's config");
    assert!(cfg["net0"].as_str().unwrap().contains(&format!("ip={ip}")), "{cfg:?}");
    assert!(cfg["tags"].as_str().unwrap().contains("site-phoenix"), "{cfg:?}");
    assert_eq!(f.pve.lxc_status(&node, vmid).await.unwrap().status, "running");
    let steps: Vec<String> = f.timeline(saga).await.into_iter().map(|(n, ..)| n).collect();
    assert_eq!(
        steps,
        ["backup.restore", "container.start", "dns.upsert", "proxy.upsert"],
        "no pre-restore backup of a container that is gone (old vmid {old_vmid:?})"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_whose_container_is_already_gone_is_removed_without_a_final_backup() {
    let f = fleet().await;
    let req = request("vanished", false);
    f.send(&req).await;
    assert_eq!(f.event().await.0, "site.provisioned");
    let (_, vmid, _, node, _) = f.site(req.site_id).await;
    // Removed by hand behind the fleet's back.
    f.pve
        .lxc_destroy(&node.unwrap(), vmid.unwrap() as u32, true, true)
        .await
        .unwrap();
    f.send(&SiteDeprovision { site_id: req.site_id }).await;
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.deprovisioned", "{body}");
    assert_eq!(f.site(req.site_id).await.0, "deleted");
    let saga = f.saga_of(req.site_id, "deprovision").await;
    let steps = f.steps(saga).await;
    assert_eq!(
        steps,
        ["backup.create/forward/failed", "container.destroy/forward/done"],
        "nothing to back up, and the removal went on"
    );
    assert!(f.sim.backups().is_empty(), "no backup was written");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_is_restored_beside_its_site_as_a_new_site_and_leaves_the_site_untouched() {
    use pvefleet_testkit::edge::{Caddy, PowerDns};
    let pdns = PowerDns::start("sites.test").await.unwrap();
    let caddy = Caddy::start().await.unwrap();
    let f = fleet_with(|s| {
        to_edge(&pdns, &caddy, s);
    })
    .await;
    let req = request("twin", false);
    f.send(&req).await;
    assert_eq!(f.event().await.0, "site.provisioned");
    let (_, vmid, ip, node, _) = f.site(req.site_id).await;
    let (vmid, ip, node) = (vmid.unwrap() as u32, ip.unwrap(), node.unwrap());
    // The MAC address PVE gave the interface at creation (pvesim leaves it to the caller).
    let net0 = f.pve.lxc_config(&node, vmid, true).await.unwrap()["net0"]
        .as_str()
        .unwrap()
        .to_string();
    let params = pvefleet_proxmox::client::Params::new().set("net0", format!("{net0},hwaddr=BC:24:11:00:00:01"));
    f.pve.lxc_set_config(&node, vmid, params, None).await.unwrap();
    let volid = common::backed_up(&f.db, req.site_id, Duration::from_secs(20)).await;
    let before = f.pve.lxc_config(&node, vmid, true).await.unwrap();

    let mut c = f.db.client().await.unwrap();
    let actor = pvefleet_core::audit::Actor::cli();
    let (saga, clone) = pvefleet_backup::ops::clone_site(&mut c, &actor, req.site_id.as_uuid(), Some(&volid), None, 20)
        .await
        .unwrap();
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.restored", "{body}");
    let clone_id = SiteId(clone);
    let (state, cvmid, cip, cnode, _) = f.site(clone_id).await;
    assert_eq!(state, "active");
    let (cvmid, cip, cnode) = (cvmid.unwrap() as u32, cip.unwrap(), cnode.unwrap());
    assert_ne!(cvmid, vmid, "a container of its own");
    assert_ne!(cip, ip, "an address of its own");
    let cfg = f.pve.lxc_config(&cnode, cvmid, true).await.unwrap();
    assert_eq!(cfg["hostname"], "twin-clone", "its own hostname");
    let description = cfg["description"].as_str().unwrap_or_default();
    assert!(
        description.lines().any(|l| l == clone_id.marker()) && !description.contains(&req.site_id.marker()),
        "marked as the clone's, so its own saga may remove it: {description:?}"
    );
    let tags = cfg["tags"].as_str().unwrap();
    assert!(
        tags.contains("site-twin-clone") && !tags.split(';').any(|t| t == "site-twin"),
        "{tags}"
    );
    let mac = |c: &serde_json::Map<String, serde_json::Value>| {
        let net0 = c["net0"].as_str().unwrap().to_string();
        net0.split(',').find(|p| p.starts_with("hwaddr=")).map(str::to_string)
    };
    assert!(mac(&before).is_some(), "{before:?}");
    assert_ne!(mac(&cfg), mac(&before), "new MAC addresses beside the original");
    assert_eq!(f.pve.lxc_status(&cnode, cvmid).await.unwrap().status, "running");
    // Both sites resolve and route, each to its own container.
    let addr = |ip: &str| ip.split('/').next().unwrap().parse::<std::net::Ipv4Addr>().unwrap();
    assert_eq!(pdns.query_a("twin-clone.sites.test").unwrap(), vec![addr(&cip)]);
    assert_eq!(pdns.query_a("twin.sites.test").unwrap(), vec![addr(&ip)]);
    assert_eq!(caddy.routes().await.unwrap().len(), 2);
    // The original is untouched: same config, running, active, nothing restored over it.
    assert_eq!(f.site(req.site_id).await.0, "active");
    let after = f.pve.lxc_config(&node, vmid, true).await.unwrap();
    assert_eq!(after.get("hostname"), before.get("hostname"));
    assert_eq!(after.get("net0"), before.get("net0"));
    assert_eq!(f.pve.lxc_status(&node, vmid).await.unwrap().status, "running");
    let steps: Vec<String> = f.timeline(saga).await.into_iter().map(|(n, ..)| n).collect();
    assert_eq!(
        steps,
        ["backup.restore", "container.start", "dns.upsert", "proxy.upsert"]
    );
    // The subdomain is now taken: a second clone under it is refused before anything starts.
    assert!(matches!(
        pvefleet_backup::ops::clone_site(&mut c, &actor, req.site_id.as_uuid(), None, None, 20).await,
        Err(pvefleet_backup::ops::OpsError::Conflict(_))
    ));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_whose_start_fails_ends_failed_holding_nothing_and_the_site_runs_on() {
    let f = fleet().await;
    let req = request("solo", false);
    f.send(&req).await;
    assert_eq!(f.event().await.0, "site.provisioned");
    let (_, vmid, _, node, _) = f.site(req.site_id).await;
    let (vmid, node) = (vmid.unwrap() as u32, node.unwrap());
    let volid = common::backed_up(&f.db, req.site_id, WAIT).await;
    f.sim.lock_task_error("vzstart", "startup for container failed");
    let mut c = f.db.client().await.unwrap();
    let actor = pvefleet_core::audit::Actor::cli();
    let (saga, clone) = pvefleet_backup::ops::clone_site(
        &mut c,
        &actor,
        req.site_id.as_uuid(),
        Some(&volid),
        Some("solo-try"),
        20,
    )
    .await
    .unwrap();
    let (kind, body) = f.event().await;
    assert_eq!(kind, "site.restore_failed", "{body}");
    assert_eq!(body["failed_step"], "container.start");
    let compensated: Vec<String> = f
        .timeline(saga)
        .await
        .into_iter()
        .filter(|(_, phase, _)| phase == "compensate")
        .map(|(n, _, s)| format!("{n}/{s}"))
        .collect();
    assert_eq!(compensated, ["container.destroy/done"], "what was made is destroyed");
    let clone = SiteId(clone);
    assert_eq!(f.site(clone).await.0, "failed");
    assert_eq!(f.leases(clone).await, 0, "its vmid and address are given back");
    let guests: Vec<u64> = f
        .pve
        .resources(Some(pvefleet_proxmox::client::api::ResourceType::Vm))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|g| g.vmid)
        .collect();
    assert_eq!(guests, [u64::from(vmid)], "only the site's own container is left");
    assert_eq!(f.site(req.site_id).await.0, "active");
    assert_eq!(f.pve.lxc_status(&node, vmid).await.unwrap().status, "running");
    // The subdomain is free again for another try.
    let again = pvefleet_backup::ops::clone_site(
        &mut c,
        &actor,
        req.site_id.as_uuid(),
        Some(&volid),
        Some("solo-try"),
        20,
    )
    .await;
    assert!(again.is_ok(), "{again:?}");
    f.stop().await;
}
