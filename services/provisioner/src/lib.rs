//! The provisioner: `container.create`, `container.start`, `container.snapshot` and
//! `container.destroy` on Proxmox VE (DESIGN.md §5, pve-behaviour.md §5).
//!
//! Every handler is idempotent, so a redelivered command converges on the same state: a
//! container already created for this site is success, one owned by anything else is a
//! failure; a running container is started; an existing snapshot is taken; an absent
//! container is destroyed. PVE failures map to outcomes by the client's classes: transient
//! (locks, 5xx, 595–599, timeouts) retry through the wait tiers, permanent ones fail the step
//! with PVE's message. Work on one vmid is serialized across replicas by a Postgres advisory
//! lock. The provisioner runs without the inbox: a PVE task can outlast any transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pvefleet_contracts::StepError;
use pvefleet_contracts::ids::SiteId;
use pvefleet_contracts::messages::{
    ContainerCreate, ContainerCreated, ContainerDestroy, ContainerDestroyed, ContainerSnapshot, ContainerSnapshotted,
    ContainerStart, ContainerStarted,
};
use pvefleet_core::bus::{Context, Handler, Outcome, Router};
use pvefleet_core::config::ProvisionerSettings;
use pvefleet_proxmox::client::api::{LxcStatus, Resource, ResourceType};
use pvefleet_proxmox::client::{Class, Params, PveClient, PveError, Reason};
use pvefleet_proxmox::codec::error::CodecError;
use pvefleet_proxmox::codec::mount::MountPoint;
use pvefleet_proxmox::codec::net::NetConfig;

pub use pvefleet_core::db::VmidLock;

/// The tag every container the fleet creates carries.
pub const FLEET_TAG: &str = "pvefleet";

/// The tag that keeps the ha service's watchdog from starting a container (`ha.watchdog_hold_tag`).
pub const HOLD_TAG: &str = "pvefleet-hold";

/// The description line that marks a container as a site's.
pub fn site_marker(site: &SiteId) -> String {
    format!("pvefleet-site: {site}")
}

pub use placement::{Size, pick_node};

mod placement;

/// The provisioner's handlers, sharing one PVE client.
#[derive(Clone)]
pub struct Provisioner {
    inner: Arc<Inner>,
}

struct Inner {
    pve: PveClient,
    settings: ProvisionerSettings,
    locks: Option<deadpool_postgres::Pool>,
    lock_timeout: Duration,
    /// Places given to creates still running here.
    pending: placement::Pending,
}

impl Provisioner {
    /// Handlers using `pve`; with a pool, per-vmid work is serialized across replicas.
    pub fn new(
        pve: PveClient,
        settings: ProvisionerSettings,
        locks: Option<deadpool_postgres::Pool>,
        lock_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pve,
                settings,
                locks,
                lock_timeout,
                pending: placement::Pending::default(),
            }),
        }
    }

    /// The router for the provisioner's queue.
    pub fn router(&self) -> Router {
        Router::new()
            .command::<ContainerCreate, _>(self.clone())
            .command::<ContainerStart, _>(self.clone())
            .command::<ContainerSnapshot, _>(self.clone())
            .command::<ContainerDestroy, _>(self.clone())
    }
}

use pvefleet_core::pve::outcome as pve_outcome;

macro_rules! pve {
    ($step:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return pve_outcome($step, e),
        }
    };
}

impl Inner {
    async fn lock(&self, vmid: u32) -> Result<Option<VmidLock>, Outcome> {
        match &self.locks {
            None => Ok(None),
            Some(pool) => VmidLock::acquire(pool, vmid, self.lock_timeout)
                .await
                .map(Some)
                // Contention is an ordinary retry; a database outage waits without parking.
                .map_err(|e| Outcome::retry_db(e.context(format!("cannot lock vmid {vmid}")))),
        }
    }

    /// The guest at `vmid`, container or VM, and where it is now (HA may have moved it),
    /// from one cluster read.
    async fn guest(&self, vmid: u32) -> Result<Option<Resource>, PveError> {
        let rows = self.pve.resources(Some(ResourceType::Vm)).await?;
        Ok(rows.into_iter().find(|r| r.vmid == Some(u64::from(vmid))))
    }

    /// The container at `vmid`, if that vmid is a container.
    async fn locate(&self, vmid: u32) -> Result<Option<Resource>, PveError> {
        Ok(self.guest(vmid).await?.filter(|r| r.kind == "lxc"))
    }

