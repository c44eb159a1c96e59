//! Saga coordinator settings (`[saga]`): leases, size plans, providers and step deadlines.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A size plan sites can name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// CPU cores.
    pub cores: u32,
    /// Memory, MiB.
    pub memory_mb: u32,
    /// Root disk, GiB.
    pub disk_gb: u32,
    /// The backup policy of its sites, when a site names none (else `backup.default_policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_policy: Option<String>,
}

/// The saga coordinator's settings: where leases come from, what a site is made of, and which
/// optional steps run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SagaSettings {
    /// The first vmid leased to sites.
    pub vmid_first: u32,
    /// The last vmid leased to sites.
    pub vmid_last: u32,
    /// The sites' network, `10.10.0.0/24`; addresses are leased from it.
    pub ip_cidr: String,
    /// The first host number leased (`.100` of the network).
    pub ip_first: u32,
    /// The last host number leased.
    pub ip_last: u32,
    /// The sites' gateway.
    pub gateway: String,
    /// The bridge (or SDN vnet) of `net0`.
    pub bridge: String,
    /// The storage of root disks.
    pub storage: String,
    /// Swap for every container, MiB.
    pub swap_mb: u32,
    /// The domain sites live under: `<subdomain>.<domain>`.
    pub domain: String,
    /// `none` skips the DNS steps (a homelab without DNS automation).
    pub dns_provider: String,
    /// `none` skips the reverse-proxy steps.
    pub proxy_provider: String,
    /// Size plans by name.
    pub plans: std::collections::BTreeMap<String, Plan>,
    /// Re-sends of a failing compensation before the saga is `compensation_failed`.
    pub compensation_attempts: u32,
    /// Live sites one owner may have; 4294967295 (u32::MAX) means no limit.
    pub max_sites_per_owner: u32,
    /// How long a step may go unanswered before its command is sent again. Longer than the
    /// worker's whole retry ladder, so a re-send is for a lost command, not a slow one.
    #[serde(with = "humantime_serde")]
    pub step_timeout: Duration,
    /// Per-command deadlines that differ from `step_timeout`, keyed by the command type with
    /// `_` for `.` (`app_install = "45m"`), so the keys stay plain in TOML.
    pub step_timeouts: std::collections::BTreeMap<String, humantime_serde::Serde<Duration>>,
    /// Re-sends of an unanswered step before the saga is `suspended` (forward) or
    /// `compensation_failed` (compensating) for an operator.
    pub step_resends: u32,
    /// How often the coordinator looks for steps past their deadline.
    #[serde(with = "humantime_serde")]
    pub deadline_scan_interval: Duration,
    /// How often the vmids PVE already uses are read and held from leasing (one
    /// `/cluster/resources` read); `0s` turns the cross-check off. A create that still meets a
    /// used vmid leases another.
    #[serde(with = "humantime_serde")]
    pub lease_sync_interval: Duration,
    /// Take a backup of a site's container before the deprovisioning destroys it (kept
    /// `backup.final_retention`); a failed final backup stops the removal for an operator.
    pub final_backup: bool,
}

impl SagaSettings {
    /// The deadline of a step's command.
    pub fn timeout_of(&self, command: &str) -> Duration {
        self.step_timeouts
            .get(&command.replace('.', "_"))
            .map_or(self.step_timeout, |d| **d)
    }
}

impl Default for SagaSettings {
    fn default() -> Self {
        let plan = |cores, memory_mb, disk_gb| Plan {
            cores,
            memory_mb,
            disk_gb,
            backup_policy: None,
        };
        Self {
            vmid_first: 10_000,
            vmid_last: 19_999,
            ip_cidr: "10.10.0.0/24".into(),
            ip_first: 100,
            ip_last: 250,
            gateway: "10.10.0.1".into(),
            bridge: "vmbr0".into(),
            storage: "local-lvm".into(),
            swap_mb: 512,
            domain: "example.org".into(),
            dns_provider: "none".into(),
            proxy_provider: "none".into(),
            plans: [
                ("small".to_string(), plan(1, 1024, 8)),
                ("medium".to_string(), plan(2, 2048, 16)),
                ("large".to_string(), plan(4, 4096, 32)),
            ]
            .into_iter()
            .collect(),
            compensation_attempts: 5,
            max_sites_per_owner: 20,
            step_timeout: Duration::from_secs(15 * 60),
            step_timeouts: [
                (
                    "app_install".to_string(),
                    humantime_serde::Serde::from(Duration::from_secs(45 * 60)),
                ),
                // A final backup is followed across deliveries (backup.task_timeout each).
                (
                    "backup_create".to_string(),
                    humantime_serde::Serde::from(Duration::from_secs(3 * 3600)),
                ),
                (
                    "backup_restore".to_string(),
                    humantime_serde::Serde::from(Duration::from_secs(3 * 3600)),
                ),
            ]
            .into_iter()
            .collect(),
            step_resends: 2,
            deadline_scan_interval: Duration::from_secs(5),
            lease_sync_interval: Duration::from_secs(60),
            final_backup: true,
        }
    }
}
