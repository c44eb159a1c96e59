//! Autoscaling policies in Postgres (`autoscale_policies`) and how they layer.
//!
//! A container's effective policy is built key by key, each layer over the one before:
//! built-in defaults < `[autoscaler.policy]` < the stored `global` < per tag < per container.
//! A layer names only the keys it changes. Of several tags, the first in name order that sets
//! a key gives it. Every key of the result remembers the layer it came from (`Effective`), so
//! an operator can see why a container scales as it does, and a floor is lowered only by a
//! key some layer set on purpose.
//!
//! Every write is checked as it takes effect: the keys must be known and of their type, and
//! the policy they make with the layers below must pass `check`. A refusal names the key.

use std::collections::BTreeMap;

use pvefleet_core::config::AutoscalePolicy;
use serde_json::{Map, Value};

use crate::Invalid;

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

/// Where one key of an effective policy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layer {
    /// pvefleet's built-in default.
    Default,
    /// `[autoscaler.policy]` in the config (a value other than the built-in default).
    Config,
    /// A stored policy.
    Stored(Scope),
    /// A layer given for one run (the simulator's `--policy` file, an import's dry run).
    Given(String),
}

impl Layer {
    /// Whether some layer set it on purpose (anything but the built-in default).
    pub fn explicit(&self) -> bool {
        *self != Layer::Default
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layer::Default => f.write_str("default"),
            Layer::Config => f.write_str("config [autoscaler.policy]"),
            Layer::Stored(s) => f.write_str(&s.key()),
            Layer::Given(name) => f.write_str(name),
        }
    }
}

/// A policy as it takes effect, with the layer each key came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    /// The policy.
    pub policy: AutoscalePolicy,
    /// The layer of every key.
    pub from: BTreeMap<String, Layer>,
}

impl Effective {
    /// The layer `key` came from.
    pub fn layer(&self, key: &str) -> Layer {
        self.from.get(key).cloned().unwrap_or(Layer::Default)
    }

    /// `{key: {"value": v, "from": layer}}` for every key, in name order.
    pub fn to_json(&self) -> Value {
        let values = serde_json::to_value(&self.policy).unwrap_or(Value::Null);
        let mut out = Map::new();
        for (k, layer) in &self.from {
            out.insert(
                k.clone(),
                serde_json::json!({ "value": values.get(k).cloned().unwrap_or(Value::Null), "from": layer.to_string() }),
            );
        }
        Value::Object(out)
    }
}