    /// The node container `vmid` is on, and its status when it was read on the way: the
    /// command's node hint is asked first (one status read), and the cluster is read only
    /// when the container is not there (HA moved it) or that node does not answer.
    async fn node_of(&self, vmid: u32, hint: Option<&str>) -> Result<Option<(String, Option<LxcStatus>)>, PveError> {
        if let Some(node) = hint.filter(|n| !n.is_empty()) {
            // Any failure here (moved, node gone or down) is settled by the cluster read.
            match self.pve.lxc_status(node, vmid).await {
                Ok(status) => return Ok(Some((node.to_string(), Some(status)))),
                Err(e) => tracing::debug!(vmid, node, error = %e, "Not on the hinted node; reading the cluster."),
            }
        }
        Ok(self
            .locate(vmid)
            .await?
            .map(|found| (found.node.unwrap_or_default(), None)))
    }

    /// A create met an existing guest at `vmid`: success when it is this site's container,
    /// a failure when it is anything else's. `None` when it has gone meanwhile.
    async fn existing(&self, cmd: &ContainerCreate, ctx: &Context<'_>) -> Result<Option<Outcome>, PveError> {
        let vmid = cmd.vmid.0;
        let Some(existing) = self.guest(vmid).await? else {
            return Ok(None);
        };
        let node = existing.node.clone().unwrap_or_default();
        if existing.kind != "lxc" {
            return Ok(Some(Outcome::Fail(StepError::new(
                "vmid.taken",
                format!(
                    "vmid {vmid} is a {} on {node}, not this site's container",
                    existing.kind
                ),
            ))));
        }
        if !self.owned_by(&node, vmid, &cmd.site_id).await? {
            return Ok(Some(Outcome::Fail(StepError::new(
                "vmid.taken",
                format!("vmid {vmid} is used by a container that is not this site's (on {node})"),
            ))));
        }
        if existing.lock.as_deref() == Some("create") {
            return Ok(Some(Outcome::retry(format!("container {vmid} is still being created"))));
        }
        Ok(Some(
            ctx.emit(&ContainerCreated {
                site_id: cmd.site_id,
                vmid: cmd.vmid,
                node,
            })
            .await,
        ))
    }

    /// Where a new container goes (see [`placement`]), from one cluster read; the place is
    /// held until the returned guard drops.
    async fn choose_node(&self, cmd: &ContainerCreate) -> Result<Option<placement::Held>, PveError> {
        let rows = self.pve.resources(None).await?;
        Ok(self
            .pending
            .place(&rows, &self.settings, Size::of(cmd.memory_mb, cmd.cores)))
    }

    /// The create's parameters. Every property string is built through the codec, which
    /// refuses a value that would add options of its own (a `,` in a bridge name, say).
    fn params(&self, cmd: &ContainerCreate, ctx: &Context<'_>) -> Result<Params, CodecError> {
        let s = &self.settings;
        let mut net0 = NetConfig::new("eth0");
        net0.bridge = Some(cmd.net.bridge.clone());
        net0.ip = Some(cmd.net.ip.clone());
        net0.gw = cmd.net.gw.clone();
        net0.hwaddr = cmd.net.hwaddr.clone();
        net0.tag = cmd.net.tag.map(u32::from);
        let net = net0.to_property_string("net0")?;
        let rootfs = MountPoint {
            volume: format!("{}:{}", cmd.storage, cmd.disk_gb),
            ..MountPoint::default()
        }
        .to_property_string("rootfs")?;
        let mut tags: Vec<String> = vec![FLEET_TAG.to_string()];
        tags.extend(cmd.tags.iter().filter(|t| t.as_str() != FLEET_TAG).cloned());
        let mut description = site_marker(&cmd.site_id);
        if let Some(saga) = ctx.correlation_id {
            description.push_str(&format!("\npvefleet-saga: {saga}"));
        }
        let mut p = Params::new()
            .set("vmid", cmd.vmid.0)
            .set("hostname", &cmd.hostname)
            .set("ostemplate", &cmd.template)
            .set("rootfs", rootfs)
            .set("cores", cmd.cores)
            .set("memory", cmd.memory_mb)
            .set("swap", cmd.swap_mb)
            .set("net0", net)
            .flag("unprivileged", cmd.unprivileged)
            .flag("onboot", s.onboot)
            .set("tags", tags.join(";"))
            .set("description", description);
        if s.nesting {
            p = p.set("features", "nesting=1");
        }
        if !s.nameserver.trim().is_empty() {
            p = p.set("nameserver", s.nameserver.trim());
        }
        if !s.searchdomain.trim().is_empty() {
            p = p.set("searchdomain", s.searchdomain.trim());
        }
        Ok(p)
    }

