//! `backup.*`: a backup of a site's container taken by the fleet itself (on demand, before a
//! destroy, before a restore), as opposed to those PVE's own backup jobs take on schedule.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{MaybeVmid, example_site};
use crate::ids::{SiteId, Vmid};
use crate::message::{Command, Event, Kind, Message, StepError};

/// Why the fleet takes a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    /// An operator or owner asked for it.
    OnDemand,
    /// The last backup before the site's container is destroyed; kept `backup.final_retention`.
    Final,
    /// Taken before a restore overwrites the container, so a failed restore can be undone.
    PreRestore,
}

impl BackupKind {
    /// `on_demand`, `final`, `pre_restore`: the `backups.kind` value.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::OnDemand => "on_demand",
            BackupKind::Final => "final",
            BackupKind::PreRestore => "pre_restore",
        }
    }
}

/// Back up a site's container now (vzdump), follow the task to its end and record the volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackupCreate {
    /// The site.
    pub site_id: SiteId,
    /// Its container.
    pub vmid: Vmid,
    /// The fleet's record of this backup (`backups.id`); a redelivered command with the same
    /// id does not back up twice.
    pub backup_id: Uuid,
    /// Why.
    pub kind: BackupKind,
    /// The storage; none: the site's policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Where the container was last seen; the cluster is read when it is not there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}
impl MaybeVmid for BackupCreate {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    BackupCreate,
    "backup.create",
    "Back up a site's container and record the backup volume.",
    BackupCreateFailed,
    BackupCreate {
        site_id: example_site(),
        vmid: Vmid(123),
        backup_id: Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_00b1),
        kind: BackupKind::OnDemand,
        storage: Some("local".into()),
        node: Some("pve1".into()),
    }
);

/// A backup was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackupCreated {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// The fleet's record.
    pub backup_id: Uuid,
    /// The backup volume (`local:backup/vzdump-lxc-123-2026_12_07-02_00_00.tar.zst`).
    pub volid: String,
    /// The node that wrote it.
    pub node: String,
    /// Bytes, when the storage says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}
event!(
    BackupCreated,
    "backup.created",
    "A backup of a site's container was written.",
    BackupCreated {
        site_id: example_site(),
        vmid: Vmid(123),
        backup_id: Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_00b1),
        volid: "local:backup/vzdump-lxc-123-2026_12_07-02_00_00.tar.zst".into(),
        node: "pve1".into(),
        size: Some(734_003_200),
    }
);
failed_event!(
    BackupCreateFailed,
    "backup.create_failed",
    "Backing up a container failed."
);
