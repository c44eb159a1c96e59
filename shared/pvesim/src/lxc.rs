//! `/nodes/{node}/lxc/...`: create, config (with pending changes and PVE's hotplug rules),
//! status, power, destroy, snapshots, resize and migrate, with PVE's messages
//! (pve-behaviour.md §5 and §7). Parameters were already checked against the schema (`rules`).

use pvefleet_proxmox::codec::net::NetConfig;
use pvefleet_proxmox::{ConfigFile, Line, Section, SectionKind};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

use crate::state::{Ct, SimState, format_size, parse_size};
use crate::tasks::Effect;
use crate::{ApiError, param as get};

/// Options a running container takes at once (`$LXC_FASTPLUG_OPTIONS` and the cgroup ones).
const LIVE: &[&str] = &[
    "description",
    "onboot",
    "startup",
    "protection",
    "hostname",
    "hookscript",
    "cores",
    "tags",
    "lock",
    "memory",
    "swap",
    "cpulimit",
    "cpuunits",
];

/// Keys that are not configuration: they steer the call.
const CONTROL: &[&str] = &["digest", "delete", "revert", "node", "vmid"];

pub(crate) fn digest(config: &ConfigFile) -> String {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, config.write().as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn missing(node: &str, vmid: u32) -> ApiError {
    ApiError::new(
        500,
        format!("Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist"),
    )
}

/// The privilege a config key needs (pve-container `check_ct_modify_config_perm`).
fn config_privilege(key: &str) -> &'static str {
    let base = key.trim_end_matches(|c: char| c.is_ascii_digit());
    match base {
        "cores" | "cpulimit" | "cpuunits" => "VM.Config.CPU",
        "memory" | "swap" => "VM.Config.Memory",
        "net" => "VM.Config.Network",
        "rootfs" | "mp" | "unused" => "VM.Config.Disk",
        _ => "VM.Config.Options",
    }
}

impl SimState {
    fn ct(&self, node: &str, vmid: u32) -> Result<&Ct, ApiError> {
        self.containers
            .get(&vmid)
            .filter(|c| c.node == node)
            .ok_or_else(|| missing(node, vmid))
    }

    fn ct_mut(&mut self, node: &str, vmid: u32) -> Result<&mut Ct, ApiError> {
        self.containers
            .get_mut(&vmid)
            .filter(|c| c.node == node)
            .ok_or_else(|| missing(node, vmid))
    }

    fn unlocked(&self, node: &str, vmid: u32) -> Result<(), ApiError> {
        match self.ct(node, vmid)?.config.main().get("lock") {
            Some(lock) => Err(ApiError::new(500, format!("CT is locked ({lock})"))),
            None => Ok(()),
        }
    }

    fn lock_ct(&mut self, node: &str, vmid: u32, lock: &str) -> Result<(), ApiError> {
        self.ct_mut(node, vmid)?.config.main_mut().set("lock", lock);
        Ok(())
    }

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

    fn ha_managed(&self, vmid: u32) -> bool {
        self.ha_resources.contains_key(&format!("ct:{vmid}"))
    }

