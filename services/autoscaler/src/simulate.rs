//! `pvefleet autoscale simulate`: replays ticks from JSON lines through the tick's own
//! decision code (`engine`), with every input the tick reads made explicit.
//!
//! Lines with the same `t` (seconds) in a row are one tick. A line is about container `vmid`
//! (100 when absent) and may carry, all optional:
//! - `cpu_cores`, `mem_mb`: this tick's reading (busy cores, MiB used);
//! - `cores`, `memory_mb`, `cpulimit`: the container's config when it is first seen (later
//!   lines repeat them from recordings and are ignored: the replay owns the config);
//! - `set`: `{"cores", "memory_mb", "cpulimit"}`, a config change made by someone else now;
//! - `status` (`running`, `stopped`...), `lock` (`backup`...; `""` clears it), `tags`;
//! - `node`: its name, or `{"name", "cpus", "cpu_pct", "memory_mb", "memory_used_mb",
//!   "memory_allocated_mb"}` (the node's figures from now on; allocated memory, when not
//!   given, is the sum of the replayed containers' memory on it);
//! - `plan`: what the site was sold, a plan name from `[saga.plans]` or `{"cores",
//!   "memory_mb"}`: the floor;
//! - `cooldown`: `{"cpu_secs", "memory_secs"}` left from now;
//! - `policy`: the container's own policy keys from now on (as `policy set` would store).
//!
//! A line with only `t` and a `node` object changes the node. Containers without a line in a
//! tick are not seen in it (as PVE not listing them). Each tick answers one JSON line per
//! container seen: skipped and why, collecting samples, or the decision with its `outcome`
//! (`scaled`, `would_scale` in a dry run, which changes nothing and starts only the cooldown,
//! `waiting` for a slot under `safety.max_concurrent`, or `held`) and the `config` after it.

use std::collections::{BTreeMap, HashMap, HashSet};

