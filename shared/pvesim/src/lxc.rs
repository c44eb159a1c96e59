//! `/nodes/{node}/lxc/...`: create, config, status, power and destroy, with PVE's messages
//! (pve-behaviour.md §5). Parameters were already checked against the schema (`rules`).

use axum::response::Response;
use pvefleet_proxmox::ConfigFile;
use serde_json::{Map, Value, json};

use crate::state::{Ct, SimState};
use crate::tasks::Effect;
use crate::{ApiError, Sim, ok};

fn get<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn digest(config: &ConfigFile) -> String {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, config.write().as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn missing(node: &str, vmid: u32) -> ApiError {
    ApiError::new(
        500,
        format!("Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist"),
    )
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

    fn create(&mut self, node: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        let vmid_text = get(params, "vmid").ok_or_else(|| {
            ApiError::params(vec![(
                "vmid".into(),
                "property is missing and it is not optional".into(),
            )])
        })?;
        let vmid: u32 = vmid_text
            .parse()
            .ok()
            .filter(|v| (100..=999_999_999).contains(v))
            .ok_or_else(|| {
                ApiError::params(vec![(
                    "vmid".into(),
                    format!("value must be at least 100 - got '{vmid_text}'"),
                )])
            })?;
        if get(params, "ostemplate").is_none() {
            return Err(ApiError::params(vec![(
                "ostemplate".into(),
                "property is missing and it is not optional".into(),
            )]));
        }
        if let Some(existing) = self.containers.get(&vmid) {
            return Err(ApiError::new(
                500,
                format!("CT {vmid} already exists on node '{}'", existing.node),
            ));
        }
        let mut text = String::new();
        for (k, v) in params.iter().filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "vmid" | "ostemplate" | "storage" | "start" | "password" | "ssh-public-keys" | "force"
            )
        }) {
            let v = if k == "rootfs" { allocate(v, vmid) } else { v.clone() };
            text.push_str(&format!("{k}: {v}\n"));
        }
        text.push_str("lock: create\n");
        let config = ConfigFile::parse(&text).map_err(|e| ApiError::new(500, e.to_string()))?;
        self.containers.insert(
            vmid,
            Ct {
                node: node.into(),
                config,
                running: false,
            },
        );
        let upid = self.start_task(
            node,
            "vzcreate",
            &vmid.to_string(),
            Some(Effect::Unlock(vmid)),
            Some(Effect::Remove(vmid)),
        );
        Ok(json!(upid))
    }

    fn config(&self, node: &str, vmid: u32) -> Result<Value, ApiError> {
        let ct = self.ct(node, vmid)?;
        let mut out: Map<String, Value> = ct
            .config
            .main()
            .entries()
            .map(|e| (e.key.clone(), json!(e.value)))
            .collect();
        out.insert("digest".into(), json!(digest(&ct.config)));
        Ok(Value::Object(out))
    }

    fn set_config(&mut self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.unlocked(node, vmid)?;
        let ct = self.ct_mut(node, vmid)?;
        if let Some(d) = get(params, "digest")
            && d != digest(&ct.config)
        {
            return Err(ApiError::new(
                500,
                "detected modified configuration - file changed by other user? Try again.",
            ));
        }
        for (k, v) in params
            .iter()
            .filter(|(k, _)| k != "digest" && k != "delete" && k != "revert")
        {
            ct.config.main_mut().set(k, v);
        }
        if let Some(keys) = get(params, "delete") {
            for k in keys.split(',').filter(|k| !k.is_empty()) {
                ct.config.main_mut().remove(k);
            }
        }
        Ok(Value::Null)
    }

    fn status(&self, node: &str, vmid: u32) -> Result<Value, ApiError> {
        let ct = self.ct(node, vmid)?;
        let mut v = json!({ "vmid": vmid, "status": if ct.running { "running" } else { "stopped" }, "name": ct.config.main().get("hostname"), "type": "lxc" });
        if let Some(lock) = ct.config.main().get("lock") {
            v["lock"] = json!(lock);
        }
        if let Some(tags) = ct.config.main().get("tags") {
            v["tags"] = json!(tags);
        }
        Ok(v)
    }

    fn power(&mut self, node: &str, vmid: u32, action: &str) -> Result<Value, ApiError> {
        self.unlocked(node, vmid)?;
        let running = self.ct(node, vmid)?.running;
        let (kind, target) = match action {
            "start" if running => return Err(ApiError::new(500, format!("CT {vmid} already running"))),
            "start" => ("vzstart", true),
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
        self.ct_mut(node, vmid)?.config.main_mut().set("lock", action);
        Ok(json!(self.start_task(
            node,
            kind,
            &vmid.to_string(),
            Some(Effect::Power(vmid, target)),
            Some(Effect::Unlock(vmid))
        )))
    }

    fn destroy(&mut self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.unlocked(node, vmid)?;
        let force = get(params, "force") == Some("1");
        if self.ct(node, vmid)?.running && !force {
            return Err(ApiError::new(500, format!("CT {vmid} is running - destroy failed")));
        }
        self.ct_mut(node, vmid)?.config.main_mut().set("lock", "destroyed");
        Ok(json!(self.start_task(
            node,
            "vzdestroy",
            &vmid.to_string(),
            Some(Effect::Remove(vmid)),
            Some(Effect::Unlock(vmid))
        )))
    }
}

/// `STORAGE:SIZE` allocates a volume, as PVE does; anything else is kept as given.
fn allocate(rootfs: &str, vmid: u32) -> String {
    let (volume, rest) = rootfs.split_once(',').map_or((rootfs, ""), |(v, r)| (v, r));
    match volume.split_once(':') {
        Some((storage, size)) if size.parse::<u32>().is_ok() => {
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
    sim: &Sim,
    method: &str,
    node: &str,
    rest: &[&str],
    params: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let mut s = sim.lock();
    s.tick();
    if !s.has_node(node) {
        return Err(ApiError::new(595, format!("no such node '{node}'")));
    }
    let vmid = |t: &str| {
        t.parse::<u32>().map_err(|_| {
            ApiError::params(vec![(
                "vmid".into(),
                format!("type check ('integer') failed - got '{t}'"),
            )])
        })
    };
    let data = match (method, rest) {
        ("GET", []) => Value::Array(
            s.containers
                .iter()
                .filter(|(_, c)| c.node == node)
                .map(|(id, c)| json!({ "vmid": id, "status": if c.running { "running" } else { "stopped" }, "name": c.config.main().get("hostname") }))
                .collect(),
        ),
        ("POST", []) => s.create(node, &params)?,
        ("GET", [id, "config"]) => s.config(node, vmid(id)?)?,
        ("PUT", [id, "config"]) => s.set_config(node, vmid(id)?, &params)?,
        ("GET", [id, "status", "current"]) => s.status(node, vmid(id)?)?,
        ("POST", [id, "status", action]) => s.power(node, vmid(id)?, action)?,
        ("DELETE", [id]) => s.destroy(node, vmid(id)?, &params)?,
        _ => return Err(ApiError::new(501, format!("Method '{method} /nodes/{node}/lxc/{}' not implemented", rest.join("/")))),
    };
    Ok(ok(data))
}