    fn create(&mut self, node: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        let vmid: u32 = get(params, "vmid").and_then(|v| v.parse().ok()).unwrap_or(0);
        let template = get(params, "ostemplate").unwrap_or_default();
        self.require(&format!("/vms/{vmid}"), "VM.Allocate")?;
        let storage = get(params, "rootfs")
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.split(':').next())
            .unwrap_or("local");
        self.require(&format!("/storage/{storage}"), "Datastore.AllocateSpace")?;
        if let Some(existing) = self.containers.get(&vmid) {
            return Err(ApiError::new(
                500,
                format!("CT {vmid} already exists on node '{}'", existing.node),
            ));
        }
        if !self.config.templates.iter().any(|t| t == template) {
            return Err(ApiError::new(500, format!("volume '{template}' does not exist")));
        }
        let mut text = String::new();
        if let Some(d) = get(params, "description") {
            for line in d.lines() {
                text.push_str(&format!("#{line}\n"));
            }
        }
        text.push_str("arch: amd64\n");
        let ostype = if template.contains("ubuntu") {
            "ubuntu"
        } else {
            "debian"
        };
        for (k, v) in params.iter().filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "vmid"
                    | "ostemplate"
                    | "storage"
                    | "start"
                    | "password"
                    | "ssh-public-keys"
                    | "force"
                    | "description"
                    | "unique"
                    | "restore"
                    | "pool"
                    | "ignore-unpack-errors"
                    | "bwlimit"
                    | "arch"
            )
        }) {
            let v = if k == "rootfs" { allocate(v, vmid) } else { v.clone() };
            text.push_str(&format!("{k}: {v}\n"));
        }
        if get(params, "ostype").is_none() {
            text.push_str(&format!("ostype: {ostype}\n"));
        }
        if get(params, "rootfs").is_none() {
            text.push_str(&format!("rootfs: local:vm-{vmid}-disk-0,size=4G\n"));
        }
        text.push_str("lock: create\n");
        let config = ConfigFile::parse(&text).map_err(|e| ApiError::new(500, e.to_string()))?;
        self.containers.insert(
            vmid,
            Ct {
                node: node.into(),
                config,
                running: false,
                started: None,
            },
        );
        let start = get(params, "start") == Some("1");
        let effect = if start {
            Effect::Power(vmid, true)
        } else {
            Effect::Unlock(vmid)
        };
        let upid = self.start_task(
            node,
            "vzcreate",
            &vmid.to_string(),
            Some(effect),
            Some(Effect::Remove(vmid, false)),
        );
        Ok(json!(upid))
    }

    fn config(&self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.require(&format!("/vms/{vmid}"), "VM.Audit")?;
        let ct = self.ct(node, vmid)?;
        let section = match get(params, "snapshot") {
            Some(name) => ct
                .config
                .snapshot(name)
                .ok_or_else(|| ApiError::new(500, format!("snapshot '{name}' does not exist")))?,
            None => ct.config.main(),
        };
        let mut out: Map<String, Value> = section
            .entries()
            .filter(|e| e.key != "snaptime" || get(params, "snapshot").is_some())
            .map(|e| (e.key.clone(), json!(e.value)))
            .collect();
        let description = section.description();
        if !description.is_empty() {
            out.insert("description".into(), json!(description));
        }
        if get(params, "current") != Some("1")
            && get(params, "snapshot").is_none()
            && let Some(pending) = ct.config.pending()
        {
            for e in pending.entries() {
                if e.key == "delete" {
                    for k in e.value.split(',') {
                        out.remove(k);
                    }
                } else {
                    out.insert(e.key.clone(), json!(e.value));
                }
            }
        }
        // Typed as the schema types them: integers and 0/1 booleans as numbers.
        for (k, v) in out.iter_mut() {
            let numeric = matches!(
                k.as_str(),
                "cores"
                    | "memory"
                    | "swap"
                    | "cpuunits"
                    | "tty"
                    | "onboot"
                    | "unprivileged"
                    | "template"
                    | "protection"
                    | "console"
                    | "debug"
            );
            if let Value::String(s) = v
                && numeric
                && let Ok(n) = s.parse::<u64>()
            {
                *v = json!(n);
            } else if let Value::String(s) = v
                && k == "cpulimit"
                && let Ok(n) = s.parse::<f64>()
            {
                *v = json!(n);
            }
        }
        out.insert("digest".into(), json!(digest(&ct.config)));
        Ok(Value::Object(out))
    }

    fn pending(&self, node: &str, vmid: u32) -> Result<Value, ApiError> {
        self.require(&format!("/vms/{vmid}"), "VM.Audit")?;
        let ct = self.ct(node, vmid)?;
        let pending = ct.config.pending();
        let deleted: BTreeSet<&str> = pending
            .and_then(|p| p.get("delete"))
            .map(|d| d.split(',').filter(|k| !k.is_empty()).collect())
            .unwrap_or_default();
        let mut rows: Vec<Value> = Vec::new();
        let mut seen = BTreeSet::new();
        for e in ct.config.main().entries() {
            seen.insert(e.key.as_str());
            let mut row = json!({ "key": e.key, "value": e.value });
            if let Some(p) = pending.and_then(|p| p.get(&e.key)) {
                row["pending"] = json!(p);
            }
            if deleted.contains(e.key.as_str()) {
                row["delete"] = json!(1);
            }
            rows.push(row);
        }
        for e in pending.into_iter().flat_map(|p| p.entries()) {
            if e.key != "delete" && !seen.contains(e.key.as_str()) {
                rows.push(json!({ "key": e.key, "pending": e.value }));
            }
        }
        Ok(Value::Array(rows))
    }

    fn set_config(&mut self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.ct(node, vmid)?;
        for (k, _) in params.iter().filter(|(k, _)| !CONTROL.contains(&k.as_str())) {
            self.require(&format!("/vms/{vmid}"), config_privilege(k))?;
        }
        for k in get(params, "delete").into_iter().flat_map(|d| d.split(',')) {
            self.require(&format!("/vms/{vmid}"), config_privilege(k))?;
        }
        self.unlocked(node, vmid)?;
        let bridges = self.bridges();
        let ct = self.ct_mut(node, vmid)?;
        if let Some(d) = get(params, "digest")
            && d != digest(&ct.config)
        {
            return Err(ApiError::new(
                500,
                "detected modified configuration - file changed by other user? Try again.",
            ));
        }
        let sets: Vec<(&str, &str)> = params
            .iter()
            .filter(|(k, _)| !CONTROL.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let deletes: Vec<&str> = get(params, "delete")
            .map(|d| d.split([',', ';', ' ']).filter(|k| !k.is_empty()).collect())
            .unwrap_or_default();
        for k in get(params, "revert").into_iter().flat_map(|r| r.split(',')) {
            unpend(&mut ct.config, k);
        }
        let mut errors = Vec::new();
        for (k, v) in sets {
            unpend(&mut ct.config, k);
            let change = if ct.running {
                hotplug(ct, k, v, &bridges)
            } else {
                Change::Apply
            };
            match change {
                Change::Apply => ct.config.main_mut().set(k, v),
                Change::Pending => ct.config.pending_mut().set(k, v),
                Change::Failed(reason) => {
                    ct.config.pending_mut().set(k, v);
                    errors.push((k.to_string(), format!("unable to hotplug {k}: {reason}")));
                }
            }
        }
        for k in deletes {
            unpend(&mut ct.config, k);
            let live = !ct.running || LIVE.contains(&k) || single_digit_net(k);
            if live {
                ct.config.main_mut().remove(k);
            } else if ct.config.main().get(k).is_some() {
                let pending = ct.config.pending_mut();
                let mut list: Vec<String> = pending
                    .get("delete")
                    .map(|d| d.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                if !list.iter().any(|x| x == k) {
                    list.push(k.to_string());
                }
                pending.set("delete", &list.join(","));
            }
        }
        drop_empty_pending(&mut ct.config);
        if errors.is_empty() {
            Ok(Value::Null)
        } else {
            Err(ApiError::params(errors))
        }
    }

    fn status(&self, node: &str, vmid: u32) -> Result<Value, ApiError> {
        self.require(&format!("/vms/{vmid}"), "VM.Audit")?;
        let ct = self.ct(node, vmid)?;
        let load = if ct.running {
            self.loads.get(&vmid).copied().unwrap_or_default()
        } else {
            Default::default()
        };
        let main = ct.config.main();
        let swap = main.get("swap").and_then(|s| s.parse::<u64>().ok()).unwrap_or(512) << 20;
        let mut v = json!({
            "vmid": vmid, "status": if ct.running { "running" } else { "stopped" },
            "name": main.get("hostname"), "type": "lxc",
            "cpus": ct.maxcpu(self.config.node_cpus), "cpu": load.cpu,
            "mem": load.mem, "maxmem": ct.maxmem(), "swap": 0, "maxswap": swap,
            "disk": load.disk, "maxdisk": ct.maxdisk(),
            "netin": load.netin, "netout": load.netout, "diskread": 0, "diskwrite": 0,
            "uptime": ct.started.map_or(0, |s| s.elapsed().as_secs()),
            "ha": { "managed": u8::from(self.ha_managed(vmid)) },
        });
        if let Some(lock) = main.get("lock") {
            v["lock"] = json!(lock);
        }
        if let Some(tags) = main.get("tags") {
            v["tags"] = json!(tags);
        }
        Ok(v)
    }

    fn power(&mut self, node: &str, vmid: u32, action: &str) -> Result<Value, ApiError> {
        self.require(&format!("/vms/{vmid}"), "VM.PowerMgmt")?;
        self.unlocked(node, vmid)?;
        let ct = self.ct(node, vmid)?;
        let running = ct.running;
        let (kind, target) = match action {
            "start" if running => return Err(ApiError::new(500, format!("CT {vmid} already running"))),
            "start" => ("vzstart", true),
            "stop" | "shutdown" if !running => return Err(ApiError::new(500, format!("CT {vmid} not running"))),
            "stop" => ("vzstop", false),
            "shutdown" => ("vzshutdown", false),
            "reboot" if !running => return Err(ApiError::new(500, format!("CT {vmid} not running"))),
            "reboot" => ("vzreboot", true),
            other => {
                return Err(ApiError::new(
                    501,
                    format!("Method 'POST /nodes/{node}/lxc/{vmid}/status/{other}' not implemented"),
                ));
            }
        };
        // Starting plugs every NIC: a bridge that does not exist on the node fails the task.
        let failure = if target {
            let bridges = self.bridges();
            let mut config = ct.config.clone();
            apply_pending(&mut config);
            config.main().nets().into_iter().find_map(|(_, net)| {
                net.ok()
                    .and_then(|n| n.bridge)
                    .filter(|b| !bridges.contains(b))
                    .map(|b| format!("bridge '{b}' does not exist"))
            })
        } else {
            None
        };
        let lock = if action == "start" || action == "reboot" {
            None
        } else {
            Some(action)
        };
        if let Some(lock) = lock {
            self.lock_ct(node, vmid, lock)?;
        }
        Ok(json!(self.start_task_failing(
            node,
            kind,
            &vmid.to_string(),
            Some(Effect::Power(vmid, target)),
            Some(Effect::Unlock(vmid)),
            failure,
        )))
    }

    fn destroy(&mut self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.require(&format!("/vms/{vmid}"), "VM.Allocate")?;
        self.unlocked(node, vmid)?;
        let force = get(params, "force") == Some("1");
        let purge = get(params, "purge") == Some("1");
        if self.ct(node, vmid)?.running && !force {
            return Err(ApiError::new(500, format!("CT {vmid} is running - destroy failed")));
        }
        if self.ha_managed(vmid) && !purge {
            return Err(ApiError::new(
                500,
                format!("unable to remove CT {vmid} - used in HA resources and purge parameter not set."),
            ));
        }
        self.lock_ct(node, vmid, "destroyed")?;
        if force && let Ok(ct) = self.ct_mut(node, vmid) {
            ct.running = false;
        }
        Ok(json!(self.start_task(
            node,
            "vzdestroy",
            &vmid.to_string(),
            Some(Effect::Remove(vmid, purge)),
            Some(Effect::Unlock(vmid))
        )))
    }

    fn snapshots(&self, node: &str, vmid: u32) -> Result<Value, ApiError> {
        self.require(&format!("/vms/{vmid}"), "VM.Audit")?;
        let ct = self.ct(node, vmid)?;
        let mut out: Vec<Value> = ct
            .config
            .snapshot_names()
            .into_iter()
            .filter_map(|n| ct.config.snapshot(n).map(|s| (n, s)))
            .map(|(n, s)| {
                let mut v = json!({ "name": n, "description": s.description() });
                if let Some(t) = s.get("snaptime").and_then(|t| t.parse::<u64>().ok()) {
                    v["snaptime"] = json!(t);
                }
                if let Some(p) = s.get("parent") {
                    v["parent"] = json!(p);
                }
                v
            })
            .collect();
        let mut current = json!({ "name": "current", "description": "You are here!" });
        if let Some(p) = ct.config.main().get("parent") {
            current["parent"] = json!(p);
        }
        out.push(current);
        Ok(Value::Array(out))
    }

    fn snapshot(&mut self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.require(&format!("/vms/{vmid}"), "VM.Snapshot")?;
        self.unlocked(node, vmid)?;
        let name = get(params, "snapname").unwrap_or_default().to_string();
        let ct = self.ct(node, vmid)?;
        if name == "current" || ct.config.snapshot(&name).is_some() {
            return Err(ApiError::new(500, format!("snapshot name '{name}' already used")));
        }
        if ct.config.main().get("template") == Some("1") {
            return Err(ApiError::new(500, "you can't take a snapshot if it's a template"));
        }
        self.lock_ct(node, vmid, "snapshot")?;
        let description = get(params, "description").map(str::to_string);
        Ok(json!(self.start_task(
            node,
            "vzsnapshot",
            &vmid.to_string(),
            Some(Effect::Snapshot(vmid, name, description)),
            Some(Effect::Unlock(vmid))
        )))
    }

    fn snapshot_exists(&self, node: &str, vmid: u32, name: &str) -> Result<(), ApiError> {
        match self.ct(node, vmid)?.config.snapshot(name) {
            Some(_) => Ok(()),
            None => Err(ApiError::new(500, format!("snapshot '{name}' does not exist"))),
        }
    }

    fn delete_snapshot(&mut self, node: &str, vmid: u32, name: &str) -> Result<Value, ApiError> {
        self.require(&format!("/vms/{vmid}"), "VM.Snapshot")?;
        self.unlocked(node, vmid)?;
        self.snapshot_exists(node, vmid, name)?;
        self.lock_ct(node, vmid, "snapshot-delete")?;
        Ok(json!(self.start_task(
            node,
            "vzdelsnapshot",
            &vmid.to_string(),
            Some(Effect::DeleteSnapshot(vmid, name.to_string())),
            Some(Effect::Unlock(vmid))
        )))
    }

    fn rollback(&mut self, node: &str, vmid: u32, name: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.require(&format!("/vms/{vmid}"), "VM.Snapshot.Rollback")?;
        self.unlocked(node, vmid)?;
        self.snapshot_exists(node, vmid, name)?;
        // A running container is force-stopped first.
        let ct = self.ct_mut(node, vmid)?;
        ct.running = false;
        ct.started = None;
        ct.config.main_mut().set("lock", "rollback");
        let start = get(params, "start") == Some("1");
        Ok(json!(self.start_task(
            node,
            "vzrollback",
            &vmid.to_string(),
            Some(Effect::Rollback(vmid, name.to_string(), start)),
            Some(Effect::Unlock(vmid))
        )))
    }

    fn snapshot_config(&mut self, node: &str, vmid: u32, name: &str, set: Option<&str>) -> Result<Value, ApiError> {
        self.snapshot_exists(node, vmid, name)?;
        let ct = self.ct_mut(node, vmid)?;
        let Some(section) = ct.config.snapshot_mut(name) else {
            return Err(ApiError::new(500, format!("snapshot '{name}' does not exist")));
        };
        if let Some(description) = set {
            section.lines.retain(|l| !matches!(l, Line::Comment(_)));
            for (i, line) in description.lines().enumerate() {
                section.lines.insert(i, Line::Comment(format!("#{line}")));
            }
            return Ok(Value::Null);
        }
        let mut out: Map<String, Value> = section.entries().map(|e| (e.key.clone(), json!(e.value))).collect();
        let description = section.description();
        if !description.is_empty() {
            out.insert("description".into(), json!(description));
        }
        Ok(Value::Object(out))
    }

    fn resize(&mut self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.require(&format!("/vms/{vmid}"), "VM.Config.Disk")?;
        self.unlocked(node, vmid)?;
        let disk = get(params, "disk").unwrap_or("rootfs").to_string();
        let size = get(params, "size").unwrap_or_default();
        let ct = self.ct(node, vmid)?;
        if let Some(d) = get(params, "digest")
            && d != digest(&ct.config)
        {
            return Err(ApiError::new(
                500,
                "detected modified configuration - file changed by other user? Try again.",
            ));
        }
        let volume = ct
            .config
            .main()
            .get(&disk)
            .ok_or_else(|| ApiError::new(500, format!("unable to parse config for disk '{disk}'")))?;
        let current = volume
            .split(',')
            .find_map(|o| o.strip_prefix("size="))
            .and_then(parse_size)
            .unwrap_or(0);
        let (grow, amount) = match size.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, size),
        };
        // A bare number is in gigabytes for the resize call.
        let amount = if amount.ends_with(|c: char| c.is_ascii_digit()) {
            format!("{amount}G")
        } else {
            amount.to_string()
        };
        let bytes = parse_size(&amount)
            .ok_or_else(|| ApiError::params(vec![("size".into(), "value does not match the regex pattern".into())]))?;
        let new = if grow { current + bytes } else { bytes };
        if new < current {
            return Err(ApiError::new(500, "unable to shrink disk size"));
        }
        if new == current {
            return Err(ApiError::new(500, "disk is already at specified size"));
        }
        Ok(json!(self.start_task(
            node,
            "resize",
            &vmid.to_string(),
            Some(Effect::Resize(vmid, disk, new)),
            None
        )))
    }

    fn migrate_check(&self, node: &str, vmid: u32) -> Result<Value, ApiError> {
        let ct = self.ct(node, vmid)?;
        let allowed: Vec<&String> = self
            .config
            .nodes
            .iter()
            .filter(|n| *n != node && !self.down.contains(*n))
            .collect();
        let mut v = json!({ "running": ct.running, "allowed-nodes": allowed, "not-allowed-nodes": {} });
        if self.ha_managed(vmid) {
            v["dependent-ha-resources"] = json!([]);
        }
        Ok(v)
    }

    fn migrate(&mut self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.require(&format!("/vms/{vmid}"), "VM.Migrate")?;
        self.unlocked(node, vmid)?;
        let target = get(params, "target").unwrap_or_default().to_string();
        if target == node {
            return Err(ApiError::new(500, format!("target is local node '{target}'")));
        }
        if !self.has_node(&target) {
            return Err(ApiError::params(vec![(
                "target".into(),
                format!("no such cluster node '{target}'"),
            )]));
        }
        if self.down.contains(&target) {
            return Err(ApiError::new(500, format!("target node '{target}' is not online")));
        }
        let running = self.ct(node, vmid)?.running;
        let online = get(params, "online") == Some("1");
        let restart = get(params, "restart") == Some("1");
        if running && !online && !restart {
            return Err(ApiError::new(
                500,
                "can't migrate running container without --online or --restart",
            ));
        }
        let failure =
            (running && online && !restart).then(|| "lxc live migration is currently not implemented".to_string());
        let kind = if self.ha_managed(vmid) {
            "hamigrate"
        } else {
            "vzmigrate"
        };
        self.lock_ct(node, vmid, "migrate")?;
        Ok(json!(self.start_task_failing(
            node,
            kind,
            &vmid.to_string(),
            Some(Effect::Migrate(vmid, target)),
            Some(Effect::Unlock(vmid)),
            failure,
        )))
    }

    fn interfaces(&self, node: &str, vmid: u32) -> Result<Value, ApiError> {
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

    fn list(&self, node: &str) -> Value {
        Value::Array(
            self.containers
                .iter()
                .filter(|(_, c)| c.node == node)
                .map(|(id, c)| {
                    let load = if c.running {
                        self.loads.get(id).copied().unwrap_or_default()
                    } else {
                        Default::default()
                    };
                    let mut v = json!({
                        "vmid": id, "status": if c.running { "running" } else { "stopped" },
                        "name": c.config.main().get("hostname"), "type": "lxc",
                        "cpus": c.maxcpu(self.config.node_cpus), "cpu": load.cpu, "mem": load.mem, "maxmem": c.maxmem(),
                        "disk": load.disk, "maxdisk": c.maxdisk(),
                        "uptime": c.started.map_or(0, |s| s.elapsed().as_secs()),
                    });
                    if let Some(tags) = c.config.main().get("tags") {
                        v["tags"] = json!(tags);
                    }
                    if let Some(lock) = c.config.main().get("lock") {
                        v["lock"] = json!(lock);
                    }
                    v
                })
                .collect(),
        )
    }
}