    /// Whether an existing container is this site's: its description carries the marker.
    async fn owned_by(&self, node: &str, vmid: u32, site: &SiteId) -> Result<bool, PveError> {
        let config = self.pve.lxc_config(node, vmid, false).await?;
        let description = config.get("description").and_then(|d| d.as_str()).unwrap_or_default();
        Ok(description.lines().any(|l| l.trim() == site_marker(site)))
    }
}

#[async_trait]
impl Handler<ContainerCreate> for Provisioner {
    async fn handle(&self, cmd: ContainerCreate, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let _lock = match me.lock(vmid).await {
            Ok(l) => l,
            Err(o) => return o,
        };
        // Create first: on the happy path the cluster is not read at all. A vmid already in use
        // answers "already exists", and only then is the guest there inspected. Twice at most:
        // a guest that vanishes between the two is raced again.
        for _ in 0..2 {
            // The place stays held until this attempt's create has returned.
            let (node, _held) = if cmd.node.is_empty() {
                match pve!("container.create", me.choose_node(&cmd).await) {
                    Some(held) => (held.node().to_string(), Some(held)),
                    None => return Outcome::retry("no node is online"),
                }
            } else {
                (cmd.node.clone(), None)
            };
            if !pve!("container.create", me.pve.template_exists(&node, &cmd.template).await) {
                return Outcome::Fail(StepError::new(
                    "template.missing",
                    format!("template {} is not on node {node}", cmd.template),
                ));
            }
            let params = match me.params(&cmd, ctx) {
                Ok(p) => p,
                Err(e) => return Outcome::Fail(StepError::new("invalid", e.to_string())),
            };
            match me.pve.lxc_create(&node, params).await {
                Ok(_) => {
                    return ctx
                        .emit(&ContainerCreated {
                            site_id: cmd.site_id,
                            vmid: cmd.vmid,
                            node,
                        })
                        .await;
                }
                Err(e) if e.reason == Reason::AlreadyExists => {
                    if let Some(outcome) = pve!("container.create", me.existing(&cmd, ctx).await) {
                        return outcome;
                    }
                }
                Err(e) => return pve_outcome("container.create", e),
            }
        }
        Outcome::retry(format!("vmid {vmid} changed hands while it was being created"))
    }
}