use pvefleet_core::config::{AutoscalerSettings, Plan};
use pvefleet_policy::autoscale::{Policies, Scope, check_keys};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::decide::{Change, Cooldown, Node, Sold};
use crate::engine::{self, Engine, Observed, Verdict, World};
use crate::window::Sample;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NodeIn {
    Name(String),
    Figures(NodeFigures),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFigures {
    #[serde(default = "default_node")]
    name: String,
    cpus: Option<u32>,
    cpu_pct: Option<f64>,
    memory_mb: Option<u64>,
    memory_used_mb: Option<u64>,
    memory_allocated_mb: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PlanIn {
    Name(String),
    Sizes { cores: u32, memory_mb: u64 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigIn {
    cores: Option<u32>,
    memory_mb: Option<u64>,
    cpulimit: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CooldownIn {
    #[serde(default)]
    cpu_secs: u64,
    #[serde(default)]
    memory_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TagsIn {
    List(Vec<String>),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    t: Option<u64>,
    vmid: Option<u32>,
    node: Option<NodeIn>,
    cores: Option<u32>,
    memory_mb: Option<u64>,
    cpulimit: Option<f64>,
    cpu_cores: Option<f64>,
    mem_mb: Option<f64>,
    status: Option<String>,
    lock: Option<String>,
    tags: Option<TagsIn>,
    plan: Option<PlanIn>,
    cooldown: Option<CooldownIn>,
    set: Option<ConfigIn>,
    policy: Option<Map<String, Value>>,
}

impl Line {
    fn about_a_container(&self) -> bool {
        self.vmid.is_some()
            || self.cpu_cores.is_some()
            || self.mem_mb.is_some()
            || self.cores.is_some()
            || self.memory_mb.is_some()
            || self.cpulimit.is_some()
            || self.status.is_some()
            || self.lock.is_some()
            || self.tags.is_some()
            || self.plan.is_some()
            || self.cooldown.is_some()
            || self.set.is_some()
            || self.policy.is_some()
            || matches!(self.node, Some(NodeIn::Name(_)))
    }
}

fn default_node() -> String {
    "sim".into()
}

/// A replayed container.
#[derive(Debug, Clone)]
struct Ct {
    node: String,
    status: String,
    lock: Option<String>,
    tags: Vec<String>,
    cores: u32,
    cpulimit: Option<f64>,
    memory_mb: u64,
    sold: Option<Sold>,
    cpu_cores: f64,
    mem_mb: f64,
    /// Cooldowns end at these times.
    cpu_until: u64,
    memory_until: u64,
}

/// A replayed node.
#[derive(Debug, Clone)]
struct SimNode {
    cpus: u32,
    cpu_pct: f64,
    memory_mb: u64,
    memory_used_mb: u64,
    memory_allocated_mb: Option<u64>,
}

impl Default for SimNode {
    fn default() -> Self {
        Self {
            cpus: 64,
            cpu_pct: 10.0,
            memory_mb: 1 << 20,
            memory_used_mb: 0,
            memory_allocated_mb: None,
        }
    }
}

/// A replay in progress.
pub struct Replay<'a> {
    settings: &'a AutoscalerSettings,
    plans: &'a BTreeMap<String, Plan>,
    policies: Policies,
    engine: Engine,
    cts: BTreeMap<u32, Ct>,
    nodes: BTreeMap<String, SimNode>,
}

impl<'a> Replay<'a> {
    /// A replay under `settings` (`[autoscaler]`: the configured policy, safety, opt-out tag)
    /// with the stored `policies` (empty without a database) and the plans sites are sold by.
    pub fn new(settings: &'a AutoscalerSettings, plans: &'a BTreeMap<String, Plan>, policies: Policies) -> Self {
        Self {
            settings,
            plans,
            policies,
            engine: Engine::default(),
            cts: BTreeMap::new(),
            nodes: BTreeMap::new(),
        }
    }

    /// Replays `text`; answers the output lines, or the first bad line (`line N: why`).
    pub fn run(&mut self, text: &str) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        let mut tick: Vec<(usize, Line)> = Vec::new();
        let mut tick_t: Option<u64> = None;
        for (n, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
                continue;
            }
            let line: Line = serde_json::from_str(raw).map_err(|e| format!("line {}: {e}", n + 1))?;
            let t = line.t.unwrap_or(n as u64);
            if tick_t.is_some_and(|at| at != t) {
                out.extend(self.tick(tick_t.unwrap_or(0), std::mem::take(&mut tick))?);
            }
            tick_t = Some(t);
            tick.push((n + 1, line));
        }
        if let Some(t) = tick_t {
            out.extend(self.tick(t, tick)?);
        }
        Ok(out)
    }

    fn sold(&self, plan: &PlanIn) -> Result<Sold, String> {
        match plan {
            PlanIn::Name(name) => self
                .plans
                .get(name)
                .map(|p| Sold {
                    cores: p.cores,
                    memory_mb: u64::from(p.memory_mb),
                    from: format!("plan {name}").into(),
                })
                .ok_or_else(|| {
                    format!(
                        "plan: unknown plan '{name}'; known: {}",
                        self.plans.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                }),
            PlanIn::Sizes { cores, memory_mb } => Ok(Sold {
                cores: *cores,
                memory_mb: *memory_mb,
                from: "requested sizes".into(),
            }),
        }
    }

    /// Applies one line's changes; answers the container it is about, if any.
    fn apply(&mut self, t: u64, line: Line) -> Result<Option<u32>, String> {
        let node_name = match &line.node {
            Some(NodeIn::Name(n)) => Some(n.clone()),
            Some(NodeIn::Figures(f)) => {
                let node = self.nodes.entry(f.name.clone()).or_default();
                if let Some(v) = f.cpus {
                    node.cpus = v;
                }
                if let Some(v) = f.cpu_pct {
                    node.cpu_pct = v;
                }
                if let Some(v) = f.memory_mb {
                    node.memory_mb = v;
                }
                if let Some(v) = f.memory_used_mb {
                    node.memory_used_mb = v;
                }
                if f.memory_allocated_mb.is_some() {
                    node.memory_allocated_mb = f.memory_allocated_mb;
                }
                Some(f.name.clone())
            }
            None => None,
        };
        if !line.about_a_container() {
            return Ok(None);
        }
        let vmid = line.vmid.unwrap_or(100);
        let sold = line.plan.as_ref().map(|p| self.sold(p)).transpose()?;
        if let Some(keys) = &line.policy {
            let keys = check_keys(&Value::Object(keys.clone())).map_err(|i| format!("policy: {i}"))?;
            self.policies = self.policies.with(&Scope::Vmid(vmid), Some(keys));
        }
        let ct = self.cts.entry(vmid).or_insert_with(|| Ct {
            node: node_name.clone().unwrap_or_else(default_node),
            status: "running".into(),
            lock: None,
            tags: Vec::new(),
            cores: line.cores.unwrap_or(2),
            cpulimit: line.cpulimit.filter(|l| *l > 0.0),
            memory_mb: line.memory_mb.unwrap_or(2048),
            sold: None,
            cpu_cores: 0.0,
            mem_mb: 0.0,
            cpu_until: 0,
            memory_until: 0,
        });
        self.nodes.entry(ct.node.clone()).or_default();
        if let Some(n) = node_name {
            ct.node = n;
        }
        if let Some(s) = line.status {
            ct.status = s;
        }
        if let Some(l) = line.lock {
            ct.lock = (!l.is_empty()).then_some(l);
        }
        match line.tags {
            Some(TagsIn::List(l)) => ct.tags = l,
            Some(TagsIn::Text(s)) => {
                ct.tags = s
                    .split([';', ',', ' '])
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            None => {}
        }
        if sold.is_some() {
            ct.sold = sold;
        }
        if let Some(cd) = line.cooldown {
            ct.cpu_until = t + cd.cpu_secs;
            ct.memory_until = t + cd.memory_secs;
        }
        if let Some(set) = line.set {
            if let Some(c) = set.cores {
                ct.cores = c;
            }
            if let Some(m) = set.memory_mb {
                ct.memory_mb = m;
            }
            if let Some(l) = set.cpulimit {
                ct.cpulimit = (l > 0.0).then_some(l);
            }
        }
        if let Some(c) = line.cpu_cores {
            ct.cpu_cores = c;
        }
        if let Some(m) = line.mem_mb {
            ct.mem_mb = m;
        }
        Ok(Some(vmid))
    }

    fn tick(&mut self, t: u64, lines: Vec<(usize, Line)>) -> Result<Vec<Value>, String> {
        let mut seen: Vec<u32> = Vec::new();
        for (n, line) in lines {
            if let Some(vmid) = self.apply(t, line).map_err(|e| format!("line {n}: {e}"))?
                && !seen.contains(&vmid)
            {
                seen.push(vmid);
            }
        }
        // The nodes as the tick's cluster read would show them.
        let nodes: HashMap<String, Node> = self
            .nodes
            .iter()
            .map(|(name, n)| {
                let allocated = n
                    .memory_allocated_mb
                    .unwrap_or_else(|| self.cts.values().filter(|c| c.node == *name).map(|c| c.memory_mb).sum());
                (
                    name.clone(),
                    Node {
                        cpus: n.cpus,
                        cpu_pct: n.cpu_pct,
                        memory_mb: n.memory_mb,
                        memory_used_mb: n.memory_used_mb,
                        memory_allocated_mb: allocated,
                    },
                )
            })
            .collect();
        let cooldowns: HashMap<u32, Cooldown> = self
            .cts
            .iter()
            .map(|(vmid, c)| {
                (
                    *vmid,
                    Cooldown {
                        cpu_secs: c.cpu_until.saturating_sub(t),
                        memory_secs: c.memory_until.saturating_sub(t),
                    },
                )
            })
            .collect();
        let world = World::new(&nodes, &cooldowns, &self.policies, self.settings);
        let mut verdicts = Vec::new();
        for vmid in &seen {
            let Some(c) = self.cts.get(vmid) else { continue };
            let observed = Observed {
                vmid: *vmid,
                node: c.node.clone(),
                status: c.status.clone(),
                lock: c.lock.clone(),
                tags: c.tags.clone(),
                cores: c.cores,
                cpulimit: c.cpulimit,
                memory_mb: c.memory_mb,
                sample: Sample {
                    key: t,
                    cpu_cores: c.cpu_cores,
                    mem_mb: c.mem_mb,
                },
                sold: c.sold.clone(),
            };
            verdicts.push((*vmid, self.engine.evaluate(&observed, &world)));
        }
        let (go, _wait) = engine::plan(&verdicts, self.settings.safety.max_concurrent);
        let kept: HashSet<u32> = verdicts
            .iter()
            .filter(|(_, v)| !matches!(v, Verdict::Skipped(_)))
            .map(|(vmid, _)| *vmid)
            .chain(self.cts.keys().copied().filter(|v| !seen.contains(v)))
            .collect();
        self.engine.retain(&kept);
        let mut out = Vec::new();
        for (vmid, v) in verdicts {
            let line = match v {
                Verdict::Skipped(why) => json!({ "t": t, "vmid": vmid, "skipped": why }),
                Verdict::Collecting => json!({ "t": t, "vmid": vmid, "decision": "collecting samples" }),
                Verdict::Decided { policy, decision, .. } => {
                    let scales = decision.cores.scales() || decision.memory.scales();
                    let outcome = if !scales {
                        "held"
                    } else if !go.contains(&vmid) {
                        "waiting"
                    } else if policy.policy.dry_run {
                        "would_scale"
                    } else {
                        "scaled"
                    };
                    let Some(c) = self.cts.get_mut(&vmid) else { continue };
                    if outcome == "scaled" || outcome == "would_scale" {
                        let cooldown = policy.policy.cooldown_secs;
                        if let Change::Scale { to, .. } = decision.cores {
                            c.cpu_until = t + cooldown;
                            if outcome == "scaled" {
                                c.cores = u32::try_from(to).unwrap_or(u32::MAX);
                            }
                        }
                        if let Change::Scale { to, .. } = decision.memory {
                            c.memory_until = t + cooldown;
                            if outcome == "scaled" {
                                c.memory_mb = to;
                            }
                        }
                    }
                    json!({
                        "t": t, "vmid": vmid,
                        "cores": show(&decision.cores), "memory": show(&decision.memory),
                        "outcome": outcome,
                        "config": { "cores": c.cores, "memory_mb": c.memory_mb },
                    })
                }
            };
            out.push(line);
        }
        Ok(out)
    }
}

fn show(ch: &Change) -> Value {
    match ch {
        Change::Scale {
            from, to, emergency, ..
        } => json!({ "from": from, "to": to, "emergency": emergency }),
        Change::Hold(why) => json!({ "hold": why }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings() -> AutoscalerSettings {
        let mut s = AutoscalerSettings::default();
        s.policy.evaluation_periods = 1;
        s.policy.cooldown_secs = 60;
        s
    }

    fn replay(s: &AutoscalerSettings, policies: Policies, text: &str) -> Vec<Value> {
        let plans = pvefleet_core::config::SagaSettings::default().plans;
        Replay::new(s, &plans, policies).run(text).unwrap()
    }

    fn of(out: &[Value], t: u64, vmid: u32) -> Value {
        out.iter()
            .find(|l| l["t"] == t && l["vmid"] == vmid)
            .cloned()
            .unwrap_or(Value::Null)
    }

    #[test]
    fn the_issues_cpulimit_samples_scale_up_to_three_cores() {
        let s = AutoscalerSettings::default();
        let line = r#"{"cores":2,"memory_mb":2048,"cpu_cores":2.0,"mem_mb":1024,"cpulimit":3}"#;
        let out = replay(&s, Policies::default(), &[line, line, line].join("\n"));
        assert_eq!(
            out[2]["cores"],
            json!({ "from": 2, "to": 3, "emergency": false }),
            "{out:?}"
        );
        assert_eq!(out[2]["config"]["cores"], 3);
    }

    #[test]
    fn a_busy_node_holds_scale_ups() {
        let out = replay(
            &settings(),
            Policies::default(),
            r#"{"t":0,"node":{"name":"pve1","cpu_pct":96.0}}
{"t":0,"vmid":101,"node":"pve1","cores":2,"cpu_cores":1.9,"mem_mb":900}
{"t":60,"node":{"name":"pve1","cpu_pct":50.0}}
{"t":60,"vmid":101,"cpu_cores":1.9,"mem_mb":900}"#,
        );
        assert_eq!(
            of(&out, 0, 101)["cores"],
            json!({ "hold": "host protection: node cpu" })
        );
        assert_eq!(of(&out, 60, 101)["cores"]["to"], 3, "{out:?}");
    }

    #[test]
    fn a_four_cpu_node_caps_cores_at_four() {
        let mut text = String::from(r#"{"t":0,"node":{"name":"small","cpus":4}}"#);
        for t in 0..5 {
            text.push_str(&format!(
                "\n{{\"t\":{},\"vmid\":101,\"node\":\"small\",\"cores\":2,\"cpu_cores\":8.0,\"mem_mb\":900}}",
                t * 60
            ));
        }
        let out = replay(&settings(), Policies::default(), &text);
        let last = out.last().unwrap();
        assert_eq!(last["config"]["cores"], 4, "{out:?}");
        assert_eq!(last["cores"], json!({ "hold": "cores at their limit" }));
    }

    #[test]
    fn locked_and_stopped_containers_are_skipped() {
        let out = replay(
            &settings(),
            Policies::default(),
            r#"{"t":0,"vmid":101,"lock":"backup","cpu_cores":1.9}
{"t":0,"vmid":102,"status":"stopped","cpu_cores":1.9}
{"t":60,"vmid":101,"lock":"","cpu_cores":1.9}
{"t":60,"vmid":102,"cpu_cores":1.9}"#,
        );
        assert_eq!(of(&out, 0, 101)["skipped"], "locked (backup)");
        assert_eq!(of(&out, 0, 102)["skipped"], "not running (stopped)");
        assert_eq!(of(&out, 60, 101)["outcome"], "scaled", "the lock is gone");
        assert_eq!(of(&out, 60, 102)["skipped"], "not running (stopped)", "still stopped");
    }

    #[test]
    fn a_config_changed_by_someone_else_is_respected() {
        let out = replay(
            &settings(),
            Policies::default(),
            r#"{"t":0,"cores":2,"cpu_cores":1.9}
{"t":60,"cores":2,"cpu_cores":1.9,"set":{"cores":6}}
{"t":120,"cores":2,"cpu_cores":5.8}"#,
        );
        assert_eq!(of(&out, 0, 100)["config"]["cores"], 3);
        // Someone set 6 cores: the next step is from 6, not from 3 (nor the 2 the lines repeat).
        assert_eq!(of(&out, 60, 100)["cores"], json!({ "hold": "cpu within thresholds" }));
        assert_eq!(of(&out, 120, 100)["cores"]["from"], 6, "{out:?}");
        assert_eq!(of(&out, 120, 100)["config"]["cores"], 7);
    }

    #[test]
    fn two_containers_under_max_concurrent_one_scale_one_per_tick() {
        let mut s = settings();
        s.safety.max_concurrent = 1;
        let out = replay(
            &s,
            Policies::default(),
            r#"{"t":0,"vmid":101,"cpu_cores":1.9,"mem_mb":1000}
{"t":0,"vmid":102,"cpu_cores":1.9,"mem_mb":1000}
{"t":60,"vmid":101,"cpu_cores":1.9,"mem_mb":1000}
{"t":60,"vmid":102,"cpu_cores":1.9,"mem_mb":1000}"#,
        );
        assert_eq!(of(&out, 0, 101)["outcome"], "scaled");
        assert_eq!(of(&out, 0, 102)["outcome"], "waiting");
        assert_eq!(of(&out, 60, 101)["outcome"], "held", "three cores carry it now");
        assert_eq!(of(&out, 60, 102)["outcome"], "scaled");
    }

    #[test]
    fn a_dry_run_changes_nothing_and_starts_only_the_cooldown() {
        let policies = Policies::default().with(
            &Scope::Global,
            Some(json!({ "dry_run": true }).as_object().cloned().unwrap()),
        );
        let out = replay(
            &settings(),
            policies,
            r#"{"t":0,"cpu_cores":1.9}
{"t":30,"cpu_cores":1.9}
{"t":60,"cpu_cores":1.9}"#,
        );
        assert_eq!(of(&out, 0, 100)["outcome"], "would_scale");
        assert_eq!(of(&out, 0, 100)["config"]["cores"], 2, "unchanged");
        assert_eq!(of(&out, 30, 100)["cores"]["hold"], "cpu cooldown");
        assert_eq!(of(&out, 60, 100)["outcome"], "would_scale", "the cooldown is over");
    }

    #[test]
    fn a_given_cooldown_holds_and_a_plan_is_a_floor() {
        let out = replay(
            &settings(),
            Policies::default(),
            r#"{"t":0,"cores":2,"memory_mb":2048,"plan":"medium","cooldown":{"cpu_secs":100},"cpu_cores":0.1,"mem_mb":100}
{"t":120,"cpu_cores":0.1,"mem_mb":100}
{"t":240,"cores":2,"cpu_cores":0.1,"mem_mb":100,"policy":{"min_cores":1,"min_memory_mb":512}}"#,
        );
        assert_eq!(of(&out, 0, 100)["cores"]["hold"], "cpu cooldown");
        assert_eq!(of(&out, 120, 100)["cores"]["hold"], "cores at their minimum", "{out:?}");
        assert_eq!(
            of(&out, 120, 100)["memory"]["hold"],
            "memory at its floor (sold, or the minimum)"
        );
        assert_eq!(of(&out, 240, 100)["config"], json!({ "cores": 1, "memory_mb": 1536 }));
    }

    /// The README's example, verbatim, answers what the README says it does.
    #[test]
    fn the_readmes_example_replays_as_documented() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        let section = readme.split("#### The simulator").nth(1).unwrap();
        let example = section.split("```").nth(1).unwrap();
        let mut s = settings();
        s.safety.max_concurrent = 1;
        let out = replay(&s, Policies::default(), example);
        assert_eq!(
            of(&out, 0, 101)["cores"]["hold"],
            "host protection: node cpu",
            "{out:?}"
        );
        assert_eq!(of(&out, 0, 102)["skipped"], "locked (backup)");
        assert_eq!(of(&out, 60, 101)["config"]["cores"], 3);
        assert_eq!(of(&out, 60, 102)["outcome"], "waiting");
    }

    #[test]
    fn bad_lines_are_named() {
        let s = settings();
        let plans = BTreeMap::new();
        let e = Replay::new(&s, &plans, Policies::default())
            .run("{\"t\":0}\n{\"cpu_cores\":\"high\"}")
            .unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = Replay::new(&s, &plans, Policies::default())
            .run("{\"cpus\":4}")
            .unwrap_err();
        assert!(e.contains("cpus"), "unknown keys are named: {e}");
        let e = Replay::new(&s, &plans, Policies::default())
            .run("{\"plan\":\"huge\"}")
            .unwrap_err();
        assert!(e.contains("unknown plan 'huge'"), "{e}");
    }
}
