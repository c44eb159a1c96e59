//! Backup settings (`[backup]`): the default policy, how PVE's backup jobs are kept in step,
//! and how long the backups the fleet takes itself are kept.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the backup service keeps sites backed up (policies themselves live in the database,
/// `pvefleet backup policy`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSettings {
    /// The policy of a site whose request and plan name none (`daily`: the guardrails' daily
    /// backups kept seven days).
    pub default_policy: String,
    /// How often PVE's cluster backup jobs are brought in step with the policies and the
    /// sites, and the storages' backups read into the fleet's records (new ones, pruned ones).
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// How long a final backup, taken before a site's container is destroyed, is kept
    /// (protected from pruning meanwhile); `0s` keeps it until an operator removes it.
    #[serde(with = "humantime_serde")]
    pub final_retention: Duration,
    /// How long one delivery of `backup.create` follows its vzdump task. Under RabbitMQ's
    /// `consumer_timeout` (30 min): a longer backup is followed on by the next delivery (the
    /// task's UPID is recorded), up to `bus.max_attempts` deliveries.
    #[serde(with = "humantime_serde")]
    pub task_timeout: Duration,
    /// How often one site's latest backup is verified: restored into a scratch container,
    /// started, probed and destroyed. `0s` turns verification off.
    #[serde(with = "humantime_serde")]
    pub verify_interval: Duration,
    /// The scratch container's vmid (outside the fleet's pool; one verification runs at a
    /// time). A guest there that is not a verification's is never touched.
    pub verify_vmid: u32,
    /// The bridge the scratch container's one interface is put on, with no address (an
    /// isolated bridge, without uplink); empty: no network interface at all.
    pub verify_bridge: String,
    /// Where the scratch container's disks go; empty: where the archive says.
    pub verify_storage: String,
    /// How often every fleet container's config is read and recorded when it changed (changes
    /// the fleet makes are recorded as their events arrive; this pass catches the rest).
    #[serde(with = "humantime_serde")]
    pub config_interval: Duration,
    /// How long config versions are kept (a site's newest is always kept).
    #[serde(with = "humantime_serde")]
    pub config_retention: Duration,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            default_policy: "daily".into(),
            sync_interval: Duration::from_secs(60),
            final_retention: Duration::from_secs(30 * 86_400),
            task_timeout: Duration::from_secs(25 * 60),
            verify_interval: Duration::from_secs(86_400),
            verify_vmid: 999_999_900,
            verify_bridge: String::new(),
            verify_storage: String::new(),
            config_interval: Duration::from_secs(3600),
            config_retention: Duration::from_secs(30 * 86_400),
        }
    }
}
