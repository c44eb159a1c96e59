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

pub mod check;
pub mod ops;
pub mod pool;
pub mod spec;
pub mod view;

use std::sync::Arc;

use async_trait::async_trait;
use pvefleet_contracts::messages::{
    MessageParked, NetAttach, NetAttached, NetDetach, NetDetached, NetInterface, NetOperationFailed, NetUpdate,
    NetUpdated, VnetBind, VnetBound, VnetEnsure, VnetEnsured, VnetRemove, VnetRemoved, VnetUnbind, VnetUnbound,
};
use pvefleet_contracts::{StepError, Vmid};
use pvefleet_core::bus::{Context, Handler, Outcome, Router};
use pvefleet_core::config::NethotplugSettings;
use pvefleet_core::db::VmidLock;
use pvefleet_proxmox::client::api::ResourceType;
use pvefleet_proxmox::client::sdn::VnetSpec;
use pvefleet_proxmox::client::{Params, PveClient, PveError};
use pvefleet_proxmox::codec::net::{MAX_NETS, NetConfig};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ops::Operation;

/// How a step went wrong: a failure to report, or a transient fault to retry.
#[derive(Debug)]
pub enum Fault {
    /// Definitive: the operation fails (with the nodes where an SDN apply failed).
    Fail(StepError, Vec<String>),
    /// Transient: the command is retried through the wait tiers.
    Retry(String),
}

type Step<T> = Result<T, Fault>;

fn fail(code: &str, message: impl Into<String>) -> Fault {
    Fault::Fail(StepError::new(code, message), Vec::new())
}

fn pve_fault(step: &str, e: PveError) -> Fault {
    match pvefleet_core::pve::outcome(step, e) {
        Outcome::Fail(err) => Fault::Fail(err, Vec::new()),
        Outcome::Retry { error, .. } => Fault::Retry(error),
        other => Fault::Retry(format!("{step}: {other:?}")),
    }
}

