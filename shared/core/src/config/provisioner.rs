//! Provisioner settings (`[provisioner]`): how containers are built, placed and torn down.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the provisioner builds and tears down containers (the reference platform's
/// `build_container_config`, pve-behaviour.md §5).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionerSettings {
    /// `nameserver` in every container (space-separated), none when empty.
    pub nameserver: String,
    /// `searchdomain` in every container, none when empty.
    pub searchdomain: String,
    /// Turn on `features: nesting=1` (needed by systemd in recent templates).
    pub nesting: bool,
    /// Start the container when its node boots.
    pub onboot: bool,
    /// How long a clean shutdown may take before the container is stopped, on destroy.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long `container.start` waits for the status `running`.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// The node every container goes to when its request names none; empty: chosen.
    pub node: String,
    /// When neither the request nor `node` names one, containers spread by what each online
    /// node has allocated (its guests' configured memory and cores); between nodes allocated
    /// alike, the earlier of these wins, then the one with the most memory free.
    pub preferred_nodes: Vec<String>,
}

impl Default for ProvisionerSettings {
    fn default() -> Self {
        Self {
            nameserver: String::new(),
            searchdomain: String::new(),
            nesting: true,
            onboot: true,
            shutdown_timeout: Duration::from_secs(60),
            start_timeout: Duration::from_secs(60),
            node: String::new(),
            preferred_nodes: Vec::new(),
        }
    }
}
