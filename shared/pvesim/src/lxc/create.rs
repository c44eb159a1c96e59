//! `POST /nodes/{node}/lxc`: creating a container from a template, its root disk allocated
//! as PVE does.

use pvefleet_proxmox::ConfigFile;
use serde_json::{Value, json};

use crate::state::{Ct, SimState};
use crate::tasks::Effect;
use crate::{ApiError, param as get};

impl SimState {
    pub(super) fn create(&mut self, node: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        if get(params, "restore") == Some("1") {
            return self.restore(node, params);
        }
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
