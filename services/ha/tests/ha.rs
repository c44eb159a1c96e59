//! The ha service in-process against the real RabbitMQ (its own vhost) and pvesim in PVE 9 and
//! PVE 8 modes: commands through the bus, events read back, effects checked through the client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pvefleet_contracts::ids::SiteId;
use pvefleet_contracts::messages::{HaDisable, HaEnable};
use pvefleet_contracts::{Message, Vmid};
use pvefleet_core::Settings;
use pvefleet_core::bus::Publisher;
use pvefleet_proxmox::client::{Params, PveClient};
use pvefleet_pvesim::{Sim, SimConfig};
use pvefleet_testkit::{TestDb, TestVhost, init_tracing, settings};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";

struct Rig {
    _vhost: TestVhost,
    _db: TestDb,
    pool: deadpool_postgres::Pool,
    sim: Sim,
    settings: Settings,
    pve: PveClient,
    publisher: Publisher,
    events: (pvefleet_core::bus::probe::Probe, String),
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn rig(version: &str) -> Rig {
    init_tracing();
    let vhost = TestVhost::new().unwrap();
    let db = TestDb::create().await.unwrap();
    let mut s = settings(&vhost, Some(&db));
    let (sim, addr) = Sim::spawn(SimConfig {
        version: version.into(),
        token: Some(("fleet@pve!ha".into(), "s3cret".into())),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    s.pve.url = format!("http://{addr}");
    s.pve.token_id = Some("fleet@pve!ha".into());
    s.pve.token_secret = Some(pvefleet_core::Secret::new("s3cret"));
    s.ha.nodes = vec!["pve1:2".into(), "pve2".into()];
    s.ha.reconcile_interval = Duration::from_secs(3600);
    let pve = pvefleet_core::pve::client(&s.pve).unwrap();
    let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
    pvefleet_core::db::migrate(&pool).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (s, pool) = (s.clone(), pool.clone());
        let shutdown = shutdown.clone();
        async move { pvefleet_ha::run(&s, Some(pool), None, shutdown).await }
    });
    let publisher = pvefleet_testkit::broker::fleet_publisher(&s).await.unwrap();
    let ch = vhost.probe().await.unwrap();
    let q = pvefleet_testkit::broker::event_queue(&ch, &["ha.*"]).await.unwrap();
    Rig {
        _vhost: vhost,
        _db: db,
        pool,
        sim,
        settings: s,
        pve,
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

    async fn container(&self, vmid: u32) {
        let params = Params::new()
            .set("vmid", vmid)
            .set("ostemplate", TEMPLATE)
            .set("hostname", "blog")
            .set("tags", "pvefleet");
        self.pve.lxc_create("pve1", params).await.unwrap();
    }

    async fn tags(&self, vmid: u32) -> String {
        let config = self.pve.lxc_config("pve1", vmid, true).await.unwrap();
        config
            .get("tags")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pve9_enable_adds_the_resource_a_node_affinity_rule_and_the_tag_and_disable_removes_them() {
    let r = rig("9.1.3").await;
    r.container(400).await;
    let site = SiteId::new();
    let enable = HaEnable {
        site_id: site,
        vmid: Vmid(400),
        group: None,
    };
    r.send(&enable).await;
    assert_eq!(r.event().await.0, "ha.enabled");
    let res = r.pve.ha_resource("ct:400").await.unwrap();
    assert_eq!(
        (res.state.as_deref(), res.max_restart, res.max_relocate),
        (Some("started"), Some(3), Some(2))
    );
    let rules = r.pve.ha_rules().await.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        (rules[0].rule.as_str(), rules[0].nodes.as_deref()),
        ("pvefleet-400", Some("pve1:2,pve2"))
    );
    assert_eq!(r.tags(400).await, "pvefleet;pvefleet-ha");

    r.send(&enable).await;
    assert_eq!(r.event().await.0, "ha.enabled", "enabling twice is success");
    assert_eq!(r.pve.ha_rules().await.unwrap().len(), 1, "one rule still");

    let disable = HaDisable {
        site_id: site,
        vmid: Vmid(400),
    };
    r.send(&disable).await;
    assert_eq!(r.event().await.0, "ha.disabled");
    assert!(r.pve.ha_resources().await.unwrap().is_empty());
    assert!(r.pve.ha_rules().await.unwrap().is_empty());
    assert_eq!(r.tags(400).await, "pvefleet");
    r.send(&disable).await;
    assert_eq!(r.event().await.0, "ha.disabled", "absence is success");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pve8_enable_places_the_resource_in_a_group_made_from_the_configured_nodes() {
    let r = rig("8.4.1").await;
    r.container(401).await;
    r.send(&HaEnable {
        site_id: SiteId::new(),
        vmid: Vmid(401),
        group: None,
    })
    .await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "ha.enabled", "{body}");
    let groups = r.pve.ha_groups().await.unwrap();
    assert_eq!(
        (groups[0].group.as_str(), groups[0].nodes.as_deref()),
        ("pvefleet", Some("pve1:2,pve2"))
    );
    assert_eq!(
        r.pve.ha_resource("ct:401").await.unwrap().group.as_deref(),
        Some("pvefleet")
    );
    // A group the command names that does not exist yet is made from the configured nodes.
    r.send(&HaEnable {
        site_id: SiteId::new(),
        vmid: Vmid(401),
        group: Some("nope".into()),
    })
    .await;
    let (kind, _) = r.event().await;
    assert_eq!(kind, "ha.enabled");
    assert_eq!(
        r.pve.ha_resource("ct:401").await.unwrap().group.as_deref(),
        Some("nope")
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_restores_a_missing_resource_and_a_wrong_state() {
    let r = rig("9.1.3").await;
    r.container(402).await;
    r.container(403).await;
    r.send(&HaEnable {
        site_id: SiteId::new(),
        vmid: Vmid(402),
        group: None,
    })
    .await;
    assert_eq!(r.event().await.0, "ha.enabled");
    r.send(&HaEnable {
        site_id: SiteId::new(),
        vmid: Vmid(403),
        group: None,
    })
    .await;
    assert_eq!(r.event().await.0, "ha.enabled");
    // Drift: someone removed one resource by hand and stopped the other.
    r.pve.ha_resource_delete("ct:402", Some(true)).await.unwrap();
    let res = r.pve.ha_resource("ct:403").await.unwrap();
    r.pve
        .ha_resource_update(
            "ct:403",
            &pvefleet_proxmox::client::ha::HaResourceSpec {
                state: Some("stopped".into()),
                ..Default::default()
            },
            res.digest.as_deref(),
        )
        .await
        .unwrap();
    let ha = pvefleet_ha::Ha::new(r.pve.clone(), r.settings.ha.clone());
    let repaired = ha.reconcile().await.unwrap();
    assert_eq!((repaired.added, repaired.restarted), (1, 1));
    assert_eq!(
        r.pve.ha_resource("ct:402").await.unwrap().state.as_deref(),
        Some("started")
    );
    assert_eq!(
        r.pve.ha_resource("ct:403").await.unwrap().state.as_deref(),
        Some("started")
    );
    assert_eq!(
        ha.reconcile().await.unwrap(),
        pvefleet_ha::Repaired::default(),
        "nothing left to repair"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_starts_a_stopped_fleet_container_and_gives_up_on_a_loop_with_an_alert() {
    let r = rig("9.1.3").await;
    let (_c, ch) = (&r.events.0, &r.events.0);
    let alerts = pvefleet_testkit::broker::event_queue(ch, &["resource.alert"])
        .await
        .unwrap();
    r.container(410).await; // tagged pvefleet, created stopped, not HA-managed
    r.container(411).await;
    r.pve
        .lxc_set_config("pve1", 411, Params::new().set("tags", "pvefleet;pvefleet-hold"), None)
        .await
        .unwrap();
    let mut s = r.settings.ha.clone();
    s.watchdog_max_restarts = 2;
    let ha = pvefleet_ha::Ha::build(r.pve.clone(), s, Some(r.publisher.clone()), Some(r.pool.clone()));
    let status = |vmid| {
        let pve = r.pve.clone();
        async move { pve.lxc_status("pve1", vmid).await.unwrap().status }
    };
    // It keeps stopping: started twice, then the watchdog gives up and alerts once.
    for round in 1..=2 {
        let repaired = ha.reconcile().await.unwrap();
        assert_eq!(repaired.started, 1, "round {round}");
        assert_eq!(status(410).await, "running");
        r.pve.lxc_stop("pve1", 410).await.unwrap();
    }
    let repaired = ha.reconcile().await.unwrap();
    assert_eq!((repaired.started, repaired.restart_loops), (0, 1));
    let (kind, body) = pvefleet_testkit::broker::next_json(ch, &alerts, WAIT)
        .await
        .unwrap()
        .expect("a restart_loop alert");
    assert_eq!(kind, "resource.alert");
    assert_eq!(
        (body["subject"].as_str(), body["kind"].as_str()),
        (Some("lxc/410"), Some("restart_loop"))
    );
    // It stops trying, and says so once.
    let repaired = ha.reconcile().await.unwrap();
    assert_eq!((repaired.started, repaired.restart_loops), (0, 0));
    assert_eq!(status(410).await, "stopped");
    assert_eq!(status(411).await, "stopped", "a container on hold is left alone");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_leaves_alone_a_container_a_saga_or_a_worker_is_acting_on() {
    let r = rig("9.1.3").await;
    let status = |vmid| {
        let pve = r.pve.clone();
        async move { pve.lxc_status("pve1", vmid).await.unwrap().status }
    };
    // 420: its site's provisioning saga is in flight. 421: a worker holds its vmid lock.
    // 422: locked in PVE (a backup, say). 423: nothing going on, so it is started.
    for vmid in 420..=423 {
        r.container(vmid).await;
    }
    let c = r.pool.get().await.unwrap();
    let (site, saga) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    c.execute(
        "INSERT INTO sites (id, subdomain, owner, state, spec, vmid) VALUES ($1, 'busy', 'o', 'active', '{}', 420)",
        &[&site],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO sagas (id, kind, site_id, state, data) VALUES ($1, 'deprovision', $2, 'running', '{}')",
        &[&saga, &site],
    )
    .await
    .unwrap();
    let held = pvefleet_core::db::VmidLock::acquire(&r.pool, 421, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(r.sim.set_lock(422, Some("backup")));
    let ha = pvefleet_ha::Ha::build(
        r.pve.clone(),
        r.settings.ha.clone(),
        Some(r.publisher.clone()),
        Some(r.pool.clone()),
    );
    let repaired = ha.reconcile().await.unwrap();
    assert_eq!(repaired.started, 1, "only the idle container is started");
    assert_eq!(status(423).await, "running");
    for vmid in [420, 421, 422] {
        assert_eq!(status(vmid).await, "stopped", "{vmid} is left alone");
    }
    // Once the saga has ended and the lock is free, the next pass starts them.
    c.execute("UPDATE sagas SET state = 'completed' WHERE id = $1", &[&saga])
        .await
        .unwrap();
    drop(held);
    assert!(r.sim.set_lock(422, None));
    let started = pvefleet_testkit::eventually(Duration::from_secs(10), || async {
        let _ = ha.reconcile().await.unwrap();
        let running = [status(420).await, status(421).await, status(422).await];
        running.iter().all(|s| s == "running").then_some(())
    })
    .await;
    assert!(started.is_some(), "started once nobody works on them");

    // Without a database the watchdog cannot know, and starts nothing.
    r.pve.lxc_stop("pve1", 423).await.unwrap();
    let blind = pvefleet_ha::Ha::build(r.pve.clone(), r.settings.ha.clone(), None, None);
    assert_eq!(blind.reconcile().await.unwrap().started, 0);
    assert_eq!(status(423).await, "stopped");
    r.stop().await;
}

#[test]
fn the_binary_answers_help_and_version_and_starts_nothing() {
    let checked = pvefleet_testkit::cli::answers_help_and_version(env!("CARGO_BIN_EXE_pvefleet-ha"), "pvefleet-ha");
    assert_eq!(checked, Ok(()));
    assert_eq!(
        pvefleet_testkit::cli::refuses_arguments(env!("CARGO_BIN_EXE_pvefleet-ha")),
        Ok(())
    );
}
