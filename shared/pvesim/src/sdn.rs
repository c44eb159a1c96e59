//! `/cluster/sdn/...` and `/nodes/{node}/sdn/...`: vnets and subnets whose changes stay
//! pending until `PUT /cluster/sdn` applies them (pve-behaviour.md §5.13, §8). Only applied
//! vnets exist as bridges on the nodes, so a NIC on a new vnet fails until the apply.

use serde_json::{Map, Value, json};

use crate::state::{SdnObject, SimState};
use crate::tasks::Effect;
use crate::{ApiError, param as get};

fn object_digest(m: &Map<String, Value>) -> String {
    let text = serde_json::to_string(m).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn fields(params: &[(String, String)], skip: &[&str]) -> Map<String, Value> {
    params
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()) && k != "lock-token" && k != "digest" && k != "delete")
        .map(|(k, v)| {
            let value = match v.parse::<i64>() {
                Ok(n) if k != "alias" => json!(n),
                _ => json!(v),
            };
            (k.clone(), value)
        })
        .collect()
}

/// Renders an object for a listing: the applied view with `running=1`, the pending view with
/// `pending=1` (`state` and `pending{}`), else the configuration as it will be.
fn render(id_key: &str, id: &str, o: &SdnObject, params: &[(String, String)]) -> Option<Value> {
    let running = get(params, "running") == Some("1");
    let pending = get(params, "pending") == Some("1") && !running;
    let base = if running {
        o.running.as_ref()?
    } else if pending {
        o.running.as_ref().or(o.pending.as_ref())?
    } else {
        o.current()?
    };
    let mut v = Value::Object(base.clone());
    v[id_key] = json!(id);
    v["digest"] = json!(object_digest(base));
    if pending {
        if let Some(state) = o.state() {
            v["state"] = json!(state);
        }
        if let Some(p) = &o.pending {
            v["pending"] = Value::Object(p.clone());
        }
    }
    Some(v)
}

/// Applies every pending SDN change (the `reloadnetworkall` task).
pub(crate) fn apply(s: &mut SimState) {
    let commit = |o: &mut SdnObject| -> bool {
        if o.deleted {
            return false;
        }
        if let Some(p) = o.pending.take() {
            o.running = Some(p);
        }
        o.running.is_some()
    };
    s.vnets.retain(|_, o| commit(o));
    for subnets in s.subnets.values_mut() {
        subnets.retain(|_, o| commit(o));
    }
    let vnets = s.vnets.clone();
    s.subnets.retain(|vnet, _| vnets.contains_key(vnet));
    // `reloadnetworkall` only warns when a node's reload fails: the task still ends OK, and
    // the node's zones show `error` (pve-behaviour.md §5.13).
    s.sdn_errors = s
        .sdn_failing
        .iter()
        .map(|n| {
            (
                n.clone(),
                format!("ifreload failed on {n}: error: vnet bridge could not be created"),
            )
        })
        .collect();
}

impl SimState {
    fn sdn_write(&mut self) -> Result<(), ApiError> {
        self.require("/sdn", "SDN.Allocate")
    }

    fn vnet_create(&mut self, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.sdn_write()?;
        let vnet = get(params, "vnet").unwrap_or_default().to_string();
        let zone = get(params, "zone").unwrap_or_default();
        if !self.sdn_zones.contains_key(zone) {
            return Err(ApiError::params(vec![(
                "zone".into(),
                format!("zone '{zone}' does not exist"),
            )]));
        }
        if self.vnets.get(&vnet).is_some_and(|o| o.current().is_some()) {
            return Err(ApiError::new(
                500,
                format!("create sdn vnet object failed: vnet '{vnet}' already defined"),
            ));
        }
        let mut config = fields(params, &["vnet"]);
        config.insert("type".into(), json!("vnet"));
        let entry = self.vnets.entry(vnet).or_default();
        entry.deleted = false;
        entry.pending = Some(config);
        Ok(Value::Null)
    }

    fn vnet_update(&mut self, vnet: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.sdn_write()?;
        let o = self
            .vnets
            .get_mut(vnet)
            .filter(|o| o.current().is_some())
            .ok_or_else(|| ApiError::new(500, format!("sdn vnet object ID '{vnet}' does not exist")))?;
        let mut config = o.current().cloned().unwrap_or_default();
        if let Some(d) = get(params, "digest")
            && d != object_digest(&config)
        {
            return Err(ApiError::new(
                500,
                "detected modified configuration - file changed by other user? Try again.",
            ));
        }
        config.extend(fields(params, &["vnet"]));
        for k in get(params, "delete").into_iter().flat_map(|d| d.split(',')) {
            config.remove(k);
        }
        o.pending = Some(config);
        Ok(Value::Null)
    }

    fn vnet_delete(&mut self, vnet: &str) -> Result<Value, ApiError> {
        self.sdn_write()?;
        if self
            .subnets
            .get(vnet)
            .is_some_and(|s| s.values().any(|o| o.current().is_some()))
        {
            return Err(ApiError::new(500, "Can't delete vnet if subnets exists"));
        }
        let o = self
            .vnets
            .get_mut(vnet)
            .filter(|o| o.current().is_some())
            .ok_or_else(|| ApiError::new(500, format!("sdn vnet object ID '{vnet}' does not exist")))?;
        if o.running.is_none() {
            self.vnets.remove(vnet);
        } else {
            o.deleted = true;
            o.pending = None;
        }
        Ok(Value::Null)
    }

