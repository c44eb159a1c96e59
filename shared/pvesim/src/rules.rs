//! Request checks from the official API schema: `data/pve-rules.json`, generated from
//! `../shared/pve-api/subset*.json` by `scripts/gen-pve-rules.py` (facts only, no text).
//!
//! Every request is checked the way PVE's JSONSchema does before any handler runs: unknown
//! parameters, missing required ones, types, enums, patterns and bounds. A path the schema
//! of the simulated version does not have is answered 501, as PVE 8 does for PVE 9 paths.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::ApiError;

const RULES: &str = include_str!("../data/pve-rules.json");

#[derive(Debug, Deserialize)]
struct Param {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    optional: bool,
    #[serde(default, rename = "enum")]
    choices: Option<Vec<String>>,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    minimum: Option<f64>,
    #[serde(default)]
    maximum: Option<f64>,
    #[serde(default, rename = "minLength")]
    min_length: Option<usize>,
    #[serde(default, rename = "maxLength")]
    max_length: Option<usize>,
    #[serde(default)]
    indexed: Option<u32>,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Endpoint {
    method: String,
    path: String,
    params: HashMap<String, Param>,
}

#[derive(Debug, Deserialize)]
struct Rules {
    pve9: Vec<Endpoint>,
    pve8: Vec<Endpoint>,
}

struct Compiled {
    rules: Rules,
    patterns: HashMap<String, regex::Regex>,
}

fn compiled() -> Option<&'static Compiled> {
    static C: OnceLock<Option<Compiled>> = OnceLock::new();
    C.get_or_init(|| {
        let rules: Rules = serde_json::from_str(RULES).ok()?;
        let mut patterns = HashMap::new();
        for e in rules.pve9.iter().chain(&rules.pve8) {
            for p in e.params.values() {
                if let Some(pat) = &p.pattern {
                    // PVE anchors every pattern. Perl-only syntax that does not compile is skipped.
                    if let Ok(re) = regex::Regex::new(&format!("^(?:{pat})$")) {
                        patterns.insert(pat.clone(), re);
                    }
                }
            }
        }
        Some(Compiled { rules, patterns })
    })
    .as_ref()
}

/// Whether decoded path segments fit a schema path; a segment may hold an encoded `/` (a
/// backup's volume id), so the segments are compared, not the joined path.
fn matches(template: &str, p: &[&str]) -> bool {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(p)
            .all(|(a, b)| (a.starts_with('{') && a.ends_with('}')) || a == b)
}

/// Checks one request. `segments` are the decoded path segments.
pub(crate) fn check(pve8: bool, method: &str, segments: &[&str], params: &[(String, String)]) -> Result<(), ApiError> {
    let Some(c) = compiled() else { return Ok(()) };
    let path = format!("/{}", segments.join("/"));
    let endpoints = if pve8 { &c.rules.pve8 } else { &c.rules.pve9 };
    let Some(ep) = endpoints
        .iter()
        .find(|e| e.method == method && matches(&e.path, segments))
    else {
        return Err(ApiError::new(501, format!("Method '{method} {path}' not implemented")));
    };
    let placeholders: Vec<String> = ep
        .path
        .split('/')
        .filter(|s| s.starts_with('{'))
        .map(|s| s.trim_matches(|c| c == '{' || c == '}').to_string())
        .collect();
    let mut errors = Vec::new();
    for (name, value) in params {
        let rule = ep.params.get(name).or_else(|| indexed_rule(ep, name));
        match rule {
            None => errors.push((
                name.clone(),
                "property is not defined in schema and the schema does not allow additional properties".to_string(),
            )),
            Some(r) => {
                if let Err(msg) = check_value(c, r, value).and_then(|()| check_format(r, name, value)) {
                    errors.push((name.clone(), msg));
                }
            }
        }
    }
    for (name, rule) in &ep.params {
        if !rule.optional
            && rule.indexed.is_none()
            && !placeholders.contains(name)
            && !params.iter().any(|(k, _)| k == name)
        {
            errors.push((name.clone(), "property is missing and it is not optional".into()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::params(errors))
    }
}

fn indexed_rule<'a>(ep: &'a Endpoint, name: &str) -> Option<&'a Param> {
    let split = name.find(|c: char| c.is_ascii_digit())?;
    let (base, idx) = name.split_at(split);
    let idx: u32 = idx.parse().ok()?;
    ep.params.get(base).filter(|r| r.indexed.is_some_and(|max| idx < max))
}