fn as_map(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Checks a layer's keys on their own: each known, each of its type. Names the key.
pub fn check_keys(keys: &Value) -> Result<Map<String, Value>, Invalid> {
    let Some(map) = keys.as_object() else {
        return Err(Invalid::new("policy", "a policy is a JSON object of policy keys"));
    };
    let base = serde_json::to_value(AutoscalePolicy::default()).unwrap_or(Value::Null);
    for (k, v) in map {
        if !KEYS.contains(&k.as_str()) {
            return Err(Invalid::new(
                k,
                format!("unknown policy key '{k}'; known: {}", KEYS.join(", ")),
            ));
        }
        let mut one = as_map(&base);
        one.insert(k.clone(), v.clone());
        if let Err(e) = serde_json::from_value::<AutoscalePolicy>(Value::Object(one)) {
            let e = e.to_string();
            let why = e.split(" at line").next().unwrap_or(&e);
            return Err(Invalid::new(k, format!("{v} is not a valid {k}: {why}")));
        }
    }
    Ok(map.clone())
}

/// Layers `layers` (lowest first) over the built-in defaults and `config`, key by key.
pub fn layered(config: &AutoscalePolicy, layers: &[(Layer, &Map<String, Value>)]) -> Result<Effective, Invalid> {
    let builtin = as_map(&serde_json::to_value(AutoscalePolicy::default()).unwrap_or(Value::Null));
    let configured = as_map(&serde_json::to_value(config).unwrap_or(Value::Null));
    let mut values = Map::new();
    let mut from = BTreeMap::new();
    for (k, v) in &builtin {
        let c = configured.get(k).unwrap_or(v);
        values.insert(k.clone(), c.clone());
        from.insert(k.clone(), if c == v { Layer::Default } else { Layer::Config });
    }
    for (layer, keys) in layers {
        for (k, v) in keys.iter() {
            if v.is_null() {
                continue;
            }
            values.insert(k.clone(), v.clone());
            from.insert(k.clone(), layer.clone());
        }
    }
    let policy: AutoscalePolicy = serde_json::from_value(Value::Object(values)).map_err(|e| {
        let e = e.to_string();
        Invalid::new("policy", e.split(" at line").next().unwrap_or(&e).to_string())
    })?;
    Ok(Effective { policy, from })
}

/// Like [`layered`], then [`check`]: the error names the key and the layer it came from.
pub fn effective(config: &AutoscalePolicy, layers: &[(Layer, &Map<String, Value>)]) -> Result<Effective, Invalid> {
    let e = layered(config, layers)?;
    check(&e.policy).map_err(|i| {
        let layer = e.layer(&i.field);
        Invalid::new(&i.field, format!("{} (as set by {layer})", i.reason))
    })?;
    Ok(e)
}

/// A stored policy over the config alone: the default with the stored keys replaced.
pub fn overlay(default: &AutoscalePolicy, stored: &Value) -> Result<AutoscalePolicy, String> {
    let keys = check_keys(stored).map_err(|i| i.to_string())?;
    layered(default, &[(Layer::Given("stored".into()), &keys)])
        .map(|e| e.policy)
        .map_err(|i| i.to_string())
}

/// Every stored policy, by scope: the keys each sets.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    by_scope: BTreeMap<String, Map<String, Value>>,
    /// A layer over every stored one, for one run (the simulator's `--policy`).
    top: Option<(String, Map<String, Value>)>,
}

impl Policies {
    /// Loads them; a stored policy that no longer passes `check_keys` is skipped with a warning.
    pub async fn load(client: &tokio_postgres::Client) -> anyhow::Result<Self> {
        let mut by_scope = BTreeMap::new();
        for row in client
            .query("SELECT scope, policy FROM autoscale_policies", &[])
            .await?
        {
            let scope: String = row.get(0);
            match check_keys(&row.get::<_, Value>(1)) {
                Ok(keys) => {
                    by_scope.insert(scope, keys);
                }
                Err(e) => tracing::warn!(scope, error = %e, "A stored autoscaling policy does not decode; skipped."),
            }
        }
        Ok(Self { by_scope, top: None })
    }

    /// These policies with `keys` over every stored layer, named `name` (the simulator's
    /// `--policy` file).
    pub fn on_top(mut self, name: &str, keys: Map<String, Value>) -> Self {
        self.top = Some((name.to_string(), keys));
        self
    }

    /// The keys stored for `scope`.
    pub fn stored(&self, scope: &Scope) -> Option<&Map<String, Value>> {
        self.by_scope.get(&scope.key())
    }

    /// These policies with `scope` set to `keys` (or removed).
    pub fn with(&self, scope: &Scope, keys: Option<Map<String, Value>>) -> Self {
        let mut by_scope = self.by_scope.clone();
        match keys {
            Some(k) => by_scope.insert(scope.key(), k),
            None => by_scope.remove(&scope.key()),
        };
        Self {
            by_scope,
            top: self.top.clone(),
        }
    }

