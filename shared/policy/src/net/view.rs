//! What PVE's configs say about interfaces and VNets, reconciled with the fleet's records
//! (`vnet_bindings`, `net_ip_leases`), with every disagreement listed as drift.

use std::collections::BTreeMap;

use pvefleet_proxmox::client::PveClient;
use pvefleet_proxmox::client::api::ResourceType;
use pvefleet_proxmox::codec::net::{MAX_NETS, NetConfig};
use serde_json::{Value, json};

/// The interfaces of `vmid` as PVE has them (with pending changes), each with its binding and
/// lease, and the drift between the two. `None` when the container does not exist.
pub async fn container_network(
    pve: &PveClient,
    client: &tokio_postgres::Client,
    vmid: u32,
) -> anyhow::Result<Option<Value>> {
    let Some(node) = pve.lxc_node(vmid).await? else {
        return Ok(None);
    };
    let pending: BTreeMap<String, (Option<String>, Option<String>, bool)> = pve
        .lxc_pending(&node, vmid)
        .await?
        .into_iter()
        .map(|p| (p.key, (p.value, p.pending, p.delete == Some(true))))
        .collect();
    let bindings: BTreeMap<u8, String> = client
        .query(
            "SELECT net_index, vnet FROM vnet_bindings WHERE vmid = $1",
            &[&(vmid as i32)],
        )
        .await?
        .iter()
        .map(|r| (u8::try_from(r.get::<_, i32>(0)).unwrap_or(0), r.get(1)))
        .collect();
    let leases: BTreeMap<u8, (String, String)> = client
        .query(
            "SELECT net_index, pool, ip FROM net_ip_leases WHERE vmid = $1",
            &[&(vmid as i32)],
        )
        .await?
        .iter()
        .map(|r| (u8::try_from(r.get::<_, i32>(0)).unwrap_or(0), (r.get(1), r.get(2))))
        .collect();
    let mut interfaces = Vec::new();
    let mut drift = Vec::new();
    for index in 0..MAX_NETS {
        let key = format!("net{index}");
        let (current, pending_value, delete) = pending.get(&key).cloned().unwrap_or((None, None, false));
        let effective = pending_value.clone().or(current.clone());
        let binding = bindings.get(&index);
        let lease = leases.get(&index);
        let Some(line) = effective else {
            if let Some(vnet) = binding {
                drift.push(format!(
                    "{key}: bound to vnet '{vnet}' in the records, but the config has no {key}"
                ));
            }
            if let Some((pool, ip)) = lease {
                drift.push(format!(
                    "{key}: {ip} of pool '{pool}' is leased, but the config has no {key}"
                ));
            }
            continue;
        };
        let net = NetConfig::parse(&key, &line).ok();
        let bridge = net.as_ref().and_then(|n| n.bridge.clone());
        if let Some(vnet) = binding
            && bridge.as_deref() != Some(vnet.as_str())
        {
            drift.push(format!(
                "{key}: bound to vnet '{vnet}' in the records, but the config's bridge is {}",
                bridge.as_deref().unwrap_or("none")
            ));
        }
        if let Some((pool, ip)) = lease {
            let addr = net.as_ref().and_then(|n| n.ip.clone()).unwrap_or_default();
            if addr.split('/').next() != Some(ip.as_str()) {
                drift.push(format!(
                    "{key}: {ip} of pool '{pool}' is leased, but the config has ip={addr}"
                ));
            }
        }
        interfaces.push(json!({
            "interface": key,
            "line": line,
            "current": current,
            "pending": pending_value.is_some() || delete,
            "pending_delete": delete,
            "bridge": bridge,
            "hwaddr": net.as_ref().and_then(|n| n.hwaddr.clone()),
            "ip": net.as_ref().and_then(|n| n.ip.clone()),
            "vnet_binding": binding,
            "lease": lease.map(|(pool, ip)| json!({ "pool": pool, "ip": ip })),
        }));
    }
    Ok(Some(
        json!({ "vmid": vmid, "node": node, "interfaces": interfaces, "drift": drift }),
    ))
}

/// The containers with an interface on `vnet`, from every container's config, reconciled with
/// `vnet_bindings`: `bound` (both agree), `unrecorded` (only the config) or `stale` (only the
/// records).
pub async fn vnet_containers(pve: &PveClient, client: &tokio_postgres::Client, vnet: &str) -> anyhow::Result<Value> {
    let mut found: BTreeMap<(u32, u8), (String, String)> = BTreeMap::new();
    for r in pve.resources(Some(ResourceType::Vm)).await? {
        let (Some(vmid), Some(node)) = (r.vmid, r.node.clone()) else {
            continue;
        };
        if r.kind != "lxc" {
            continue;
        }
        let vmid = vmid as u32;
        let config = pve.lxc_config(&node, vmid, false).await?;
        for index in 0..MAX_NETS {
            let key = format!("net{index}");
            let Some(line) = config.get(&key).and_then(Value::as_str) else {
                continue;
            };
            if NetConfig::parse(&key, line).is_ok_and(|n| n.bridge.as_deref() == Some(vnet)) {
                found.insert((vmid, index), (node.clone(), line.to_string()));
            }
        }
    }
    let recorded: BTreeMap<(u32, u8), String> = client
        .query(
            "SELECT vmid, net_index, to_char(bound_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM vnet_bindings WHERE vnet = $1",
            &[&vnet],
        )
        .await?
        .iter()
        .map(|r| {
            (
                (r.get::<_, i32>(0) as u32, u8::try_from(r.get::<_, i32>(1)).unwrap_or(0)),
                r.get(2),
            )
        })
        .collect();
    let mut rows = Vec::new();
    let mut keys: Vec<(u32, u8)> = found.keys().chain(recorded.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    for k in keys {
        let (state, node, line) = match (found.get(&k), recorded.get(&k)) {
            (Some((node, line)), Some(_)) => ("bound", Some(node), Some(line)),
            (Some((node, line)), None) => ("unrecorded", Some(node), Some(line)),
            (None, _) => ("stale", None, None),
        };
        rows.push(json!({
            "vmid": k.0,
            "interface": format!("net{}", k.1),
            "node": node,
            "line": line,
            "state": state,
            "bound_at": recorded.get(&k),
        }));
    }
    Ok(json!({ "vnet": vnet, "containers": rows }))
}