/// How a change to a running container lands.
enum Change {
    Apply,
    Pending,
    Failed(String),
}

/// PVE's hotplug rules for one option of a running container (pve-behaviour.md §7).
fn hotplug(ct: &Ct, key: &str, value: &str, bridges: &BTreeSet<String>) -> Change {
    if LIVE.contains(&key) {
        return Change::Apply;
    }
    let base = key.trim_end_matches(|c: char| c.is_ascii_digit());
    match base {
        "net" if base.len() < key.len() => {
            let Ok(new) = NetConfig::parse(key, value) else {
                return Change::Pending;
            };
            if let Some(bridge) = new.bridge.as_deref().filter(|b| !bridges.contains(*b)) {
                return Change::Failed(format!("bridge '{bridge}' does not exist"));
            }
            match ct.config.main().get(key).map(|old| NetConfig::parse(key, old)) {
                None => Change::Apply,
                Some(Ok(old)) => {
                    // Only MTU and trunks have no live update path: they wait for a restart.
                    let mut without = new.clone();
                    without.mtu = old.mtu;
                    without.trunks = old.trunks.clone();
                    if without == old { Change::Pending } else { Change::Apply }
                }
                Some(Err(_)) => Change::Pending,
            }
        }
        "mp" | "dev" if base.len() < key.len() => {
            if ct.config.main().get(key).is_some() {
                Change::Pending
            } else {
                Change::Apply
            }
        }
        _ => Change::Pending,
    }
}

