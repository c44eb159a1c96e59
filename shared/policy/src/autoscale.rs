//! Autoscaling policies in Postgres (`autoscale_policies`): a global default, one per tag (for
//! groups or tiers), one per container. A container takes its own, else the policy of its
//! first tag that has one (tags in name order), else the global one, else the configured
//! default. A stored policy names only what it changes; the rest comes from the default.

use std::collections::BTreeMap;

use pvefleet_core::config::AutoscalePolicy;
use serde_json::Value;

/// Where a policy applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Every container.
    Global,
    /// Containers with this tag.
    Tag(String),
    /// One container.
    Vmid(u32),
}

impl Scope {
    /// The stored form: `global`, `tag:<tag>`, `vmid:<n>`.
    pub fn key(&self) -> String {
        match self {
            Scope::Global => "global".into(),
            Scope::Tag(t) => format!("tag:{t}"),
            Scope::Vmid(v) => format!("vmid:{v}"),
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once(':') {
            None if s == "global" => Some(Scope::Global),
            Some(("tag", t)) if !t.is_empty() => Some(Scope::Tag(t.to_string())),
            Some(("vmid", v)) => v.parse().ok().map(Scope::Vmid),
            _ => None,
        }
    }
}

/// A stored policy over the default: the default with the stored keys replaced. Unknown keys
/// are refused, naming them.
pub fn overlay(default: &AutoscalePolicy, stored: &Value) -> Result<AutoscalePolicy, String> {
    let mut base = serde_json::to_value(default).map_err(|e| e.to_string())?;
    let Some(over) = stored.as_object() else {
        return Err("a policy is a JSON object".into());
    };
    if let Some(b) = base.as_object_mut() {
        for (k, v) in over {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(base).map_err(|e| e.to_string())
}

/// Every stored policy, by scope, each already over the default.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    by_scope: BTreeMap<String, AutoscalePolicy>,
}

impl Policies {
    /// Loads them; a stored policy that no longer decodes is skipped with a warning.
    pub async fn load(client: &tokio_postgres::Client, default: &AutoscalePolicy) -> anyhow::Result<Self> {
        let mut by_scope = BTreeMap::new();
        for row in client
            .query("SELECT scope, policy FROM autoscale_policies", &[])
            .await?
        {
            let scope: String = row.get(0);
            match overlay(default, &row.get::<_, Value>(1)) {
                Ok(p) => {
                    by_scope.insert(scope, p);
                }
                Err(e) => tracing::warn!(scope, error = %e, "A stored autoscaling policy does not decode; skipped."),
            }
        }
        Ok(Self { by_scope })
    }

    /// The policy of a container with `tags`.
    pub fn resolve<'a>(&'a self, vmid: u32, tags: &[&str], default: &'a AutoscalePolicy) -> &'a AutoscalePolicy {
        if let Some(p) = self.by_scope.get(&Scope::Vmid(vmid).key()) {
            return p;
        }
        let mut sorted: Vec<&&str> = tags.iter().collect();
        sorted.sort();
        for t in sorted {
            if let Some(p) = self.by_scope.get(&Scope::Tag((*t).to_string()).key()) {
                return p;
            }
        }
        self.by_scope.get("global").unwrap_or(default)
    }
}

/// Every key a policy may hold.
pub const KEYS: &[&str] = &[
    "cpu_up",
    "cpu_down",
    "mem_up",
    "mem_down",
    "min_cores",
    "max_cores",
    "min_memory_mb",
    "max_memory_mb",
    "core_step",
    "memory_step_mb",
    "cooldown_secs",
    "evaluation_periods",
    "memory_headroom_mb",
    "emergency_mem",
    "dry_run",
    "enabled",
];

/// Checks a policy as it takes effect: thresholds are percentages with each down below its up
/// and the emergency at or above the memory up; each minimum at or below its maximum; steps
/// and evaluation periods above zero; at least one core and PVE's 16 MiB. Names the key.
pub fn check(p: &AutoscalePolicy) -> Result<(), crate::Invalid> {
    use crate::Invalid;
    for (key, v) in [
        ("cpu_up", p.cpu_up),
        ("cpu_down", p.cpu_down),
        ("mem_up", p.mem_up),
        ("mem_down", p.mem_down),
        ("emergency_mem", p.emergency_mem),
    ] {
        if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
            return Err(Invalid::new(key, format!("{v} is not a percentage (0 to 100)")));
        }
    }
    if p.cpu_down >= p.cpu_up {
        return Err(Invalid::new(
            "cpu_down",
            format!("cpu_down {} must be below cpu_up {}", p.cpu_down, p.cpu_up),
        ));
    }
    if p.mem_down >= p.mem_up {
        return Err(Invalid::new(
            "mem_down",
            format!("mem_down {} must be below mem_up {}", p.mem_down, p.mem_up),
        ));
    }
    if p.emergency_mem < p.mem_up {
        return Err(Invalid::new(
            "emergency_mem",
            format!("emergency_mem {} must be at least mem_up {}", p.emergency_mem, p.mem_up),
        ));
    }
    if p.min_cores < 1 {
        return Err(Invalid::new("min_cores", "a container has at least 1 core"));
    }
    if p.min_cores > p.max_cores {
        return Err(Invalid::new(
            "min_cores",
            format!("min_cores {} is above max_cores {}", p.min_cores, p.max_cores),
        ));
    }
    if p.min_memory_mb < 16 {
        return Err(Invalid::new("min_memory_mb", "PVE gives a container at least 16 MiB"));
    }
    if p.min_memory_mb > p.max_memory_mb {
        return Err(Invalid::new(
            "min_memory_mb",
            format!(
                "min_memory_mb {} is above max_memory_mb {}",
                p.min_memory_mb, p.max_memory_mb
            ),
        ));
    }
    for (key, v) in [
        ("core_step", u64::from(p.core_step)),
        ("memory_step_mb", p.memory_step_mb),
        ("evaluation_periods", p.evaluation_periods as u64),
    ] {
        if v == 0 {
            return Err(Invalid::new(key, format!("{key} must be above 0")));
        }
    }
    Ok(())
}

/// Stores a policy (keys over the default) for `scope`; checks it decodes and, as it takes
/// effect over the default, passes `check` first. The error names the key (`key: why`).
pub async fn set(
    client: &tokio_postgres::Client,
    default: &AutoscalePolicy,
    scope: &Scope,
    policy: &Value,
) -> Result<(), String> {
    let effective = overlay(default, policy)?;
    check(&effective).map_err(|i| i.to_string())?;
    client
        .execute(
            "INSERT INTO autoscale_policies (scope, policy) VALUES ($1, $2)
             ON CONFLICT (scope) DO UPDATE SET policy = excluded.policy, updated_at = now()",
            &[&scope.key(), policy],
        )
        .await
        .map_err(|e| pvefleet_core::db::describe(&e))?;
    Ok(())
}

/// Every stored policy: (scope, the stored keys).
pub async fn list(client: &tokio_postgres::Client) -> anyhow::Result<Vec<(String, Value)>> {
    Ok(client
        .query("SELECT scope, policy FROM autoscale_policies ORDER BY scope", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Deletes the policy of `scope`; returns whether there was one.
pub async fn delete(client: &tokio_postgres::Client, scope: &Scope) -> anyhow::Result<bool> {
    Ok(client
        .execute("DELETE FROM autoscale_policies WHERE scope = $1", &[&scope.key()])
        .await?
        == 1)
}

#[cfg(test)]
mod tests {

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_policy_that_cannot_work_is_refused_naming_the_key() {
        let d = AutoscalePolicy::default();
        assert!(super::check(&d).is_ok(), "the default passes");
        for (keys, key) in [
            (serde_json::json!({ "min_cores": 8, "max_cores": 2 }), "min_cores"),
            (serde_json::json!({ "cpu_up": 20, "cpu_down": 90 }), "cpu_down"),
            (serde_json::json!({ "cpu_up": 250 }), "cpu_up"),
            (
                serde_json::json!({ "mem_up": 99, "emergency_mem": 90 }),
                "emergency_mem",
            ),
            (serde_json::json!({ "core_step": 0 }), "core_step"),
            (
                serde_json::json!({ "min_memory_mb": 4096, "max_memory_mb": 1024 }),
                "min_memory_mb",
            ),
        ] {
            let p = super::overlay(&d, &keys).unwrap();
            assert_eq!(super::check(&p).unwrap_err().field, key, "{keys}");
        }
    }

    use super::*;

    #[test]
    fn a_container_takes_its_own_then_its_tags_then_the_global_then_the_default() {
        let d = AutoscalePolicy::default();
        let mut p = Policies::default();
        let with = |max: u32| AutoscalePolicy {
            max_cores: max,
            ..AutoscalePolicy::default()
        };
        assert_eq!(p.resolve(101, &["web"], &d).max_cores, 8, "the default");
        p.by_scope.insert("global".into(), with(6));
        assert_eq!(p.resolve(101, &["web"], &d).max_cores, 6);
        p.by_scope.insert("tag:web".into(), with(4));
        p.by_scope.insert("tag:db".into(), with(16));
        assert_eq!(p.resolve(101, &["web"], &d).max_cores, 4);
        assert_eq!(
            p.resolve(101, &["web", "db"], &d).max_cores,
            16,
            "tags in name order: db first"
        );
        p.by_scope.insert("vmid:101".into(), with(2));
        assert_eq!(p.resolve(101, &["web", "db"], &d).max_cores, 2);
        assert_eq!(p.resolve(102, &[], &d).max_cores, 6);
    }

    #[test]
    fn a_stored_policy_names_only_what_it_changes_and_unknown_keys_are_refused() {
        let d = AutoscalePolicy::default();
        let p = overlay(&d, &serde_json::json!({ "max_cores": 4, "cooldown_secs": 60 })).unwrap_or_default();
        assert_eq!((p.max_cores, p.cooldown_secs, p.cpu_up), (4, 60, 80.0));
        let e = overlay(&d, &serde_json::json!({ "max_cpus": 4 }))
            .err()
            .unwrap_or_default();
        assert!(e.contains("max_cpus"), "{e}");
        assert_eq!(Scope::parse("tag:web"), Some(Scope::Tag("web".into())));
        assert_eq!(Scope::parse("vmid:101"), Some(Scope::Vmid(101)));
        assert_eq!(Scope::parse("global"), Some(Scope::Global));
        assert_eq!(Scope::parse("node:pve1"), None);
    }
}
