//! Every saga kind's table, step by step, against the whole fleet (saga, provisioner,
//! installer through a real sshd, edge with a real PowerDNS and Caddy, ha, nethotplug, backup) on
//! pvesim. The cases are read from the tables: a permanent failure at each forward step, and
//! every command of every run delivered twice. A step added to a table gets its cases here
//! without this file changing; a kind added to `Kind::ALL` does not compile here until it has
//! its scenario.
//!
//! A failure is injected the same way for any step: the real worker's queue is unbound from
//! the step's command and a refusing worker's queue is bound instead; the refusing worker runs
//! on the shared runner, so the failure event is the one the runner emits for any handler's
//! `HandlerError::Fail`. A second delivery is a copy of the command, with the same message id
//! and headers, put straight on the queue the command went to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pvefleet_contracts::Message;
use pvefleet_contracts::Vmid;
use pvefleet_contracts::ids::SiteId;
use pvefleet_contracts::messages::{App, SiteDeprovision, SiteProvision, VnetProvision};
use pvefleet_contracts::registry::find_latest;
use pvefleet_contracts::routing::{COMMANDS_EXCHANGE, fleet_bindings, work_queue};
use pvefleet_core::Settings;
use pvefleet_core::bus::probe::Probe;
use pvefleet_core::bus::runner::{WorkerDeps, WorkerSpec, run_worker};
use pvefleet_core::bus::topology::Topology;
use pvefleet_core::bus::{Context, Handled, HandlerError, JsonHandler, Publisher, Router};
use pvefleet_proxmox::client::PveClient;
use pvefleet_proxmox::client::api::ResourceType;
use pvefleet_pvesim::{Load, Sim, SimConfig};
use pvefleet_saga::engine::{Kind, SagaKind, StepDef, Table};
use pvefleet_saga::kinds::deprovision::Deprovision;
use pvefleet_saga::kinds::provision::Provision;
use pvefleet_saga::kinds::restore::{Restore, RestoreSaga};
use pvefleet_saga::kinds::site::SiteSaga;
use pvefleet_saga::kinds::vnet::VnetProvisioning;
use pvefleet_testkit::edge::{Caddy, PowerDns};
use pvefleet_testkit::ssh::Sshd;
use pvefleet_testkit::{TestDb, TestVhost, eventually, init_tracing, settings};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";
const DOMAIN: &str = "sites.test";
/// The refusing worker's queue.
const REFUSER: &str = "pvefleet.test-refuser";
/// Where copies of every command are taken from.
const COPIES: &str = "pvefleet.test-copies";
/// The container the VNet sagas bind to, outside the fleet's vmid pool.
const CT: u32 = 500;

/// Fails every forward step it is given, as a worker whose step failed for good. A command a
/// kind sends both ways (a restore's `backup.restore` and the put-back that undoes it) is
/// passed on to its worker when a saga sends it after the step failed, to undo it: only the
/// step under test fails. A copy of a refused command (the same message id) is refused again.
struct Refuse {
    db: deadpool_postgres::Pool,
    refused: Mutex<std::collections::HashSet<String>>,
}

#[async_trait]
impl JsonHandler for Refuse {
    async fn handle(&self, mtype: &'static str, body: Value, ctx: &Context<'_>) -> Handled {
        let again = self.refused.lock().unwrap().contains(&ctx.message_id);
        if let Some(saga) = ctx.correlation_id.filter(|_| !again) {
            let c = self.db.get().await.map_err(HandlerError::retry)?;
            let state: Option<String> = c
                .query_opt("SELECT state FROM sagas WHERE id = $1", &[&saga])
                .await
                .map_err(HandlerError::retry)?
                .map(|r| r.get(0));
            if matches!(
                state.as_deref(),
                Some("compensating" | "failed" | "compensation_failed")
            ) {
                let info = find_latest(mtype).unwrap();
                let mut out = pvefleet_core::bus::Outgoing::from_json(info, &body, &ctx.origin()).unwrap();
                out.exchange = String::new();
                out.routing_key = worker_queue(mtype);
                return ctx.publisher.publish(&out).await.map_err(HandlerError::from);
            }
        }
        self.refused.lock().unwrap().insert(ctx.message_id.clone());
        Err(HandlerError::fail(
            "test.refused",
            format!("{mtype} refused by the test"),
        ))
    }
}

/// Every command of every kind's table, forward and compensating.
fn table_commands() -> Vec<&'static str> {
    fn of<D>(t: &Table<D>, out: &mut Vec<&'static str>) {
        for s in t.forward.iter().chain(&t.compensations) {
            if !out.contains(&s.command) {
                out.push(s.command);
            }
        }
    }
    let mut out = Vec::new();
    of(Provision::new().table(), &mut out);
    of(Deprovision::new().table(), &mut out);
    of(VnetProvisioning::new().table(), &mut out);
    of(Restore::new().table(), &mut out);
    out
}