/// `delete=net<n>` is hot-unplugged only for one digit (`^net(\d)$` in pve-container).
fn single_digit_net(key: &str) -> bool {
    key.len() == 4 && key.starts_with("net") && key.as_bytes()[3].is_ascii_digit()
}

/// Drops a key's pending value and pending delete.
fn unpend(config: &mut ConfigFile, key: &str) {
    if config.pending().is_none() {
        return;
    }
    let pending = config.pending_mut();
    pending.remove(key);
    if let Some(list) = pending.get("delete") {
        let rest: Vec<&str> = list.split(',').filter(|k| *k != key && !k.is_empty()).collect();
        let rest = rest.join(",");
        if rest.is_empty() {
            pending.remove("delete");
        } else {
            pending.set("delete", &rest);
        }
    }
    drop_empty_pending(config);
}

fn drop_empty_pending(config: &mut ConfigFile) {
    if config.pending().is_some_and(|p| p.entries().next().is_none()) {
        config.take_pending();
    }
}

/// Applies every pending change (at start or reboot).
pub(crate) fn apply_pending(config: &mut ConfigFile) {
    let Some(pending) = config.take_pending() else { return };
    for e in pending.entries() {
        if e.key == "delete" {
            for k in e.value.split(',').filter(|k| !k.is_empty()) {
                config.main_mut().remove(k);
            }
        } else {
            config.main_mut().set(&e.key, &e.value);
        }
    }
}

