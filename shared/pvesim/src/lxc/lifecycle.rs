//! A container's status, power actions, destroy and migrate, and the node's container list.

use serde_json::{Value, json};

use crate::state::SimState;
use crate::tasks::Effect;
use crate::{ApiError, param as get};

use super::apply_pending;

impl SimState {
    pub(super) fn status(&self, node: &str, vmid: u32) -> Result<Value, ApiError> {
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

    pub(super) fn power(&mut self, node: &str, vmid: u32, action: &str) -> Result<Value, ApiError> {
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

    pub(super) fn destroy(&mut self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
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

    pub(super) fn migrate_check(&self, node: &str, vmid: u32) -> Result<Value, ApiError> {
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

    pub(super) fn migrate(&mut self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
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

    pub(super) fn list(&self, node: &str) -> Value {
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