    fn subnet_create(&mut self, vnet: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.sdn_write()?;
        let zone = self
            .vnets
            .get(vnet)
            .and_then(SdnObject::current)
            .and_then(|c| c.get("zone").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| ApiError::new(500, format!("sdn vnet object ID '{vnet}' does not exist")))?;
        let cidr = get(params, "subnet").unwrap_or_default();
        let id = format!("{zone}-{}", cidr.replace('/', "-"));
        let subnets = self.subnets.entry(vnet.to_string()).or_default();
        if subnets.get(&id).is_some_and(|o| o.current().is_some()) {
            return Err(ApiError::new(
                500,
                format!("create sdn subnet object failed: {id} already defined"),
            ));
        }
        let mut config = fields(params, &["subnet"]);
        config.insert("cidr".into(), json!(cidr));
        config.insert("network".into(), json!(cidr.split('/').next().unwrap_or_default()));
        config.insert("mask".into(), json!(cidr.split('/').nth(1).unwrap_or_default()));
        config.insert("vnet".into(), json!(vnet));
        config.insert("zone".into(), json!(zone));
        let entry = subnets.entry(id).or_default();
        entry.deleted = false;
        entry.pending = Some(config);
        Ok(Value::Null)
    }

    fn sdn_zone_status(&self, node: &str) -> Value {
        if self.sdn_errors.contains_key(node) {
            return Value::Array(
                self.sdn_zones
                    .keys()
                    .map(|zone| json!({ "zone": zone, "status": "error" }))
                    .collect(),
            );
        }
        Value::Array(
            self.sdn_zones
                .keys()
                .map(|zone| {
                    let pending = self.vnets.values().any(|v| {
                        v.state().is_some()
                            && v.current()
                                .or(v.running.as_ref())
                                .and_then(|c| c.get("zone"))
                                .and_then(Value::as_str)
                                == Some(zone)
                    });
                    json!({ "zone": zone, "status": if pending { "pending" } else { "available" } })
                })
                .collect(),
        )
    }

    fn sdn_zone_content(&self, node: &str, zone: &str) -> Result<Value, ApiError> {
        if !self.sdn_zones.contains_key(zone) {
            return Err(ApiError::new(500, format!("zone '{zone}' does not exist")));
        }
        Ok(Value::Array(
            self.vnets
                .iter()
                .filter_map(|(name, v)| v.running.as_ref().map(|r| (name, r)))
                .filter(|(_, r)| r.get("zone").and_then(Value::as_str) == Some(zone))
                .map(|(name, _)| match self.sdn_errors.get(node) {
                    Some(msg) => json!({ "vnet": name, "status": "error", "statusmsg": msg }),
                    None => json!({ "vnet": name, "status": "available" }),
                })
                .collect(),
        ))
    }
}

/// Routes `/cluster/sdn/{rest..}`.
pub(crate) fn route(
    s: &mut SimState,
    method: &str,
    rest: &[&str],
    params: &[(String, String)],
) -> Result<Value, ApiError> {
    match (method, rest) {
        ("GET", []) => Ok(
            json!([{ "id": "vnets" }, { "id": "zones" }, { "id": "controllers" }, { "id": "ipams" }, { "id": "dns" }]),
        ),
        ("PUT", []) => {
            s.sdn_write()?;
            let node = s.config.nodes.first().cloned().unwrap_or_default();
            Ok(json!(s.start_task(
                &node,
                "reloadnetworkall",
                "",
                Some(Effect::ApplySdn),
                None
            )))
        }
        ("GET", ["zones"]) => Ok(Value::Array(
            s.sdn_zones
                .iter()
                .map(|(name, z)| {
                    let mut v = Value::Object(z.clone());
                    v["zone"] = json!(name);
                    v["digest"] = json!(object_digest(z));
                    v
                })
                .collect(),
        )),
        ("GET", ["vnets"]) => Ok(Value::Array(
            s.vnets
                .iter()
                .filter_map(|(name, o)| render("vnet", name, o, params))
                .collect(),
        )),
        ("POST", ["vnets"]) => s.vnet_create(params),
        ("GET", ["vnets", vnet]) => s
            .vnets
            .get(*vnet)
            .and_then(|o| render("vnet", vnet, o, params))
            .ok_or_else(|| ApiError::new(500, format!("sdn vnet object ID '{vnet}' does not exist"))),
        ("PUT", ["vnets", vnet]) => s.vnet_update(vnet, params),
        ("DELETE", ["vnets", vnet]) => s.vnet_delete(vnet),
        ("GET", ["vnets", vnet, "subnets"]) => Ok(Value::Array(
            s.subnets
                .get(*vnet)
                .into_iter()
                .flatten()
                .filter_map(|(id, o)| render("subnet", id, o, params))
                .collect(),
        )),
        ("POST", ["vnets", vnet, "subnets"]) => s.subnet_create(vnet, params),
        _ => Err(ApiError::new(
            501,
            format!("Method '{method} /cluster/sdn/{}' not implemented", rest.join("/")),
        )),
    }
}

/// Routes `/nodes/{node}/sdn/{rest..}`.
pub(crate) fn node_route(s: &mut SimState, node: &str, rest: &[&str]) -> Result<Value, ApiError> {
    s.reachable(node)?;
    match rest {
        ["zones"] => Ok(s.sdn_zone_status(node)),
        ["zones", zone, "content"] => s.sdn_zone_content(node, zone),
        _ => Err(ApiError::new(
            501,
            format!("Method 'GET /nodes/{node}/sdn/{}' not implemented", rest.join("/")),
        )),
    }
}
