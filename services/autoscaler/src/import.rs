//! `pvefleet autoscale import`: an lxc-autoscaler `config.yaml` (the keys its README
//! documents) as pvefleet policies that keep its intent. Each container becomes a `vmid:<n>`
//! policy holding lxc-autoscaler's own defaults for what the entry leaves out (its memory step
//! is 256 MiB, pvefleet's 512), except the minimums: those stay with the site's plan unless
//! the file names them. `global` (`dry_run` or `enable_dry_run`) and
//! `safety.emergency_scale_down_threshold` give the stored global policy, so a config in dry
//! run imports as dry run under every container's own policy; the rest of `global` and
//! `safety` are settings for `[autoscaler]`. Anything else is reported with the reason, never
//! silently dropped. Credentials are named, never printed.

use serde_json::{Map, Value, json};
use yaml_rust2::{Yaml, YamlLoader};

use crate::policies::Scope;

/// What an import yields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imported {
    /// Policies to store, by scope: only the keys the file set.
    pub policies: Vec<(Scope, Value)>,
    /// Settings that belong in the `[autoscaler]` config, not in a policy: (key, value).
    pub settings: Vec<(String, Value)>,
    /// What has no equivalent, and why.
    pub unmapped: Vec<String>,
    /// What was kept in another form, and how.
    pub notes: Vec<String>,
}

/// lxc-autoscaler's defaults for a container entry's keys, as pvefleet policy keys: what it
/// would use for a key the entry leaves out. The minimums are left out on purpose (see the
/// module's documentation).
pub const LXC_AUTOSCALER_DEFAULTS: &[(&str, f64)] = &[
    ("cpu_up", 80.0),
    ("cpu_down", 30.0),
    ("mem_up", 85.0),
    ("mem_down", 40.0),
    ("max_cores", 8.0),
    ("max_memory_mb", 8192.0),
    ("core_step", 1.0),
    ("memory_step_mb", 256.0),
    ("cooldown_secs", 300.0),
    ("evaluation_periods", 3.0),
];

fn default_value(key: &str, v: f64) -> Value {
    if key.ends_with("_up") || key.ends_with("_down") {
        json!(v)
    } else {
        json!(v as u64)
    }
}

fn num(y: &Yaml) -> Option<f64> {
    match y {
        Yaml::Real(_) => y.as_f64(),
        Yaml::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

fn int(y: &Yaml) -> Option<i64> {
    match y {
        Yaml::Integer(i) => Some(*i),
        Yaml::Real(_) => y.as_f64().map(|f| f as i64),
        _ => None,
    }
}

fn entries(y: &Yaml) -> Vec<(String, &Yaml)> {
    y.as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), v)))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads the YAML text.