#[async_trait]
impl Handler<ContainerStart> for Provisioner {
    async fn handle(&self, cmd: ContainerStart, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let _lock = match me.lock(vmid).await {
            Ok(l) => l,
            Err(o) => return o,
        };
        let Some((node, status)) = pve!("container.start", me.node_of(vmid, cmd.node.as_deref()).await) else {
            return Outcome::Fail(StepError::new(
                "container.missing",
                format!("container {vmid} does not exist"),
            ));
        };
        let status = match status {
            Some(s) => s,
            None => pve!("container.start", me.pve.lxc_status(&node, vmid).await),
        };
        if status.status != "running" {
            match me.pve.lxc_start(&node, vmid).await {
                Ok(_) => {}
                // Started meanwhile (by HA, or a previous delivery): fine.
                Err(e) if e.message.contains("already running") => {}
                Err(e) => return pve_outcome("container.start", e),
            }
        }
        let deadline = Instant::now() + me.settings.start_timeout;
        loop {
            let status = pve!("container.start", me.pve.lxc_status(&node, vmid).await);
            if status.status == "running" {
                break;
            }
            if Instant::now() >= deadline {
                return Outcome::retry(format!("container {vmid} is not running after its start task"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ctx.emit(&ContainerStarted {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
            node,
        })
        .await
    }
}

#[async_trait]
impl Handler<ContainerSnapshot> for Provisioner {
    async fn handle(&self, cmd: ContainerSnapshot, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let _lock = match me.lock(vmid).await {
            Ok(l) => l,
            Err(o) => return o,
        };
        let Some((node, _)) = pve!("container.snapshot", me.node_of(vmid, cmd.node.as_deref()).await) else {
            return Outcome::Fail(StepError::new(
                "container.missing",
                format!("container {vmid} does not exist"),
            ));
        };
        let snapshots = pve!("container.snapshot", me.pve.lxc_snapshots(&node, vmid).await);
        if !snapshots.iter().any(|s| s.name == cmd.name) {
            match me
                .pve
                .lxc_snapshot_create(&node, vmid, &cmd.name, cmd.description.as_deref())
                .await
            {
                Ok(_) => {}
                Err(e) if e.reason == Reason::AlreadyExists => {}
                Err(e) => return pve_outcome("container.snapshot", e),
            }
        }
        ctx.emit(&ContainerSnapshotted {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
            name: cmd.name,
        })
        .await
    }
}

#[async_trait]
impl Handler<ContainerDestroy> for Provisioner {
    async fn handle(&self, cmd: ContainerDestroy, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let _lock = match me.lock(vmid).await {
            Ok(l) => l,
            Err(o) => return o,
        };
        let done = ContainerDestroyed {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
        };
        let Some(found) = pve!("container.destroy", me.locate(vmid).await) else {
            return ctx.emit(&done).await;
        };
        let node = found.node.clone().unwrap_or_default();
        if !pve!("container.destroy", me.owned_by(&node, vmid, &cmd.site_id).await) {
            return Outcome::Fail(StepError::new(
                "vmid.taken",
                format!("container {vmid} is not this site's; it is left alone"),
            ));
        }
        // On hold first, so the ha service's watchdog does not start it again while it goes.
        let mut tags: Vec<String> = found.tag_list().iter().map(|t| t.to_string()).collect();
        if !tags.iter().any(|t| t == HOLD_TAG) {
            tags.push(HOLD_TAG.to_string());
            match me
                .pve
                .lxc_set_config(&node, vmid, Params::new().set("tags", tags.join(";")), None)
                .await
            {
                Ok(()) => {}
                Err(e) if e.reason == Reason::NotFound => return ctx.emit(&done).await,
                Err(e) => return pve_outcome("container.destroy", e),
            }
        }
        // A clean shutdown first; a container that does not stop in time is stopped.
        if found.status.as_deref() == Some("running") {
            let timeout = me.settings.shutdown_timeout.as_secs().max(1);
            if let Err(e) = me.pve.lxc_shutdown(&node, vmid, Some(timeout), false).await {
                if e.class == Class::Transient && e.reason == Reason::Locked {
                    return pve_outcome("container.destroy", e);
                }
                tracing::warn!(vmid, error = %e, "Clean shutdown failed; stopping the container.");
                match me.pve.lxc_stop(&node, vmid).await {
                    Ok(_) => {}
                    Err(e) if e.message.contains("not running") => {}
                    Err(e) => return pve_outcome("container.destroy", e),
                }
            }
        }
        let snapshots = pve!("container.destroy", me.pve.lxc_snapshots(&node, vmid).await);
        for s in snapshots.iter().filter(|s| s.name != "current") {
            match me.pve.lxc_snapshot_delete(&node, vmid, &s.name, false).await {
                Ok(_) => {}
                Err(e) if e.reason == Reason::NotFound => {}
                Err(e) => return pve_outcome("container.destroy", e),
            }
        }
        let sid = format!("ct:{vmid}");
        let ha = pve!("container.destroy", me.pve.ha_resources().await);
        if ha.iter().any(|r| r.sid == sid) {
            let pve9 = pve!("container.destroy", me.pve.version().await).major() >= 9;
            match me.pve.ha_resource_delete(&sid, pve9.then_some(true)).await {
                Ok(()) => {}
                Err(e) if e.reason == Reason::NotFound => {}
                Err(e) => return pve_outcome("container.destroy", e),
            }
        }
        match me.pve.lxc_destroy(&node, vmid, cmd.purge, false).await {
            Ok(_) => {}
            Err(e) if e.reason == Reason::NotFound => {}
            Err(e) => return pve_outcome("container.destroy", e),
        }
        ctx.emit(&done).await
    }
}

/// Runs the provisioner until `shutdown`: consumes `pvefleet.provisioner` with the settings'
/// concurrency, serializing per vmid through `db` when given.
pub async fn run(
    settings: &pvefleet_core::Settings,
    db: Option<deadpool_postgres::Pool>,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use pvefleet_core::bus::runner::{WorkerDeps, WorkerSpec, run_worker};
    let pve = pvefleet_core::pve::client(&settings.pve)?;
    let topology = pvefleet_core::bus::topology::Topology::fleet(&settings.bus);
    let publisher = pvefleet_core::bus::Publisher::new(&settings.bus, "provisioner", Some(topology.clone()));
    let provisioner = Provisioner::new(pve, settings.provisioner.clone(), db.clone(), settings.pve.task_timeout);
    let queue = pvefleet_contracts::routing::work_queue("provisioner");
    let spec = WorkerSpec::from_settings("provisioner", &queue, settings);
    let deps = WorkerDeps {
        bus: settings.bus.clone(),
        topology,
        publisher,
        db: None,
        ready,
    };
    run_worker(deps, provisioner.router(), spec, shutdown).await
}
