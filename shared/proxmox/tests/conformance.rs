//! Schema conformance, both ways, against the official PVE API schema in `../shared/pve-api/`:
//!
//! - every request the client builds (a tour calling every typed method, recorded by pvesim)
//!   is validated against `subset.json` (PVE 9) and `subset-pve8.json` (PVE 8): unknown
//!   parameters, missing required ones, types, enums, patterns, bounds, and the keys and values
//!   inside property strings;
//! - every answer pvesim gave to those reads is validated against the endpoint's `returns`
//!   schema, and decodes with the client's types (the tour decodes each one).
//!
//! The checks are written here, independently of pvesim's embedded rules, so a mistake in one
//! is caught by the other. Without `../shared` the test says so and passes vacuously only for
//! that reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use pvefleet_pvesim::SimConfig;
use serde_json::Value;

const SCHEMA_DIR: &str = "../../../shared/pve-api";

struct Endpoint {
    method: String,
    path: String,
    /// Parameter schemas by name (`net[n]` kept as `net[n]`).
    params: BTreeMap<String, Value>,
    returns: Value,
}

fn load(subset: &str, full: &str) -> Option<Vec<Endpoint>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMA_DIR);
    let text = std::fs::read_to_string(dir.join(subset)).ok()?;
    let data: Value = serde_json::from_str(&text).unwrap();
    let mut out: Vec<Endpoint> = data["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Endpoint {
            method: e["method"].as_str().unwrap().to_string(),
            path: e["path"].as_str().unwrap().to_string(),
            params: e["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| (p["name"].as_str().unwrap().to_string(), p.clone()))
                .collect(),
            returns: e["returns"].clone(),
        })
        .collect();
    // `/access/permissions` is outside the subset: take it from the full schema.
    let js = std::fs::read_to_string(dir.join(full)).ok()?;
    let tree: Value = serde_json::from_str(&js[js.find('[').unwrap()..=js.rfind(']').unwrap()]).unwrap();
    // Endpoints outside the subset that the client calls, from the full schema.
    const EXTRA: &[&str] = &[
        "/access/permissions",
        "/nodes/{node}/vzdump",
        "/nodes/{node}/vzdump/extractconfig",
        "/nodes/{node}/storage/{storage}/content/{volume}",
        "/nodes/{node}/storage/{storage}/prunebackups",
        "/cluster/backup",
        "/cluster/backup/{id}",
    ];
    fn walk(nodes: &Value, out: &mut Vec<Endpoint>) {
        for n in nodes.as_array().into_iter().flatten() {
            if let Some(path) = n["path"].as_str().filter(|p| EXTRA.contains(p)) {
                for (method, info) in n["info"].as_object().into_iter().flatten() {
                    out.push(Endpoint {
                        method: method.clone(),
                        path: path.to_string(),
                        params: info["parameters"]["properties"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        returns: info["returns"].clone(),
                    });
                }
            }
            walk(&n["children"], out);
        }
    }
    walk(&tree, &mut out);
    Some(out)
}

fn matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    // A recorded path is decoded, so a volume id's `/` splits it: `{volume}` takes the rest.
    let fits = t.len() == p.len() || (t.last() == Some(&"{volume}") && p.len() > t.len());
    fits && t.iter().zip(&p).all(|(a, b)| a.starts_with('{') || a == b)
}

fn find<'a>(endpoints: &'a [Endpoint], method: &str, path: &str) -> Option<&'a Endpoint> {
    endpoints.iter().find(|e| e.method == method && matches(&e.path, path))
}

