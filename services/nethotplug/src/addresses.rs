//! The addresses and MACs nethotplug hands out: MACs noted and reserved, pool leases taken, settled and released.

use super::*;

impl Inner {
    /// Records the MACs a managed container's interfaces already have, so a generated or
    /// requested MAC is checked against them too.
    pub(crate) async fn note_macs(
        &self,
        client: &tokio_postgres::Client,
        vmid: u32,
        config: &Map<String, Value>,
    ) -> Step<()> {
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
    pub(crate) async fn forget_gone(
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
    pub(crate) async fn reserve_mac(
        &self,
        client: &tokio_postgres::Client,
        mac: &str,
        vmid: u32,
        index: u8,
    ) -> Step<bool> {
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

    pub(crate) async fn mac_for(
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
    pub(crate) async fn pooled(
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

    /// Keeps only the lease and MAC that interface `index` now has: an address or MAC it no
    /// longer uses (changed, or reserved for a change PVE refused) is free again.
    pub(crate) async fn settle(
        &self,
        client: &tokio_postgres::Client,
        vmid: u32,
        index: u8,
        net: &NetConfig,
    ) -> Step<()> {
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

    /// Frees the pooled address and the MAC held for interface `index` of `vmid`.
    pub(crate) async fn release(&self, client: &tokio_postgres::Client, vmid: u32, index: u8) -> Step<()> {
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
}