    /// The stored layers that apply to a container `vmid` with `tags`, lowest first.
    pub fn layers(&self, vmid: u32, tags: &[&str]) -> Vec<(Layer, &Map<String, Value>)> {
        let mut out = Vec::new();
        if let Some(g) = self.stored(&Scope::Global) {
            out.push((Layer::Stored(Scope::Global), g));
        }
        // The first tag in name order that sets a key gives it: the tags go on last-first.
        let mut sorted: Vec<&str> = tags.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for t in sorted.into_iter().rev() {
            let s = Scope::Tag(t.to_string());
            if let Some(keys) = self.stored(&s) {
                out.push((Layer::Stored(s), keys));
            }
        }
        let s = Scope::Vmid(vmid);
        if let Some(keys) = self.stored(&s) {
            out.push((Layer::Stored(s), keys));
        }
        if let Some((name, keys)) = &self.top {
            out.push((Layer::Given(name.clone()), keys));
        }
        out
    }

    /// The effective policy of a container `vmid` with `tags`, checked.
    pub fn resolve(&self, vmid: u32, tags: &[&str], config: &AutoscalePolicy) -> Result<Effective, Invalid> {
        effective(config, &self.layers(vmid, tags))
    }

    /// The policy `scope` makes on its own layers: the global over the config; a tag's or a
    /// container's over the global (tags a container may also carry are not known here).
    pub fn resolve_scope(&self, scope: &Scope, config: &AutoscalePolicy) -> Result<Effective, Invalid> {
        effective(config, &self.scope_layers(scope))
    }

    /// The stored layers of `scope` on its own, lowest first: the global, then the scope's
    /// own when it is a tag or a container.
    pub fn scope_layers(&self, scope: &Scope) -> Vec<(Layer, &Map<String, Value>)> {
        let mut layers = Vec::new();
        if let Some(g) = self.stored(&Scope::Global) {
            layers.push((Layer::Stored(Scope::Global), g));
        }
        if *scope != Scope::Global
            && let Some(keys) = self.stored(scope)
        {
            layers.push((Layer::Stored(scope.clone()), keys));
        }
        layers
    }