/// Copies the current config into a snapshot section; the current config names it as parent.
pub(crate) fn take_snapshot(ct: &mut Ct, name: &str, description: Option<&str>, clock: u64) {
    let mut lines: Vec<Line> = description
        .into_iter()
        .flat_map(str::lines)
        .map(|l| Line::Comment(format!("#{l}")))
        .collect();
    lines.extend(
        ct.config
            .main()
            .entries()
            .filter(|e| e.key != "lock")
            .cloned()
            .map(Line::Entry),
    );
    let mut snap = Section::new(SectionKind::Snapshot(name.to_string()));
    snap.lines = lines;
    snap.set("snaptime", &(clock + 1_700_000_000).to_string());
    ct.config.put_snapshot(name, snap.lines);
    ct.config.main_mut().remove("lock");
    ct.config.main_mut().set("parent", name);
}

/// Removes a snapshot; its children and the current config inherit its parent.
pub(crate) fn delete_snapshot(ct: &mut Ct, name: &str) {
    let parent = ct
        .config
        .snapshot(name)
        .and_then(|s| s.get("parent"))
        .map(str::to_string);
    ct.config.remove_snapshot(name);
    let names: Vec<String> = ct.config.snapshot_names().into_iter().map(str::to_string).collect();
    for n in names {
        if let Some(s) = ct.config.snapshot_mut(&n)
            && s.get("parent") == Some(name)
        {
            match &parent {
                Some(p) => s.set("parent", p),
                None => {
                    s.remove("parent");
                }
            }
        }
    }
    let main = ct.config.main_mut();
    main.remove("lock");
    if main.get("parent") == Some(name) {
        match &parent {
            Some(p) => main.set("parent", p),
            None => {
                main.remove("parent");
            }
        }
    }
}

