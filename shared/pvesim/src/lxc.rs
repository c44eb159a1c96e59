//! `/nodes/{node}/lxc/...`: create, config (with pending changes and PVE's hotplug rules),
//! status, power, destroy, snapshots, resize and migrate, with PVE's messages
//! (pve-behaviour.md §5 and §7). Parameters were already checked against the schema (`rules`).

use pvefleet_proxmox::ConfigFile;
use serde_json::Value;

use crate::state::{Ct, SimState};
use crate::{ApiError, param as get};

mod config;
mod create;
mod disk;
mod lifecycle;
mod network;
mod restore;
mod snapshots;

pub(crate) use config::apply_pending;
pub(crate) use disk::set_disk_size;
pub(crate) use restore::{Restored, finish_restore};
pub(crate) use snapshots::{delete_snapshot, rollback, take_snapshot};

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

    fn ha_managed(&self, vmid: u32) -> bool {
        self.ha_resources.contains_key(&format!("ct:{vmid}"))
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