/// The schema of a parameter, resolving indexed names (`net3` → `net[n]`).
fn param_schema<'a>(ep: &'a Endpoint, name: &str) -> Option<&'a Value> {
    ep.params.get(name).or_else(|| {
        let base = name.trim_end_matches(|c: char| c.is_ascii_digit());
        (base.len() < name.len())
            .then(|| ep.params.get(&format!("{base}[n]")))
            .flatten()
    })
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Checks one value against a parameter schema; returns what is wrong.
fn check_value(schema: &Value, value: &str) -> Result<(), String> {
    match schema["type"].as_str() {
        Some("boolean") if !matches!(value, "0" | "1") => return Err(format!("boolean sent as '{value}'")),
        Some("integer") => {
            let n: i64 = value.parse().map_err(|_| format!("'{value}' is not an integer"))?;
            bounds(schema, n as f64)?;
        }
        Some("number") => {
            let n: f64 = value.parse().map_err(|_| format!("'{value}' is not a number"))?;
            bounds(schema, n)?;
        }
        _ => {}
    }
    if let Some(choices) = schema["enum"].as_array()
        && !choices.iter().any(|c| c.as_str() == Some(value))
    {
        return Err(format!("'{value}' is not one of {choices:?}"));
    }
    if let Some(p) = schema["pattern"].as_str()
        && let Ok(re) = regex::Regex::new(&format!("^(?:{p})$"))
        && !re.is_match(value)
    {
        return Err(format!("'{value}' does not match /{p}/"));
    }
    if let Some(max) = schema["maxLength"].as_u64()
        && value.chars().count() as u64 > max
    {
        return Err(format!("longer than {max}"));
    }
    if let Some(format) = schema["format"].as_object() {
        check_property_string(format, value)?;
    }
    Ok(())
}

fn bounds(schema: &Value, n: f64) -> Result<(), String> {
    if let Some(min) = number(&schema["minimum"]).filter(|m| n < *m) {
        return Err(format!("{n} is below {min}"));
    }
    if let Some(max) = number(&schema["maximum"]).filter(|m| n > *m) {
        return Err(format!("{n} is above {max}"));
    }
    Ok(())
}

/// `key=value,...` against a `format` object: known keys, valid values, required keys.
fn check_property_string(format: &serde_json::Map<String, Value>, value: &str) -> Result<(), String> {
    let default_key = format
        .iter()
        .find(|(_, s)| s["default_key"].as_u64() == Some(1) || s["default_key"] == Value::Bool(true))
        .map(|(k, _)| k.as_str());
    let mut seen = BTreeSet::new();
    for part in value.split(',').filter(|p| !p.is_empty()) {
        let (key, v) = match part.split_once('=') {
            Some((k, v)) => (k, v),
            None => match default_key {
                Some(k) => (k, part),
                None => return Err(format!("'{part}' has no key and the format has no default key")),
            },
        };
        let resolved = format
            .get(key)
            .map(|s| (key, s))
            .or_else(|| {
                format
                    .iter()
                    .find(|(_, s)| s["alias"].as_str() == Some(key))
                    .map(|(k, s)| (k.as_str(), s))
            })
            .ok_or_else(|| format!("property string key '{key}' is unknown"))?;
        check_value(resolved.1, v).map_err(|e| format!("{key}: {e}"))?;
        seen.insert(resolved.0.to_string());
    }
    for (k, s) in format {
        if s["optional"].as_u64() != Some(1)
            && s["optional"] != Value::Bool(true)
            && s["alias"].is_null()
            && !seen.contains(k)
        {
            return Err(format!("property string misses required key '{k}'"));
        }
    }
    Ok(())
}

/// Every problem with one request, as text.
fn check_request(endpoints: &[Endpoint], method: &str, path: &str, params: &[(String, String)]) -> Vec<String> {
    let Some(ep) = find(endpoints, method, path) else {
        return vec![format!("{method} {path}: not in the schema")];
    };
    let placeholders: Vec<&str> = ep
        .path
        .split('/')
        .filter(|s| s.starts_with('{'))
        .map(|s| s.trim_matches(|c| c == '{' || c == '}'))
        .collect();
    let mut problems = Vec::new();
    for (name, value) in params {
        match param_schema(ep, name) {
            None => problems.push(format!("{method} {path}: parameter '{name}' is not in the schema")),
            Some(schema) => {
                if let Err(e) = check_value(schema, value) {
                    problems.push(format!("{method} {path}: {name}: {e}"));
                }
            }
        }
    }
    for (name, schema) in &ep.params {
        let optional = schema["optional"].as_u64() == Some(1) || schema["optional"] == Value::Bool(true);
        if !optional
            && !name.ends_with("[n]")
            && !placeholders.contains(&name.as_str())
            && !params.iter().any(|(k, _)| k == name)
        {
            problems.push(format!("{method} {path}: required '{name}' is missing"));
        }
    }
    problems
}

