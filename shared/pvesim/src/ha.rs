//! `/cluster/ha/...`: resources, groups (PVE 8) and rules (PVE 9), with the PVE 9
//! transition (pve-behaviour.md §5.12): on PVE 9 groups have been migrated to rules, so group
//! writes and `group` on resources are refused, and rules accept only HA-managed resources and
//! existing nodes. On PVE 8 the rules paths do not exist (501, from `rules`).

use serde_json::{Map, Value, json};

use crate::state::SimState;
use crate::{ApiError, param as get};

/// `ct:100`, `100` → `ct:100`.
fn sid(text: &str) -> String {
    if text.contains(':') {
        text.to_string()
    } else {
        format!("ct:{text}")
    }
}

fn object_digest(m: &Map<String, Value>) -> String {
    let text = serde_json::to_string(m).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Sets the given keys, deletes the `delete` ones; `skip` are not stored.
fn update(target: &mut Map<String, Value>, params: &[(String, String)], skip: &[&str]) {
    for (k, v) in params {
        if skip.contains(&k.as_str()) || k == "delete" || k == "digest" {
            continue;
        }
        let value = match v.parse::<i64>() {
            Ok(n) if k != "comment" && k != "nodes" && k != "resources" => json!(n),
            _ => json!(v),
        };
        target.insert(k.clone(), value);
    }
    for k in get(params, "delete").into_iter().flat_map(|d| d.split(',')) {
        target.remove(k);
    }
}

fn check_digest(m: &Map<String, Value>, params: &[(String, String)]) -> Result<(), ApiError> {
    match get(params, "digest") {
        Some(d) if d != object_digest(m) => Err(ApiError::new(
            500,
            "detected modified configuration - file changed by other user? Try again.",
        )),
        _ => Ok(()),
    }
}

/// Removes a sid from every rule (`purge`), and rules left without resources.
pub(crate) fn purge(s: &mut SimState, sid: &str) {
    s.ha_resources.remove(sid);
    for rule in s.ha_rules.values_mut() {
        if let Some(list) = rule.get("resources").and_then(Value::as_str) {
            let rest: Vec<&str> = list.split(',').filter(|r| *r != sid).collect();
            rule.insert("resources".into(), json!(rest.join(",")));
        }
    }
    s.ha_rules.retain(|_, r| {
        r.get("resources")
            .and_then(Value::as_str)
            .is_some_and(|l| !l.is_empty())
    });
}

impl SimState {
    fn groups_migrated(&self) -> bool {
        !self.pve8() && self.ha_groups.is_empty()
    }

    fn resource_list(&self) -> Value {
        Value::Array(
            self.ha_resources
                .iter()
                .map(|(sid, r)| {
                    let mut v = Value::Object(r.clone());
                    v["sid"] = json!(sid);
                    v["type"] = json!(sid.split(':').next().unwrap_or("ct"));
                    v["digest"] = json!(object_digest(r));
                    v
                })
                .collect(),
        )
    }

    fn resource(&self, id: &str) -> Result<Value, ApiError> {
        let sid = sid(id);
        let r = self
            .ha_resources
            .get(&sid)
            .ok_or_else(|| ApiError::new(500, format!("no such resource '{sid}'")))?;
        let mut v = Value::Object(r.clone());
        v["sid"] = json!(sid);
        v["type"] = json!(sid.split(':').next().unwrap_or("ct"));
        v["digest"] = json!(object_digest(r));
        Ok(v)
    }

    fn add_resource(&mut self, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.require("/", "Sys.Console")?;
        let sid = sid(get(params, "sid").unwrap_or_default());
        if get(params, "group").is_some() && self.groups_migrated() {
            return Err(ApiError::params(vec![(
                "group".into(),
                "ha groups have been migrated to rules".into(),
            )]));
        }
        if let Some(g) = get(params, "group")
            && !self.ha_groups.contains_key(g)
        {
            return Err(ApiError::new(500, format!("group '{g}' does not exist")));
        }
        if self.ha_resources.contains_key(&sid) {
            return Err(ApiError::new(
                500,
                format!("create resource failed: resource ID '{sid}' already defined"),
            ));
        }
        let vmid: Option<u32> = sid.split(':').nth(1).and_then(|v| v.parse().ok());
        if vmid.is_none_or(|v| !self.containers.contains_key(&v)) {
            return Err(ApiError::new(
                500,
                format!("unable to find configuration file for VM {}", vmid.unwrap_or(0)),
            ));
        }
        let mut r = Map::new();
        r.insert("state".into(), json!("started"));
        r.insert("max_restart".into(), json!(1));
        r.insert("max_relocate".into(), json!(1));
        if !self.pve8() {
            r.insert("failback".into(), json!(1));
        }
        update(&mut r, params, &["sid", "type"]);
        if r.get("state").and_then(Value::as_str) == Some("enabled") {
            r.insert("state".into(), json!("started"));
        }
        self.ha_resources.insert(sid, r);
        Ok(Value::Null)
    }

    fn set_resource(&mut self, id: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.require("/", "Sys.Console")?;
        let sid = sid(id);
        if get(params, "group").is_some() && self.groups_migrated() {
            return Err(ApiError::params(vec![(
                "group".into(),
                "ha groups have been migrated to rules".into(),
            )]));
        }
        let r = self
            .ha_resources
            .get_mut(&sid)
            .ok_or_else(|| ApiError::new(500, format!("no such resource '{sid}'")))?;
        check_digest(r, params)?;
        update(r, params, &["sid"]);
        Ok(Value::Null)
    }

    fn delete_resource(&mut self, id: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.require("/", "Sys.Console")?;
        let sid = sid(id);
        if !self.ha_resources.contains_key(&sid) {
            return Err(ApiError::new(
                500,
                format!("cannot delete service '{sid}', not HA managed!"),
            ));
        }
        if get(params, "purge") != Some("0") {
            purge(self, &sid);
        } else {
            self.ha_resources.remove(&sid);
        }
        Ok(Value::Null)
    }

    /// HA migrate/relocate: the resource moves to `node` (the CRM does it right away here).
    fn move_resource(&mut self, id: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.require("/", "Sys.Console")?;
        let sid = sid(id);
        if !self.ha_resources.contains_key(&sid) {
            return Err(ApiError::new(500, format!("no such resource '{sid}'")));
        }
        let node = get(params, "node").unwrap_or_default().to_string();
        if !self.has_node(&node) {
            return Err(ApiError::new(500, format!("no such cluster node '{node}'")));
        }
        let vmid: Option<u32> = sid.split(':').nth(1).and_then(|v| v.parse().ok());
        if let Some(ct) = vmid.and_then(|v| self.containers.get_mut(&v)) {
            ct.node = node.clone();
        }
        Ok(json!({ "sid": sid, "requested-node": node, "blocking-resources": [], "comigrated-resources": [] }))
    }

    fn group_list(&self) -> Value {
        Value::Array(
            self.ha_groups
                .iter()
                .map(|(name, g)| {
                    let mut v = Value::Object(g.clone());
                    v["group"] = json!(name);
                    v["type"] = json!("group");
                    v["digest"] = json!(object_digest(g));
                    v
                })
                .collect(),
        )
    }

    fn group_write(
        &mut self,
        method: &str,
        name: Option<&str>,
        params: &[(String, String)],
    ) -> Result<Value, ApiError> {
        self.require("/", "Sys.Console")?;
        let verb = match method {
            "POST" => "create",
            "PUT" => "update",
            _ => "delete",
        };
        if self.groups_migrated() {
            return Err(ApiError::new(
                500,
                format!("cannot {verb} ha group: ha groups have been migrated to rules"),
            ));
        }
        match (method, name) {
            ("POST", _) => {
                let name = get(params, "group").unwrap_or_default().to_string();
                if self.ha_groups.contains_key(&name) {
                    return Err(ApiError::new(
                        500,
                        format!("create ha group failed: ha group ID '{name}' already defined"),
                    ));
                }
                let mut g = Map::new();
                update(&mut g, params, &["group", "type"]);
                self.ha_groups.insert(name, g);
            }
            (_, Some(name)) => {
                let g = self
                    .ha_groups
                    .get_mut(name)
                    .ok_or_else(|| ApiError::new(500, format!("no such ha group '{name}'")))?;
                if method == "DELETE" {
                    self.ha_groups.remove(name);
                } else {
                    check_digest(g, params)?;
                    update(g, params, &["group"]);
                }
            }
            _ => {}
        }
        Ok(Value::Null)
    }

    fn rule_list(&self, params: &[(String, String)]) -> Value {
        let kind = get(params, "type");
        let resource = get(params, "resource");
        Value::Array(
            self.ha_rules
                .iter()
                .filter(|(_, r)| kind.is_none_or(|k| r.get("type").and_then(Value::as_str) == Some(k)))
                .filter(|(_, r)| {
                    resource.is_none_or(|want| {
                        r.get("resources")
                            .and_then(Value::as_str)
                            .is_some_and(|l| l.split(',').any(|x| x == sid(want)))
                    })
                })
                .map(|(name, r)| {
                    let mut v = Value::Object(r.clone());
                    v["rule"] = json!(name);
                    v["digest"] = json!(object_digest(r));
                    v
                })
                .collect(),
        )
    }

    /// A rule's resources must be HA-managed and its nodes must exist.
    fn check_rule(&self, name: &str, rule: &Map<String, Value>) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        let resources = rule.get("resources").and_then(Value::as_str).unwrap_or_default();
        let unmanaged: Vec<String> = resources
            .split(',')
            .filter(|r| !r.is_empty())
            .map(sid)
            .filter(|r| !self.ha_resources.contains_key(r))
            .collect();
        if !unmanaged.is_empty() {
            errors.push((
                "resources".to_string(),
                format!("cannot use unmanaged resource(s) {}.", unmanaged.join(", ")),
            ));
        }
        let kind = rule.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind == "node-affinity" {
            let nodes = rule.get("nodes").and_then(Value::as_str).unwrap_or_default();
            if nodes.is_empty() {
                errors.push((
                    "nodes".to_string(),
                    "property is missing and it is not optional".to_string(),
                ));
            }
            for n in nodes.split(',').filter(|n| !n.is_empty()) {
                let node = n.split(':').next().unwrap_or_default();
                if !self.has_node(node) {
                    errors.push(("nodes".to_string(), format!("Node '{node}' does not exist.")));
                }
            }
        }
        if kind == "resource-affinity" && rule.get("affinity").is_none() {
            errors.push((
                "affinity".to_string(),
                "property is missing and it is not optional".to_string(),
            ));
        }
        if errors.is_empty() {
            return Ok(());
        }
        let mut e = ApiError::params(errors);
        e.message = format!("Rule '{name}' is invalid.");
        Err(e)
    }

    fn rule_write(&mut self, method: &str, name: Option<&str>, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.require("/", "Sys.Console")?;
        if !self.ha_groups.is_empty() {
            let verb = if method == "POST" { "create" } else { "update" };
            return Err(ApiError::new(
                500,
                format!("cannot {verb} ha rule: ha groups have not been migrated yet"),
            ));
        }
        match (method, name) {
            ("POST", _) => {
                let name = get(params, "rule").unwrap_or_default().to_string();
                if self.ha_rules.contains_key(&name) {
                    return Err(ApiError::new(
                        500,
                        format!("create ha rule failed: ha rule ID '{name}' already defined"),
                    ));
                }
                let mut r = Map::new();
                update(&mut r, params, &["rule"]);
                self.check_rule(&name, &r)?;
                self.ha_rules.insert(name, r);
            }
            ("DELETE", Some(name)) => {
                self.ha_rules
                    .remove(name)
                    .ok_or_else(|| ApiError::new(500, format!("no such ha rule '{name}'")))?;
            }
            (_, Some(name)) => {
                let mut r = self
                    .ha_rules
                    .get(name)
                    .cloned()
                    .ok_or_else(|| ApiError::new(500, format!("no such ha rule '{name}'")))?;
                check_digest(&r, params)?;
                update(&mut r, params, &["rule"]);
                self.check_rule(name, &r)?;
                self.ha_rules.insert(name.to_string(), r);
            }
            _ => {}
        }
        Ok(Value::Null)
    }

    fn ha_status(&self) -> Value {
        let mut out = vec![
            json!({ "id": "quorum", "type": "quorum", "status": "OK", "quorate": 1, "node": self.config.nodes.first() }),
        ];
        for (sid, r) in &self.ha_resources {
            let vmid: Option<u32> = sid.split(':').nth(1).and_then(|v| v.parse().ok());
            let ct = vmid.and_then(|v| self.containers.get(&v));
            let state = match ct {
                Some(c) if c.running => "started",
                Some(_) => "stopped",
                None => "error",
            };
            out.push(json!({
                "id": format!("service:{sid}"), "type": "service", "sid": sid,
                "node": ct.map(|c| c.node.clone()), "state": state, "crm_state": state,
                "request_state": r.get("state"), "status": format!("{sid} ({state})"),
            }));
        }
        Value::Array(out)
    }
}

