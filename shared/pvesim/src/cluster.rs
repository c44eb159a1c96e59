//! Cluster and node reads (`/cluster/resources`, node status, storage content), access
//! (tickets, permissions), and the privilege checks every handler makes.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{Value, json};

use crate::state::{Cached, SimState};
use crate::{ApiError, param as get};

/// How long a rendered `/cluster/resources` stays valid while nothing changes; PVE's own
/// figures come from the status broadcast, about 10 s old.
const RESOURCES_TTL: Duration = Duration::from_secs(1);

impl SimState {
    /// 403 unless the caller holds `privilege` (pvesim grants per cluster, on `/`).
    pub(crate) fn require(&self, path: &str, privilege: &str) -> Result<(), ApiError> {
        if self.config.privileges.iter().any(|p| p == privilege) {
            Ok(())
        } else {
            Err(ApiError::new(
                403,
                format!("Permission check failed ({path}, {privilege})"),
            ))
        }
    }

    /// `GET /cluster/resources[?type=...]`, the whole envelope, rendered once per change, and
    /// gzipped once when asked (PVE gzips answers over 1 KiB for clients that accept it).
    /// Returns the body and whether it is gzipped.
    pub(crate) fn resources(&mut self, kind: Option<&str>, gzip: bool) -> (Bytes, bool) {
        let key = kind.unwrap_or("").to_string();
        let fresh = self
            .resources_cache
            .get(&key)
            .is_some_and(|c| c.generation == self.generation && c.at.elapsed() < RESOURCES_TTL);
        if !fresh {
            let rows = self.resource_rows(kind);
            let body = Bytes::from(serde_json::to_vec(&json!({ "data": rows })).unwrap_or_default());
            self.resources_cache.insert(
                key.clone(),
                Cached {
                    generation: self.generation,
                    at: Instant::now(),
                    body,
                    gzipped: None,
                },
            );
        }
        let Some(c) = self.resources_cache.get_mut(&key) else {
            return (Bytes::new(), false);
        };
        if !gzip || c.body.len() <= crate::GZIP_OVER {
            return (c.body.clone(), false);
        }
        let zipped = c.gzipped.get_or_insert_with(|| crate::gzip(&c.body)).clone();
        (zipped, true)
    }

    fn resource_rows(&self, kind: Option<&str>) -> Vec<Value> {
        let mut rows = Vec::new();
        let want = |k: &str| kind.is_none_or(|w| w == k);
        if want("vm") {
            for (vmid, ct) in &self.containers {
                let down = self.down.contains(&ct.node);
                let load = if ct.running && !down {
                    self.loads.get(vmid).copied().unwrap_or_default()
                } else {
                    Default::default()
                };
                let main = ct.config.main();
                let status = match (down, ct.running) {
                    (true, _) => "unknown",
                    (false, true) => "running",
                    (false, false) => "stopped",
                };
                let mut v = json!({
                    "id": format!("lxc/{vmid}"), "type": "lxc", "vmid": vmid, "node": ct.node,
                    "name": main.get("hostname").unwrap_or_default(), "status": status,
                    "uptime": ct.started.filter(|_| ct.running).map_or(0, |s| s.elapsed().as_secs()),
                    "cpu": load.cpu, "maxcpu": ct.maxcpu(self.config.node_cpus),
                    "mem": load.mem, "maxmem": ct.maxmem(), "disk": load.disk, "maxdisk": ct.maxdisk(),
                    "netin": load.netin, "netout": load.netout, "diskread": 0, "diskwrite": 0,
                    "template": u8::from(main.get("template") == Some("1")),
                });
                if let Some(tags) = main.get("tags") {
                    v["tags"] = json!(tags);
                }
                if let Some(lock) = main.get("lock") {
                    v["lock"] = json!(lock);
                }
                if let Some(r) = self.ha_resources.get(&format!("ct:{vmid}")) {
                    v["hastate"] = r.get("state").cloned().unwrap_or(json!("started"));
                }
                rows.push(v);
            }
        }
        for node in &self.config.nodes {
            let down = self.down.contains(node);
            if want("node") {
                rows.push(if down {
                    json!({ "id": format!("node/{node}"), "type": "node", "node": node, "status": "offline" })
                } else {
                    json!({
                        "id": format!("node/{node}"), "type": "node", "node": node, "status": "online",
                        "cpu": self.node_cpu(node), "maxcpu": self.config.node_cpus,
                        "mem": self.node_mem_used(node), "maxmem": self.config.node_memory,
                        "disk": 8u64 << 30, "maxdisk": 100u64 << 30, "uptime": self.uptime(), "level": "",
                        "cgroup-mode": 2,
                    })
                });
            }
            if want("storage") {
                for (storage, content, plugin) in [
                    ("local", "vztmpl,iso,backup", "dir"),
                    ("local-lvm", "rootdir,images", "lvmthin"),
                ] {
                    rows.push(json!({
                        "id": format!("storage/{node}/{storage}"), "type": "storage", "node": node,
                        "storage": storage, "status": if down { "unknown" } else { "available" },
                        "content": content, "plugintype": plugin, "shared": 0,
                        "disk": 20u64 << 30, "maxdisk": 1u64 << 40,
                    }));
                }
            }
            if want("sdn") {
                for zone in self.sdn_zones.keys() {
                    rows.push(json!({
                        "id": format!("sdn/{node}/{zone}"), "type": "sdn", "node": node, "sdn": zone,
                        "status": if down { "unknown" } else { "ok" },
                    }));
                }
            }
        }
        rows
    }