/// Checks a returned value against a `returns` schema; `at` names the place.
fn check_return(schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    if value.is_null() {
        return;
    }
    let ok = match schema["type"].as_str() {
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean() || matches!(value.as_u64(), Some(0 | 1)),
        Some("array") => value.is_array(),
        Some("object") => value.is_object(),
        _ => true,
    };
    if !ok {
        problems.push(format!("{at}: expected {}, got {value}", schema["type"]));
        return;
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, v) in values.iter().enumerate() {
            check_return(items, v, &format!("{at}[{i}]"), problems);
        }
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
        for (k, s) in props {
            let optional = s["optional"].as_u64() == Some(1) || s["optional"] == Value::Bool(true);
            match obj.get(k) {
                Some(v) => check_return(s, v, &format!("{at}.{k}"), problems),
                None if !optional && !k.ends_with("[n]") => problems.push(format!("{at}: required '{k}' is missing")),
                None => {}
            }
        }
    }
}

/// Runs the tour against a recording simulator and checks requests and answers.
async fn conformance(version: &str, subset: &str, full: &str) {
    let Some(endpoints) = load(subset, full) else {
        eprintln!("../shared/pve-api/{subset} is not present: schema conformance not checked");
        return;
    };
    let pve8 = version.starts_with('8');
    let (sim, c) = common::sim(SimConfig {
        version: version.into(),
        record_requests: true,
        ..SimConfig::default()
    })
    .await;
    common::tour(&c, pve8).await;
    let requests = sim.requests();
    let mut problems = Vec::new();
    let mut covered = BTreeSet::new();
    for r in &requests {
        problems.extend(check_request(&endpoints, &r.method, &r.path, &r.params));
        if let Some(ep) = find(&endpoints, &r.method, &r.path) {
            covered.insert(format!("{} {}", ep.method, ep.path));
        }
    }
    // The answers: every successful read of the tour against its `returns` schema.
    for r in requests.iter().filter(|r| r.method == "GET" && r.status == 200) {
        let Some(ep) = find(&endpoints, "GET", &r.path) else {
            continue;
        };
        // PVE itself sends nextid as a string (pve-behaviour.md §2.6); the client copes.
        if ep.path == "/cluster/nextid" {
            continue;
        }
        match &r.response {
            Some(data) => check_return(&ep.returns, data, &format!("GET {}", r.path), &mut problems),
            None => problems.push(format!("GET {}: no answer recorded", r.path)),
        }
    }
    assert!(
        problems.is_empty(),
        "PVE {version}: {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // The tour must reach every endpoint the client has a method for.
    let mut expected = vec![
        "GET /version",
        "GET /nodes",
        "GET /nodes/{node}/status",
        "GET /access/permissions",
        "GET /nodes/{node}/storage/{storage}/content",
        "GET /cluster/nextid",
        "GET /cluster/resources",
        "POST /nodes/{node}/lxc",
        "GET /nodes/{node}/lxc",
        "GET /nodes/{node}/lxc/{vmid}/config",
        "PUT /nodes/{node}/lxc/{vmid}/config",
        "GET /nodes/{node}/lxc/{vmid}/pending",
        "GET /nodes/{node}/lxc/{vmid}/status/current",
        "POST /nodes/{node}/lxc/{vmid}/status/start",
        "POST /nodes/{node}/lxc/{vmid}/status/stop",
        "POST /nodes/{node}/lxc/{vmid}/status/shutdown",
        "POST /nodes/{node}/lxc/{vmid}/status/reboot",
        "DELETE /nodes/{node}/lxc/{vmid}",
        "GET /nodes/{node}/lxc/{vmid}/snapshot",
        "POST /nodes/{node}/lxc/{vmid}/snapshot",
        "DELETE /nodes/{node}/lxc/{vmid}/snapshot/{snapname}",
        "POST /nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback",
        "PUT /nodes/{node}/lxc/{vmid}/resize",
        "POST /nodes/{node}/lxc/{vmid}/migrate",
        "GET /nodes/{node}/lxc/{vmid}/interfaces",
        "GET /nodes/{node}/tasks",
        "GET /nodes/{node}/tasks/{upid}/status",
        "GET /nodes/{node}/tasks/{upid}/log",
        "GET /cluster/ha/resources",
        "POST /cluster/ha/resources",
        "GET /cluster/ha/resources/{sid}",
        "PUT /cluster/ha/resources/{sid}",
        "DELETE /cluster/ha/resources/{sid}",
        "POST /cluster/ha/resources/{sid}/migrate",
        "GET /cluster/ha/status/current",
        "GET /cluster/sdn/zones",
        "GET /cluster/sdn/vnets",
        "POST /cluster/sdn/vnets",
        "GET /cluster/sdn/vnets/{vnet}/subnets",
        "POST /cluster/sdn/vnets/{vnet}/subnets",
        "PUT /cluster/sdn",
        "GET /nodes/{node}/sdn/zones",
        "GET /nodes/{node}/sdn/zones/{zone}/content",
        "POST /nodes/{node}/vzdump",
        "GET /nodes/{node}/vzdump/extractconfig",
        "PUT /nodes/{node}/storage/{storage}/content/{volume}",
        "DELETE /nodes/{node}/storage/{storage}/content/{volume}",
        "GET /nodes/{node}/storage/{storage}/prunebackups",
        "DELETE /nodes/{node}/storage/{storage}/prunebackups",
        "GET /cluster/backup",
        "POST /cluster/backup",
        "PUT /cluster/backup/{id}",
        "DELETE /cluster/backup/{id}",
    ];
    if pve8 {
        expected.extend([
            "GET /cluster/ha/groups",
            "POST /cluster/ha/groups",
            "DELETE /cluster/ha/groups/{group}",
        ]);
    } else {
        expected.extend([
            "GET /cluster/ha/rules",
            "POST /cluster/ha/rules",
            "DELETE /cluster/ha/rules/{rule}",
            "GET /nodes/{node}/lxc/{vmid}/migrate",
        ]);
    }
    let missing: Vec<&&str> = expected.iter().filter(|e| !covered.contains(**e)).collect();
    assert!(missing.is_empty(), "PVE {version}: the tour never called {missing:?}");
}

#[tokio::test]
async fn every_client_request_and_every_pvesim_answer_conform_to_the_pve9_schema() {
    conformance("9.1.3", "subset.json", "apidoc.js").await;
}

#[tokio::test]
async fn every_client_request_and_every_pvesim_answer_conform_to_the_pve8_schema() {
    conformance("8.4.1", "subset-pve8.json", "apidoc-pve8.js").await;
}

#[test]
fn the_checker_itself_catches_bad_requests() {
    let Some(endpoints) = load("subset.json", "apidoc.js") else {
        return;
    };
    let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let bad = check_request(
        &endpoints,
        "POST",
        "/nodes/pve1/lxc",
        &p(&[
            ("vmid", "abc"),
            ("ostemplate", "x"),
            ("unprivileged", "true"),
            ("bogus", "1"),
            ("net0", "name=eth0,colour=red"),
        ]),
    );
    let text = bad.join("\n");
    for needle in ["vmid", "unprivileged", "bogus", "colour"] {
        assert!(text.contains(needle), "missed {needle}: {text}");
    }
    assert!(!check_request(&endpoints, "GET", "/cluster/ha/nonsense", &[]).is_empty());
    let mut problems = Vec::new();
    let returns = &find(&endpoints, "GET", "/nodes").unwrap().returns;
    check_return(
        returns,
        &serde_json::json!([{ "node": "pve1", "maxcpu": "eight" }]),
        "GET /nodes",
        &mut problems,
    );
    assert!(!problems.is_empty(), "a string where an integer belongs is caught");
}