fn db_fault(e: impl std::fmt::Display) -> Fault {
    Fault::Retry(format!("database: {e}"))
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

    async fn lock(&self, vmid: u32) -> Step<VmidLock> {
        VmidLock::acquire(&self.pool, vmid, self.s.lock_timeout)
            .await
            .map_err(|e| Fault::Retry(format!("cannot lock vmid {vmid}: {e:#}")))
    }

    /// The node container `vmid` is on.
    async fn locate(&self, vmid: u32) -> Step<String> {
        let rows = self
            .pve
            .resources(Some(ResourceType::Vm))
            .await
            .map_err(|e| pve_fault("locate", e))?;
        match rows.into_iter().find(|r| r.vmid == Some(u64::from(vmid))) {
            Some(r) if r.kind == "lxc" => Ok(r.node.unwrap_or_default()),
            Some(r) => Err(fail(
                "container.not_found",
                format!("vmid {vmid} is a {}, not a container", r.kind),
            )),
            None => Err(fail("container.not_found", format!("container {vmid} does not exist"))),
        }
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
            if now != line {
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
        Err(Fault::Retry("no free MAC found in 16 tries".into()))
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
            Err(e) => Err(db_fault(format!("{e:#}"))),
        }
    }

    /// Checks that `bridge` exists on `node` (`GET /nodes/{node}/network`).
    async fn check_bridge(&self, node: &str, bridge: &str) -> Step<()> {
        let bridges = self
            .pve
            .node_bridges(node)
            .await
            .map_err(|e| pve_fault("read node network", e))?;
        if bridges.iter().any(|b| b.iface == bridge) {
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
        let _lock = self.lock(vmid).await?;
        let node = self.locate(vmid).await?;
        if iface.vnet.is_none() {
            self.check_bridge(&node, &bridge).await?;
        }
        let client = self.db().await?;
        let mut planned = op.net_index.zip(op.line.clone());
        for _ in 0..self.s.write_attempts.max(1) {
            let (config, digest) = self.config(&node, vmid).await?;
            if let Some((index, line)) = &planned
                && let Some(now) = config.get(&format!("net{index}")).and_then(Value::as_str)
            {
                // A redelivery, or a retry after the write: the interface with our MAC is ours.
                if same_mac(now, line) {
                    return self.classify(&node, vmid, *index, Some(now)).await;
                }
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
            let earlier_mac = planned
                .as_ref()
                .filter(|(i, _)| *i == index)
                .and_then(|(_, l)| NetConfig::parse("net", l).ok())
                .and_then(|n| n.hwaddr);
            let mac = self
                .mac_for(&client, iface.hwaddr.as_deref().or(earlier_mac.as_deref()), vmid, index)
                .await?;
            let ip = self.pooled(&client, iface, &bridge, vmid, index, op.id).await?;
            let net = spec::build(
                iface,
                index,
                Some(&mac),
                ip.as_ref().map(|(a, g)| (a.as_str(), g.as_deref())),
            );
            let line = net.to_property_string();
            let key = format!("net{index}");
            ops::plan(&client, op.id, &node, index, Some(&line))
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
                    self.release(&client, vmid, index).await?;
                    return Err(Fault::Fail(err, nodes));
                }
                Err(retry) => return Err(retry),
            }
        }
        Err(Fault::Retry(format!(
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
        let key = format!("net{index}");
        let _lock = self.lock(vmid).await?;
        let node = self.locate(vmid).await?;
        if let (Some(b), None) = (&changes.bridge, &changes.vnet) {
            self.check_bridge(&node, b).await?;
        }
        let client = self.db().await?;
        for _ in 0..self.s.write_attempts.max(1) {
            let (config, digest) = self.config(&node, vmid).await?;
            let Some(old) = config.get(&key).and_then(Value::as_str) else {
                return Err(fail("not_found", format!("{key} does not exist on container {vmid}")));
            };
            let old_net = NetConfig::parse(&key, old).map_err(|e| fail("invalid", e.to_string()))?;
            let bridge = spec::bridge_of(changes)
                .or(old_net.bridge.as_deref())
                .unwrap_or_default()
                .to_string();
            let ip = self.pooled(&client, changes, &bridge, vmid, index, op.id).await?;
            let mut merged = spec::merge(&old_net, changes);
            if let Some((addr, gw)) = ip {
                merged.ip = Some(addr);
                if changes.gw.is_none() {
                    merged.gw = gw;
                }
            }
            if let Some(mac) = &changes.hwaddr
                && !self
                    .reserve_mac(&client, &mac.to_ascii_uppercase(), vmid, index)
                    .await?
            {
                return Err(fail(
                    "hwaddr.taken",
                    format!("hwaddr: {mac} is in use by another managed container"),
                ));
            }
            let line = merged.to_property_string();
            if op.line.as_deref() == Some(line.as_str()) && old == line {
                return self.classify(&node, vmid, index, Some(&line)).await;
            }
            ops::plan(&client, op.id, &node, index, Some(&line))
                .await
                .map_err(db_fault)?;
            if old == line {
                return self.classify(&node, vmid, index, Some(&line)).await;
            }
            if self
                .write(&node, vmid, &key, Params::new().set(&key, &line), &digest)
                .await?
            {
                return self.classify(&node, vmid, index, Some(&line)).await;
            }
        }
        Err(Fault::Retry(format!(
            "the config of {vmid} kept changing under {} writes",
            self.s.write_attempts
        )))
    }

    async fn detach(&self, op: &Operation, vmid: u32, index: u8) -> Step<Applied> {
        if index >= MAX_NETS {
            return Err(fail("invalid", format!("index: {index} is out of range (0 to 31)")));
        }
        let key = format!("net{index}");
        let _lock = self.lock(vmid).await?;
        let node = self.locate(vmid).await?;
        let client = self.db().await?;
        ops::plan(&client, op.id, &node, index, None).await.map_err(db_fault)?;
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
                return self.after_detach(&client, &node, vmid, index).await;
            }
            match self
                .pve
                .lxc_delete_config(&node, vmid, &[key.as_str()], Some(&digest))
                .await
            {
                Ok(()) => return self.after_detach(&client, &node, vmid, index).await,
                Err(e) if is_digest_conflict(&e) => continue,
                Err(e) => return Err(pve_fault("write config", e)),
            }
        }
        Err(Fault::Retry(format!(
            "the config of {vmid} kept changing under {} writes",
            self.s.write_attempts
        )))
    }

    /// Frees the pooled address and the MAC held for interface `index` of `vmid`.
    async fn release(&self, client: &tokio_postgres::Client, vmid: u32, index: u8) -> Step<()> {
        pool::release(client, vmid, index)
            .await
            .map_err(|e| db_fault(format!("{e:#}")))?;
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

    /// Makes sure `vnet` is applied: runs `PUT /cluster/sdn` when it has pending changes, then
    /// reads every node's status of its zone. A node where it is not available fails the
    /// operation, named. Returns whether an apply ran.
    async fn sdn_ready(&self, vnet: &str) -> Step<bool> {
        let vnets = self.pve.vnets().await.map_err(|e| pve_fault("read vnets", e))?;
        let Some(v) = vnets.into_iter().find(|v| v.vnet == vnet) else {
            return Err(fail("vnet.not_found", format!("vnet: '{vnet}' does not exist")));
        };
        let zone = v
            .zone
            .clone()
            .or_else(|| v.pending.as_ref()?.get("zone")?.as_str().map(str::to_string))
            .unwrap_or_default();
        let applied = if v.state.is_some() {
            tracing::info!(vnet, "The VNet has pending changes; applying SDN first.");
            // A task that ends in error is a failure of `wait_task`.
            self.pve.sdn_apply().await.map_err(|e| pve_fault("apply SDN", e))?;
            true
        } else {
            false
        };
        let nodes = self.pve.nodes().await.map_err(|e| pve_fault("read nodes", e))?;
        let mut failed = Vec::new();
        for n in nodes.iter().filter(|n| n.status == "online") {
            let zones = self
                .pve
                .node_sdn_zones(&n.node)
                .await
                .map_err(|e| pve_fault("read SDN status", e))?;
            let ok = zones
                .iter()
                .find(|z| z.zone == zone)
                .is_some_and(|z| z.status == "available");
            if !ok {
                failed.push(n.node.clone());
            }
        }
        if !failed.is_empty() {
            return Err(Fault::Fail(
                StepError::new(
                    "sdn.apply_failed",
                    format!(
                        "SDN zone '{zone}' of vnet '{vnet}' is not available on node(s) {}",
                        failed.join(", ")
                    ),
                ),
                failed,
            ));
        }
        Ok(applied)
    }

    async fn bind(&self, op: &Operation, vnet: &str, vmid: u32, iface: &NetInterface) -> Step<Applied> {
        spec::check_vnet(vnet).map_err(|e| fail("invalid", e.to_string()))?;
        let applied_sdn = self.sdn_ready(vnet).await?;
        let iface = NetInterface {
            vnet: Some(vnet.to_string()),
            bridge: None,
            ..iface.clone()
        };
        let mut done = self.attach(op, vmid, &iface).await?;
        done.applied_sdn = applied_sdn;
        let mac = done
            .line
            .as_deref()
            .and_then(|l| NetConfig::parse("net", l).ok())
            .and_then(|n| n.hwaddr);
        let client = self.db().await?;
        client
            .execute(
                "INSERT INTO vnet_bindings (vnet, vmid, net_index, hwaddr, operation_id) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (vmid, net_index) DO UPDATE SET vnet = excluded.vnet, hwaddr = excluded.hwaddr,
                     operation_id = excluded.operation_id, bound_at = now()",
                &[&vnet, &(vmid as i32), &i32::from(done.index), &mac, &op.id],
            )
            .await
            .map_err(db_fault)?;
        Ok(done)
    }

    async fn unbind(&self, op: &Operation, vnet: &str, vmid: u32, index: Option<u8>) -> Step<Applied> {
        let index = match index.or(op.net_index) {
            Some(i) => i,
            None => {
                let client = self.db().await?;
                let bound: Option<i32> = client
                    .query_opt(
                        "SELECT net_index FROM vnet_bindings WHERE vnet = $1 AND vmid = $2 ORDER BY net_index LIMIT 1",
                        &[&vnet, &(vmid as i32)],
                    )
                    .await
                    .map_err(db_fault)?
                    .map(|r| r.get(0));
                match bound {
                    Some(i) => u8::try_from(i).unwrap_or(0),
                    None => {
                        // Not recorded: look for it in the config (a binding made outside the fleet).
                        let node = self.locate(vmid).await?;
                        let (config, _) = self.config(&node, vmid).await?;
                        let found = (0..MAX_NETS).find(|i| {
                            config
                                .get(&format!("net{i}"))
                                .and_then(Value::as_str)
                                .and_then(|l| NetConfig::parse("net", l).ok())
                                .is_some_and(|n| n.bridge.as_deref() == Some(vnet))
                        });
                        match found {
                            Some(i) => i,
                            None => {
                                return Err(fail(
                                    "not_found",
                                    format!("container {vmid} has no interface on vnet '{vnet}'"),
                                ));
                            }
                        }
                    }
                }
            }
        };
        self.detach(op, vmid, index).await
    }

    async fn ensure(&self, op: &Operation, cmd: &VnetEnsure) -> Step<bool> {
        spec::check_vnet(&cmd.vnet).map_err(|e| fail("invalid", e.to_string()))?;
        let vnets = self.pve.vnets().await.map_err(|e| pve_fault("read vnets", e))?;
        let created_before = op
            .result
            .as_ref()
            .and_then(|r| r.get("created"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let exists = vnets
            .iter()
            .any(|v| v.vnet == cmd.vnet && v.state.as_deref() != Some("deleted"));
        let created = if exists {
            created_before
        } else {
            // Recorded first: a redelivery after the create must still know it was ours.
            let client = self.db().await?;
            client
                .execute(
                    "UPDATE net_operations SET result = $2 WHERE id = $1",
                    &[&op.id, &json!({ "created": true })],
                )
                .await
                .map_err(db_fault)?;
            let spec = VnetSpec {
                zone: cmd.zone.clone(),
                tag: cmd.tag,
                alias: Some(format!("pvefleet operation {}", op.id)),
                vlanaware: None,
            };
            self.pve
                .vnet_create(&cmd.vnet, &spec)
                .await
                .map_err(|e| pve_fault("create vnet", e))?;
            true
        };
        self.sdn_ready(&cmd.vnet).await?;
        Ok(created)
    }

    async fn remove(&self, cmd: &VnetRemove) -> Step<()> {
        let vnets = self.pve.vnets().await.map_err(|e| pve_fault("read vnets", e))?;
        let Some(v) = vnets.iter().find(|v| v.vnet == cmd.vnet) else {
            return Ok(());
        };
        if v.state.as_deref() != Some("deleted") {
            self.pve
                .vnet_delete(&cmd.vnet)
                .await
                .map_err(|e| pve_fault("delete vnet", e))?;
        }
        self.pve.sdn_apply().await.map_err(|e| pve_fault("apply SDN", e))?;
        Ok(())
    }

    /// Takes an operation up; `Err` is the outcome when the database cannot be reached.
    async fn start(
        &self,
        id: Uuid,
        kind: &str,
        vmid: Option<u32>,
        vnet: Option<&str>,
        request: &Value,
    ) -> Result<Operation, Outcome> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| Outcome::retry(format!("database: {e}")))?;
        ops::start(&client, id, kind, vmid, vnet, request)
            .await
            .map_err(|e| Outcome::retry(format!("database: {e}")))
    }

    /// Ends an operation as the step went, and reports it.
    async fn conclude(&self, ctx: &Context<'_>, op: &Operation, result: Step<Applied>) -> Outcome {
        match result {
            Ok(done) => {
                let Ok(client) = self.pool.get().await else {
                    return Outcome::retry("database unreachable");
                };
                let extra = done.applied_sdn.then(|| json!({ "applied_sdn": true }));
                if let Err(e) =
                    ops::finish(&client, op.id, done.status(), &done.pending, &[], None, extra.as_ref()).await
                {
                    return Outcome::retry(format!("database: {e}"));
                }
                let _ = ops::count_event(&client, success_event(&op.kind), done.status()).await;
                if done.needs_reboot {
                    tracing::info!(operation = %op.id, kind = %op.kind, pending = ?done.pending, "Left pending until the container restarts.");
                }
                emit_done(ctx, op, &done).await
            }
            Err(Fault::Retry(e)) => Outcome::retry(e),
            Err(Fault::Fail(err, nodes)) => self.failed(ctx, op, err, nodes).await,
        }
    }

    async fn failed(&self, ctx: &Context<'_>, op: &Operation, err: StepError, nodes: Vec<String>) -> Outcome {
        let Ok(client) = self.pool.get().await else {
            return Outcome::retry("database unreachable");
        };
        let error = json!({ "code": err.code, "message": err.message });
        if let Err(e) = ops::finish(&client, op.id, "failed", &[], &nodes, Some(&error), None).await {
            return Outcome::retry(format!("database: {e}"));
        }
        let _ = ops::count_event(&client, success_event(&op.kind), "failed").await;
        tracing::warn!(operation = %op.id, kind = %op.kind, code = %err.code, error = %err.message, "Network operation failed.");
        emit(ctx, op.id, &failure(op, err, nodes)).await
    }
}

/// Publishes an operation's event, with the operation's id as its correlation id (a saga's
/// step is an operation of its own, named in the saga).
async fn emit<M: pvefleet_contracts::Message>(ctx: &Context<'_>, op: Uuid, msg: &M) -> Outcome {
    let mut origin = ctx.origin();
    origin.correlation_id = Some(op);
    let out = match pvefleet_core::bus::Outgoing::message(msg, &origin) {
        Ok(o) => o,
        Err(e) => return Outcome::retry(format!("cannot encode {}: {e}", M::TYPE)),
    };
    match ctx.publisher.publish(&out).await {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::retry(format!("cannot send {}: {e}", M::TYPE)),
    }
}

fn same_mac(a: &str, b: &str) -> bool {
    let mac = |l: &str| NetConfig::parse("net", l).ok().and_then(|n| n.hwaddr);
    matches!((mac(a), mac(b)), (Some(x), Some(y)) if x.eq_ignore_ascii_case(&y))
}

fn failure(op: &Operation, error: StepError, nodes: Vec<String>) -> NetOperationFailed {
    NetOperationFailed {
        operation_id: op.id,
        kind: op.kind.clone(),
        vmid: op.vmid.map(Vmid),
        vnet: op.vnet.clone(),
        nodes,
        error,
    }
}

/// Sends the event of a successful operation.
async fn emit_done(ctx: &Context<'_>, op: &Operation, done: &Applied) -> Outcome {
    let vmid = Vmid(op.vmid.unwrap_or_default());
    let status = if done.needs_reboot { "pending_reboot" } else { "live" }.to_string();
    macro_rules! ev {
        ($ty:ident) => {
            emit(
                ctx,
                op.id,
                &$ty {
                    operation_id: op.id,
                    vmid,
                    node: done.node.clone(),
                    index: done.index,
                    line: done.line.clone(),
                    vnet: op.vnet.clone(),
                    status,
                    pending: done.pending.clone(),
                },
            )
            .await
        };
    }
    match op.kind.as_str() {
        "net.attach" => ev!(NetAttached),
        "net.update" => ev!(NetUpdated),
        "net.detach" => ev!(NetDetached),
        "vnet.bind" => ev!(VnetBound),
        "vnet.unbind" => ev!(VnetUnbound),
        other => Outcome::reject(format!("no event for {other}")),
    }
}

/// An operation that has ended already (a redelivery): its event again, from the record.
async fn replay(ctx: &Context<'_>, op: &Operation) -> Outcome {
    if op.status == "failed" {
        let err = op
            .error
            .as_ref()
            .and_then(|e| serde_json::from_value::<StepError>(e.clone()).ok())
            .unwrap_or_else(|| StepError::new("failed", "failed earlier"));
        return emit(ctx, op.id, &failure(op, err, op.failed_nodes.clone())).await;
    }
    match op.kind.as_str() {
        "vnet.ensure" => {
            let created = op
                .result
                .as_ref()
                .and_then(|r| r.get("created"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            emit(
                ctx,
                op.id,
                &VnetEnsured {
                    operation_id: op.id,
                    vnet: op.vnet.clone().unwrap_or_default(),
                    created,
                },
            )
            .await
        }
        "vnet.remove" => {
            emit(
                ctx,
                op.id,
                &VnetRemoved {
                    operation_id: op.id,
                    vnet: op.vnet.clone().unwrap_or_default(),
                },
            )
            .await
        }
        _ => {
            let done = Applied {
                node: op.node.clone().unwrap_or_default(),
                index: op.net_index.unwrap_or_default(),
                line: if op.kind.ends_with("detach") || op.kind.ends_with("unbind") {
                    None
                } else {
                    op.line.clone()
                },
                pending: op.pending_keys.clone(),
                needs_reboot: op.status == "pending_reboot",
                applied_sdn: false,
            };
            emit_done(ctx, op, &done).await
        }
    }
}

/// Takes the command's operation up, or answers a redelivery of an ended one from its record.
macro_rules! take_up {
    ($me:expr, $ctx:expr, $ty:ident, $cmd:expr, $vmid:expr, $vnet:expr) => {{
        let request = serde_json::to_value(&$cmd).unwrap_or(Value::Null);
        let op = match $me
            .start(
                $cmd.operation_id,
                <$ty as pvefleet_contracts::Message>::TYPE,
                $vmid,
                $vnet,
                &request,
            )
            .await
        {
            Ok(op) => op,
            Err(o) => return o,
        };
        if ops::is_final(&op.status) {
            return replay($ctx, &op).await;
        }
        op
    }};
}

#[async_trait]
impl Handler<NetAttach> for Nethotplug {
    async fn handle(&self, cmd: NetAttach, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let op = take_up!(me, ctx, NetAttach, cmd, Some(cmd.vmid.0), cmd.iface.vnet.as_deref());
        let result = me.attach(&op, cmd.vmid.0, &cmd.iface).await;
        me.conclude(ctx, &op, result).await
    }
}

#[async_trait]
impl Handler<NetUpdate> for Nethotplug {
    async fn handle(&self, cmd: NetUpdate, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let op = take_up!(me, ctx, NetUpdate, cmd, Some(cmd.vmid.0), None);
        let result = me.update(&op, cmd.vmid.0, cmd.index, &cmd.changes).await;
        me.conclude(ctx, &op, result).await
    }
}

#[async_trait]
impl Handler<NetDetach> for Nethotplug {
    async fn handle(&self, cmd: NetDetach, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let op = take_up!(me, ctx, NetDetach, cmd, Some(cmd.vmid.0), None);
        let result = me.detach(&op, cmd.vmid.0, cmd.index).await;
        me.conclude(ctx, &op, result).await
    }
}

#[async_trait]
impl Handler<VnetBind> for Nethotplug {
    async fn handle(&self, cmd: VnetBind, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let op = take_up!(me, ctx, VnetBind, cmd, Some(cmd.vmid.0), Some(cmd.vnet.as_str()));
        let result = me.bind(&op, &cmd.vnet, cmd.vmid.0, &cmd.iface).await;
        me.conclude(ctx, &op, result).await
    }
}

#[async_trait]
impl Handler<VnetUnbind> for Nethotplug {
    async fn handle(&self, cmd: VnetUnbind, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let op = take_up!(me, ctx, VnetUnbind, cmd, Some(cmd.vmid.0), Some(cmd.vnet.as_str()));
        let result = me.unbind(&op, &cmd.vnet, cmd.vmid.0, cmd.index).await;
        me.conclude(ctx, &op, result).await
    }
}

#[async_trait]
impl Handler<VnetEnsure> for Nethotplug {
    async fn handle(&self, cmd: VnetEnsure, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let op = take_up!(me, ctx, VnetEnsure, cmd, None, Some(cmd.vnet.as_str()));
        match me.ensure(&op, &cmd).await {
            Ok(created) => {
                let Ok(client) = me.pool.get().await else {
                    return Outcome::retry("database unreachable");
                };
                let result = json!({ "created": created });
                if let Err(e) = ops::finish(&client, op.id, "succeeded", &[], &[], None, Some(&result)).await {
                    return Outcome::retry(format!("database: {e}"));
                }
                let _ = ops::count_event(&client, "vnet.ensured", "succeeded").await;
                emit(
                    ctx,
                    op.id,
                    &VnetEnsured {
                        operation_id: op.id,
                        vnet: cmd.vnet.clone(),
                        created,
                    },
                )
                .await
            }
            Err(Fault::Retry(e)) => Outcome::retry(e),
            Err(Fault::Fail(err, nodes)) => me.failed(ctx, &op, err, nodes).await,
        }
    }
}

#[async_trait]
impl Handler<VnetRemove> for Nethotplug {
    async fn handle(&self, cmd: VnetRemove, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let op = take_up!(me, ctx, VnetRemove, cmd, None, Some(cmd.vnet.as_str()));
        match me.remove(&cmd).await {
            Ok(()) => {
                let Ok(client) = me.pool.get().await else {
                    return Outcome::retry("database unreachable");
                };
                if let Err(e) = ops::finish(&client, op.id, "succeeded", &[], &[], None, None).await {
                    return Outcome::retry(format!("database: {e}"));
                }
                let _ = ops::count_event(&client, "vnet.removed", "succeeded").await;
                emit(
                    ctx,
                    op.id,
                    &VnetRemoved {
                        operation_id: op.id,
                        vnet: cmd.vnet.clone(),
                    },
                )
                .await
            }
            Err(Fault::Retry(e)) => Outcome::retry(e),
            Err(Fault::Fail(err, nodes)) => me.failed(ctx, &op, err, nodes).await,
        }
    }
}

/// The network commands: a parked one leaves its operation `parked`.
const COMMANDS: [&str; 7] = [
    "net.attach",
    "net.update",
    "net.detach",
    "vnet.bind",
    "vnet.unbind",
    "vnet.ensure",
    "vnet.remove",
];

/// A network command that gave up and was parked: its operation (the message's correlation
/// id; for a saga's step, the saga's operation) becomes `parked`, naming the dead letter, so
/// `GET /v1/operations/{id}` does not say `running` for ever. It is not an end: a replay of the
/// dead letter takes the operation up again.
#[async_trait]
impl Handler<MessageParked> for Nethotplug {
    async fn handle(&self, msg: MessageParked, _ctx: &Context<'_>) -> Outcome {
        let (Some(op), Some(kind)) = (msg.correlation_id, msg.message_type.as_deref()) else {
            return Outcome::Ok;
        };
        if !COMMANDS.contains(&kind) {
            return Outcome::Ok;
        }
        let Ok(client) = self.inner.pool.get().await else {
            return Outcome::retry("database unreachable");
        };
        let error = json!({
            "code": "parked",
            "message": format!(
                "{kind} was parked ({}); see pvefleet dlq show {}, and replay it when the cause is fixed",
                msg.fault_class, msg.dead_letter_id
            ),
            "dead_letter_id": msg.dead_letter_id,
        });
        match client
            .execute(
                "UPDATE net_operations SET status = 'parked', error = $2, updated_at = now()
                 WHERE id = $1 AND status IN ('pending', 'running')",
                &[&op, &error],
            )
            .await
        {
            Ok(n) => {
                if n > 0 {
                    tracing::warn!(operation = %op, kind, dead_letter = %msg.dead_letter_id, "A network command was parked; its operation waits for an operator.");
                }
                Outcome::Ok
            }
            Err(e) => Outcome::retry(format!("database: {e}")),
        }
    }
}

/// Runs nethotplug until `shutdown`: its queue, without the inbox (a PVE write can outlast any
/// transaction; every handler is idempotent through its operation record instead).
pub async fn run(
    settings: &pvefleet_core::Settings,
    pool: deadpool_postgres::Pool,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use pvefleet_core::bus::runner::{WorkerDeps, WorkerSpec, run_worker};
    spec::check_mac_prefix(&settings.nethotplug.mac_prefix).map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, p) in &settings.nethotplug.pools {
        pool::range(p).map_err(|e| anyhow::anyhow!("nethotplug.pools.{name}: {e}"))?;
    }
    let pve = pvefleet_core::pve::client(&settings.pve)?;
    let topology = pvefleet_core::bus::topology::Topology::fleet(&settings.bus);
    let publisher = pvefleet_core::bus::Publisher::new(&settings.bus, "nethotplug", Some(topology.clone()));
    let service = Nethotplug::new(pve, pool, settings.nethotplug.clone());
    let queue = pvefleet_contracts::routing::work_queue("nethotplug");
    let spec = WorkerSpec::from_settings("nethotplug", &queue, settings);
    let deps = WorkerDeps {
        bus: settings.bus.clone(),
        topology,
        publisher,
        db: None,
        ready,
    };
    run_worker(deps, service.router(), spec, shutdown).await
}
