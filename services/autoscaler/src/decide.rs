//! The scaling decision: a pure function of a policy, a container's averaged load, its node,
//! the cooldowns and the clock. CPU and memory are decided independently in the same tick, so
//! a container at its core limit with high CPU still gets memory when memory is high (the
//! reference tool stops at the first matching rule).
//!
//! Thresholds are percentages and inclusive: usage at or above the up threshold scales up, at
//! or below the down threshold scales down. A step down is taken only when the projected usage
//! after it stays below the up threshold (hysteresis), and memory never goes below the peak
//! usage of the window plus the policy's headroom (PVE applies memory changes live, and the
//! OOM killer would fire). Cores never exceed the host's CPU count. CPU is measured against the
//! CPUs the container can really use (`usable_cpus`: its cores, or its `cpulimit` when that is
//! lower); cores are not added while the limit binds, nor past the limit rounded up.
//!
//! Host protection blocks scale-ups on a node over its CPU or memory limit, or whose allocated
//! memory (the sum of its containers' limits, not only their usage) plus the step would eat
//! into its reserve. It never blocks a scale-down. Memory at or above the emergency threshold
//! scales up at once, past the cooldown, when the node has room.

pub use pvefleet_core::config::{AutoscalePolicy as Policy, AutoscaleSafety as Safety};
use pvefleet_policy::autoscale::Effective;
use std::sync::Arc;

/// A container as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Container {
    /// Cores configured.
    pub cores: u32,
    /// `cpulimit`, when set (0 means none in PVE).
    pub cpulimit: Option<f64>,
    /// Memory configured, MiB.
    pub memory_mb: u64,
    /// Mean CPU busy over the window, cores.
    pub cpu_cores: f64,
    /// Mean memory used over the window, MiB.
    pub mem_mb: f64,
    /// Peak memory used in the window, MiB.
    pub mem_peak_mb: f64,
}

/// The node a container is on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    /// CPUs.
    pub cpus: u32,
    /// CPU use, %.
    pub cpu_pct: f64,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Memory used, MiB.
    pub memory_used_mb: u64,
    /// The sum of the memory limits of the guests on it, MiB.
    pub memory_allocated_mb: u64,
}

/// Seconds left of each resource's cooldown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cooldown {
    /// CPU.
    pub cpu_secs: u64,
    /// Memory.
    pub memory_secs: u64,
}

/// What to do to one resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Set it to `to` (from `from`); `emergency` when it bypasses the cooldown.
    Scale {
        from: u64,
        to: u64,
        up: bool,
        emergency: bool,
    },
    /// Nothing, and why.
    Hold(&'static str),
}

impl Change {
    /// Whether it scales.
    pub fn scales(&self) -> bool {
        matches!(self, Change::Scale { .. })
    }
}

/// The decision for one container: cores and memory, each on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Cores.
    pub cores: Change,
    /// Memory, MiB.
    pub memory: Change,
}

/// The CPUs a container can really use: its cores, or its `cpulimit` when one is set (PVE's 0
/// is none) and lower. The tick and the simulator both measure CPU load against this.
pub fn usable_cpus(cores: u32, cpulimit: Option<f64>) -> f64 {
    let cores = f64::from(cores);
    cpulimit.filter(|l| *l > 0.0).map_or(cores, |l| l.min(cores))
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 { 0.0 } else { part / whole * 100.0 }
}

/// What a site was sold: its plan's sizes, or the sizes it asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Sold {
    /// Cores.
    pub cores: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Where they come from: `plan small`, or `requested sizes`.
    pub from: Arc<str>,
}

/// A floor or a ceiling, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Limit {
    /// The value (cores, or MiB).
    pub value: u64,
    /// Why: `plan small`, `policy min_cores (vmid:101)`, `node's CPUs`, `cpulimit 3`...
    /// (shared: most containers have the same sources).
    pub from: Arc<str>,
}

/// How far one resource may go: never below its floor, never above its ceiling.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Range {
    /// The floor.
    pub floor: Limit,
    /// The ceiling.
    pub ceiling: Limit,
}

/// The range of both resources of a container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Bounds {
    /// Cores.
    pub cores: Range,
    /// Memory, MiB. Memory never goes below the window's peak usage plus the headroom either;
    /// that floor moves with the load and is decided each tick.
    pub memory: Range,
}

fn limit(value: u64, from: impl Into<Arc<str>>) -> Limit {
    Limit {
        value,
        from: from.into(),
    }
}