    /// Checks every stored scope as it takes effect; the first fault names the scope and key.
    pub fn check_all(&self, config: &AutoscalePolicy) -> Result<(), Invalid> {
        for key in self.by_scope.keys() {
            let Some(scope) = Scope::parse(key) else { continue };
            self.resolve_scope(&scope, config)
                .map_err(|i| Invalid::new(&i.field, format!("{} (with {key} over the global)", i.reason)))?;
        }
        Ok(())
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
pub fn check(p: &AutoscalePolicy) -> Result<(), Invalid> {
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

/// Why a policy write failed.
#[derive(Debug)]
pub enum WriteError {
    /// The policy is refused as given: the key and why.
    Invalid(Invalid),
    /// Postgres failed.
    Db(anyhow::Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Invalid(i) => i.fmt(f),
            WriteError::Db(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for WriteError {}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        WriteError::Db(anyhow::anyhow!(pvefleet_core::db::describe(&e)))
    }
}

/// How a write treats the keys already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// The given keys over the stored ones (a `null` removes a key).
    Merge,
    /// The given keys instead of the stored ones.
    Replace,
}

/// Stores keys for `scope` (merged or replacing, see [`Write`]) after checking them on their
/// own and the policy they make with the layers below, and every stored policy over a new
/// global. Call it in a transaction: the scope's row is locked while it is read and written.
/// Answers the keys now stored.
pub async fn set(
    client: &tokio_postgres::Client,
    config: &AutoscalePolicy,
    scope: &Scope,
    keys: &Value,
    how: Write,
) -> Result<Map<String, Value>, WriteError> {
    if keys.as_object().is_some_and(|m| m.is_empty()) && how == Write::Merge {
        return Err(WriteError::Invalid(Invalid::new(
            "policy",
            "name at least one key to change",
        )));
    }
    // `null` is "remove" in a merge; checked as absent.
    let mut given = keys.clone();
    if let Some(m) = given.as_object_mut() {
        m.retain(|_, v| !v.is_null() || how == Write::Replace);
    }
    check_keys(&given).map_err(WriteError::Invalid)?;
    let current = stored_for_update(client, scope).await?;
    let mut next = match how {
        Write::Merge => current.unwrap_or_default(),
        Write::Replace => Map::new(),
    };
    for (k, v) in as_map(keys) {
        if v.is_null() {
            next.remove(&k);
        } else {
            next.insert(k, v);
        }
    }
    store(client, config, scope, next).await
}

/// Removes `keys` from the policy of `scope` (the row goes when none is left), checking what
/// remains as [`set`] does. Answers the keys still stored; unknown keys are refused.
pub async fn unset(
    client: &tokio_postgres::Client,
    config: &AutoscalePolicy,
    scope: &Scope,
    keys: &[String],
) -> Result<Map<String, Value>, WriteError> {
    if let Some(k) = keys.iter().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(WriteError::Invalid(Invalid::new(
            k,
            format!("unknown policy key '{k}'; known: {}", KEYS.join(", ")),
        )));
    }
    let Some(mut current) = stored_for_update(client, scope).await? else {
        return Err(WriteError::Invalid(Invalid::new(
            "scope",
            format!("{} has no stored policy", scope.key()),
        )));
    };
    for k in keys {
        current.remove(k);
    }
    store(client, config, scope, current).await
}

async fn stored_for_update(
    client: &tokio_postgres::Client,
    scope: &Scope,
) -> Result<Option<Map<String, Value>>, WriteError> {
    Ok(client
        .query_opt(
            "SELECT policy FROM autoscale_policies WHERE scope = $1 FOR UPDATE",
            &[&scope.key()],
        )
        .await?
        .map(|r| as_map(&r.get::<_, Value>(0))))
}

async fn store(
    client: &tokio_postgres::Client,
    config: &AutoscalePolicy,
    scope: &Scope,
    next: Map<String, Value>,
) -> Result<Map<String, Value>, WriteError> {
    let all = Policies::load(client).await.map_err(WriteError::Db)?;
    let after = all.with(scope, (!next.is_empty()).then(|| next.clone()));
    after.resolve_scope(scope, config).map_err(WriteError::Invalid)?;
    if *scope == Scope::Global {
        // A new global is under every tag's and container's policy: each must still work.
        after.check_all(config).map_err(WriteError::Invalid)?;
    }
    if next.is_empty() {
        client
            .execute("DELETE FROM autoscale_policies WHERE scope = $1", &[&scope.key()])
            .await?;
    } else {
        client
            .execute(
                "INSERT INTO autoscale_policies (scope, policy) VALUES ($1, $2)
                 ON CONFLICT (scope) DO UPDATE SET policy = excluded.policy, updated_at = now()",
                &[&scope.key(), &Value::Object(next.clone())],
            )
            .await?;
    }
    Ok(next)
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_policy_that_cannot_work_is_refused_naming_the_key() {
        let d = AutoscalePolicy::default();
        assert!(check(&d).is_ok(), "the default passes");
        for (given, key) in [
            (json!({ "min_cores": 8, "max_cores": 2 }), "min_cores"),
            (json!({ "cpu_up": 20, "cpu_down": 90 }), "cpu_down"),
            (json!({ "cpu_up": 250 }), "cpu_up"),
            (json!({ "mem_up": 99, "emergency_mem": 90 }), "emergency_mem"),
            (json!({ "core_step": 0 }), "core_step"),
            (json!({ "min_memory_mb": 4096, "max_memory_mb": 1024 }), "min_memory_mb"),
        ] {
            let k = keys(given.clone());
            let got = effective(&d, &[(Layer::Stored(Scope::Vmid(101)), &k)]).unwrap_err();
            assert_eq!(got.field, key, "{given}");
            assert!(got.reason.contains("vmid:101"), "names the layer: {got}");
        }
        for (given, key) in [
            (json!({ "max_cpus": 4 }), "max_cpus"),
            (json!({ "max_cores": "four" }), "max_cores"),
            (json!({ "dry_run": 1 }), "dry_run"),
            (json!({ "core_step": -1 }), "core_step"),
        ] {
            assert_eq!(check_keys(&given).unwrap_err().field, key, "{given}");
        }
        assert_eq!(check_keys(&json!([1])).unwrap_err().field, "policy");
    }

    #[test]
    fn layers_apply_key_by_key_and_each_key_names_its_layer() {
        let config = AutoscalePolicy {
            cooldown_secs: 120,
            ..AutoscalePolicy::default()
        };
        let p = Policies::default()
            .with(
                &Scope::Global,
                Some(keys(json!({ "dry_run": true, "emergency_mem": 90.0 }))),
            )
            .with(
                &Scope::Tag("web".into()),
                Some(keys(json!({ "max_cores": 4, "memory_step_mb": 1024 }))),
            )
            .with(&Scope::Tag("db".into()), Some(keys(json!({ "max_cores": 16 }))))
            .with(&Scope::Vmid(101), Some(keys(json!({ "cpu_up": 75.0 }))));
        let e = p.resolve(101, &["web", "db"], &config).unwrap();
        assert_eq!(e.policy.cpu_up, 75.0);
        assert!(e.policy.dry_run, "the global's dry run under a container's own policy");
        assert_eq!(e.policy.emergency_mem, 90.0);
        assert_eq!(e.policy.max_cores, 16, "db sorts before web");
        assert_eq!(e.policy.memory_step_mb, 1024, "web gives what db does not set");
        assert_eq!(e.policy.cooldown_secs, 120);
        assert_eq!(e.policy.cpu_down, 30.0);
        assert_eq!(e.layer("cpu_up"), Layer::Stored(Scope::Vmid(101)));
        assert_eq!(e.layer("dry_run"), Layer::Stored(Scope::Global));
        assert_eq!(e.layer("max_cores"), Layer::Stored(Scope::Tag("db".into())));
        assert_eq!(e.layer("cooldown_secs"), Layer::Config);
        assert_eq!(e.layer("cpu_down"), Layer::Default);
        assert!(!e.layer("min_memory_mb").explicit());
        let shown = e.to_json();
        assert_eq!(shown["dry_run"], json!({ "value": true, "from": "global" }));
        assert_eq!(shown["cooldown_secs"]["from"], "config [autoscaler.policy]");
        // A container without tags or its own: the global over the config.
        let other = p.resolve(102, &[], &config).unwrap();
        assert_eq!((other.policy.max_cores, other.policy.cpu_up), (8, 80.0));
        assert!(other.policy.dry_run);
    }

    #[test]
    fn a_combination_that_does_not_work_is_refused_at_resolution() {
        let p = Policies::default()
            .with(&Scope::Global, Some(keys(json!({ "cpu_down": 70.0 }))))
            .with(&Scope::Vmid(101), Some(keys(json!({ "cpu_up": 60.0 }))));
        let e = p.resolve(101, &[], &AutoscalePolicy::default()).unwrap_err();
        assert_eq!(e.field, "cpu_down");
        assert!(e.reason.contains("global"), "{e}");
        assert!(p.check_all(&AutoscalePolicy::default()).is_err());
    }

    #[test]
    fn scopes_parse_and_overlay_names_only_what_it_changes() {
        let d = AutoscalePolicy::default();
        let p = overlay(&d, &json!({ "max_cores": 4, "cooldown_secs": 60 })).unwrap();
        assert_eq!((p.max_cores, p.cooldown_secs, p.cpu_up), (4, 60, 80.0));
        let e = overlay(&d, &json!({ "max_cpus": 4 })).unwrap_err();
        assert!(e.contains("max_cpus"), "{e}");
        assert_eq!(Scope::parse("tag:web"), Some(Scope::Tag("web".into())));
        assert_eq!(Scope::parse("vmid:101"), Some(Scope::Vmid(101)));
        assert_eq!(Scope::parse("global"), Some(Scope::Global));
        assert_eq!(Scope::parse("node:pve1"), None);
    }
}
