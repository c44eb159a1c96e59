//! The provisioner in-process against the real RabbitMQ (its own vhost), Postgres (its own
//! database, for the vmid locks) and pvesim: each command through the bus, each event read back
//! from the events exchange, each effect checked in pvesim's config text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pvefleet_contracts::ids::SiteId;
use pvefleet_contracts::messages::{ContainerCreate, ContainerDestroy, ContainerSnapshot, ContainerStart, NetSpec};
use pvefleet_contracts::{Message, Vmid};
use pvefleet_core::Settings;
use pvefleet_core::bus::Publisher;
use pvefleet_pvesim::{Fault, Sim, SimConfig};
use pvefleet_testkit::{TestDb, TestVhost, init_tracing, settings};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

struct Rig {
    _vhost: TestVhost,
    _db: TestDb,
    sim: Sim,
    settings: Settings,
    publisher: Publisher,
    events: (pvefleet_core::bus::probe::Probe, String),
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn rig() -> Rig {
    init_tracing();
    let vhost = TestVhost::new().unwrap();
    let db = TestDb::create().await.unwrap();
    let mut s = settings(&vhost, Some(&db));
    let (sim, addr) = Sim::spawn(SimConfig {
        token: Some(("fleet@pve!prov".into(), "s3cret".into())),
        task_duration: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    s.pve.url = format!("http://{addr}");
    s.pve.token_id = Some("fleet@pve!prov".into());
    s.pve.token_secret = Some(pvefleet_core::Secret::new("s3cret"));
    s.pve.task_timeout = Duration::from_secs(10);
    s.provisioner.nameserver = "10.10.0.1 1.1.1.1".into();
    s.provisioner.searchdomain = "lan".into();
    s.provisioner.shutdown_timeout = Duration::from_secs(5);
    let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let s = s.clone();
        let shutdown = shutdown.clone();
        async move { pvefleet_provisioner::run(&s, Some(pool), None, shutdown).await }
    });
    let publisher = pvefleet_testkit::broker::fleet_publisher(&s).await.unwrap();
    let ch = vhost.probe().await.unwrap();
    let q = pvefleet_testkit::broker::event_queue(&ch, &["container.*"])
        .await
        .unwrap();
    Rig {
        _vhost: vhost,
        _db: db,
        sim,
        settings: s,
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

    /// The next event: its type and body.
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

fn create(site: SiteId, vmid: u32, node: &str) -> ContainerCreate {
    ContainerCreate {
        site_id: site,
        vmid: Vmid(vmid),
        node: node.into(),
        hostname: "blog".into(),
        template: "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst".into(),
        storage: "local-lvm".into(),
        cores: 2,
        memory_mb: 1024,
        swap_mb: 512,
        disk_gb: 8,
        net: NetSpec {
            bridge: "vmbr0".into(),
            ip: "10.10.0.23/24".into(),
            gw: Some("10.10.0.1".into()),
            hwaddr: None,
            tag: None,
        },
        unprivileged: true,
        tags: vec!["site".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_snapshot_destroy_through_the_bus() {
    let r = rig().await;
    let site = SiteId::new();
    r.send(&create(site, 300, "")).await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "container.created", "{body}");
    let node = body["node"].as_str().unwrap().to_string();
    let text = r.sim.config_text(300).unwrap();
    for line in [
        "net0: bridge=vmbr0,gw=10.10.0.1,ip=10.10.0.23/24,name=eth0",
        "unprivileged: 1",
        "onboot: 1",
        "features: nesting=1",
        "nameserver: 10.10.0.1 1.1.1.1",
        "searchdomain: lan",
        "tags: pvefleet;site",
        "cores: 2",
        "memory: 1024",
        "swap: 512",
        &format!("#pvefleet-site: {site}"),
    ] {
        assert!(text.contains(line), "missing '{line}' in:\n{text}");
    }

    // A redelivered create is success, not a second container.
    r.send(&create(site, 300, "")).await;
    assert_eq!(r.event().await.0, "container.created");
    // A create for another site on a taken vmid fails the step.
    r.send(&create(SiteId::new(), 300, "")).await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "container.create_failed");
    assert_eq!(body["error"]["code"], "vmid.taken", "{body}");

    r.send(&ContainerStart {
        site_id: site,
        vmid: Vmid(300),
        node: None,
    })
    .await;
    let (kind, body) = r.event().await;
    assert_eq!(
        (kind.as_str(), body["node"].as_str()),
        ("container.started", Some(node.as_str()))
    );
    // A node hint that is wrong (HA moved the container) falls back to a cluster read.
    let elsewhere = if node == "pve1" { "pve2" } else { "pve1" };
    r.send(&ContainerStart {
        site_id: site,
        vmid: Vmid(300),
        node: Some(elsewhere.into()),
    })
    .await;
    assert_eq!(
        r.event().await.0,
        "container.started",
        "starting a running container is success"
    );

    let snap = ContainerSnapshot {
        site_id: site,
        vmid: Vmid(300),
        name: "initial".into(),
        description: Some("fresh".into()),
        node: Some(node.clone()),
    };
    r.send(&snap).await;
    assert_eq!(r.event().await.0, "container.snapshotted");
    r.send(&snap).await;
    assert_eq!(
        r.event().await.0,
        "container.snapshotted",
        "an existing snapshot is success"
    );
    assert!(r.sim.config_text(300).unwrap().contains("[initial]"));

    let destroy = ContainerDestroy {
        site_id: site,
        vmid: Vmid(300),
        purge: true,
    };
    r.send(&destroy).await;
    assert_eq!(r.event().await.0, "container.destroyed");
    assert!(r.sim.config_text(300).is_none(), "gone");
    r.send(&destroy).await;
    assert_eq!(
        r.event().await.0,
        "container.destroyed",
        "an absent container is success"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_fail_the_step_with_pves_message_and_transient_ones_retry() {
    let r = rig().await;
    let site = SiteId::new();
    // Permanent: a storage that does not exist; the task fails with PVE's message.
    r.sim.lock_task_error("vzcreate", "storage 'local-lvm' does not exist");
    r.send(&create(site, 301, "pve1")).await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "container.create_failed");
    assert_eq!(body["error"]["message"], "storage 'local-lvm' does not exist", "{body}");
    assert!(r.sim.config_text(301).is_none());

    // A missing template fails before any create.
    let mut bad = create(site, 302, "pve1");
    bad.template = "local:vztmpl/nope.tar.zst".into();
    r.send(&bad).await;
    let (kind, body) = r.event().await;
    assert_eq!(
        (kind.as_str(), body["error"]["code"].as_str()),
        ("container.create_failed", Some("template.missing"))
    );

    // Transient: two 596s and a lock, then success; one container.
    r.sim.inject(serde_json::from_value::<Fault>(serde_json::json!({ "path": "/nodes/pve1/lxc", "method": "POST", "status": 596, "message": "Connection timed out", "count": 2 })).unwrap());
    r.sim.inject(serde_json::from_value::<Fault>(serde_json::json!({ "path": "/cluster/resources", "status": 500, "message": "can't lock file '/var/lock/pve-manager/pve-cluster.lck' - got timeout", "count": 1 })).unwrap());
    r.send(&create(site, 303, "pve1")).await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "container.created", "{body}");
    assert!(r.sim.config_text(303).is_some());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_stops_a_container_that_will_not_shut_down_and_removes_ha_and_snapshots() {
    let r = rig().await;
    let site = SiteId::new();
    r.send(&create(site, 310, "pve2")).await;
    assert_eq!(r.event().await.0, "container.created");
    r.send(&ContainerStart {
        site_id: site,
        vmid: Vmid(310),
        node: Some("pve2".into()),
    })
    .await;
    assert_eq!(r.event().await.0, "container.started");
    r.send(&ContainerSnapshot {
        site_id: site,
        vmid: Vmid(310),
        name: "initial".into(),
        description: None,
        node: None,
    })
    .await;
    assert_eq!(r.event().await.0, "container.snapshotted");
    let pve = pvefleet_core::pve::client(&r.settings.pve).unwrap();
    pve.ha_resource_add("ct:310", &Default::default()).await.unwrap();
    r.sim.lock_task_error("vzshutdown", "shutdown timed out");
    r.send(&ContainerDestroy {
        site_id: site,
        vmid: Vmid(310),
        purge: true,
    })
    .await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "container.destroyed", "{body}");
    assert!(r.sim.config_text(310).is_none());
    assert!(pve.ha_resources().await.unwrap().is_empty(), "the HA resource is gone");
    r.stop().await;
}

#[test]
fn the_binary_answers_help_and_version_and_starts_nothing() {
    let checked = pvefleet_testkit::cli::answers_help_and_version(
        env!("CARGO_BIN_EXE_pvefleet-provisioner"),
        "pvefleet-provisioner",
    );
    assert_eq!(checked, Ok(()));
    assert_eq!(
        pvefleet_testkit::cli::refuses_arguments(env!("CARGO_BIN_EXE_pvefleet-provisioner")),
        Ok(())
    );
}
