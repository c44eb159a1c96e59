//! nethotplug: network interfaces of running containers, and their binding to Proxmox SDN
//! VNets (pve-behaviour.md §6–8).
//!
//! Every command is an operation (`ops`). A handler takes the operation up, locks the vmid
//! (the advisory lock the provisioner and the autoscaler take too), reads the config with its
//! digest, builds the `netN` value through the codec, and writes it guarded by that digest: a
//! writer that got in between makes PVE refuse the write, and the handler reads again. The
//! chosen index and value are kept on the operation before the write, so a redelivered
//! command recognises its own interface instead of adding a second. After the write, the
//! pending list tells whether PVE applied it live or left it for a restart; "unable to
//! hotplug" is a failure, and the pending change it leaves is reverted.

mod addresses;
mod handlers;
mod interfaces;
mod pve_io;
mod vnet;

// The request checks, views, operations and address pools live in the shared policy crate,
// so intake reaches them without depending on this worker.
pub use pvefleet_policy::net::{check, ops, pool, spec, view};

use std::sync::Arc;

use pvefleet_contracts::StepError;
use pvefleet_contracts::messages::{
    MessageParked, NetAttach, NetDetach, NetInterface, NetUpdate, VnetBind, VnetEnsure, VnetRemove, VnetUnbind,
};
use pvefleet_core::bus::{HandlerError, Router};
use pvefleet_core::config::NethotplugSettings;
use pvefleet_core::db::{AdvisoryLock, VmidLock};
use pvefleet_proxmox::client::{Params, PveClient, PveError};
use pvefleet_proxmox::codec::net::{MAX_NETS, NetConfig};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ops::Operation;

/// How a step went wrong: a failure to report, an error for the runner to act on, or an
/// operation another copy of the command already ended.
#[derive(Debug)]
pub enum Fault {
    /// Definitive: the operation fails (with the nodes where an SDN apply failed).
    Fail(StepError, Vec<String>),
    /// A retry, an outage or a rejection, with its error chain: the runner's to act on.
    Error(HandlerError),
    /// Another copy of the command ended the operation while this one waited for the lock:
    /// its end is reported again.
    Ended(Box<Operation>),
}

impl From<HandlerError> for Fault {
    fn from(e: HandlerError) -> Self {
        match e {
            HandlerError::Fail(err) => Fault::Fail(err, Vec::new()),
            other => Fault::Error(other),
        }
    }
}

type Step<T> = Result<T, Fault>;

fn fail(code: &str, message: impl Into<String>) -> Fault {
    Fault::Fail(StepError::new(code, message), Vec::new())
}

/// A transient fault, told in a sentence.
fn retry(message: impl std::fmt::Display) -> Fault {
    Fault::Error(HandlerError::transient(message))
}

/// A PVE failure of `step`: permanent ones fail the operation with PVE's message, transient
/// ones retry with the step named.
fn pve_fault(step: &str, e: PveError) -> Fault {
    match HandlerError::from(e) {
        HandlerError::Fail(err) => Fault::Fail(err, Vec::new()),
        other => Fault::Error(other.context(step.to_string())),
    }
}

/// The session holding a vmid lock, which the handler's statements use.
fn session(lock: &VmidLock) -> Step<&deadpool_postgres::Object> {
    lock.client().ok_or_else(|| retry("the lock's session is gone"))
}

/// A database error: an outage waits it out, anything else is an ordinary retry.
fn db_fault(e: impl Into<anyhow::Error>) -> Fault {
    Fault::Error(HandlerError::from(e.into().context("database")))
}

fn is_digest_conflict(e: &PveError) -> bool {
    e.message.contains("file changed by other user")
}

/// What a write ended as.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The container's node.
    pub node: String,
    /// The `netN` index.
    pub index: u8,
    /// The value now in the config (none after a detach).
    pub line: Option<String>,
    /// Every key PVE left pending until a restart.
    pub pending: Vec<String>,
    /// Whether this interface's change is among them.
    pub needs_reboot: bool,
    /// Whether SDN had to be applied first (`vnet.bind`).
    pub applied_sdn: bool,
}

impl Applied {
    fn status(&self) -> &'static str {
        if self.needs_reboot {
            "pending_reboot"
        } else {
            "succeeded"
        }
    }
}

