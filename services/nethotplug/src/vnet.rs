//! SDN VNets: making sure a VNet is applied on every node before an interface is plugged
//! into it (pve-behaviour.md §5.13, §8), binding and unbinding, and the saga's
//! `vnet.ensure` and `vnet.remove`.

use pvefleet_contracts::StepError;
use pvefleet_contracts::messages::{NetInterface, VnetEnsure, VnetRemove};
use pvefleet_proxmox::client::sdn::VnetSpec;
use pvefleet_proxmox::codec::net::{MAX_NETS, NetConfig};
use serde_json::{Value, json};

use crate::ops::Operation;
use crate::{Applied, Fault, Inner, Step, db_fault, fail, pve_fault, retry, spec};

impl Inner {
    /// Makes sure `vnet` is applied: runs `PUT /cluster/sdn` when it has pending changes, then
    /// follows the zone's status on each of its nodes (every online node, or those the zone
    /// is restricted to). PVE reloads the nodes without waiting for them (pve-behaviour.md
    /// §5.13), so `pending` is waited for, up to `nethotplug.sdn_wait` (then retried); a node
    /// in `error` fails the operation, named. Returns whether an apply ran.
    pub(crate) async fn sdn_ready(&self, vnet: &str) -> Step<bool> {
        let vnets = self.pve.vnets().await.map_err(|e| pve_fault("read vnets", e))?;
        let Some(v) = vnets
            .into_iter()
            .find(|v| v.vnet == vnet && v.state.as_deref() != Some("deleted"))
        else {
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
        let restricted: Option<Vec<String>> = self
            .pve
            .sdn_zones()
            .await
            .map_err(|e| pve_fault("read SDN zones", e))?
            .into_iter()
            .find(|z| z.zone == zone)
            .and_then(|z| z.nodes)
            .map(|n| {
                n.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()
            });
        let nodes: Vec<String> = self
            .pve
            .nodes()
            .await
            .map_err(|e| pve_fault("read nodes", e))?
            .into_iter()
            .filter(|n| n.status == "online")
            .map(|n| n.node)
            .filter(|n| restricted.as_ref().is_none_or(|r| r.contains(n)))
            .collect();
        let deadline = tokio::time::Instant::now() + self.s.sdn_wait;
        loop {
            let (mut failed, mut waiting) = (Vec::new(), Vec::new());
            for node in &nodes {
                let zones = self
                    .pve
                    .node_sdn_zones(node)
                    .await
                    .map_err(|e| pve_fault("read SDN status", e))?;
                match zones.iter().find(|z| z.zone == zone).map(|z| z.status.as_str()) {
                    Some("available") => {}
                    Some("error") => failed.push(node.clone()),
                    _ => waiting.push(node.clone()),
                }
            }
            if !failed.is_empty() {
                let mut why = Vec::new();
                for node in &failed {
                    let msg = self
                        .pve
                        .node_sdn_vnets(node, &zone)
                        .await
                        .ok()
                        .and_then(|vs| vs.into_iter().find(|x| x.vnet == vnet))
                        .and_then(|x| x.statusmsg);
                    if let Some(msg) = msg {
                        why.push(format!("{node}: {msg}"));
                    }
                }
                let mut message = format!(
                    "SDN zone '{zone}' of vnet '{vnet}' failed to apply on node(s) {}",
                    failed.join(", ")
                );
                if !why.is_empty() {
                    message.push_str(&format!(" ({})", why.join("; ")));
                }
                return Err(Fault::Fail(StepError::new("sdn.apply_failed", message), failed));
            }
            if waiting.is_empty() {
                return Ok(applied);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(retry(format!(
                    "SDN zone '{zone}' is still pending on {}",
                    waiting.join(", ")
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    pub(crate) async fn bind(&self, op: &Operation, vnet: &str, vmid: u32, iface: &NetInterface) -> Step<Applied> {
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

    pub(crate) async fn unbind(&self, op: &Operation, vnet: &str, vmid: u32, index: Option<u8>) -> Step<Applied> {
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
        // Only the interface on this VNet: a stale record or a wrong index must not remove
        // another interface.
        let node = self.locate(vmid).await?;
        let (config, _) = self.config(&node, vmid).await?;
        let key = format!("net{index}");
        if let Some(line) = config.get(&key).and_then(Value::as_str) {
            let bridge = NetConfig::parse(&key, line).ok().and_then(|n| n.bridge);
            if bridge.as_deref() != Some(vnet) {
                return Err(fail(
                    "conflict",
                    format!(
                        "{key} of container {vmid} is on {}, not on vnet '{vnet}'",
                        bridge.as_deref().unwrap_or("no bridge")
                    ),
                ));
            }
        }
        self.detach(op, vmid, index).await
    }

    pub(crate) async fn ensure(&self, op: &Operation, cmd: &VnetEnsure) -> Step<bool> {
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

    pub(crate) async fn remove(&self, cmd: &VnetRemove) -> Step<()> {
        let vnets = self.pve.vnets().await.map_err(|e| pve_fault("read vnets", e))?;
        let Some(v) = vnets.iter().find(|v| v.vnet == cmd.vnet) else {
            return Ok(());
        };
        // Never a VNet something uses: a container's config, or a binding on record.
        let client = self.db().await?;
        let users = crate::view::vnet_containers(&self.pve, &client, &cmd.vnet)
            .await
            .map_err(|e| retry(format!("cannot list the users of vnet '{}': {e:#}", cmd.vnet)))?;
        let used_by: Vec<String> = users["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{}/{}", c["vmid"], c["interface"].as_str().unwrap_or("?")))
            .collect();
        if !used_by.is_empty() {
            return Err(fail(
                "vnet.in_use",
                format!(
                    "vnet '{}' is in use by {}; it is not removed",
                    cmd.vnet,
                    used_by.join(", ")
                ),
            ));
        }
        if v.state.as_deref() != Some("deleted") {
            match self.pve.vnet_delete(&cmd.vnet).await {
                // Gone since it was read: what a removal wants.
                Err(e) if e.reason == pvefleet_proxmox::client::Reason::NotFound => {}
                other => other.map_err(|e| pve_fault("delete vnet", e))?,
            }
        }
        self.pve.sdn_apply().await.map_err(|e| pve_fault("apply SDN", e))?;
        Ok(())
    }
}