pub fn import(text: &str) -> Result<Imported, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let Some(doc) = docs.first() else {
        return Err("the file is empty".into());
    };
    let mut out = Imported::default();
    let mut global = Map::new();
    for (key, value) in entries(doc) {
        match key.as_str() {
            "proxmox" => {
                for (k, _) in entries(value) {
                    out.unmapped
                        .push(format!("proxmox.{k}: the PVE connection is [pve] in pvefleet's config"));
                }
            }
            "global" => {
                for (k, v) in entries(value) {
                    match k.as_str() {
                        // Its README names `enable_dry_run`; the tool itself reads `dry_run`.
                        "enable_dry_run" | "dry_run" => match v.as_bool() {
                            Some(b) => {
                                global.insert("dry_run".into(), json!(b));
                            }
                            None => out.unmapped.push(format!("global.{k}: not true or false")),
                        },
                        "monitoring_interval" => match int(v) {
                            Some(secs) => out
                                .settings
                                .push(("autoscaler.interval".into(), json!(format!("{secs}s")))),
                            None => out.unmapped.push(format!("global.{k}: not a number")),
                        },
                        "log_level" => out.unmapped.push(format!(
                            "global.{k}: not a policy: pvefleet's log level is [telemetry] filter (or RUST_LOG)"
                        )),
                        other => out.unmapped.push(format!("global.{other}: no equivalent in pvefleet")),
                    }
                }
            }
            "safety" => {
                for (k, v) in entries(value) {
                    let setting = match k.as_str() {
                        "max_concurrent_operations" => int(v).map(|n| ("autoscaler.safety.max_concurrent", json!(n))),
                        "max_cpu_usage_threshold" => num(v).map(|n| ("autoscaler.safety.host_cpu_limit", json!(n))),
                        "max_memory_usage_threshold" => {
                            num(v).map(|n| ("autoscaler.safety.host_memory_limit", json!(n)))
                        }
                        "enable_host_protection" => {
                            v.as_bool().map(|b| ("autoscaler.safety.host_protection", json!(b)))
                        }
                        "emergency_scale_down_threshold" => {
                            // lxc-autoscaler parses it and never uses it; pvefleet's emergency is
                            // memory at or above it scaling up at once.
                            match num(v) {
                                Some(n) => {
                                    global.insert("emergency_mem".into(), json!(n));
                                    out.notes.push(format!(
                                        "safety.{k}: kept as the global emergency_mem ({n}): memory at or above it scales up past the cooldown (lxc-autoscaler reads it and never acts on it)"
                                    ));
                                }
                                None => out.unmapped.push(format!("safety.{k}: not a number")),
                            }
                            continue;
                        }
                        _ => None,
                    };
                    match setting {
                        Some((key, value)) => out.settings.push((key.into(), value)),
                        None => out.unmapped.push(format!("safety.{k}: no equivalent, or not a value")),
                    }
                }
            }
            "containers" => {
                for (i, c) in value.as_vec().cloned().unwrap_or_default().iter().enumerate() {
                    let Some(vmid) = int(&c["vmid"]).and_then(|v| u32::try_from(v).ok()) else {
                        out.unmapped.push(format!("containers[{i}]: no vmid"));
                        continue;
                    };
                    let mut p = Map::new();
                    for (key, v) in LXC_AUTOSCALER_DEFAULTS {
                        p.insert((*key).into(), default_value(key, *v));
                    }
                    let mut named_min = false;
                    for (k, v) in entries(c) {
                        match k.as_str() {
                            "vmid" => {}
                            "enabled" => {
                                p.insert("enabled".into(), json!(v.as_bool().unwrap_or(true)));
                            }
                            "cooldown_seconds" => {
                                if let Some(n) = int(v) {
                                    p.insert("cooldown_secs".into(), json!(n));
                                }
                            }
                            "evaluation_periods" => {
                                if let Some(n) = int(v) {
                                    p.insert("evaluation_periods".into(), json!(n));
                                }
                            }
                            "thresholds" | "limits" => {
                                for (tk, tv) in entries(v) {
                                    let (ours, value) = match tk.as_str() {
                                        "cpu_scale_up" => ("cpu_up", num(tv).map(|n| json!(n))),
                                        "cpu_scale_down" => ("cpu_down", num(tv).map(|n| json!(n))),
                                        "memory_scale_up" => ("mem_up", num(tv).map(|n| json!(n))),
                                        "memory_scale_down" => ("mem_down", num(tv).map(|n| json!(n))),
                                        "min_cpu_cores" => ("min_cores", int(tv).map(|n| json!(n))),
                                        "max_cpu_cores" => ("max_cores", int(tv).map(|n| json!(n))),
                                        "min_memory_mb" => ("min_memory_mb", int(tv).map(|n| json!(n))),
                                        "max_memory_mb" => ("max_memory_mb", int(tv).map(|n| json!(n))),
                                        "cpu_step" => ("core_step", int(tv).map(|n| json!(n))),
                                        "memory_step_mb" => ("memory_step_mb", int(tv).map(|n| json!(n))),
                                        _ => ("", None),
                                    };
                                    match value {
                                        Some(value) if !ours.is_empty() => {
                                            named_min |= ours.starts_with("min_");
                                            p.insert(ours.into(), value);
                                        }
                                        _ => out.unmapped.push(format!(
                                            "containers[{vmid}].{k}.{tk}: no equivalent, or not a value"
                                        )),
                                    }
                                }
                            }
                            other => out.unmapped.push(format!("containers[{vmid}].{other}: no equivalent")),
                        }
                    }
                    if !named_min {
                        out.notes.push(format!(
                            "containers[{vmid}]: no minimums in the file: lxc-autoscaler's (1 core, 512 MiB) are not imported, so a site's plan stays its floor"
                        ));
                    }
                    out.policies.push((Scope::Vmid(vmid), Value::Object(p)));
                }
            }
            other => out.unmapped.push(format!("{other}: no equivalent")),
        }
    }
    if !global.is_empty() {
        out.policies.insert(0, (Scope::Global, Value::Object(global)));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The README's full example: its Proxmox, container and global blocks.
    fn readme_example() -> String {
        let readme = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/reference/lxc-autoscaler-readme.md"
        ))
        .unwrap_or_default();
        let full = readme.split("## Configuration").nth(1).unwrap_or_default();
        full.split("```yaml")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_readmes_full_example_yields_the_documented_policies() {
        let text = readme_example();
        assert!(text.contains("containers:"), "the README's example was found");
        let got = import(&text).unwrap_or_default();
        let vmid101 = got
            .policies
            .iter()
            .find(|(s, _)| *s == Scope::Vmid(101))
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        assert_eq!(
            vmid101,
            json!({
                "enabled": true, "cpu_up": 80.0, "cpu_down": 30.0, "mem_up": 85.0, "mem_down": 40.0,
                "min_cores": 1, "max_cores": 8, "min_memory_mb": 512, "max_memory_mb": 8192,
                "core_step": 1, "memory_step_mb": 512, "cooldown_secs": 300, "evaluation_periods": 3,
            }),
            "the file's keys, each as given"
        );
        let global = got
            .policies
            .iter()
            .find(|(s, _)| *s == Scope::Global)
            .map(|(_, p)| p.clone());
        assert_eq!(global, Some(json!({ "dry_run": false, "emergency_mem": 98.0 })));
        for (k, v) in [
            ("autoscaler.interval", json!("60s")),
            ("autoscaler.safety.max_concurrent", json!(3)),
            ("autoscaler.safety.host_cpu_limit", json!(95.0)),
            ("autoscaler.safety.host_memory_limit", json!(95.0)),
            ("autoscaler.safety.host_protection", json!(true)),
        ] {
            assert!(
                got.settings.contains(&(k.to_string(), v.clone())),
                "{k} = {v} in {:?}",
                got.settings
            );
        }
        assert!(got.unmapped.iter().any(|u| u.starts_with("proxmox.token_value")));
        assert!(got.unmapped.iter().any(|u| u.starts_with("global.log_level")));
        assert!(
            got.notes
                .iter()
                .any(|u| u.starts_with("safety.emergency_scale_down_threshold"))
        );
        assert!(
            !got.unmapped.iter().any(|u| u.contains("ac1e95ab")),
            "a credential's value is never repeated"
        );
        // Every policy it yields is one pvefleet accepts.
        let d = pvefleet_core::config::AutoscalePolicy::default();
        for (_, p) in &got.policies {
            assert!(crate::policies::overlay(&d, p).is_ok(), "{p}");
        }
    }

    /// The issue's file: a config in dry run, one emergency threshold, one container with one
    /// threshold.
    pub(crate) const DRY_RUN_CONFIG: &str = "global:\n  enable_dry_run: true\nsafety:\n  emergency_scale_down_threshold: 90.0\ncontainers:\n  - vmid: 101\n    thresholds:\n      cpu_scale_up: 75.0\n";

    #[test]
    fn a_config_in_dry_run_imports_as_dry_run_with_lxc_autoscalers_defaults() {
        let got = import(DRY_RUN_CONFIG).unwrap();
        let mut policies = pvefleet_policy::autoscale::Policies::default();
        for (s, p) in &got.policies {
            policies = policies.with(s, p.as_object().cloned());
        }
        let e = policies
            .resolve(101, &[], &pvefleet_core::config::AutoscalePolicy::default())
            .unwrap();
        assert!(e.policy.dry_run);
        assert_eq!(e.policy.emergency_mem, 90.0);
        assert_eq!(e.policy.cpu_up, 75.0);
        assert_eq!(e.policy.memory_step_mb, 256, "lxc-autoscaler's step, not pvefleet's");
        assert!(!e.layer("min_memory_mb").explicit(), "the plan stays the floor");
        // `dry_run`, the name the tool reads, is kept too.
        let got = import("global:\n  dry_run: true\n").unwrap();
        assert_eq!(got.policies, vec![(Scope::Global, json!({ "dry_run": true }))]);
        assert!(got.unmapped.is_empty(), "{:?}", got.unmapped);
        // An entry with only a vmid gets every default but the minimums.
        let got = import("containers:\n  - vmid: 7\n").unwrap();
        let p = &got.policies[0].1;
        assert_eq!(p["memory_step_mb"], 256);
        assert!(p.get("min_memory_mb").is_none());
    }

    #[test]
    fn bad_yaml_is_a_clear_error() {
        assert!(
            import("containers: [")
                .err()
                .unwrap_or_default()
                .starts_with("not YAML")
        );
    }
}
