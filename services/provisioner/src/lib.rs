//! The provisioner: `container.create`, `container.start`, `container.snapshot` and
//! `container.destroy` on Proxmox VE (DESIGN.md §5, pve-behaviour.md §5), one handler a file.
//!
//! Every handler is idempotent, so a redelivered command converges on the same state: a
//! container already created for this site is success, one owned by anything else is a
//! failure; a running container is started; an existing snapshot is taken; an absent
//! container is destroyed. PVE failures map to outcomes by the client's classes (the `From`
//! impl of `HandlerError`): transient (locks, 5xx, 595–599, timeouts) retry through the wait
//! tiers, permanent ones fail the step with PVE's message. Work on one vmid is serialized
//! across replicas by a Postgres advisory lock. The provisioner runs without the inbox: a PVE
//! task can outlast any transaction.

use std::sync::Arc;
use std::time::Duration;

use pvefleet_contracts::ids::SiteId;
use pvefleet_contracts::messages::{ContainerCreate, ContainerDestroy, ContainerSnapshot, ContainerStart};
use pvefleet_core::bus::{HandlerError, Router};
use pvefleet_core::config::ProvisionerSettings;
use pvefleet_proxmox::client::api::{LxcStatus, Resource, ResourceType};
use pvefleet_proxmox::client::{PveClient, PveError};

pub use placement::{Size, pick_node};
pub use pvefleet_core::db::VmidLock;

mod create;
mod destroy;
mod placement;
mod snapshot;
mod start;

/// The tag every container the fleet creates carries.
pub const FLEET_TAG: &str = "pvefleet";

/// The tag that keeps the ha service's watchdog from starting a container (`ha.watchdog_hold_tag`).
pub const HOLD_TAG: &str = "pvefleet-hold";

/// The description line that marks a container as a site's.
pub fn site_marker(site: &SiteId) -> String {
    site.marker()
}

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

impl Inner {
    /// The vmid's lock, held while the handler acts, so the provisioner's replicas,
    /// nethotplug, the autoscaler and the watchdog never act on one container at once.
    async fn lock(&self, vmid: u32) -> Result<Option<VmidLock>, HandlerError> {
        match &self.locks {
            None => Ok(None),
            // Contention is an ordinary retry; a database outage waits without parking.
            Some(pool) => VmidLock::acquire(pool, vmid, self.lock_timeout)
                .await
                .map(Some)
                .map_err(|e| HandlerError::from(e.context(format!("cannot lock vmid {vmid}")))),
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

    /// The node of container `vmid`, or the step's failure when it does not exist.
    async fn node_or_missing(
        &self,
        vmid: u32,
        hint: Option<&str>,
    ) -> Result<(String, Option<LxcStatus>), HandlerError> {
        self.node_of(vmid, hint)
            .await?
            .ok_or_else(|| HandlerError::fail("container.missing", format!("container {vmid} does not exist")))
    }

    /// Whether an existing container is this site's: its description carries the marker.
    async fn owned_by(&self, node: &str, vmid: u32, site: &SiteId) -> Result<bool, PveError> {
        let config = self.pve.lxc_config(node, vmid, false).await?;
        let description = config.get("description").and_then(|d| d.as_str()).unwrap_or_default();
        Ok(description.lines().any(|l| l.trim() == site_marker(site)))
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
    let pve = pvefleet_core::pve::client(&settings.pve)?;
    let provisioner = Provisioner::new(pve, settings.provisioner.clone(), db, settings.pve.task_timeout);
    pvefleet_core::bus::Worker::fleet("provisioner", settings)
        .ready(ready)
        .run(provisioner.router(), shutdown)
        .await
}