/// An effective policy's own floors and ceilings with their sources, and whether a layer named
/// each minimum on purpose: the same for every container of that policy, so made once.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyLimits {
    min_cores: Limit,
    min_cores_explicit: bool,
    min_memory: Limit,
    min_memory_explicit: bool,
    max_cores: Limit,
    max_memory: Limit,
}

impl PolicyLimits {
    /// Those of `e`.
    pub fn of(e: &Effective) -> Self {
        let p = &e.policy;
        let own = |key: &str, value: u64| limit(value, format!("policy {key} ({})", e.layer(key)));
        Self {
            min_cores: own("min_cores", u64::from(p.min_cores.max(1))),
            min_cores_explicit: e.layer("min_cores").explicit(),
            min_memory: own("min_memory_mb", p.min_memory_mb),
            min_memory_explicit: e.layer("min_memory_mb").explicit(),
            max_cores: own("max_cores", u64::from(p.max_cores)),
            max_memory: own("max_memory_mb", p.max_memory_mb),
        }
    }
}

/// The floors and ceilings of a container: what it was sold is the floor, unless a policy
/// layer names `min_cores` / `min_memory_mb` on purpose (the built-in default does not); the
/// ceilings are the policy's maximum, the node's CPUs and the `cpulimit` rounded up, the
/// lowest of them.
pub fn bounds(e: &Effective, sold: Option<&Sold>, n: &Node, cpulimit: Option<f64>) -> Bounds {
    bounds_with(&PolicyLimits::of(e), sold, n, cpulimit)
}

/// `bounds`, with the policy's own limits made already.
pub fn bounds_with(l: &PolicyLimits, sold: Option<&Sold>, n: &Node, cpulimit: Option<f64>) -> Bounds {
    let cores_floor = match sold {
        Some(s) if !l.min_cores_explicit => limit(u64::from(s.cores.max(1)), s.from.clone()),
        _ => l.min_cores.clone(),
    };
    let memory_floor = match sold {
        Some(s) if !l.min_memory_explicit => limit(s.memory_mb, s.from.clone()),
        _ => l.min_memory.clone(),
    };
    let mut cores_ceiling = l.max_cores.clone();
    if u64::from(n.cpus.max(1)) < cores_ceiling.value {
        cores_ceiling = limit(u64::from(n.cpus.max(1)), format!("node's {} CPUs", n.cpus.max(1)));
    }
    // Cores past the limit (rounded up) add nothing the container may use.
    if let Some(c) = cpulimit.filter(|c| *c > 0.0) {
        let by_limit = (c.ceil() as u64).max(1);
        if by_limit < cores_ceiling.value {
            cores_ceiling = limit(by_limit, format!("cpulimit {c}"));
        }
    }
    Bounds {
        cores: Range {
            floor: cores_floor,
            ceiling: cores_ceiling,
        },
        memory: Range {
            floor: memory_floor,
            ceiling: l.max_memory.clone(),
        },
    }
}

/// Decides both resources of a container whose policy is `p` alone (no site sold to it).
pub fn decide(p: &Policy, s: &Safety, c: &Container, n: &Node, cd: Cooldown) -> Decision {
    let e = Effective {
        policy: p.clone(),
        from: Default::default(),
    };
    let b = bounds(&e, None, n, c.cpulimit);
    decide_within(p, s, c, n, cd, &b)
}

/// Decides both resources of a container within its bounds.
pub fn decide_within(p: &Policy, s: &Safety, c: &Container, n: &Node, cd: Cooldown, b: &Bounds) -> Decision {
    Decision {
        cores: decide_cores(p, s, c, n, cd, &b.cores),
        memory: decide_memory(p, s, c, n, cd, &b.memory),
    }
}