/// The fleet's queue that takes `command`.
fn worker_queue(command: &str) -> String {
    let (service, _) = fleet_bindings()
        .into_iter()
        .find(|(_, b)| b.iter().any(|(ex, key)| *ex == COMMANDS_EXCHANGE && *key == command))
        .unwrap_or_else(|| panic!("no fleet queue takes {command}"));
    work_queue(service)
}

type Service = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

struct Rig {
    _vhost: TestVhost,
    db: TestDb,
    sim: Sim,
    pve: PveClient,
    publisher: Publisher,
    control: Probe,
    settings: Settings,
    pdns: PowerDns,
    caddy: Caddy,
    _sshd: Sshd,
    zone_before: Vec<(String, String, Vec<String>)>,
    /// Where each command goes now: its worker's queue, or the refuser's.
    routes: Arc<Mutex<HashMap<String, String>>>,
    /// Whether every command is delivered twice.
    doubling: Arc<AtomicBool>,
    /// The copies made, by command.
    copied: Arc<Mutex<HashMap<String, usize>>>,
    routes_before: Vec<Value>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Rig {
    async fn start() -> Rig {
        init_tracing();
        let pdns = PowerDns::start(DOMAIN).await.unwrap();
        let caddy = Caddy::start().await.unwrap();
        let sshd = Sshd::start().await.unwrap();
        let vhost = TestVhost::new().unwrap();
        let db = TestDb::create().await.unwrap();
        let mut s: Settings = settings(&vhost, Some(&db));
        let (sim, addr) = Sim::spawn(SimConfig {
            nodes: vec!["pve1".into(), "pve2".into(), "pve3".into()],
            token: Some(("fleet@pve!tables".into(), "s3cret".into())),
            task_duration: Duration::from_millis(20),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        sim.populate(CT, 1, Load::default());
        pvefleet_testkit::use_pvesim(&mut s, addr, "fleet@pve!tables", "s3cret");
        s.pve.templates = vec![TEMPLATE.into()];
        s.ha.nodes = vec!["pve1:2".into(), "pve2".into()];
        s.ha.reconcile_interval = Duration::from_secs(3600);
        s.saga.compensation_attempts = 3;
        s.saga.dns_provider = "powerdns".into();
        s.saga.proxy_provider = "caddy".into();
        s.saga.domain = DOMAIN.into();
        s.edge.powerdns_url = pdns.api_url.clone();
        s.edge.powerdns_api_key = Some(pvefleet_core::Secret::new(pdns.api_key.clone()));
        s.edge.caddy_admin_url = caddy.admin_url.clone();
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
        let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
        pvefleet_core::db::migrate(&pool).await.unwrap();
        let pve = pvefleet_core::pve::client(&s.pve).unwrap();
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let spawn = |tasks: &mut Vec<_>, f: Box<dyn FnOnce() -> Service>| tasks.push(tokio::spawn(f()));
        let (ss, p, sd) = (s.clone(), pool.clone(), shutdown.clone());
        spawn(
            &mut tasks,
            Box::new(move || Box::pin(async move { pvefleet_saga::run(&ss, p, None, sd).await })),
        );
        let (ss, p, sd) = (s.clone(), pool.clone(), shutdown.clone());
        spawn(
            &mut tasks,
            Box::new(move || Box::pin(async move { pvefleet_provisioner::run(&ss, Some(p), None, sd).await })),
        );
        let (ss, p, sd) = (s.clone(), pool.clone(), shutdown.clone());
        spawn(
            &mut tasks,
            Box::new(move || Box::pin(async move { pvefleet_installer::run(&ss, p, None, sd).await })),
        );
        let (ss, sd) = (s.clone(), shutdown.clone());
        spawn(
            &mut tasks,
            Box::new(move || Box::pin(async move { pvefleet_edge::run(&ss, None, sd).await })),
        );
        let (ss, p, sd) = (s.clone(), pool.clone(), shutdown.clone());
        spawn(
            &mut tasks,
            Box::new(move || Box::pin(async move { pvefleet_ha::run(&ss, Some(p), None, sd).await })),
        );
        let (ss, p, sd) = (s.clone(), pool.clone(), shutdown.clone());
        spawn(
            &mut tasks,
            Box::new(move || Box::pin(async move { pvefleet_nethotplug::run(&ss, p, None, sd).await })),
        );
        let (ss, p, sd) = (s.clone(), pool.clone(), shutdown.clone());
        spawn(
            &mut tasks,
            Box::new(move || Box::pin(async move { pvefleet_backup::run(&ss, p, None, sd).await })),
        );

        // The refusing worker, on the runner like any other; nothing is bound to it yet.
        let commands = table_commands();
        let refuse: Arc<dyn JsonHandler> = Arc::new(Refuse {
            db: pool.clone(),
            refused: Mutex::default(),
        });
        let mut router = Router::new();
        for c in &commands {
            router = router.route_json(find_latest(c).unwrap(), refuse.clone());
        }
        // Only its own queue: declaring the fleet's would bind the refused commands back.
        let topology = Topology::base(&s.bus).with_queue(REFUSER, &[]);
        let deps = WorkerDeps {
            bus: s.bus.clone(),
            topology: topology.clone(),
            publisher: Publisher::new(&s.bus, "test-refuser", Some(topology)),
            db: None,
            ready: None,
        };
        let spec = WorkerSpec::from_settings("test-refuser", REFUSER, &s);
        tasks.push(tokio::spawn(run_worker(deps, router, spec, shutdown.clone())));

        let control = vhost.probe().await.unwrap();
        // Every worker consuming means every queue is declared and bound as the fleet has it.
        let mut queues: Vec<String> = commands.iter().map(|c| worker_queue(c)).collect();
        queues.push(REFUSER.into());
        queues.dedup();
        for q in &queues {
            let consuming = eventually(WAIT, || async {
                control
                    .queue_info(q)
                    .await
                    .ok()
                    .flatten()
                    .filter(|(_, consumers)| *consumers > 0)
            })
            .await;
            assert!(consuming.is_some(), "{q} has a consumer");
        }
        let routes: HashMap<String, String> = commands.iter().map(|c| (c.to_string(), worker_queue(c))).collect();
        let routes = Arc::new(Mutex::new(routes));
        let doubling = Arc::new(AtomicBool::new(false));
        let copied = Arc::new(Mutex::new(HashMap::new()));
        tasks.push(tokio::spawn(copier(
            vhost.probe().await.unwrap(),
            commands,
            Copies {
                routes: routes.clone(),
                doubling: doubling.clone(),
                copied: copied.clone(),
            },
            shutdown.clone(),
        )));
        let routes_before = caddy.routes().await.unwrap();
        let mut zone_before = pdns.rrsets().await.unwrap();
        zone_before.retain(|(_, kind, _)| kind != "SOA");
        let publisher = pvefleet_testkit::broker::fleet_publisher(&s).await.unwrap();
        Rig {
            _vhost: vhost,
            db,
            sim,
            pve,
            publisher,
            control,
            settings: s,
            pdns,
            caddy,
            _sshd: sshd,
            zone_before,
            routes,
            doubling,
            copied,
            routes_before,
            shutdown,
            tasks,
        }
    }

    async fn send<M: Message>(&self, msg: &M) -> Uuid {
        pvefleet_testkit::broker::send(&self.publisher, msg).await.unwrap()
    }

    /// `command` goes to the refuser instead of its worker.
    async fn refuse(&self, command: &str) {
        self.control.bind(REFUSER, COMMANDS_EXCHANGE, command).await.unwrap();
        self.control
            .unbind(&worker_queue(command), COMMANDS_EXCHANGE, command)
            .await
            .unwrap();
        self.routes.lock().unwrap().insert(command.into(), REFUSER.into());
    }

    /// `command` goes to its worker again.
    async fn restore(&self, command: &str) {
        self.quiet().await;
        let q = worker_queue(command);
        self.control.bind(&q, COMMANDS_EXCHANGE, command).await.unwrap();
        self.control.unbind(REFUSER, COMMANDS_EXCHANGE, command).await.unwrap();
        self.routes.lock().unwrap().insert(command.into(), q);
    }

    /// Waits until no queue a command goes to holds a message, twice in a row: copies and
    /// late duplicates have been handled before the end state is read.
    async fn quiet(&self) {
        let mut queues: Vec<String> = table_commands().iter().map(|c| worker_queue(c)).collect();
        queues.extend([REFUSER.to_string(), COPIES.to_string()]);
        queues.dedup();
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut calm = 0;
        while calm < 3 {
            assert!(tokio::time::Instant::now() < deadline, "the queues drain");
            let mut empty = true;
            for q in &queues {
                empty &= self
                    .control
                    .queue_info(q)
                    .await
                    .ok()
                    .flatten()
                    .is_none_or(|(m, _)| m == 0);
            }
            calm = if empty { calm + 1 } else { 0 };
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sql(&self) -> tokio_postgres::Client {
        self.db.client().await.unwrap()
    }

    /// The site's state and its error's step, once the state is one of `states`.
    async fn site_reaches(&self, site: SiteId, states: &[&str]) -> (String, Option<String>) {
        let c = self.sql().await;
        let got = eventually(WAIT, || async {
            let r = c
                .query_opt(
                    "SELECT state, error->>'step' FROM sites WHERE id = $1",
                    &[&site.as_uuid()],
                )
                .await
                .ok()??;
            let state: String = r.get(0);
            states.contains(&state.as_str()).then(|| (state, r.get(1)))
        })
        .await;
        got.unwrap_or_else(|| panic!("site {site} reaches {states:?}"))
    }

    /// Saga `id`'s state, once it is `want`.
    async fn saga_reaches(&self, id: Uuid, want: &str) {
        let c = self.sql().await;
        let got = eventually(WAIT, || async {
            let state: String = c
                .query_opt("SELECT state FROM sagas WHERE id = $1", &[&id])
                .await
                .ok()??
                .get(0);
            (state == want).then_some(())
        })
        .await;
        assert!(got.is_some(), "saga {id} reaches {want}");
    }

    /// The saga of `kind` for `site`.
    async fn saga_of(&self, site: SiteId, kind: Kind) -> Uuid {
        let c = self.sql().await;
        let got = eventually(WAIT, || async {
            c.query_opt(
                "SELECT id FROM sagas WHERE site_id = $1 AND kind = $2",
                &[&site.as_uuid(), &kind.as_str()],
            )
            .await
            .ok()?
            .map(|r| r.get::<_, Uuid>(0))
        })
        .await;
        got.unwrap_or_else(|| panic!("a {} saga for {site}", kind.as_str()))
    }

    /// The saga's data, as its kind reads it, and its plan.
    async fn saga_data<D: DeserializeOwned>(&self, id: Uuid) -> (D, Vec<String>) {
        let data: Value = self
            .sql()
            .await
            .query_one("SELECT data FROM sagas WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        let plan = serde_json::from_value(data["plan"].clone()).unwrap();
        (serde_json::from_value(data).unwrap(), plan)
    }

    /// The saga's timeline: (command, phase, state).
    async fn timeline(&self, id: Uuid) -> Vec<(String, String, String)> {
        self.sql()
            .await
            .query(
                "SELECT name, phase, state FROM saga_steps WHERE saga_id = $1 ORDER BY started_at, phase",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// The fleet's guests in pvesim, besides the VNet sagas' container.
    async fn guests(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .pve
            .resources(Some(ResourceType::Vm))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|r| r.vmid)
            .filter(|v| *v != u64::from(CT))
            .collect();
        v.sort_unstable();
        v
    }

    async fn zone(&self) -> Vec<(String, String, Vec<String>)> {
        let mut r = self.pdns.rrsets().await.unwrap();
        r.retain(|(_, kind, _)| kind != "SOA");
        r
    }

    async fn leases(&self, site: SiteId) -> i64 {
        self.sql()
            .await
            .query_one("SELECT count(*) FROM leases WHERE site_id = $1", &[&site.as_uuid()])
            .await
            .unwrap()
            .get(0)
    }

    /// Nothing of any site is left: no guest, no record, no route, no HA resource, and the
    /// site holds no lease.
    async fn nothing_left(&self, site: SiteId, case: &str) {
        self.quiet().await;
        assert_eq!(
            self.guests().await,
            Vec::<u64>::new(),
            "{case}: no container left in pvesim"
        );
        assert_eq!(self.zone().await, self.zone_before, "{case}: PowerDNS is as it was");
        assert_eq!(
            self.caddy.routes().await.unwrap(),
            self.routes_before,
            "{case}: Caddy is as it was"
        );
        assert!(
            self.pve.ha_resources().await.unwrap().is_empty(),
            "{case}: no HA resource"
        );
        assert!(self.pve.ha_rules().await.unwrap().is_empty(), "{case}: no HA rule");
        assert_eq!(self.leases(site).await, 0, "{case}: the leases are freed");
    }

    /// Exactly one of everything the site needs: one container with its snapshot, one record
    /// with its address, one route, one HA resource, two leases.
    async fn one_site_built(&self, site: SiteId, req: &SiteProvision, case: &str) {
        self.quiet().await;
        let c = self.sql().await;
        let r = c
            .query_one("SELECT vmid, ip, node FROM sites WHERE id = $1", &[&site.as_uuid()])
            .await
            .unwrap();
        let (vmid, ip, node): (i32, String, String) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(self.guests().await, vec![vmid as u64], "{case}: one container");
        let snaps: Vec<String> = self
            .pve
            .lxc_snapshots(&node, vmid as u32)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(snaps.len(), 2, "{case}: one snapshot and 'current': {snaps:?}");
        let address: std::net::Ipv4Addr = ip.split('/').next().unwrap().parse().unwrap();
        assert_eq!(
            self.pdns.query_a(&format!("{}.{DOMAIN}", req.subdomain)).unwrap(),
            vec![address],
            "{case}: one record"
        );
        assert_eq!(
            self.caddy.routes().await.unwrap().len(),
            self.routes_before.len() + 1,
            "{case}: one route"
        );
        assert_eq!(
            self.pve.ha_resources().await.unwrap().len(),
            1,
            "{case}: one HA resource"
        );
        assert_eq!(self.leases(site).await, 2, "{case}: a vmid and an address");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
    }
}

/// What the copier shares with the test.
struct Copies {
    routes: Arc<Mutex<HashMap<String, String>>>,
    doubling: Arc<AtomicBool>,
    copied: Arc<Mutex<HashMap<String, usize>>>,
}

/// Copies every command that reaches `COPIES` onto the queue it went to, while `doubling`.
async fn copier(
    probe: Probe,
    commands: Vec<&'static str>,
    c: Copies,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    probe.declare_queue(COPIES).await?;
    for c in &commands {
        probe.bind(COPIES, COMMANDS_EXCHANGE, c).await?;
    }
    let mut consumer = probe.consume(COPIES, 16).await?;
    while !shutdown.is_cancelled() {
        let Some(d) = consumer.next(Duration::from_millis(200)).await? else {
            continue;
        };
        if c.doubling.load(Ordering::SeqCst) {
            let key = d.received.routing_key.clone();
            let queue = c.routes.lock().unwrap().get(&key).cloned();
            if let Some(queue) = queue {
                probe
                    .publish("", &queue, &d.received.properties, &d.received.body)
                    .await?;
                *c.copied.lock().unwrap().entry(key).or_default() += 1;
            }
        }
        d.ack().await?;
    }
    Ok(())
}

/// A site asking for every step: WordPress, DNS and proxy (the fleet's providers), HA.
fn full_request(subdomain: &str) -> SiteProvision {
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
        ha: true,
        app: App::wordpress(),
    }
}

/// The compensations the table says undo `done` and a failed `failed`, by command, for the
/// saga's own data.
fn expected_compensations<D>(table: &Table<D>, done: &[String], failed: &str, data: &D, rig: &Rig) -> Vec<String> {
    table
        .compensations_for(done, Some(failed), data, &rig.settings.saga)
        .iter()
        .map(|k| table.step(k).unwrap().command.to_string())
        .collect()
}

/// The compensations the timeline shows, each of which must have ended done.
async fn compensated(rig: &Rig, saga: Uuid, case: &str) -> Vec<String> {
    rig.timeline(saga)
        .await
        .into_iter()
        .filter(|(_, phase, _)| phase == "compensate")
        .map(|(name, _, state)| {
            assert_eq!(state, "done", "{case}: compensation {name}");
            name
        })
        .collect()
}

fn keys<D>(steps: &[StepDef<D>]) -> Vec<String> {
    steps.iter().map(|s| s.key.to_string()).collect()
}

/// Provisioning with forward step `i` failing for good: the site fails at that step, the
/// table's compensations for the completed steps ran, and nothing is left anywhere.
async fn provision_failing_at(rig: &Rig, kind: &Provision, i: usize, case: &str) {
    let table = kind.table();
    let step = &table.forward[i];
    rig.refuse(step.command).await;
    let req = full_request(&format!(
        "p{i}{}",
        if rig.doubling.load(Ordering::SeqCst) { "x" } else { "" }
    ));
    let saga = rig.send(&req).await;
    let (state, failed_step) = rig.site_reaches(req.site_id, &["failed", "active"]).await;
    assert_eq!(
        (state.as_str(), failed_step.as_deref()),
        ("failed", Some(step.command)),
        "{case}"
    );
    rig.saga_reaches(saga, "failed").await;
    rig.restore(step.command).await;
    let (data, plan) = rig.saga_data(saga).await;
    assert_eq!(plan, keys(&table.forward), "{case}: the full request plans every step");
    let expected = expected_compensations(table, &plan[..i], step.key, &data, rig);
    assert_eq!(compensated(rig, saga, case).await, expected, "{case}");
    rig.nothing_left(req.site_id, case).await;
}

/// A site provisioned and removed with nothing failing.
async fn provision_and_deprovision(rig: &Rig, case: &str) {
    let req = full_request(if rig.doubling.load(Ordering::SeqCst) {
        "whole2"
    } else {
        "whole"
    });
    rig.send(&req).await;
    let (state, _) = rig.site_reaches(req.site_id, &["active", "failed"]).await;
    assert_eq!(state, "active", "{case}");
    rig.one_site_built(req.site_id, &req, case).await;
    rig.send(&SiteDeprovision { site_id: req.site_id }).await;
    let (state, _) = rig.site_reaches(req.site_id, &["deleted"]).await;
    assert_eq!(state, "deleted", "{case}");
    rig.nothing_left(req.site_id, case).await;
}

/// Deprovisioning with forward step `i` failing for good: it recovers forward, so the step is
/// sent again until the saga stops for an operator; once the fault is gone, `retry-step`
/// finishes the removal and nothing is left.
async fn deprovision_failing_at(rig: &Rig, kind: &Deprovision, i: usize, case: &str) {
    let table = kind.table();
    let step = &table.forward[i];
    let req = full_request(&format!(
        "d{i}{}",
        if rig.doubling.load(Ordering::SeqCst) { "x" } else { "" }
    ));
    rig.send(&req).await;
    assert_eq!(
        rig.site_reaches(req.site_id, &["active", "failed"]).await.0,
        "active",
        "{case}"
    );
    rig.refuse(step.command).await;
    rig.send(&SiteDeprovision { site_id: req.site_id }).await;
    let saga = rig.saga_of(req.site_id, Kind::Deprovision).await;
    rig.saga_reaches(saga, "suspended").await;
    let (_, plan): (Value, Vec<String>) = rig.saga_data(saga).await;
    assert_eq!(plan, keys(&table.forward), "{case}: the removal plans every step");
    let timeline = rig.timeline(saga).await;
    assert!(
        timeline
            .iter()
            .any(|(n, p, s)| n == step.command && p == "forward" && s == "failed"),
        "{case}: {timeline:?}"
    );
    assert!(
        compensated(rig, saga, case).await.is_empty(),
        "{case}: a removal is never undone"
    );
    rig.restore(step.command).await;
    let c = rig.sql().await;
    let retried = pvefleet_saga::ops::retry_step(&c, &rig.settings.saga, saga, "tables-test")
        .await
        .unwrap();
    assert_eq!(retried, step.command, "{case}");
    let (state, _) = rig.site_reaches(req.site_id, &["deleted"]).await;
    assert_eq!(state, "deleted", "{case}");
    rig.saga_reaches(saga, "completed").await;
    rig.nothing_left(req.site_id, case).await;
}

fn vnet_request(vnet: &str) -> VnetProvision {
    VnetProvision {
        operation_id: Uuid::now_v7(),
        vnet: vnet.into(),
        zone: "fleet".into(),
        tag: None,
        vmid: Vmid(CT),
        iface: Default::default(),
    }
}

/// The VNet operation's status and result, once it ends.
async fn vnet_ends(rig: &Rig, op: Uuid) -> (String, Value) {
    let c = rig.sql().await;
    let got = eventually(WAIT, || async {
        let r = c
            .query_opt("SELECT status, result FROM net_operations WHERE id = $1", &[&op])
            .await
            .ok()??;
        let status: String = r.get(0);
        (!["pending", "running"].contains(&status.as_str()))
            .then(|| (status, r.get::<_, Option<Value>>(1).unwrap_or_default()))
    })
    .await;
    got.unwrap_or_else(|| panic!("operation {op} ends"))
}

/// Whether the VNet exists, and how many of the container's interfaces are on it.
async fn vnet_footprint(rig: &Rig, vnet: &str) -> (bool, usize) {
    let exists = rig.pve.vnets().await.unwrap().iter().any(|v| v.vnet == vnet);
    let text = rig.sim.config_text(CT).unwrap();
    let ifaces = text
        .lines()
        .filter_map(|l| l.strip_prefix("net").and_then(|l| l.split_once(": ")))
        .filter(|(_, options)| options.split(',').any(|o| o == format!("bridge={vnet}")))
        .count();
    (exists, ifaces)
}

/// A VNet saga with forward step `i` failing for good: the operation fails, and the VNet and
/// the interface are as before (the VNet is removed when the saga created it).
async fn vnet_failing_at(rig: &Rig, kind: &VnetProvisioning, i: usize, case: &str) {
    let table = kind.table();
    let step = &table.forward[i];
    let vnet = format!("vf{i}{}", if rig.doubling.load(Ordering::SeqCst) { "x" } else { "" });
    rig.refuse(step.command).await;
    let req = vnet_request(&vnet);
    rig.send(&req).await;
    let (status, result) = vnet_ends(rig, req.operation_id).await;
    assert_eq!(status, "failed", "{case}: {result}");
    rig.saga_reaches(req.operation_id, "failed").await;
    rig.restore(step.command).await;
    let (data, _): (pvefleet_saga::kinds::vnet::VnetSaga, Vec<String>) = rig.saga_data(req.operation_id).await;
    let done = keys(&table.forward[..i]);
    let expected = expected_compensations(table, &done, step.key, &data, rig);
    assert_eq!(compensated(rig, req.operation_id, case).await, expected, "{case}");
    rig.quiet().await;
    assert_eq!(
        vnet_footprint(rig, &vnet).await,
        (false, 0),
        "{case}: no VNet, no interface"
    );
}

/// A VNet saga with nothing failing: the VNet exists and the container has one interface on it.
async fn vnet_whole(rig: &Rig, case: &str) {
    let vnet = if rig.doubling.load(Ordering::SeqCst) {
        "vwx"
    } else {
        "vw"
    };
    let req = vnet_request(vnet);
    rig.send(&req).await;
    let (status, result) = vnet_ends(rig, req.operation_id).await;
    assert!(
        ["succeeded", "pending_reboot"].contains(&status.as_str()),
        "{case}: {status} {result}"
    );
    rig.quiet().await;
    assert_eq!(
        vnet_footprint(rig, vnet).await,
        (true, 1),
        "{case}: one VNet, one interface"
    );
}

/// A restore's data for `full_request`, to ask the table which steps apply.
fn restore_data(was_deleted: bool) -> RestoreSaga {
    RestoreSaga {
        site: SiteSaga {
            site: full_request("probe"),
            vmid: 0,
            ip: String::new(),
            node: None,
            vmids_taken: Vec::new(),
            final_backup: false,
        },
        volid: String::new(),
        backup_node: None,
        pre_restore_id: Uuid::nil(),
        previous: Some(String::new()),
        was_deleted,
        clone_of: None,
    }
}

/// What a live site holds: its container (vmid, running, memory), its record's addresses, the
/// routes, the HA resources and its leases.
async fn live(rig: &Rig, site: SiteId, req: &SiteProvision) -> (Vec<u64>, bool, String, usize, usize, usize, i64) {
    rig.quiet().await;
    let c = rig.sql().await;
    let r = c
        .query_one("SELECT vmid, node FROM sites WHERE id = $1", &[&site.as_uuid()])
        .await
        .unwrap();
    let (vmid, node): (i32, String) = (r.get(0), r.get(1));
    let running = rig.pve.lxc_status(&node, vmid as u32).await.unwrap().status == "running";
    let memory = rig.pve.lxc_config(&node, vmid as u32, true).await.unwrap()["memory"].to_string();
    (
        rig.guests().await,
        running,
        memory,
        rig.pdns.query_a(&format!("{}.{DOMAIN}", req.subdomain)).unwrap().len(),
        rig.caddy.routes().await.unwrap().len(),
        rig.pve.ha_resources().await.unwrap().len(),
        rig.leases(site).await,
    )
}

/// A full site, active, with a backup; deleted again when `deleted`.
async fn restorable(rig: &Rig, name: &str, deleted: bool, case: &str) -> SiteProvision {
    let req = full_request(name);
    rig.send(&req).await;
    assert_eq!(
        rig.site_reaches(req.site_id, &["active", "failed"]).await.0,
        "active",
        "{case}"
    );
    common::backed_up(&rig.db, req.site_id, WAIT).await;
    if deleted {
        rig.send(&SiteDeprovision { site_id: req.site_id }).await;
        assert_eq!(rig.site_reaches(req.site_id, &["deleted"]).await.0, "deleted", "{case}");
        rig.nothing_left(req.site_id, case).await;
    }
    req
}

/// Removes a site a restore case left active, leaving nothing for the next case.
async fn remove(rig: &Rig, site: SiteId, case: &str) {
    rig.send(&SiteDeprovision { site_id: site }).await;
    assert_eq!(rig.site_reaches(site, &["deleted"]).await.0, "deleted", "{case}");
    rig.nothing_left(site, case).await;
}

/// Restores with nothing failing: an active site in place, and a deleted one brought back
/// whole (one container running, its record, its route, HA, its leases).
async fn restore_whole(rig: &Rig, case: &str) {
    let x = if rig.doubling.load(Ordering::SeqCst) { "x" } else { "" };
    let req = restorable(rig, &format!("rw{x}"), false, case).await;
    let before = live(rig, req.site_id, &req).await;
    let saga = common::restore(&rig.db, req.site_id, None).await;
    rig.saga_reaches(saga, "completed").await;
    assert_eq!(rig.site_reaches(req.site_id, &["active"]).await.0, "active", "{case}");
    assert_eq!(
        live(rig, req.site_id, &req).await,
        before,
        "{case}: as it was, once each"
    );
    remove(rig, req.site_id, case).await;
    let req = restorable(rig, &format!("rd{x}"), true, case).await;
    let saga = common::restore(&rig.db, req.site_id, None).await;
    rig.saga_reaches(saga, "completed").await;
    assert_eq!(rig.site_reaches(req.site_id, &["active"]).await.0, "active", "{case}");
    let (guests, running, _, records, routes, ha, leases) = live(rig, req.site_id, &req).await;
    assert_eq!(
        (guests.len(), running, records, routes, ha, leases),
        (1, true, 1, rig.routes_before.len() + 1, 1, 2),
        "{case}: the deleted site is back whole"
    );
    remove(rig, req.site_id, case).await;
}

/// A restore with forward step `i` failing for good, on the site the step applies to (an
/// active one, or a deleted one): the table's compensations for the completed steps ran, and
/// the site is as it was before the restore.
async fn restore_failing_at(rig: &Rig, kind: &Restore, i: usize, case: &str) {
    let table = kind.table();
    let step = &table.forward[i];
    let in_place = (step.applies)(&restore_data(false), &rig.settings.saga);
    let x = if rig.doubling.load(Ordering::SeqCst) { "x" } else { "" };
    let req = restorable(rig, &format!("r{i}{x}"), !in_place, case).await;
    let before = if in_place {
        Some(live(rig, req.site_id, &req).await)
    } else {
        None
    };
    rig.refuse(step.command).await;
    let saga = common::restore(&rig.db, req.site_id, None).await;
    rig.saga_reaches(saga, "failed").await;
    rig.restore(step.command).await;
    let (data, plan): (RestoreSaga, Vec<String>) = rig.saga_data(saga).await;
    let at = plan
        .iter()
        .position(|k| k == step.key)
        .expect("the failed step is planned");
    let expected = expected_compensations(table, &plan[..at], step.key, &data, rig);
    assert_eq!(compensated(rig, saga, case).await, expected, "{case}");
    match before {
        Some(before) => {
            assert_eq!(rig.site_reaches(req.site_id, &["active"]).await.0, "active", "{case}");
            assert_eq!(
                live(rig, req.site_id, &req).await,
                before,
                "{case}: as before the restore"
            );
            remove(rig, req.site_id, case).await;
        }
        None => {
            assert_eq!(rig.site_reaches(req.site_id, &["deleted"]).await.0, "deleted", "{case}");
            rig.nothing_left(req.site_id, case).await;
        }
    }
}

/// Every kind's every run: the one where nothing fails, then one failing at each step.
async fn every_case(rig: &Rig) {
    let mode = if rig.doubling.load(Ordering::SeqCst) {
        "twice"
    } else {
        "once"
    };
    for kind in Kind::ALL {
        match kind {
            Kind::Provision => {
                let k = Provision::new();
                provision_and_deprovision(rig, &format!("provision+deprovision ({mode})")).await;
                for (i, step) in k.table().forward.iter().enumerate() {
                    provision_failing_at(rig, &k, i, &format!("provision failing at {} ({mode})", step.command)).await;
                }
            }
            Kind::Deprovision => {
                let k = Deprovision::new();
                for (i, step) in k.table().forward.iter().enumerate() {
                    deprovision_failing_at(rig, &k, i, &format!("deprovision failing at {} ({mode})", step.command))
                        .await;
                }
            }
            Kind::Restore => {
                let k = Restore::new();
                restore_whole(rig, &format!("restore ({mode})")).await;
                for (i, step) in k.table().forward.iter().enumerate() {
                    restore_failing_at(rig, &k, i, &format!("restore failing at {} ({mode})", step.key)).await;
                }
            }
            Kind::VnetProvision => {
                let k = VnetProvisioning::new();
                vnet_whole(rig, &format!("vnet.provision ({mode})")).await;
                for (i, step) in k.table().forward.iter().enumerate() {
                    vnet_failing_at(
                        rig,
                        &k,
                        i,
                        &format!("vnet.provision failing at {} ({mode})", step.command),
                    )
                    .await;
                }
            }
        }
    }
}

// Each kind's run with nothing failing comes first: it also has every service's publisher
// connect (and declare the fleet's bindings) before any command is refused.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_at_any_step_of_any_saga_leaves_nothing_behind() {
    let rig = Rig::start().await;
    every_case(&rig).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_every_saga_delivered_twice_ends_as_delivered_once() {
    let rig = Rig::start().await;
    rig.doubling.store(true, Ordering::SeqCst);
    every_case(&rig).await;
    // The second deliveries did happen: every command of every table was copied.
    let copied = rig.copied.lock().unwrap().clone();
    for c in table_commands() {
        assert!(
            copied.get(c).is_some_and(|n| *n > 0),
            "{c} was delivered twice: {copied:?}"
        );
    }
    rig.stop().await;
}