fn check_value(c: &Compiled, r: &Param, v: &str) -> Result<(), String> {
    match r.kind.as_deref() {
        Some("boolean") if !matches!(v, "0" | "1") => return Err(format!("type check ('boolean') failed - got '{v}'")),
        Some("integer") => {
            let n: i64 = v
                .parse()
                .map_err(|_| format!("type check ('integer') failed - got '{v}'"))?;
            bounds(r, n as f64)?;
        }
        Some("number") => {
            let n: f64 = v
                .parse()
                .map_err(|_| format!("type check ('number') failed - got '{v}'"))?;
            bounds(r, n)?;
        }
        _ => {}
    }
    if let Some(choices) = &r.choices
        && !choices.iter().any(|c| c == v)
    {
        return Err(format!(
            "value '{v}' does not have a value in the enumeration '{}'",
            choices.join(", ")
        ));
    }
    if let Some(re) = r.pattern.as_ref().and_then(|p| c.patterns.get(p))
        && !re.is_match(v)
    {
        return Err("value does not match the regex pattern".to_string());
    }
    if r.min_length.is_some_and(|m| v.chars().count() < m) {
        return Err(format!(
            "value must be at least {} characters long",
            r.min_length.unwrap_or(0)
        ));
    }
    if r.max_length.is_some_and(|m| v.chars().count() > m) {
        return Err(format!(
            "value may only be {} characters long",
            r.max_length.unwrap_or(0)
        ));
    }
    Ok(())
}

/// Property strings the fleet writes are checked with the codec, option by option.
fn check_format(r: &Param, name: &str, v: &str) -> Result<(), String> {
    use pvefleet_proxmox::codec::{features::Features, mount::MountPoint, net::NetConfig, prune::PruneBackups};
    if r.format.as_deref() == Some("prune-backups") {
        return PruneBackups::parse(name, v).map(drop).map_err(|e| e.to_string());
    }
    if r.format.as_deref() != Some("property-string") {
        return Ok(());
    }
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit());
    let checked = match base {
        "net" => NetConfig::parse(name, v).map(drop),
        "rootfs" => MountPoint::parse_rootfs(name, v).map(drop),
        "mp" => MountPoint::parse_mp(name, v).map(drop),
        "features" => Features::parse(name, v).map(drop),
        _ => Ok(()),
    };
    checked.map_err(|e| e.to_string())
}

fn bounds(r: &Param, n: f64) -> Result<(), String> {
    if let Some(min) = r.minimum.filter(|m| n < *m) {
        return Err(format!("value must have a minimum value of {min}"));
    }
    if let Some(max) = r.maximum.filter(|m| n > *m) {
        return Err(format!("value must have a maximum value of {max}"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_embedded_rules_load_and_cover_both_versions() {
        let c = compiled().expect("rules parse");
        assert_eq!(c.rules.pve9.len(), 78);
        assert_eq!(c.rules.pve8.len(), 72);
    }

    #[test]
    fn requests_are_checked_like_pve_does() {
        let create = ["nodes", "pve1", "lxc"];
        let ok = p(&[
            ("vmid", "101"),
            ("ostemplate", "local:vztmpl/x.tar.zst"),
            ("net0", "name=eth0"),
            ("unprivileged", "1"),
        ]);
        assert!(check(false, "POST", &create, &ok).is_ok());
        let err = check(
            false,
            "POST",
            &create,
            &p(&[
                ("vmid", "99"),
                ("ostemplate", "x"),
                ("unprivileged", "true"),
                ("net32", "x"),
                ("bogus", "1"),
            ]),
        )
        .err()
        .unwrap();
        let e = err.errors.unwrap();
        assert!(e["vmid"].as_str().unwrap().contains("minimum"), "{e:?}");
        assert!(e["unprivileged"].as_str().unwrap().contains("boolean"), "{e:?}");
        assert!(e.contains_key("net32") && e.contains_key("bogus"), "{e:?}");
        let err = check(false, "POST", &create, &p(&[("vmid", "101")])).err().unwrap();
        assert!(err.errors.unwrap()["ostemplate"].as_str().unwrap().contains("missing"));
    }

    #[test]
    fn pve9_only_paths_are_not_implemented_on_pve8() {
        assert!(check(false, "GET", &["cluster", "ha", "rules"], &[]).is_ok());
        let err = check(true, "GET", &["cluster", "ha", "rules"], &[]).err().unwrap();
        assert_eq!(err.status.as_u16(), 501);
        assert_eq!(err.message, "Method 'GET /cluster/ha/rules' not implemented");
    }
}