fn decide_cores(p: &Policy, s: &Safety, c: &Container, n: &Node, cd: Cooldown, r: &Range) -> Change {
    let usage = pct(c.cpu_cores, usable_cpus(c.cores, c.cpulimit));
    let binding_cpulimit = c.cpulimit.is_some_and(|l| l > 0.0 && l < f64::from(c.cores));
    if usage >= p.cpu_up {
        if cd.cpu_secs > 0 {
            return Change::Hold("cpu cooldown");
        }
        if binding_cpulimit {
            return Change::Hold("cpulimit binds: more cores would not help");
        }
        let cap = u32::try_from(r.ceiling.value).unwrap_or(u32::MAX).max(1);
        let to = (c.cores + p.core_step.max(1)).min(cap);
        if to <= c.cores {
            return Change::Hold("cores at their limit");
        }
        if s.host_protection && n.cpu_pct >= s.host_cpu_limit {
            return Change::Hold("host protection: node cpu");
        }
        return Change::Scale {
            from: u64::from(c.cores),
            to: u64::from(to),
            up: true,
            emergency: false,
        };
    }
    if usage <= p.cpu_down {
        if cd.cpu_secs > 0 {
            return Change::Hold("cpu cooldown");
        }
        let floor = u32::try_from(r.floor.value).unwrap_or(u32::MAX).max(1);
        let to = c.cores.saturating_sub(p.core_step.max(1)).max(floor);
        if to >= c.cores {
            return Change::Hold("cores at their minimum");
        }
        // With fewer cores the same load must stay below the up threshold.
        if pct(c.cpu_cores, usable_cpus(to, c.cpulimit)) >= p.cpu_up {
            return Change::Hold("hysteresis: fewer cores would be overloaded");
        }
        return Change::Scale {
            from: u64::from(c.cores),
            to: u64::from(to),
            up: false,
            emergency: false,
        };
    }
    Change::Hold("cpu within thresholds")
}

fn decide_memory(p: &Policy, s: &Safety, c: &Container, n: &Node, cd: Cooldown, r: &Range) -> Change {
    let usage = pct(c.mem_mb, c.memory_mb as f64);
    let step = p.memory_step_mb.max(1);
    if usage >= p.mem_up {
        let emergency = pct(c.mem_peak_mb.max(c.mem_mb), c.memory_mb as f64) >= p.emergency_mem;
        if cd.memory_secs > 0 && !emergency {
            return Change::Hold("memory cooldown");
        }
        let to = (c.memory_mb + step).min(r.ceiling.value);
        if to <= c.memory_mb {
            return Change::Hold("memory at its limit");
        }
        if s.host_protection {
            let grow = to - c.memory_mb;
            if pct(n.memory_used_mb as f64, n.memory_mb as f64) >= s.host_memory_limit {
                return Change::Hold("host protection: node memory");
            }
            if n.memory_allocated_mb + grow + s.host_reserve_mb > n.memory_mb {
                return Change::Hold("host protection: node memory allocated");
            }
        }
        return Change::Scale {
            from: c.memory_mb,
            to,
            up: true,
            emergency: emergency && cd.memory_secs > 0,
        };
    }
    if usage <= p.mem_down {
        if cd.memory_secs > 0 {
            return Change::Hold("memory cooldown");
        }
        let in_use = c.mem_peak_mb.max(c.mem_mb).ceil() as u64 + p.memory_headroom_mb;
        let to = c.memory_mb.saturating_sub(step).max(r.floor.value).max(in_use);
        if to >= c.memory_mb {
            return Change::Hold(if r.floor.value >= c.memory_mb {
                "memory at its floor (sold, or the minimum)"
            } else {
                "memory at its floor (usage plus headroom)"
            });
        }
        if pct(c.mem_mb, to as f64) >= p.mem_up {
            return Change::Hold("hysteresis: less memory would be overloaded");
        }
        return Change::Scale {
            from: c.memory_mb,
            to,
            up: false,
            emergency: false,
        };
    }
    Change::Hold("memory within thresholds")
}

/// One container's wanted actions, for the cluster-wide plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    /// The container.
    pub vmid: u32,
    /// Its decision.
    pub decision: Decision,
}

/// Which containers act this tick, with `in_flight` actions already running: at most
/// `max_concurrent` in all. Emergencies go first, then scale-ups, then scale-downs, then by
/// vmid; the rest wait for a later tick.
pub fn plan(wanted: &[Wanted], max_concurrent: usize, in_flight: usize) -> (Vec<u32>, Vec<u32>) {
    let rank = |w: &Wanted| {
        let changes = [&w.decision.cores, &w.decision.memory];
        let emergency = changes
            .iter()
            .any(|c| matches!(c, Change::Scale { emergency: true, .. }));
        let up = changes.iter().any(|c| matches!(c, Change::Scale { up: true, .. }));
        (u8::from(!emergency), u8::from(!up), w.vmid)
    };
    let mut acting: Vec<&Wanted> = wanted
        .iter()
        .filter(|w| w.decision.cores.scales() || w.decision.memory.scales())
        .collect();
    acting.sort_by_key(|w| rank(w));
    let slots = max_concurrent.saturating_sub(in_flight);
    let go = acting.iter().take(slots).map(|w| w.vmid).collect();
    let wait = acting.iter().skip(slots).map(|w| w.vmid).collect();
    (go, wait)
}