    pub(crate) fn node_status(&self, node: &str) -> Result<Value, ApiError> {
        self.reachable(node)?;
        self.require(&format!("/nodes/{node}"), "Sys.Audit")?;
        let total = self.config.node_memory;
        let used = self.node_mem_used(node);
        Ok(json!({
            "cpu": self.node_cpu(node),
            "cpuinfo": { "cores": self.config.node_cpus, "cpus": self.config.node_cpus, "sockets": 1, "model": "pvesim virtual CPU" },
            "memory": { "total": total, "used": used, "free": total - used.min(total), "available": total - used.min(total) },
            "rootfs": { "total": 100u64 << 30, "used": 8u64 << 30, "free": 92u64 << 30, "avail": 92u64 << 30 },
            "loadavg": ["0.10", "0.08", "0.05"],
            "pveversion": format!("pve-manager/{}/pvesim", self.config.version),
            "current-kernel": { "sysname": "Linux", "release": "6.8.12-pve", "machine": "x86_64", "version": "#1 SMP PREEMPT_DYNAMIC" },
            "boot-info": { "mode": "efi", "secureboot": 0 },
            "uptime": self.uptime(),
        }))
    }

    pub(crate) fn storage_content(
        &self,
        node: &str,
        storage: &str,
        params: &[(String, String)],
    ) -> Result<Value, ApiError> {
        self.reachable(node)?;
        self.require(&format!("/storage/{storage}"), "Datastore.Audit")?;
        let content = get(params, "content");
        let mut rows: Vec<Value> = match storage {
            "local" => self
                .config
                .templates
                .iter()
                .filter(|t| t.starts_with("local:"))
                .filter(|_| content.is_none_or(|c| c == "vztmpl"))
                .map(|t| json!({ "volid": t, "content": "vztmpl", "format": "tzst", "size": 123_456_789u64, "ctime": 1_700_000_000u64 }))
                .collect(),
            "backup" => Vec::new(),
            "local-lvm" => self
                .containers
                .iter()
                .filter(|(_, c)| c.node == node)
                .filter(|_| content.is_none_or(|c| c == "rootdir"))
                .filter(|(id, _)| get(params, "vmid").is_none_or(|v| v == id.to_string()))
                .map(|(id, c)| json!({ "volid": format!("local-lvm:vm-{id}-disk-0"), "content": "rootdir", "format": "raw", "size": c.maxdisk(), "vmid": id }))
                .collect(),
            other => return Err(ApiError::new(500, format!("storage '{other}' does not exist"))),
        };
        if matches!(storage, "local" | "backup") && content.is_none_or(|c| c == "backup") {
            rows.extend(self.backup_content(node, storage, get(params, "vmid")));
        }
        Ok(Value::Array(rows))
    }

    /// `POST /access/ticket`.
    pub(crate) fn login(&mut self, params: &[(String, String)]) -> Result<Value, ApiError> {
        let user = get(params, "username").unwrap_or_default();
        let password = get(params, "password").unwrap_or_default();
        let realm = get(params, "realm");
        let full = match realm {
            Some(r) if !user.contains('@') => format!("{user}@{r}"),
            _ => user.to_string(),
        };
        match &self.config.password {
            Some((u, p)) if *u == full && p == password => {
                self.seq += 1;
                let ticket = format!("PVE:{full}:{:08X}::sim{}", self.seq, self.seq);
                let csrf = format!("{:08X}:csrf{}", self.seq, self.seq);
                self.tickets.insert(ticket.clone(), csrf.clone());
                Ok(json!({ "ticket": ticket, "CSRFPreventionToken": csrf, "username": full, "clustername": "pvesim" }))
            }
            _ => Err(ApiError::new(401, "authentication failure")),
        }
    }

    /// `GET /access/permissions`: what the caller may do, by path.
    pub(crate) fn permissions(&self) -> Value {
        let privs: serde_json::Map<String, Value> =
            self.config.privileges.iter().map(|p| (p.clone(), json!(1))).collect();
        json!({ "/": privs })
    }
}
