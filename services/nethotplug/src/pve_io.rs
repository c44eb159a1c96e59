//! What the handlers read from and write to PVE: locating a container, its config and pending changes, how PVE took a change, the digest-guarded write, and the node's bridges.

use super::*;

impl Inner {
    /// The node container `vmid` is on.
    pub(crate) async fn locate(&self, vmid: u32) -> Step<String> {
        self.pve
            .lxc_node(vmid)
            .await
            .map_err(|e| pve_fault("locate", e))?
            .ok_or_else(|| fail("container.not_found", format!("container {vmid} does not exist")))
    }

    /// The config (pending values merged in, as PVE answers it) and its digest.
    pub(crate) async fn config(&self, node: &str, vmid: u32) -> Step<(Map<String, Value>, String)> {
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
    pub(crate) async fn pending(&self, node: &str, vmid: u32) -> Step<(Vec<String>, Map<String, Value>)> {
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
    pub(crate) async fn classify(&self, node: &str, vmid: u32, index: u8, line: Option<&str>) -> Step<Applied> {
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
    pub(crate) async fn write(&self, node: &str, vmid: u32, key: &str, params: Params, digest: &str) -> Step<bool> {
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

    /// Checks that `bridge` exists on `node` (`GET /nodes/{node}/network`).
    pub(crate) async fn check_bridge(&self, node: &str, bridge: &str) -> Step<()> {
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
}