/// The event a command's success is reported with.
pub fn success_event(kind: &str) -> &'static str {
    match kind {
        "net.attach" => "net.attached",
        "net.update" => "net.updated",
        "net.detach" => "net.detached",
        "vnet.bind" => "vnet.bound",
        "vnet.unbind" => "vnet.unbound",
        "vnet.ensure" => "vnet.ensured",
        "vnet.remove" => "vnet.removed",
        _ => "net.unknown",
    }
}

/// The service's handlers, sharing one PVE client and one pool.
#[derive(Clone)]
pub struct Nethotplug {
    inner: Arc<Inner>,
}

struct Inner {
    pve: PveClient,
    pool: deadpool_postgres::Pool,
    s: NethotplugSettings,
}

impl Nethotplug {
    /// Handlers over `pve` and `pool`.
    pub fn new(pve: PveClient, pool: deadpool_postgres::Pool, settings: NethotplugSettings) -> Self {
        Self {
            inner: Arc::new(Inner { pve, pool, s: settings }),
        }
    }

    /// The router of the nethotplug queue.
    pub fn router(&self) -> Router {
        Router::new()
            .command::<NetAttach, _>(self.clone())
            .command::<NetUpdate, _>(self.clone())
            .command::<NetDetach, _>(self.clone())
            .command::<VnetBind, _>(self.clone())
            .command::<VnetUnbind, _>(self.clone())
            .command::<VnetEnsure, _>(self.clone())
            .command::<VnetRemove, _>(self.clone())
            .route::<MessageParked, _>(self.clone())
    }
}

impl Inner {
    async fn db(&self) -> Step<deadpool_postgres::Object> {
        self.pool.get().await.map_err(db_fault)
    }

    /// The lock on SDN VNet `vnet`, for the handlers that create or remove it.
    async fn vnet_lock(&self, vnet: &str) -> Result<AdvisoryLock, HandlerError> {
        AdvisoryLock::acquire_vnet(&self.pool, vnet, self.s.lock_timeout)
            .await
            .map_err(|e| HandlerError::from(e.context(format!("cannot lock vnet {vnet}"))))
    }

    /// Takes the per-vmid lock, then reads the operation again: a copy of the command that
    /// got the lock first may have ended it (`Fault::Ended`), or planned its interface. The
    /// lock's session serves the handler's statements too.
    async fn lock(&self, op: &Operation, vmid: u32) -> Step<(VmidLock, Operation)> {
        let lock = VmidLock::acquire(&self.pool, vmid, self.s.lock_timeout)
            .await
            .map_err(|e| db_fault(e.context(format!("cannot lock vmid {vmid}"))))?;
        let client = session(&lock)?;
        let fresh = ops::get(client, op.id)
            .await
            .map_err(db_fault)?
            .ok_or_else(|| retry(format!("operation {} is not recorded", op.id)))?;
        if ops::is_final(&fresh.status) {
            return Err(Fault::Ended(Box::new(fresh)));
        }
        Ok((lock, fresh))
    }
}

/// Whether two `netN` values are the same interface options, however they are printed.
fn same_net(a: &str, b: &str) -> bool {
    match (NetConfig::parse("net", a), NetConfig::parse("net", b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Whether two `netN` values carry the same MAC.
fn same_mac(a: &str, b: &str) -> bool {
    let mac = |l: &str| NetConfig::parse("net", l).ok().and_then(|n| n.hwaddr);
    matches!((mac(a), mac(b)), (Some(x), Some(y)) if x.eq_ignore_ascii_case(&y))
}

/// Runs nethotplug until `shutdown`: its queue, without the inbox (a PVE write can outlast any
/// transaction; every handler is idempotent through its operation record instead).
pub async fn run(
    settings: &pvefleet_core::Settings,
    pool: deadpool_postgres::Pool,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    spec::check_mac_prefix(&settings.nethotplug.mac_prefix).map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, p) in &settings.nethotplug.pools {
        pool::range(p).map_err(|e| anyhow::anyhow!("nethotplug.pools.{name}: {e}"))?;
    }
    let pve = pvefleet_core::pve::client(&settings.pve)?;
    let service = Nethotplug::new(pve, pool, settings.nethotplug.clone());
    pvefleet_core::bus::Worker::fleet("nethotplug", settings)
        .ready(ready)
        .run(service.router(), shutdown)
        .await
}
