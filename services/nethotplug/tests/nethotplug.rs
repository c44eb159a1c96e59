//! nethotplug in-process against the real RabbitMQ (its own vhost), Postgres (its own
//! database) and pvesim: each command through the bus, each event read back from the events
//! exchange, each effect checked in pvesim's config text and in the operation record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pvefleet_contracts::messages::{NetAttach, NetDetach, NetInterface, NetUpdate, VnetBind, VnetRemove, VnetUnbind};
use pvefleet_contracts::{Message, Vmid};
use pvefleet_core::bus::Publisher;
use pvefleet_core::config::IpPool;
use pvefleet_nethotplug::ops;
use pvefleet_proxmox::client::PveClient;
use pvefleet_proxmox::client::sdn::VnetSpec;
use pvefleet_pvesim::{Fault, Load, Sim, SimConfig};
use pvefleet_testkit::{TestDb, TestVhost, init_tracing, settings};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);
const CT: u32 = 200;

struct Rig {
    _vhost: TestVhost,
    _db: TestDb,
    sim: Sim,
    pool: deadpool_postgres::Pool,
    pve: PveClient,
    publisher: Publisher,
    events: (pvefleet_core::bus::probe::Probe, String),
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn pool(cidr: &str, gw: &str) -> IpPool {
    IpPool {
        cidr: cidr.into(),
        gateway: Some(gw.into()),
        first: None,
        last: None,
    }
}

async fn rig() -> Rig {
    init_tracing();
    let vhost = TestVhost::new().unwrap();
    let db = TestDb::create().await.unwrap();
    let mut s = settings(&vhost, Some(&db));
    let (sim, addr) = Sim::spawn(SimConfig {
        token: Some(("fleet@pve!net".into(), "s3cret".into())),
        record_requests: true,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.populate(CT, 1, Load::default());
    pvefleet_testkit::use_pvesim(&mut s, addr, "fleet@pve!net", "s3cret");
    s.pve.task_timeout = Duration::from_secs(10);
    s.nethotplug
        .pools
        .insert("vmbr0".into(), pool("10.20.0.0/24", "10.20.0.1"));
    s.nethotplug
        .pools
        .insert("web".into(), pool("10.30.0.0/24", "10.30.0.1"));
    let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
    pvefleet_core::db::migrate(&pool).await.unwrap();
    let pve = pvefleet_core::pve::client(&s.pve).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (s, pool, shutdown) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_nethotplug::run(&s, pool, None, shutdown).await }
    });
    let publisher = pvefleet_testkit::broker::fleet_publisher(&s).await.unwrap();
    let ch = vhost.probe().await.unwrap();
    let q = pvefleet_testkit::broker::event_queue(&ch, &["net.*", "vnet.*"])
        .await
        .unwrap();
    Rig {
        _vhost: vhost,
        _db: db,
        sim,
        pool,
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

    /// The next event of operation `op`: its type and body. Its correlation id is the
    /// operation's.
    async fn event_of(&self, op: Uuid) -> (String, Value) {
        loop {
            let d = pvefleet_testkit::broker::take(&self.events.0, &self.events.1, 1, WAIT)
                .await
                .unwrap()
                .into_iter()
                .next()
                .expect("an event arrives");
            let kind = d.properties.kind.clone().unwrap_or_default();
            let body: Value = serde_json::from_slice(&d.body).unwrap();
            if body["operation_id"] == op.to_string() {
                let correlation = d.properties.correlation_id.clone();
                assert_eq!(correlation, Some(op.to_string()), "{kind}: {body}");
                return (kind, body);
            }
        }
    }

    async fn op(&self, id: Uuid) -> ops::Operation {
        let client = self.pool.get().await.unwrap();
        ops::get(&client, id).await.unwrap().expect("the operation is recorded")
    }

    async fn leases(&self) -> Vec<(String, String, i32)> {
        let client = self.pool.get().await.unwrap();
        client
            .query("SELECT pool, ip, net_index FROM net_ip_leases ORDER BY ip", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    fn text(&self) -> String {
        self.sim.config_text(CT).unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn pooled(bridge: &str) -> NetInterface {
    NetInterface {
        bridge: Some(bridge.into()),
        ip: Some("pool".into()),
        ..NetInterface::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_writes_the_exact_line_and_detach_releases_the_lease() {
    let r = rig().await;
    let op = Uuid::now_v7();
    r.send(&NetAttach {
        operation_id: op,
        vmid: Vmid(CT),
        iface: NetInterface {
            tag: Some(20),
            firewall: Some(true),
            ..pooled("vmbr0")
        },
    })
    .await;
    let (kind, body) = r.event_of(op).await;
    assert_eq!(kind, "net.attached", "{body}");
    assert_eq!(body["status"], "live");
    assert_eq!(body["index"], 1, "net0 is taken: the lowest free index is 1");
    let line = body["line"].as_str().unwrap();
    let mac = line
        .split(',')
        .find_map(|kv| kv.strip_prefix("hwaddr="))
        .expect("a MAC is generated");
    assert!(mac.starts_with("BC:24:11:"), "{mac}");
    assert_eq!(
        line,
        format!("bridge=vmbr0,firewall=1,gw=10.20.0.1,hwaddr={mac},ip=10.20.0.2/24,name=eth1,tag=20,type=veth")
    );
    let text = r.text();
    assert!(text.lines().any(|l| l == format!("net1: {line}")), "{text}");
    let rec = r.op(op).await;
    assert_eq!(rec.status, "succeeded");
    assert_eq!(rec.net_index, Some(1));
    assert!(rec.finished_at.is_some());
    assert_eq!(r.leases().await, vec![("vmbr0".into(), "10.20.0.2".into(), 1)]);

    // A second pooled interface gets the next address.
    let op2 = Uuid::now_v7();
    r.send(&NetAttach {
        operation_id: op2,
        vmid: Vmid(CT),
        iface: pooled("vmbr0"),
    })
    .await;
    let (kind, body) = r.event_of(op2).await;
    assert_eq!(kind, "net.attached", "{body}");
    assert!(body["line"].as_str().unwrap().contains("ip=10.20.0.3/24"), "{body}");

    let detach = Uuid::now_v7();
    r.send(&NetDetach {
        operation_id: detach,
        vmid: Vmid(CT),
        index: 1,
    })
    .await;
    let (kind, body) = r.event_of(detach).await;
    assert_eq!(kind, "net.detached", "{body}");
    assert_eq!(body["status"], "live");
    let text = r.text();
    assert!(!text.contains("net1:"), "{text}");
    assert!(text.contains("net2:"), "{text}");
    assert_eq!(r.op(detach).await.status, "succeeded");
    assert_eq!(
        r.leases().await,
        vec![("vmbr0".into(), "10.20.0.3".into(), 2)],
        "net1's address is released, net2's kept"
    );
    let client = r.pool.get().await.unwrap();
    let stats = ops::stats(&client).await.unwrap();
    assert!(
        stats.contains(&("net.attached".into(), "succeeded".into(), 2)),
        "{stats:?}"
    );
    assert!(
        stats.contains(&("net.detached".into(), "succeeded".into(), 1)),
        "{stats:?}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_option_pve_cannot_hotplug_ends_pending_reboot_with_its_keys() {
    let r = rig().await;
    let attach = Uuid::now_v7();
    r.send(&NetAttach {
        operation_id: attach,
        vmid: Vmid(CT),
        iface: NetInterface {
            index: Some(3),
            bridge: Some("vmbr1".into()),
            ip: Some("dhcp".into()),
            ..NetInterface::default()
        },
    })
    .await;
    assert_eq!(r.event_of(attach).await.0, "net.attached");
    // MTU has no live update path: PVE keeps it pending until a restart.
    let update = Uuid::now_v7();
    r.send(&NetUpdate {
        operation_id: update,
        vmid: Vmid(CT),
        index: 3,
        changes: NetInterface {
            mtu: Some(1400),
            ..NetInterface::default()
        },
    })
    .await;
    let (kind, body) = r.event_of(update).await;
    assert_eq!(kind, "net.updated", "{body}");
    assert_eq!(body["status"], "pending_reboot");
    assert_eq!(body["pending"], serde_json::json!(["net3"]));
    let rec = r.op(update).await;
    assert_eq!(rec.status, "pending_reboot");
    assert_eq!(rec.pending_keys, vec!["net3".to_string()]);
    let text = r.text();
    assert!(text.contains("[pve:pending]"), "{text}");
    assert!(text.contains("mtu=1400"), "{text}");

    // An interface with a pending change is still detached (live: a one-digit index).
    let detach = Uuid::now_v7();
    r.send(&NetDetach {
        operation_id: detach,
        vmid: Vmid(CT),
        index: 3,
    })
    .await;
    let (kind, body) = r.event_of(detach).await;
    assert_eq!(kind, "net.detached", "{body}");
    assert_eq!(body["status"], "live", "{body}");
    let text = r.text();
    assert!(!text.contains("net3"), "{text}");

    // net10 and up are deleted only at a restart: the lease is kept until then, and the
    // next attach after the restart frees it.
    let high = Uuid::now_v7();
    r.send(&NetAttach {
        operation_id: high,
        vmid: Vmid(CT),
        iface: NetInterface {
            index: Some(12),
            ..pooled("vmbr0")
        },
    })
    .await;
    assert_eq!(r.event_of(high).await.0, "net.attached");
    let gone = Uuid::now_v7();
    r.send(&NetDetach {
        operation_id: gone,
        vmid: Vmid(CT),
        index: 12,
    })
    .await;
    let (kind, body) = r.event_of(gone).await;
    assert_eq!(kind, "net.detached", "{body}");
    assert_eq!(body["status"], "pending_reboot", "{body}");
    assert_eq!(r.leases().await.len(), 1, "kept while net12 still runs");
    r.pve.lxc_reboot("pve1", CT, None).await.unwrap();
    assert!(!r.text().contains("net12"), "{}", r.text());
    let after = Uuid::now_v7();
    r.send(&NetAttach {
        operation_id: after,
        vmid: Vmid(CT),
        iface: NetInterface {
            bridge: Some("vmbr1".into()),
            ..NetInterface::default()
        },
    })
    .await;
    assert_eq!(r.event_of(after).await.0, "net.attached");
    assert!(r.leases().await.is_empty(), "net12's address is free again");

    // A rate change is applied live.
    let rate = Uuid::now_v7();
    r.send(&NetUpdate {
        operation_id: rate,
        vmid: Vmid(CT),
        index: 0,
        changes: NetInterface {
            rate: Some(50.0),
            ..NetInterface::default()
        },
    })
    .await;
    let (kind, body) = r.event_of(rate).await;
    assert_eq!(kind, "net.updated", "{body}");
    assert_eq!(body["status"], "live");
    assert!(
        r.text()
            .lines()
            .any(|l| l.starts_with("net0: ") && l.contains("rate=50"))
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hotplug_fails_with_pves_message_and_leaves_nothing_pending() {
    let r = rig().await;
    // A VNet that is not applied anywhere: PVE writes the change to pending, fails to plug
    // it, and answers "unable to hotplug".
    let op = Uuid::now_v7();
    r.send(&NetAttach {
        operation_id: op,
        vmid: Vmid(CT),
        iface: NetInterface {
            vnet: Some("ghost".into()),
            ..NetInterface::default()
        },
    })
    .await;
    let (kind, body) = r.event_of(op).await;
    assert_eq!(kind, "net.operation_failed", "{body}");
    assert_eq!(body["error"]["code"], "proxmox.hotplug");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unable to hotplug net1: bridge 'ghost' does not exist"),
        "{body}"
    );
    let rec = r.op(op).await;
    assert_eq!(rec.status, "failed");
    assert!(
        !r.text().contains("net1"),
        "the refused change is reverted, not left pending:\n{}",
        r.text()
    );
    let client = r.pool.get().await.unwrap();
    let macs: i64 = client
        .query_one("SELECT count(*) FROM net_macs WHERE net_index = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(macs, 0, "the MAC held for it is released");
    drop(client);

    // A MAC another interface has is refused.
    let net0_mac = format!("BC:24:11:00:00:{:02X}", CT & 0xff);
    assert!(r.text().contains(&net0_mac), "{}", r.text());
    let dup = Uuid::now_v7();
    r.send(&NetAttach {
        operation_id: dup,
        vmid: Vmid(CT),
        iface: NetInterface {
            bridge: Some("vmbr0".into()),
            hwaddr: Some(net0_mac.to_lowercase()),
            ..NetInterface::default()
        },
    })
    .await;
    let (kind, body) = r.event_of(dup).await;
    assert_eq!(kind, "net.operation_failed", "{body}");
    assert_eq!(body["error"]["code"], "hwaddr.taken", "{body}");
    assert!(!r.text().contains("net1"), "{}", r.text());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_attach_does_not_add_a_second_interface() {
    let r = rig().await;
    let op = Uuid::now_v7();
    let cmd = NetAttach {
        operation_id: op,
        vmid: Vmid(CT),
        iface: pooled("vmbr0"),
    };
    r.send(&cmd).await;
    let (kind, first) = r.event_of(op).await;
    assert_eq!(kind, "net.attached");
    // The same command again: its event again, from the record.
    r.send(&cmd).await;
    let (kind, second) = r.event_of(op).await;
    assert_eq!(kind, "net.attached");
    assert_eq!(first["line"], second["line"]);
    // A worker that died after the write but before recording the end: the interface with
    // the planned MAC is recognised as its own.
    let client = r.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE net_operations SET status = 'running', finished_at = NULL WHERE id = $1",
            &[&op],
        )
        .await
        .unwrap();
    r.send(&cmd).await;
    let (kind, third) = r.event_of(op).await;
    assert_eq!(kind, "net.attached", "{third}");
    assert_eq!(first["line"], third["line"]);
    let text = r.text();
    let nets = text.lines().filter(|l| l.starts_with("net")).count();
    assert_eq!(nets, 2, "net0 and one new interface:\n{text}");
    assert_eq!(r.leases().await.len(), 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_to_an_unapplied_vnet_applies_it_first_then_unbinds() {
    let r = rig().await;
    r.pve
        .vnet_create(
            "web",
            &VnetSpec {
                zone: "fleet".into(),
                ..VnetSpec::default()
            },
        )
        .await
        .unwrap();
    let vnets = r.pve.vnets().await.unwrap();
    assert_eq!(vnets[0].state.as_deref(), Some("new"), "pending until applied");
    let op = Uuid::now_v7();
    r.send(&VnetBind {
        operation_id: op,
        vnet: "web".into(),
        vmid: Vmid(CT),
        iface: NetInterface {
            ip: Some("pool".into()),
            ..NetInterface::default()
        },
    })
    .await;
    let (kind, body) = r.event_of(op).await;
    assert_eq!(kind, "vnet.bound", "{body}");
    assert_eq!(body["vnet"], "web");
    assert!(body["line"].as_str().unwrap().contains("bridge=web,"), "{body}");
    assert!(body["line"].as_str().unwrap().contains("ip=10.30.0.2/24"), "{body}");
    assert_eq!(r.pve.vnets().await.unwrap()[0].state, None, "applied");
    let rec = r.op(op).await;
    assert_eq!(rec.result, Some(serde_json::json!({ "applied_sdn": true })));
    let client = r.pool.get().await.unwrap();
    let view = pvefleet_nethotplug::view::vnet_containers(&r.pve, &client, "web")
        .await
        .unwrap();
    assert_eq!(view["containers"][0]["state"], "bound", "{view}");
    assert_eq!(view["containers"][0]["vmid"], CT);

    // A VNet a container uses is never removed (the saga's compensation asks only for one it
    // created; this guards against one used meanwhile).
    let remove = Uuid::now_v7();
    r.send(&VnetRemove {
        operation_id: remove,
        vnet: "web".into(),
    })
    .await;
    let (kind, body) = r.event_of(remove).await;
    assert_eq!(kind, "net.operation_failed", "{body}");
    assert_eq!(body["error"]["code"], "vnet.in_use", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{CT}/net1")),
        "{body}"
    );
    assert!(
        r.pve
            .vnets()
            .await
            .unwrap()
            .iter()
            .any(|v| v.vnet == "web" && v.state.is_none())
    );

    let unbind = Uuid::now_v7();
    r.send(&VnetUnbind {
        operation_id: unbind,
        vnet: "web".into(),
        vmid: Vmid(CT),
        index: None,
    })
    .await;
    let (kind, body) = r.event_of(unbind).await;
    assert_eq!(kind, "vnet.unbound", "{body}");
    assert!(!r.text().contains("bridge=web"));
    let bound: i64 = client
        .query_one("SELECT count(*) FROM vnet_bindings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bound, 0);
    assert!(r.leases().await.is_empty());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_apply_on_one_node_is_reported_by_name() {
    let r = rig().await;
    r.sim.fail_sdn_on("pve2");
    r.pve
        .vnet_create(
            "db",
            &VnetSpec {
                zone: "fleet".into(),
                ..VnetSpec::default()
            },
        )
        .await
        .unwrap();
    let op = Uuid::now_v7();
    r.send(&VnetBind {
        operation_id: op,
        vnet: "db".into(),
        vmid: Vmid(CT),
        iface: NetInterface::default(),
    })
    .await;
    let (kind, body) = r.event_of(op).await;
    assert_eq!(kind, "net.operation_failed", "{body}");
    assert_eq!(body["nodes"], serde_json::json!(["pve2"]));
    assert!(body["error"]["message"].as_str().unwrap().contains("pve2"), "{body}");
    let rec = r.op(op).await;
    assert_eq!(rec.status, "failed");
    assert_eq!(rec.failed_nodes, vec!["pve2".to_string()]);
    assert!(!r.text().contains("bridge=db"), "nothing is attached");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nethotplug_and_the_autoscaler_writing_at_once_lose_no_change() {
    let r = rig().await;
    let node = "pve1";
    // Config reads take 15 ms, so writers that start together read the same digest.
    r.sim.inject(Fault {
        method: Some("GET".into()),
        path: format!("/nodes/{node}/lxc/{CT}/config"),
        count: 0,
        status: 0,
        message: String::new(),
        latency_ms: 15,
        rate: 1.0,
    });
    for i in 0..100u64 {
        let op = Uuid::now_v7();
        let (memory, swap, rate) = (1024 + i, 256 + i, i + 1);
        let update = NetUpdate {
            operation_id: op,
            vmid: Vmid(CT),
            index: 0,
            changes: NetInterface {
                rate: Some(rate as f64),
                ..NetInterface::default()
            },
        };
        // Three writers at once: nethotplug and the autoscaler under the per-vmid lock, and a
        // writer that skips the lock, kept from clobbering the others by the digest alone.
        let (sent, locked, unlocked) = tokio::join!(
            async {
                r.send(&update).await;
                r.event_of(op).await
            },
            pvefleet_autoscaler::tick::write(&r.pve, Some(&r.pool), node, CT, "memory", memory),
            pvefleet_autoscaler::tick::write(&r.pve, None, node, CT, "swap", swap)
        );
        assert_eq!(sent.0, "net.updated", "round {i}: {}", sent.1);
        locked.unwrap_or_else(|e| panic!("round {i}: the locked write failed: {e}"));
        unlocked.unwrap_or_else(|e| panic!("round {i}: the unlocked write failed: {e}"));
        let text = r.text();
        assert!(
            text.lines().any(|l| l == format!("memory: {memory}")),
            "round {i}: memory lost:\n{text}"
        );
        assert!(
            text.lines().any(|l| l == format!("swap: {swap}")),
            "round {i}: swap lost:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("net0: ") && l.contains(&format!("rate={rate},"))),
            "round {i}: the rate was lost:\n{text}"
        );
    }
    // The digest did refuse writes that raced: the test exercised it.
    let conflicts = r
        .sim
        .requests()
        .iter()
        .filter(|q| q.method == "PUT" && q.path.ends_with("/config") && q.status == 500)
        .count();
    assert!(conflicts > 0, "no write ever met a changed digest");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_of_an_attach_at_once_make_one_interface() {
    let r = rig().await;
    let op = Uuid::now_v7();
    let cmd = NetAttach {
        operation_id: op,
        vmid: Vmid(CT),
        iface: pooled("vmbr0"),
    };
    // Both copies are consumed together; the second waits for the lock, then finds the
    // operation ended and reports it again.
    r.send(&cmd).await;
    r.send(&cmd).await;
    let (k1, first) = r.event_of(op).await;
    let (k2, second) = r.event_of(op).await;
    assert_eq!(
        (k1.as_str(), k2.as_str()),
        ("net.attached", "net.attached"),
        "{first} {second}"
    );
    assert_eq!(first["line"], second["line"]);
    let text = r.text();
    assert_eq!(text.lines().filter(|l| l.starts_with("net")).count(), 2, "{text}");
    assert_eq!(r.leases().await.len(), 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbinding_an_interface_that_is_not_on_the_vnet_is_refused() {
    let r = rig().await;
    let op = Uuid::now_v7();
    r.send(&VnetUnbind {
        operation_id: op,
        vnet: "web".into(),
        vmid: Vmid(CT),
        index: Some(0),
    })
    .await;
    let (kind, body) = r.event_of(op).await;
    assert_eq!(kind, "net.operation_failed", "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    assert!(r.text().contains("net0: "), "net0 is left alone");
    r.stop().await;
}

#[test]
fn the_binary_answers_help_and_version_and_starts_nothing() {
    let checked = pvefleet_testkit::cli::answers_help_and_version(
        env!("CARGO_BIN_EXE_pvefleet-nethotplug"),
        "pvefleet-nethotplug",
    );
    assert_eq!(checked, Ok(()));
    assert_eq!(
        pvefleet_testkit::cli::refuses_arguments(env!("CARGO_BIN_EXE_pvefleet-nethotplug")),
        Ok(())
    );
}