/// Restores the current config from a snapshot.
pub(crate) fn rollback(ct: &mut Ct, name: &str) {
    let Some(snap) = ct.config.snapshot(name).cloned() else {
        return;
    };
    let main = ct.config.main_mut();
    main.lines = snap
        .lines
        .into_iter()
        .filter(|l| !matches!(l, Line::Blank(_)))
        .collect();
    main.remove("snaptime");
    main.set("parent", name);
    // The snapshot sections follow: keep PVE's blank line before them.
    main.lines.push(Line::Blank(String::new()));
    ct.config.take_pending();
}

/// Sets the `size` of a disk's volume.
pub(crate) fn set_disk_size(ct: &mut Ct, disk: &str, bytes: u64) {
    let main = ct.config.main_mut();
    let Some(volume) = main.get(disk) else { return };
    let mut parts: Vec<String> = volume
        .split(',')
        .filter(|p| !p.starts_with("size="))
        .map(str::to_string)
        .collect();
    parts.push(format!("size={}", format_size(bytes)));
    main.set(disk, &parts.join(","));
}

/// `STORAGE:SIZE` allocates a volume, as PVE does; anything else is kept as given.
fn allocate(rootfs: &str, vmid: u32) -> String {
    let (volume, rest) = rootfs.split_once(',').map_or((rootfs, ""), |(v, r)| (v, r));
    match volume.split_once(':') {
        Some((storage, size)) if size.parse::<f64>().is_ok() => {
            let mut out = format!("{storage}:vm-{vmid}-disk-0,size={size}G");
            if !rest.is_empty() {
                out.push(',');
                out.push_str(rest);
            }
            out
        }
        _ => rootfs.to_string(),
    }
}

