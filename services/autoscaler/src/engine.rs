//! The decision of one tick, with every input explicit: what was observed of each container,
//! its node, the cooldowns, the stored policies and the settings. The tick fills it from PVE
//! and Postgres; `pvefleet autoscale simulate` fills it from its input lines. Both call the
//! same code, so a replay decides what the tick would have.
//!
//! For each container, in order: skipped when it is not running, holds a lock, carries the
//! opt-out tag, its policy does not resolve or is disabled, or its node is not online; else its
//! sample joins its window; with a full window, the floors and ceilings (`decide::bounds`) and
//! the decision (`decide::decide_within`). Then `plan` picks which act under
//! `safety.max_concurrent`.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pvefleet_core::config::AutoscalerSettings;
use pvefleet_policy::Invalid;
use pvefleet_policy::autoscale::{Effective, Policies, effective};

use crate::decide::{self, Bounds, Container, Cooldown, Decision, Node, PolicyLimits, Sold, Wanted};
use crate::window::{Sample, Window};

/// One container as the tick sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Its vmid.
    pub vmid: u32,
    /// The node it is on.
    pub node: String,
    /// `running`, `stopped`...
    pub status: String,
    /// The config lock, if any (`backup`, `migrate`...).
    pub lock: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Cores configured.
    pub cores: u32,
    /// `cpulimit`, when known and set.
    pub cpulimit: Option<f64>,
    /// Memory configured, MiB.
    pub memory_mb: u64,
    /// This tick's reading.
    pub sample: Sample,
    /// What its site was sold, when it is a site.
    pub sold: Option<Sold>,
}

/// What the tick concluded for one container.
// One per container per tick, most of them decided: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not looked at, and why.
    Skipped(String),
    /// Its window is not full yet.
    Collecting,
    /// Decided.
    Decided {
        /// The policy, with the layer of every key (shared by the containers of the same layers).
        policy: Arc<Effective>,
        /// Its floors and ceilings.
        bounds: Bounds,
        /// The averaged load decided on.
        container: Container,
        /// The cooldowns it was decided under.
        cooldown: Cooldown,
        /// The decision.
        decision: Decision,
    },
}

impl Verdict {
    /// A short label for metrics: `skipped`, `collecting`, `decided`.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Skipped(_) => "skipped",
            Verdict::Collecting => "collecting",
            Verdict::Decided { .. } => "decided",
        }
    }
}

/// A policy resolved, with its own limits; or why it was refused.
type Resolved = Result<(Arc<Effective>, Arc<PolicyLimits>), Invalid>;

/// What the tick knows of the world besides the containers.
pub struct World<'a> {
    /// Policies resolved this tick, by the layers that made them (their addresses in
    /// `policies`, which this tick holds unchanged): most containers share theirs.
    resolved: RefCell<HashMap<Vec<usize>, Resolved>>,
    /// Online nodes by name.
    pub nodes: &'a HashMap<String, Node>,
    /// Cooldowns left, by vmid.
    pub cooldowns: &'a HashMap<u32, Cooldown>,
    /// The stored policies.
    pub policies: &'a Policies,
    /// `[autoscaler]`: the configured policy, safety and the opt-out tag.
    pub settings: &'a AutoscalerSettings,
}

impl<'a> World<'a> {
    /// The world of one tick.
    pub fn new(
        nodes: &'a HashMap<String, Node>,
        cooldowns: &'a HashMap<u32, Cooldown>,
        policies: &'a Policies,
        settings: &'a AutoscalerSettings,
    ) -> Self {
        Self {
            resolved: RefCell::default(),
            nodes,
            cooldowns,
            policies,
            settings,
        }
    }

    /// The effective policy of container `vmid` with `tags`, resolved once per set of layers.
    fn policy(&self, vmid: u32, tags: &[&str]) -> Resolved {
        let layers = self.policies.layers(vmid, tags);
        let key: Vec<usize> = layers
            .iter()
            .map(|(_, keys)| std::ptr::from_ref(*keys) as usize)
            .collect();
        if let Some(done) = self.resolved.borrow().get(&key) {
            return done.clone();
        }
        let done = effective(&self.settings.policy, &layers).map(|e| {
            let limits = Arc::new(PolicyLimits::of(&e));
            (Arc::new(e), limits)
        });
        self.resolved.borrow_mut().insert(key, done.clone());
        done
    }
}

/// The sample windows kept between ticks.
#[derive(Debug, Default)]
pub struct Engine {
    windows: HashMap<u32, Window>,
}

impl Engine {
    /// Evaluates one container. Its sample joins its window once, however often it is
    /// evaluated in a tick (a reading with the key of the newest one is the same sample).
    pub fn evaluate(&mut self, c: &Observed, w: &World<'_>) -> Verdict {
        let s = w.settings;
        if c.status != "running" {
            return Verdict::Skipped(format!("not running ({})", c.status));
        }
        if let Some(lock) = &c.lock {
            return Verdict::Skipped(format!("locked ({lock})"));
        }
        if c.tags.contains(&s.opt_out_tag) {
            return Verdict::Skipped(format!("opt-out tag {}", s.opt_out_tag));
        }
        let tags: Vec<&str> = c.tags.iter().map(String::as_str).collect();
        let (policy, limits) = match w.policy(c.vmid, &tags) {
            Ok(p) => p,
            Err(e) => return Verdict::Skipped(format!("policy refused: {e}")),
        };
        if !policy.policy.enabled {
            return Verdict::Skipped(format!("disabled by policy ({})", policy.layer("enabled")));
        }
        let Some(node) = w.nodes.get(&c.node) else {
            return Verdict::Skipped(format!("node {} is not online", c.node));
        };
        let p = &policy.policy;
        let window = self
            .windows
            .entry(c.vmid)
            .or_insert_with(|| Window::new(p.evaluation_periods));
        window.resize(p.evaluation_periods);
        window.push(c.sample);
        let Some(avg) = window.averages() else {
            return Verdict::Collecting;
        };
        let container = Container {
            cores: c.cores,
            cpulimit: c.cpulimit,
            memory_mb: c.memory_mb,
            cpu_cores: avg.cpu_cores,
            mem_mb: avg.mem_mb,
            mem_peak_mb: avg.mem_peak_mb,
        };
        let cooldown = w.cooldowns.get(&c.vmid).copied().unwrap_or_default();
        let bounds = decide::bounds_with(&limits, c.sold.as_ref(), node, c.cpulimit);
        let decision = decide::decide_within(p, &s.safety, &container, node, cooldown, &bounds);
        Verdict::Decided {
            policy,
            bounds,
            container,
            cooldown,
            decision,
        }
    }

    /// Forgets the windows of containers not among `kept` (gone, stopped or skipped).
    pub fn retain(&mut self, kept: &HashSet<u32>) {
        self.windows.retain(|vmid, _| kept.contains(vmid));
    }
}

/// The containers that act this tick and those that wait for a slot, from the verdicts.
pub fn plan(verdicts: &[(u32, Verdict)], max_concurrent: usize) -> (Vec<u32>, Vec<u32>) {
    let wanted: Vec<Wanted> = verdicts
        .iter()
        .filter_map(|(vmid, v)| match v {
            Verdict::Decided { decision, .. } => Some(Wanted {
                vmid: *vmid,
                decision: decision.clone(),
            }),
            _ => None,
        })
        .collect();
    decide::plan(&wanted, max_concurrent, 0)
}
