//! A container's config: reading it (current, pending, snapshot), and writing it with pending
//! changes and PVE's hotplug rules for a running container.

use pvefleet_proxmox::ConfigFile;
use pvefleet_proxmox::codec::net::NetConfig;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

use crate::state::{Ct, SimState};
use crate::{ApiError, param as get};

use super::{CONTROL, LIVE, config_privilege, digest};

impl SimState {
    pub(super) fn config(&self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
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

    pub(super) fn pending(&self, node: &str, vmid: u32) -> Result<Value, ApiError> {
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

    pub(super) fn set_config(&mut self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
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
                // PVE keeps the description as the comment lines at the top of the file.
                Change::Apply if k == "description" => ct.config.main_mut().set_description(v),
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
            if k == "description" {
                ct.config.main_mut().set_description("");
            } else if live {
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
