//! Attach, update and detach: one interface of a running container, each under the vmid lock and guarded by the config digest.

use super::*;

impl Inner {
    pub(crate) async fn attach(&self, op: &Operation, vmid: u32, iface: &NetInterface) -> Step<Applied> {
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

    pub(crate) async fn update(&self, op: &Operation, vmid: u32, index: u8, changes: &NetInterface) -> Step<Applied> {
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

    pub(crate) async fn detach(&self, op: &Operation, vmid: u32, index: u8) -> Step<Applied> {
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

    pub(crate) async fn after_detach(
        &self,
        client: &tokio_postgres::Client,
        node: &str,
        vmid: u32,
        index: u8,
    ) -> Step<Applied> {
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
