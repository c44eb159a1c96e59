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

mod handlers;
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

    /// The node container `vmid` is on.
    async fn locate(&self, vmid: u32) -> Step<String> {
        self.pve
            .lxc_node(vmid)
            .await
            .map_err(|e| pve_fault("locate", e))?
            .ok_or_else(|| fail("container.not_found", format!("container {vmid} does not exist")))
    }

    /// The config (pending values merged in, as PVE answers it) and its digest.
    async fn config(&self, node: &str, vmid: u32) -> Step<(Map<String, Value>, String)> {
        let config = self
            .pve
            .lxc_config(node, vmid, false)
            .await
            .map_err(|e| pve_fault("read config", e))?;
        let digest = config
            .get("digest")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok((config, digest))
    }

    /// The keys PVE leaves pending until a restart, and the container's current values.
    async fn pending(&self, node: &str, vmid: u32) -> Step<(Vec<String>, Map<String, Value>)> {
        let rows = self
            .pve
            .lxc_pending(node, vmid)
            .await
            .map_err(|e| pve_fault("read pending", e))?;
        let mut keys = Vec::new();
        let mut current = Map::new();
        for r in rows {
            if r.pending.is_some() || r.delete == Some(true) {
                keys.push(r.key.clone());
            }
            if let Some(v) = r.value {
                current.insert(r.key, Value::String(v));
            }
        }
        Ok((keys, current))
    }

    /// Reads back after a write: applied live, or left pending for a restart.
    async fn classify(&self, node: &str, vmid: u32, index: u8, line: Option<&str>) -> Step<Applied> {
        let key = format!("net{index}");
        let (pending, current) = self.pending(node, vmid).await?;
        let needs_reboot = pending.contains(&key);
        if !needs_reboot {
            let now = current.get(&key).and_then(Value::as_str);
            // PVE may print a property string its own way: compared parsed, not as text.
            let same = match (now, line) {
                (Some(a), Some(b)) => same_net(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                return Err(fail(
                    "readback",
                    format!("{key} reads back as {now:?} after the write, not {line:?}"),
                ));
            }
        }
        Ok(Applied {
            node: node.to_string(),
            index,
            line: line.map(str::to_string),
            pending,
            needs_reboot,
            applied_sdn: false,
        })
    }

    /// Writes one `netN`, guarded by the digest. `Ok(false)`: another writer got in between.
    async fn write(&self, node: &str, vmid: u32, key: &str, params: Params, digest: &str) -> Step<bool> {
        match self.pve.lxc_set_config(node, vmid, params, Some(digest)).await {
            Ok(()) => Ok(true),
            Err(e) if is_digest_conflict(&e) => Ok(false),
            Err(e)
                if e.message.contains("unable to hotplug")
                    || e.errors.values().any(|v| v.contains("unable to hotplug")) =>
            {
                let why: Vec<String> = if e.errors.is_empty() {
                    vec![e.message.trim().to_string()]
                } else {
                    e.errors.values().cloned().collect()
                };
                // PVE keeps the refused change pending; it must not surprise anyone at the next
                // restart.
                if let Err(r) = self
                    .pve
                    .lxc_set_config(node, vmid, Params::new().set("revert", key), None)
                    .await
                {
                    tracing::warn!(vmid, key, error = %r, "Could not revert a change PVE refused to hotplug.");
                }
                Err(fail("proxmox.hotplug", why.join("; ")))
            }
            Err(e) => Err(pve_fault("write config", e)),
        }
    }

    /// Records the MACs a managed container's interfaces already have, so a generated or
    /// requested MAC is checked against them too.
    async fn note_macs(&self, client: &tokio_postgres::Client, vmid: u32, config: &Map<String, Value>) -> Step<()> {
        for index in 0..MAX_NETS {
            let key = format!("net{index}");
            let Some(mac) = config
                .get(&key)
                .and_then(Value::as_str)
                .and_then(|l| NetConfig::parse(&key, l).ok())
                .and_then(|n| n.hwaddr)
            else {
                continue;
            };
            client
                .execute(
                    "INSERT INTO net_macs (hwaddr, vmid, net_index) VALUES ($1, $2, $3) ON CONFLICT (hwaddr) DO NOTHING",
                    &[&mac.to_ascii_uppercase(), &(vmid as i32), &i32::from(index)],
                )
                .await
                .map_err(db_fault)?;
        }
        Ok(())
    }

    /// Frees what is recorded for interfaces the container no longer has at all (neither in
    /// its config nor pending): an interface whose delete waited for a restart gives its
    /// address, MAC and binding back here, on the next attach to that container.
    async fn forget_gone(
        &self,
        client: &tokio_postgres::Client,
        node: &str,
        vmid: u32,
        config: &Map<String, Value>,
    ) -> Step<()> {
        let (_, current) = self.pending(node, vmid).await?;
        let held: Vec<i32> = client
            .query(
                "SELECT net_index FROM net_ip_leases WHERE vmid = $1
                 UNION SELECT net_index FROM net_macs WHERE vmid = $1
                 UNION SELECT net_index FROM vnet_bindings WHERE vmid = $1",
                &[&(vmid as i32)],
            )
            .await
            .map_err(db_fault)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for index in held.into_iter().filter_map(|i| u8::try_from(i).ok()) {
            let key = format!("net{index}");
            if !config.contains_key(&key) && !current.contains_key(&key) {
                self.release(client, vmid, index).await?;
                client
                    .execute(
                        "DELETE FROM vnet_bindings WHERE vmid = $1 AND net_index = $2",
                        &[&(vmid as i32), &i32::from(index)],
                    )
                    .await
                    .map_err(db_fault)?;
            }
        }
        Ok(())
    }

    /// Reserves a MAC for interface `index` of `vmid`: `false` when another interface has it.
    async fn reserve_mac(&self, client: &tokio_postgres::Client, mac: &str, vmid: u32, index: u8) -> Step<bool> {
        let n = client
            .execute(
                "INSERT INTO net_macs (hwaddr, vmid, net_index) VALUES ($1, $2, $3)
                 ON CONFLICT (hwaddr) DO UPDATE SET hwaddr = excluded.hwaddr
                 WHERE net_macs.vmid = excluded.vmid AND net_macs.net_index = excluded.net_index",
                &[&mac, &(vmid as i32), &i32::from(index)],
            )
            .await
            .map_err(db_fault)?;
        Ok(n == 1)
    }

    async fn mac_for(
        &self,
        client: &tokio_postgres::Client,
        asked: Option<&str>,
        vmid: u32,
        index: u8,
    ) -> Step<String> {
        if let Some(mac) = asked {
            let mac = mac.to_ascii_uppercase();
            return if self.reserve_mac(client, &mac, vmid, index).await? {
                Ok(mac)
            } else {
                Err(fail(
                    "hwaddr.taken",
                    format!("hwaddr: {mac} is in use by another managed container"),
                ))
            };
        }
        for _ in 0..16 {
            let mac = spec::random_mac(&self.s.mac_prefix);
            if self.reserve_mac(client, &mac, vmid, index).await? {
                return Ok(mac);
            }
        }
        Err(retry("no free MAC found in 16 tries"))
    }

    /// Leases a pooled address for `bridge`, when the request asks `ip = "pool"`.
    async fn pooled(
        &self,
        client: &tokio_postgres::Client,
        iface: &NetInterface,
        bridge: &str,
        vmid: u32,
        index: u8,
        op: Uuid,
    ) -> Step<Option<(String, Option<String>)>> {
        if iface.ip.as_deref() != Some("pool") {
            return Ok(None);
        }
        let Some(cfg) = self.s.pools.get(bridge) else {
            return Err(fail(
                "ip.no_pool",
                format!("ip: no address pool is configured for '{bridge}'"),
            ));
        };
        match pool::lease(client, bridge, cfg, vmid, index, op).await {
            Ok(Some(ip)) => Ok(Some((ip, cfg.gateway.clone()))),
            Ok(None) => Err(fail(
                "ip.pool_exhausted",
                format!("ip: the pool of '{bridge}' has no free address"),
            )),
            Err(e) => Err(db_fault(e)),
        }
    }

    /// Checks that `bridge` exists on `node` (`GET /nodes/{node}/network`).
    async fn check_bridge(&self, node: &str, bridge: &str) -> Step<()> {
        if self
            .pve
            .has_bridge(node, bridge)
            .await
            .map_err(|e| pve_fault("read node network", e))?
        {
            Ok(())
        } else {
            Err(fail(
                "invalid",
                format!("bridge: '{bridge}' does not exist on node {node}"),
            ))
        }
    }

    async fn attach(&self, op: &Operation, vmid: u32, iface: &NetInterface) -> Step<Applied> {
        spec::check(iface).map_err(|e| fail("invalid", e.to_string()))?;
        let Some(bridge) = spec::bridge_of(iface).map(str::to_string) else {
            return Err(fail("invalid", "bridge: give a bridge or a vnet"));
        };
        spec::check_allowed(&self.s.allowed_bridges, &bridge).map_err(|e| fail("policy", e.to_string()))?;
        let (lock, op) = self.lock(op, vmid).await?;
        let client = session(&lock)?;
        let node = self.locate(vmid).await?;
        if iface.vnet.is_none() {
            self.check_bridge(&node, &bridge).await?;
        }
        let mut planned = op.net_index.zip(op.line.clone());
        for attempt in 0..self.s.write_attempts.max(1) {
            let (config, digest) = self.config(&node, vmid).await?;
            if let Some((index, line)) = &planned
                && let Some(now) = config.get(&format!("net{index}")).and_then(Value::as_str)
            {
                // A redelivery, or a retry after the write: the interface with our MAC is ours.
                if same_mac(now, line) {
                    return self.classify(&node, vmid, *index, Some(now)).await;
                }
            }
            if attempt == 0 {
                // The container's records, brought up to date once per command.
                self.note_macs(client, vmid, &config).await?;
                self.forget_gone(client, &node, vmid, &config).await?;
            }
            let used = |i: u8| config.contains_key(&format!("net{i}"));
            let index = match iface.index {
                Some(i) if used(i) => {
                    return Err(fail("conflict", format!("net{i} already exists on container {vmid}")));
                }
                Some(i) => i,
                None => match (0..MAX_NETS).find(|i| !used(*i)) {
                    Some(i) => i,
                    None => {
                        return Err(fail(
                            "conflict",
                            format!("container {vmid} has no free interface index"),
                        ));
                    }
                },
            };
            if let Some((earlier, _)) = &planned
                && *earlier != index
                && !used(*earlier)
            {
                // Another writer took the index planned before: what was held for it is free.
                self.release(client, vmid, *earlier).await?;
            }
            let earlier_mac = planned
                .as_ref()
                .filter(|(i, _)| *i == index)
                .and_then(|(_, l)| NetConfig::parse("net", l).ok())
                .and_then(|n| n.hwaddr);
            let ip = self.pooled(client, iface, &bridge, vmid, index, op.id).await?;
            let mac = match self
                .mac_for(client, iface.hwaddr.as_deref().or(earlier_mac.as_deref()), vmid, index)
                .await
            {
                Ok(mac) => mac,
                Err(e) => {
                    self.release(client, vmid, index).await?;
                    return Err(e);
                }
            };
            let net = spec::build(
                iface,
                index,
                Some(&mac),
                ip.as_ref().map(|(a, g)| (a.as_str(), g.as_deref())),
            );
            let key = format!("net{index}");
            // The request was checked through the codec before; a value refused now is still
            // refused, never written, and what was held for it is freed.
            let line = match net.to_property_string(&key) {
                Ok(line) => line,
                Err(e) => {
                    self.release(client, vmid, index).await?;
                    return Err(fail("invalid", e.to_string()));
                }
            };
            ops::plan(client, op.id, &node, index, Some(&line))
                .await
                .map_err(db_fault)?;
            planned = Some((index, line.clone()));
            match self
                .write(&node, vmid, &key, Params::new().set(&key, &line), &digest)
                .await
            {
                Ok(true) => return self.classify(&node, vmid, index, Some(&line)).await,
                Ok(false) => {}
                Err(Fault::Fail(err, nodes)) => {
                    // Nothing was attached: the address and MAC held for it are free again.
                    self.release(client, vmid, index).await?;
                    return Err(Fault::Fail(err, nodes));
                }
                Err(retry) => return Err(retry),
            }
        }
        Err(retry(format!(
            "the config of {vmid} kept changing under {} writes",
            self.s.write_attempts
        )))
    }

    async fn update(&self, op: &Operation, vmid: u32, index: u8, changes: &NetInterface) -> Step<Applied> {
        let probe = NetInterface {
            index: Some(index),
            ..changes.clone()
        };
        spec::check(&probe).map_err(|e| fail("invalid", e.to_string()))?;
        if let Some(b) = spec::bridge_of(changes) {
            spec::check_allowed(&self.s.allowed_bridges, b).map_err(|e| fail("policy", e.to_string()))?;
        }
        let key = format!("net{index}");
        let (lock, op) = self.lock(op, vmid).await?;
        let client = session(&lock)?;
        let node = self.locate(vmid).await?;
        if let (Some(b), None) = (&changes.bridge, &changes.vnet) {
            self.check_bridge(&node, b).await?;
        }
        for _ in 0..self.s.write_attempts.max(1) {
            let (config, digest) = self.config(&node, vmid).await?;
            let Some(old) = config.get(&key).and_then(Value::as_str) else {
                return Err(fail("not_found", format!("{key} does not exist on container {vmid}")));
            };
            let old_net = NetConfig::parse(&key, old).map_err(|e| fail("invalid", e.to_string()))?;
            if op.line.as_deref().is_some_and(|planned| same_net(planned, old)) {
                // A redelivery after the write.
                return self.classify(&node, vmid, index, Some(old)).await;
            }
            let bridge = spec::bridge_of(changes)
                .or(old_net.bridge.as_deref())
                .unwrap_or_default()
                .to_string();
            let ip = self.pooled(client, changes, &bridge, vmid, index, op.id).await?;
            let mut merged = spec::merge(&old_net, changes);
            if let Some((addr, gw)) = ip {
                merged.ip = Some(addr);
                if changes.gw.is_none() {
                    merged.gw = gw;
                }
            }
            if let Some(mac) = &changes.hwaddr
                && !self.reserve_mac(client, &mac.to_ascii_uppercase(), vmid, index).await?
            {
                self.settle(client, vmid, index, &old_net).await?;
                return Err(fail(
                    "hwaddr.taken",
                    format!("hwaddr: {mac} is in use by another managed container"),
                ));
            }
            let line = match merged.to_property_string(&key) {
                Ok(line) => line,
                Err(e) => {
                    self.settle(client, vmid, index, &old_net).await?;
                    return Err(fail("invalid", e.to_string()));
                }
            };
            ops::plan(client, op.id, &node, index, Some(&line))
                .await
                .map_err(db_fault)?;
            let written = if old == line {
                true
            } else {
                match self
                    .write(&node, vmid, &key, Params::new().set(&key, &line), &digest)
                    .await
                {
                    Err(Fault::Fail(err, nodes)) => {
                        self.settle(client, vmid, index, &old_net).await?;
                        return Err(Fault::Fail(err, nodes));
                    }
                    other => other?,
                }
            };
            if written {
                let done = self.classify(&node, vmid, index, Some(&line)).await?;
                if !done.needs_reboot {
                    self.settle(client, vmid, index, &merged).await?;
                }
                return Ok(done);
            }
        }
        Err(retry(format!(
            "the config of {vmid} kept changing under {} writes",
            self.s.write_attempts
        )))
    }

    /// Keeps only the lease and MAC that interface `index` now has: an address or MAC it no
    /// longer uses (changed, or reserved for a change PVE refused) is free again.
    async fn settle(&self, client: &tokio_postgres::Client, vmid: u32, index: u8, net: &NetConfig) -> Step<()> {
        let ip = net.ip.as_deref().and_then(|a| a.split('/').next()).unwrap_or_default();
        let bridge = net.bridge.as_deref().unwrap_or_default();
        client
            .execute(
                "DELETE FROM net_ip_leases WHERE vmid = $1 AND net_index = $2 AND (ip <> $3 OR pool <> $4)",
                &[&(vmid as i32), &i32::from(index), &ip, &bridge],
            )
            .await
            .map_err(db_fault)?;
        let mac = net.hwaddr.as_deref().unwrap_or_default().to_ascii_uppercase();
        client
            .execute(
                "DELETE FROM net_macs WHERE vmid = $1 AND net_index = $2 AND hwaddr <> $3",
                &[&(vmid as i32), &i32::from(index), &mac],
            )
            .await
            .map_err(db_fault)?;
        Ok(())
    }

    async fn detach(&self, op: &Operation, vmid: u32, index: u8) -> Step<Applied> {
        if index >= MAX_NETS {
            return Err(fail("invalid", format!("index: {index} is out of range (0 to 31)")));
        }
        let key = format!("net{index}");
        let (lock, op) = self.lock(op, vmid).await?;
        let client = session(&lock)?;
        let node = self.locate(vmid).await?;
        ops::plan(client, op.id, &node, index, None).await.map_err(db_fault)?;
        for _ in 0..self.s.write_attempts.max(1) {
            let (config, digest) = self.config(&node, vmid).await?;
            let rows = self
                .pve
                .lxc_pending(&node, vmid)
                .await
                .map_err(|e| pve_fault("read pending", e))?;
            let entry = rows.iter().find(|r| r.key == key);
            let delete_pending = entry.is_some_and(|r| r.delete == Some(true));
            let exists = config.contains_key(&key) || entry.is_some_and(|r| r.value.is_some() || r.pending.is_some());
            if !exists || delete_pending {
                // Gone already, or its delete already waits for a restart.
                return self.after_detach(client, &node, vmid, index).await;
            }
            match self
                .pve
                .lxc_delete_config(&node, vmid, &[key.as_str()], Some(&digest))
                .await
            {
                Ok(()) => return self.after_detach(client, &node, vmid, index).await,
                Err(e) if is_digest_conflict(&e) => continue,
                Err(e) => return Err(pve_fault("write config", e)),
            }
        }
        Err(retry(format!(
            "the config of {vmid} kept changing under {} writes",
            self.s.write_attempts
        )))
    }

    /// Frees the pooled address and the MAC held for interface `index` of `vmid`.
    async fn release(&self, client: &tokio_postgres::Client, vmid: u32, index: u8) -> Step<()> {
        pool::release(client, vmid, index).await.map_err(db_fault)?;
        client
            .execute(
                "DELETE FROM net_macs WHERE vmid = $1 AND net_index = $2",
                &[&(vmid as i32), &i32::from(index)],
            )
            .await
            .map_err(db_fault)?;
        Ok(())
    }

    async fn after_detach(&self, client: &tokio_postgres::Client, node: &str, vmid: u32, index: u8) -> Step<Applied> {
        let key = format!("net{index}");
        let (pending, current) = self.pending(node, vmid).await?;
        let needs_reboot = current.contains_key(&key);
        if !needs_reboot {
            // Really gone: its address, MAC and binding are free again.
            self.release(client, vmid, index).await?;
            client
                .execute(
                    "DELETE FROM vnet_bindings WHERE vmid = $1 AND net_index = $2",
                    &[&(vmid as i32), &i32::from(index)],
                )
                .await
                .map_err(db_fault)?;
        }
        Ok(Applied {
            node: node.to_string(),
            index,
            line: None,
            pending,
            needs_reboot,
            applied_sdn: false,
        })
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
