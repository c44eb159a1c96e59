//! The bridges a node has, `GET /nodes/{node}/network`, and a running container's interfaces.

use serde_json::{Value, json};
use std::collections::BTreeSet;

use crate::state::SimState;
use crate::{ApiError, param as get};

impl SimState {
    /// Bridges a node has: `vmbr0` and every applied SDN vnet.
    pub(crate) fn bridges(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .vnets
            .iter()
            .filter(|(_, v)| v.running.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        out.extend(self.config.bridges.iter().cloned());
        out
    }

    /// `GET /nodes/{node}/network`: the node's interfaces. `type=any_bridge` lists the bridges;
    /// `include_sdn` adds the applied vnets (type `vnet`), unless the last SDN apply failed
    /// on this node.
    pub(crate) fn node_network(&self, node: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.reachable(node)?;
        let kind = get(params, "type");
        let mut rows = Vec::new();
        if matches!(kind, None | Some("eth")) {
            rows.push(json!({ "iface": "eno1", "type": "eth", "active": 1, "exists": 1 }));
        }
        if matches!(
            kind,
            None | Some("bridge" | "any_bridge" | "any_local_bridge" | "include_sdn")
        ) {
            for bridge in &self.config.bridges {
                rows.push(json!({
                    "iface": bridge, "type": "bridge", "active": 1, "autostart": 1,
                    "bridge_ports": "eno1", "bridge_vlan_aware": 1, "families": ["inet"],
                }));
            }
        }
        if matches!(kind, Some("vnet" | "any_bridge" | "include_sdn")) && !self.sdn_errors.contains_key(node) {
            for (name, v) in self.vnets.iter().filter(|(_, v)| v.running.is_some()) {
                let zone = v
                    .running
                    .as_ref()
                    .and_then(|r| r.get("zone"))
                    .cloned()
                    .unwrap_or_default();
                rows.push(json!({ "iface": name, "type": "vnet", "active": 1, "zone": zone }));
            }
        }
        Ok(Value::Array(rows))
    }

    pub(super) fn interfaces(&self, node: &str, vmid: u32) -> Result<Value, ApiError> {
        let ct = self.ct(node, vmid)?;
        if !ct.running {
            return Err(ApiError::new(500, format!("CT {vmid} not running")));
        }
        let entry = |name: &str, mac: &str, ip: Option<&str>| {
            let mut v = json!({ "name": name, "hwaddr": mac, "hardware-address": mac, "ip-addresses": [] });
            if let Some((addr, prefix)) = ip.and_then(|ip| ip.split_once('/')) {
                v["inet"] = json!(ip);
                v["ip-addresses"] = json!([{ "ip-address": addr, "ip-address-type": "inet", "prefix": prefix.parse::<u32>().unwrap_or(0) }]);
            }
            v
        };
        let mut out = vec![entry("lo", "00:00:00:00:00:00", Some("127.0.0.1/8"))];
        for (_, net) in ct.config.main().nets() {
            let Ok(net) = net else { continue };
            out.push(entry(
                &net.name,
                net.hwaddr.as_deref().unwrap_or_default(),
                net.ip.as_deref(),
            ));
        }
        Ok(Value::Array(out))
    }
}
