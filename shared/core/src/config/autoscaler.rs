//! Autoscaler settings (`[autoscaler]`): the interval, the default policy, safety limits and alert thresholds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The autoscaler: how often it looks, the default policy, and the cluster's safety limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalerSettings {
    /// Time between ticks (one `/cluster/resources` read each).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The policy of every container without one of its own.
    pub policy: AutoscalePolicy,
    /// Cluster-wide limits.
    pub safety: AutoscaleSafety,
    /// Containers with this tag are never scaled.
    pub opt_out_tag: String,
    /// `resource.alert` thresholds for containers and nodes.
    pub alerts: AlertThresholds,
}

impl Default for AutoscalerSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            policy: AutoscalePolicy::default(),
            safety: AutoscaleSafety::default(),
            opt_out_tag: "pvefleet-noscale".into(),
            alerts: AlertThresholds::default(),
        }
    }
}

/// Alert thresholds, %.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertThresholds {
    /// CPU.
    pub cpu: f64,
    /// Memory.
    pub memory: f64,
    /// Disk.
    pub disk: f64,
    /// An alert clears when usage falls this many points below its threshold.
    pub hysteresis: f64,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self {
            cpu: 80.0,
            memory: 85.0,
            disk: 90.0,
            hysteresis: 5.0,
        }
    }
}

/// A scaling policy: the reference tool's settings, plus what its faults called for
/// (headroom, emergency, host reserve).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalePolicy {
    /// CPU % (of cores, or of `cpulimit`) at or above which cores are added.
    pub cpu_up: f64,
    /// CPU % at or below which cores are removed.
    pub cpu_down: f64,
    /// Memory % at or above which memory is added.
    pub mem_up: f64,
    /// Memory % at or below which memory is removed.
    pub mem_down: f64,
    /// Cores, at least.
    pub min_cores: u32,
    /// Cores, at most (and never above the host's CPU count).
    pub max_cores: u32,
    /// Memory, MiB, at least.
    pub min_memory_mb: u64,
    /// Memory, MiB, at most.
    pub max_memory_mb: u64,
    /// Cores added or removed per action.
    pub core_step: u32,
    /// Memory added or removed per action, MiB.
    pub memory_step_mb: u64,
    /// Seconds between two actions on the same resource of a container.
    pub cooldown_secs: u64,
    /// Samples averaged per decision.
    pub evaluation_periods: usize,
    /// A memory scale-down keeps this much above the window's peak usage, MiB.
    pub memory_headroom_mb: u64,
    /// Memory % at or above which memory scales up at once, past the cooldown.
    pub emergency_mem: f64,
    /// Decide and record (`would_scale`), but change nothing.
    pub dry_run: bool,
    /// Scale at all (`false` is an opt-out, like the `pvefleet-noscale` tag).
    pub enabled: bool,
}

impl Default for AutoscalePolicy {
    fn default() -> Self {
        Self {
            cpu_up: 80.0,
            cpu_down: 30.0,
            mem_up: 85.0,
            mem_down: 40.0,
            min_cores: 1,
            max_cores: 8,
            min_memory_mb: 512,
            max_memory_mb: 8192,
            core_step: 1,
            memory_step_mb: 512,
            cooldown_secs: 300,
            evaluation_periods: 3,
            memory_headroom_mb: 256,
            emergency_mem: 98.0,
            dry_run: false,
            enabled: true,
        }
    }
}

/// Cluster-wide safety limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscaleSafety {
    /// Actions at once across the cluster.
    pub max_concurrent: usize,
    /// A node at or above this CPU % takes no scale-ups.
    pub host_cpu_limit: f64,
    /// A node at or above this memory % (used) takes no scale-ups.
    pub host_memory_limit: f64,
    /// Memory a node keeps unallocated, MiB: allocations past total minus this are refused.
    pub host_reserve_mb: u64,
    /// Host protection on.
    pub host_protection: bool,
}

impl Default for AutoscaleSafety {
    fn default() -> Self {
        Self {
            max_concurrent: 3,
            host_cpu_limit: 95.0,
            host_memory_limit: 95.0,
            host_reserve_mb: 1024,
            host_protection: true,
        }
    }
}
