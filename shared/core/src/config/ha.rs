//! HA settings (`[ha]`): how containers are made highly available, and the watchdog.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the ha service makes containers HA (pve-behaviour.md §5.12).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaSettings {
    /// Restarts on the same node before the HA manager relocates.
    pub max_restart: u32,
    /// Relocations before it gives up.
    pub max_relocate: u32,
    /// Preferred nodes, `node[:priority]`; empty: no placement rule or group.
    pub nodes: Vec<String>,
    /// Restrict to those nodes rather than prefer them (PVE 9 `strict`, PVE 8 `restricted`).
    pub strict: bool,
    /// The PVE 8 group created for `nodes` when a command names none.
    pub group: String,
    /// How often the reconciler repairs drift (missing HA resources, wrong states).
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// The watchdog: a fleet container (tag `pvefleet`) that is not HA-managed and is found
    /// stopped is started again.
    pub watchdog: bool,
    /// Watchdog starts of one container per hour before it gives up with a `restart_loop`
    /// alert.
    pub watchdog_max_restarts: u32,
    /// Containers with this tag are left stopped (an operator's hold).
    pub watchdog_hold_tag: String,
}

impl Default for HaSettings {
    fn default() -> Self {
        Self {
            max_restart: 3,
            max_relocate: 2,
            nodes: Vec::new(),
            strict: false,
            group: "pvefleet".into(),
            reconcile_interval: Duration::from_secs(60),
            watchdog: true,
            watchdog_max_restarts: 3,
            watchdog_hold_tag: "pvefleet-hold".into(),
        }
    }
}