/// Routes `/nodes/{node}/lxc/{rest..}`.
pub(crate) fn route(
    s: &mut SimState,
    method: &str,
    node: &str,
    rest: &[&str],
    params: &[(String, String)],
) -> Result<Value, ApiError> {
    s.reachable(node)?;
    let vmid = |t: &str| {
        t.parse::<u32>().map_err(|_| {
            ApiError::params(vec![(
                "vmid".into(),
                format!("type check ('integer') failed - got '{t}'"),
            )])
        })
    };
    match (method, rest) {
        ("GET", []) => Ok(s.list(node)),
        ("POST", []) => s.create(node, params),
        ("GET", [id, "config"]) => s.config(node, vmid(id)?, params),
        ("PUT", [id, "config"]) => s.set_config(node, vmid(id)?, params),
        ("GET", [id, "pending"]) => s.pending(node, vmid(id)?),
        ("GET", [id, "status", "current"]) => s.status(node, vmid(id)?),
        ("POST", [id, "status", action]) => s.power(node, vmid(id)?, action),
        ("DELETE", [id]) => s.destroy(node, vmid(id)?, params),
        ("GET", [id, "snapshot"]) => s.snapshots(node, vmid(id)?),
        ("POST", [id, "snapshot"]) => s.snapshot(node, vmid(id)?, params),
        ("DELETE", [id, "snapshot", name]) => s.delete_snapshot(node, vmid(id)?, name),
        ("POST", [id, "snapshot", name, "rollback"]) => s.rollback(node, vmid(id)?, name, params),
        ("GET", [id, "snapshot", name, "config"]) => s.snapshot_config(node, vmid(id)?, name, None),
        ("PUT", [id, "snapshot", name, "config"]) => s.snapshot_config(
            node,
            vmid(id)?,
            name,
            Some(get(params, "description").unwrap_or_default()),
        ),
        ("PUT", [id, "resize"]) => s.resize(node, vmid(id)?, params),
        ("GET", [id, "migrate"]) => s.migrate_check(node, vmid(id)?),
        ("POST", [id, "migrate"]) => s.migrate(node, vmid(id)?, params),
        ("GET", [id, "interfaces"]) => s.interfaces(node, vmid(id)?),
        _ => Err(ApiError::new(
            501,
            format!("Method '{method} /nodes/{node}/lxc/{}' not implemented", rest.join("/")),
        )),
    }
}