/// The cooldowns after a tick: a resource that scaled (for real, or `would_scale` in a dry
/// run: otherwise a dry run would decide the same thing every tick) starts its cooldown.
pub fn after(p: &Policy, d: &Decision, before: Cooldown) -> Cooldown {
    Cooldown {
        cpu_secs: if d.cores.scales() {
            p.cooldown_secs
        } else {
            before.cpu_secs
        },
        memory_secs: if d.memory.scales() {
            p.cooldown_secs
        } else {
            before.memory_secs
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::default()
    }

    fn node() -> Node {
        Node {
            cpus: 16,
            cpu_pct: 20.0,
            memory_mb: 65_536,
            memory_used_mb: 16_384,
            memory_allocated_mb: 16_384,
        }
    }

    /// A container of 2 cores and 2 GiB at `cpu`% and `mem`%.
    fn ct(cpu_pct: f64, mem_pct: f64) -> Container {
        Container {
            cores: 2,
            cpulimit: None,
            memory_mb: 2048,
            cpu_cores: 2.0 * cpu_pct / 100.0,
            mem_mb: 2048.0 * mem_pct / 100.0,
            mem_peak_mb: 2048.0 * mem_pct / 100.0,
        }
    }

    fn up(from: u64, to: u64) -> Change {
        Change::Scale {
            from,
            to,
            up: true,
            emergency: false,
        }
    }

    fn down(from: u64, to: u64) -> Change {
        Change::Scale {
            from,
            to,
            up: false,
            emergency: false,
        }
    }

    fn d(c: &Container) -> Decision {
        decide(&policy(), &Safety::default(), c, &node(), Cooldown::default())
    }

    #[test]
    fn thresholds_are_inclusive_at_their_edges() {
        assert_eq!(d(&ct(80.0, 50.0)).cores, up(2, 3), "80% scales up");
        assert_eq!(d(&ct(79.9, 50.0)).cores, Change::Hold("cpu within thresholds"));
        assert_eq!(d(&ct(30.0, 50.0)).cores, down(2, 1), "30% scales down");
        assert_eq!(d(&ct(30.1, 50.0)).cores, Change::Hold("cpu within thresholds"));
        assert_eq!(d(&ct(50.0, 85.0)).memory, up(2048, 2560), "85% scales up");
        assert_eq!(d(&ct(50.0, 84.9)).memory, Change::Hold("memory within thresholds"));
        let mut low = ct(50.0, 40.0);
        low.memory_mb = 4096;
        low.mem_mb = 4096.0 * 0.4;
        low.mem_peak_mb = low.mem_mb;
        assert_eq!(d(&low).memory, down(4096, 3584), "40% scales down");
        low.mem_mb = 4096.0 * 0.401;
        low.mem_peak_mb = low.mem_mb;
        assert_eq!(d(&low).memory, Change::Hold("memory within thresholds"));
    }

    #[test]
    fn high_cpu_at_max_cores_still_lets_high_memory_scale_up() {
        let mut c = ct(95.0, 90.0);
        c.cores = 8;
        c.cpu_cores = 8.0 * 0.95;
        let got = d(&c);
        assert_eq!(got.cores, Change::Hold("cores at their limit"));
        assert_eq!(got.memory, up(2048, 2560), "memory is decided on its own");
    }

    #[test]
    fn memory_never_scales_below_usage_plus_headroom() {
        // 8 GiB with 3 GiB peak: a 512 MiB step down is fine; the floor is 3 GiB + 256 MiB.
        let mut c = ct(50.0, 30.0);
        c.memory_mb = 8192;
        c.mem_mb = 2500.0;
        c.mem_peak_mb = 3072.0;
        assert_eq!(d(&c).memory, down(8192, 7680));
        // 3.5 GiB with the same peak: the step would go to 3 GiB; the floor stops it at 3.25.
        c.memory_mb = 3584;
        c.mem_mb = 1200.0;
        assert_eq!(d(&c).memory, down(3584, 3328));
        // Already at the floor: hold.
        c.memory_mb = 3328;
        assert_eq!(d(&c).memory, Change::Hold("memory at its floor (usage plus headroom)"));
    }

    #[test]
    fn cores_never_exceed_the_hosts_cpus() {
        let mut n = node();
        n.cpus = 4;
        let mut c = ct(95.0, 50.0);
        c.cores = 4;
        c.cpu_cores = 3.9;
        let got = decide(&policy(), &Safety::default(), &c, &n, Cooldown::default());
        assert_eq!(
            got.cores,
            Change::Hold("cores at their limit"),
            "max_cores is 8, the host has 4"
        );
        c.cores = 3;
        c.cpu_cores = 2.9;
        let got = decide(&policy(), &Safety::default(), &c, &n, Cooldown::default());
        assert_eq!(got.cores, up(3, 4));
    }

    #[test]
    fn cpu_is_measured_against_the_cpus_the_container_can_use() {
        // 4 cores, cpulimit 1: one busy core is 100% of what it may use, not 25%.
        let mut c = ct(0.0, 50.0);
        c.cores = 4;
        c.cpulimit = Some(1.0);
        c.cpu_cores = 0.9;
        assert_eq!(
            d(&c).cores,
            Change::Hold("cpulimit binds: more cores would not help"),
            "high against the limit, and more cores would not lift it"
        );
        // cpulimit 4 on 2 cores: the container can use 2, so 1.8 busy is 90%, and it scales.
        let mut c = ct(0.0, 50.0);
        c.cpulimit = Some(4.0);
        c.cpu_cores = 1.8;
        assert_eq!(d(&c).cores, up(2, 3));
        // Both cores busy under cpulimit 3 (the samples): up to 3, not "within".
        c.cpulimit = Some(3.0);
        c.cpu_cores = 2.0;
        assert_eq!(d(&c).cores, up(2, 3));
        // At 3 cores under cpulimit 3, a fourth core would add nothing.
        c.cores = 3;
        c.cpu_cores = 3.0;
        assert_eq!(d(&c).cores, Change::Hold("cores at their limit"));
        // No cpulimit (PVE's 0): measured against the cores, with no cap from it.
        c.cpulimit = Some(0.0);
        assert_eq!(d(&c).cores, up(3, 4));
    }

    /// 4 cores under cpulimit 3: low load walks it down, full load (all it can use, busy)
    /// walks it back up to 3, where the limit binds, not to 1 and not to 4.
    #[test]
    fn a_container_under_cpulimit_walks_down_and_back_up_to_its_limit() {
        let mut c = ct(0.0, 50.0);
        c.cores = 4;
        c.cpulimit = Some(3.0);
        let apply = |c: &mut Container, busy: fn(&Container) -> f64| {
            for _ in 0..20 {
                c.cpu_cores = busy(c);
                match d(c).cores {
                    Change::Scale { to, .. } => c.cores = to as u32,
                    Change::Hold(_) => return,
                }
            }
            panic!("no end");
        };
        apply(&mut c, |_| 0.1);
        assert_eq!(c.cores, 1, "low load scales down to the minimum");
        apply(&mut c, |c| usable_cpus(c.cores, c.cpulimit));
        assert_eq!(c.cores, 3, "full load ends at the limit");
    }

    #[test]
    fn cooldowns_are_per_resource() {
        let c = ct(90.0, 90.0);
        let cd = Cooldown {
            cpu_secs: 120,
            memory_secs: 0,
        };
        let got = decide(&policy(), &Safety::default(), &c, &node(), cd);
        assert_eq!(got.cores, Change::Hold("cpu cooldown"));
        assert_eq!(got.memory, up(2048, 2560), "memory's cooldown is its own");
    }

    #[test]
    fn an_emergency_bypasses_the_memory_cooldown_when_the_node_has_room() {
        let c = ct(50.0, 98.5);
        let cd = Cooldown {
            cpu_secs: 0,
            memory_secs: 200,
        };
        let got = decide(&policy(), &Safety::default(), &c, &node(), cd);
        assert_eq!(
            got.memory,
            Change::Scale {
                from: 2048,
                to: 2560,
                up: true,
                emergency: true
            }
        );
        // 90% is high but no emergency: the cooldown holds.
        let got = decide(&policy(), &Safety::default(), &ct(50.0, 90.0), &node(), cd);
        assert_eq!(got.memory, Change::Hold("memory cooldown"));
        // An emergency on a full node: no room, no scale-up.
        let mut full = node();
        full.memory_allocated_mb = full.memory_mb - 600;
        let got = decide(&policy(), &Safety::default(), &c, &full, cd);
        assert_eq!(got.memory, Change::Hold("host protection: node memory allocated"));
    }

    #[test]
    fn host_protection_blocks_ups_but_never_downs_and_counts_allocated_memory() {
        let mut busy = node();
        busy.cpu_pct = 96.0;
        let s = Safety::default();
        let got = decide(&policy(), &s, &ct(90.0, 20.0), &busy, Cooldown::default());
        assert_eq!(got.cores, Change::Hold("host protection: node cpu"));
        let got = decide(&policy(), &s, &ct(10.0, 20.0), &busy, Cooldown::default());
        assert_eq!(got.cores, down(2, 1), "a scale-down is never blocked");
        // Usage is low, but the limits already handed out leave no room for the reserve.
        let mut allocated = node();
        allocated.memory_used_mb = 8_000;
        allocated.memory_allocated_mb = 64_100; // + 512 step + 1024 reserve > 65,536
        let got = decide(&policy(), &s, &ct(50.0, 90.0), &allocated, Cooldown::default());
        assert_eq!(got.memory, Change::Hold("host protection: node memory allocated"));
        let mut used = node();
        used.memory_used_mb = 63_000;
        let got = decide(&policy(), &s, &ct(50.0, 90.0), &used, Cooldown::default());
        assert_eq!(got.memory, Change::Hold("host protection: node memory"));
        // Protection off: the same ups go through.
        let off = Safety {
            host_protection: false,
            ..Safety::default()
        };
        assert!(
            decide(&policy(), &off, &ct(90.0, 90.0), &busy, Cooldown::default())
                .cores
                .scales()
        );
    }

    #[test]
    fn a_dry_run_starts_the_cooldown_so_it_does_not_repeat_every_tick() {
        let p = Policy {
            dry_run: true,
            ..policy()
        };
        let c = ct(90.0, 50.0);
        let first = decide(&p, &Safety::default(), &c, &node(), Cooldown::default());
        assert_eq!(first.cores, up(2, 3), "a dry run decides the same");
        let cd = after(&p, &first, Cooldown::default());
        assert_eq!(cd.cpu_secs, 300);
        assert_eq!(cd.memory_secs, 0);
        // The container is unchanged (dry run), and the next tick holds instead of repeating.
        let next = decide(&p, &Safety::default(), &c, &node(), cd);
        assert_eq!(next.cores, Change::Hold("cpu cooldown"));
    }

    #[test]
    fn downs_respect_hysteresis_and_minimums() {
        // 2 cores at 30%: one core would carry 0.6 busy cores, 60%: fine.
        assert_eq!(d(&ct(30.0, 50.0)).cores, down(2, 1));
        // An up threshold at 50 makes that same step refused: 60% ≥ 50%.
        let p = Policy {
            cpu_up: 50.0,
            ..policy()
        };
        let got = decide(&p, &Safety::default(), &ct(30.0, 45.0), &node(), Cooldown::default());
        assert_eq!(got.cores, Change::Hold("hysteresis: fewer cores would be overloaded"));
        let mut one = ct(5.0, 50.0);
        one.cores = 1;
        one.cpu_cores = 0.05;
        assert_eq!(d(&one).cores, Change::Hold("cores at their minimum"));
    }

    #[test]
    fn max_concurrent_operations_goes_to_emergencies_then_ups_then_downs() {
        let scale = |vmid, cores: Change, memory: Change| Wanted {
            vmid,
            decision: Decision { cores, memory },
        };
        let hold = || Change::Hold("cpu within thresholds");
        let wanted = vec![
            scale(101, down(2, 1), hold()),
            scale(102, up(2, 3), hold()),
            scale(103, hold(), hold()),
            scale(
                104,
                hold(),
                Change::Scale {
                    from: 2048,
                    to: 2560,
                    up: true,
                    emergency: true,
                },
            ),
            scale(105, up(4, 5), hold()),
        ];
        let (go, wait) = plan(&wanted, 3, 0);
        assert_eq!(go, vec![104, 102, 105]);
        assert_eq!(wait, vec![101]);
        let (go, wait) = plan(&wanted, 3, 2);
        assert_eq!(go, vec![104], "two already in flight leave one slot");
        assert_eq!(wait, vec![102, 105, 101]);
        let (go, _) = plan(&wanted, 3, 5);
        assert!(go.is_empty());
    }
}
