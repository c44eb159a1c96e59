//! Network hotplug settings (`[nethotplug]`): MAC prefix, IPv4 pools, allowed bridges and write retries.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Network hotplug: MAC generation, IP pools, and how config writes meet other writers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NethotplugSettings {
    /// The first three octets of generated MACs (the cluster's `mac_prefix`; PVE's default
    /// is `BC:24:11`).
    pub mac_prefix: String,
    /// IPv4 pools per bridge or VNet, for interfaces asking `ip = "pool"`.
    pub pools: std::collections::BTreeMap<String, IpPool>,
    /// The bridges and VNets interfaces may be put on (the guardrail policy); empty allows
    /// every one the node has.
    pub allowed_bridges: Vec<String>,
    /// Config writes tried when another writer changes the config in between (digest
    /// mismatch).
    pub write_attempts: u32,
    /// How long to wait for the per-vmid lock the provisioner and autoscaler also take.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// How long to wait, after an SDN apply, for a zone still `pending` on a node (then the
    /// command is retried).
    #[serde(with = "humantime_serde")]
    pub sdn_wait: Duration,
}

impl Default for NethotplugSettings {
    fn default() -> Self {
        Self {
            mac_prefix: "BC:24:11".into(),
            pools: std::collections::BTreeMap::new(),
            allowed_bridges: Vec::new(),
            write_attempts: 5,
            lock_timeout: Duration::from_secs(30),
            sdn_wait: Duration::from_secs(30),
        }
    }
}

/// An IPv4 pool: addresses `first` to `last` of `cidr`, handed out with its prefix length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpPool {
    /// The subnet, such as `10.20.0.0/24`.
    pub cidr: String,
    /// The gateway given with each address.
    #[serde(default)]
    pub gateway: Option<String>,
    /// The first address handed out; the subnet's second when absent.
    #[serde(default)]
    pub first: Option<String>,
    /// The last address handed out; the subnet's last but one when absent.
    #[serde(default)]
    pub last: Option<String>,
}
