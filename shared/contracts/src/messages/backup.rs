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

/// Restore a site's container from a backup volume: into its own container (stopped first,
/// then overwritten with `force`), or into a new one when the container is gone. The fleet's
/// tags are put back afterwards, and `net` replaces the archive's first interface when the
/// site's address changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackupRestore {
    /// The site.
    pub site_id: SiteId,
    /// The container restored (the site's own, or a newly leased vmid).
    pub vmid: Vmid,
    /// The backup volume (`local:backup/vzdump-lxc-123-….tar.zst`).
    pub volid: String,
    /// The restore (the saga's id): audit rows name it.
    pub restore_id: Uuid,
    /// Where to restore when the container does not exist: the node that holds the volume
    /// for node-local storage. A container that exists is restored where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The storage for the restored disks; none: where the archive says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// The first interface as it must be now (a re-leased address); none: as archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<super::NetSpec>,
    /// The fleet's tags, put back on the restored config (`site-blog`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Start the container once restored (a compensation puts a running site back running).
    #[serde(default)]
    pub start: bool,
    /// New MAC addresses (PVE's `unique`): a clone runs beside the container it was backed up from.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unique: bool,
    /// The hostname instead of the archived one (a clone's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}
impl MaybeVmid for BackupRestore {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    BackupRestore,
    "backup.restore",
    "Restore a site's container from a backup volume.",
    BackupRestoreFailed,
    BackupRestore {
        site_id: example_site(),
        vmid: Vmid(123),
        volid: "local:backup/vzdump-lxc-123-2026_12_07-02_00_00.tar.zst".into(),
        restore_id: Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_00c1),
        node: Some("pve1".into()),
        storage: None,
        net: None,
        tags: vec!["site-blog".into()],
        start: false,
        unique: false,
        hostname: None,
    }
);

/// A container was restored from a backup volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackupRestored {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// The volume it was restored from.
    pub volid: String,
    /// The node it is on.
    pub node: String,
    /// The restore.
    pub restore_id: Uuid,
}
event!(
    BackupRestored,
    "backup.restored",
    "A site's container was restored from a backup.",
    BackupRestored {
        site_id: example_site(),
        vmid: Vmid(123),
        volid: "local:backup/vzdump-lxc-123-2026_12_07-02_00_00.tar.zst".into(),
        node: "pve1".into(),
        restore_id: Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_00c1),
    }
);
failed_event!(
    BackupRestoreFailed,
    "backup.restore_failed",
    "Restoring a container from a backup failed."
);

/// A backup was verified: restored into a scratch container on an isolated network, started,
/// probed, and the scratch container destroyed. A failure is an alert for the operators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackupVerified {
    /// The site the backup is of.
    pub site_id: SiteId,
    /// The fleet's record of the backup.
    pub backup_id: Uuid,
    /// The backup volume.
    pub volid: String,
    /// `ok` or `failed`.
    pub outcome: String,
    /// What failed (restore, start, probe), with PVE's or the probe's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
event!(
    BackupVerified,
    "backup.verified",
    "A backup was verified by restoring it into a scratch container.",
    BackupVerified {
        site_id: example_site(),
        backup_id: Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_00b1),
        volid: "local:backup/vzdump-lxc-123-2026_12_07-02_00_00.tar.zst".into(),
        outcome: "failed".into(),
        error: Some("restore: unable to restore CT 999999900 - damaged archive".into()),
    }
);

/// Put a site's container config back as one recorded version of its configuration history
/// was, through the digest-guarded config write (disks, mount points and `unprivileged` are
/// left as they are: a config write cannot change them safely).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigRestore {
    /// The site.
    pub site_id: SiteId,
    /// The site's container when asked.
    pub vmid: Vmid,
    /// The version to put back.
    pub version: u32,
    /// The request (`config_restores`): audit rows and the answer name it.
    pub restore_id: Uuid,
}
impl MaybeVmid for ConfigRestore {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    ConfigRestore,
    "config.restore",
    "Put a site's container config back as a recorded version was.",
    ConfigRestoreFailed,
    ConfigRestore {
        site_id: example_site(),
        vmid: Vmid(123),
        version: 3,
        restore_id: Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_00d1),
    }
);

/// A site's container config was put back as a recorded version was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigRestored {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// The request.
    pub restore_id: Uuid,
    /// The version put back.
    pub version: u32,
    /// The version recorded once it was written.
    pub recorded_version: u32,
    /// The keys written or deleted.
    pub changed: Vec<String>,
    /// Those PVE left pending until the container restarts.
    #[serde(default)]
    pub pending: Vec<String>,
}
event!(
    ConfigRestored,
    "config.restored",
    "A site's container config was put back as a recorded version was.",
    ConfigRestored {
        site_id: example_site(),
        vmid: Vmid(123),
        restore_id: Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_00d1),
        version: 3,
        recorded_version: 6,
        changed: vec!["memory".into(), "net1".into()],
        pending: Vec::new(),
    }
);
failed_event!(
    ConfigRestoreFailed,
    "config.restore_failed",
    "Putting a container config back failed."
);