/// Routes `/cluster/ha/{rest..}`.
pub(crate) fn route(
    s: &mut SimState,
    method: &str,
    rest: &[&str],
    params: &[(String, String)],
) -> Result<Value, ApiError> {
    match (method, rest) {
        ("GET", ["resources"]) => Ok(s.resource_list()),
        ("POST", ["resources"]) => s.add_resource(params),
        ("GET", ["resources", id]) => s.resource(id),
        ("PUT", ["resources", id]) => s.set_resource(id, params),
        ("DELETE", ["resources", id]) => s.delete_resource(id, params),
        ("POST", ["resources", id, "migrate" | "relocate"]) => s.move_resource(id, params),
        ("GET", ["groups"]) => Ok(s.group_list()),
        ("GET", ["groups", name]) => s
            .ha_groups
            .get(*name)
            .map(|g| {
                let mut v = Value::Object(g.clone());
                v["group"] = json!(name);
                v
            })
            .ok_or_else(|| ApiError::new(500, format!("no such ha group '{name}'"))),
        ("POST", ["groups"]) => s.group_write(method, None, params),
        ("PUT" | "DELETE", ["groups", name]) => s.group_write(method, Some(name), params),
        ("GET", ["rules"]) => Ok(s.rule_list(params)),
        ("GET", ["rules", name]) => s
            .ha_rules
            .get(*name)
            .map(|r| {
                let mut v = Value::Object(r.clone());
                v["rule"] = json!(name);
                v["digest"] = json!(object_digest(r));
                v
            })
            .ok_or_else(|| ApiError::new(500, format!("no such ha rule '{name}'"))),
        ("POST", ["rules"]) => s.rule_write(method, None, params),
        ("PUT" | "DELETE", ["rules", name]) => s.rule_write(method, Some(name), params),
        ("GET", ["status", "current"]) => Ok(s.ha_status()),
        _ => Err(ApiError::new(
            501,
            format!("Method '{method} /cluster/ha/{}' not implemented", rest.join("/")),
        )),
    }
}
