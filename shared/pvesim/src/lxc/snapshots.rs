//! Snapshots: listing, taking, deleting, rolling back and their config, and the config edits
//! their tasks make when they end.

use pvefleet_proxmox::{Line, Section, SectionKind};
use serde_json::{Map, Value, json};

use crate::state::{Ct, SimState};
use crate::tasks::Effect;
use crate::{ApiError, param as get};

impl SimState {
    pub(super) fn snapshots(&self, node: &str, vmid: u32) -> Result<Value, ApiError> {
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

    pub(super) fn snapshot(&mut self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
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

    pub(super) fn delete_snapshot(&mut self, node: &str, vmid: u32, name: &str) -> Result<Value, ApiError> {
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

    pub(super) fn rollback(
        &mut self,
        node: &str,
        vmid: u32,
        name: &str,
        params: &[(String, String)],
    ) -> Result<Value, ApiError> {
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

    pub(super) fn snapshot_config(
        &mut self,
        node: &str,
        vmid: u32,
        name: &str,
        set: Option<&str>,
    ) -> Result<Value, ApiError> {
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
}

/// Copies the current config into a snapshot section; the current config names it as parent.
pub(crate) fn take_snapshot(ct: &mut Ct, name: &str, description: Option<&str>, clock: u64) {
    // `clock`: seconds since the epoch on the simulator's clock.
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
    snap.set("snaptime", &clock.to_string());
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
