//! `site.*`: the commands that start the provisioning and deprovisioning sagas, and their outcomes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{App, example_site};
use crate::ids::{SiteId, Vmid};
use crate::message::{Event, Kind, Message, StepError};

/// Provision a site: the saga coordinator starts a provisioning saga from this command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SiteProvision {
    /// The site to create; the intake service mints it.
    pub site_id: SiteId,
    /// An RFC 1123 label, such as `blog`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub subdomain: String,
    /// Who owns the site (quota is counted per owner).
    #[schemars(length(min = 1, max = 128))]
    pub owner: String,
    /// A plan name from config; explicit sizes override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// CPU cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8192))]
    pub cores: Option<u32>,
    /// Memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16))]
    pub memory_mb: Option<u32>,
    /// Root disk in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub disk_gb: Option<u32>,
    /// The template volume id, such as `local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst`.
    #[schemars(length(min = 1))]
    pub template: String,
    /// Pin the container to this node; otherwise the provisioner chooses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Make the container an HA resource.
    #[serde(default)]
    pub ha: bool,
    /// The application to install.
    #[serde(default)]
    pub app: App,
}
impl_message!(
    SiteProvision,
    "site.provision",
    Command,
    "Provision a site: container, app, DNS, proxy and HA.",
    SiteProvision {
        site_id: example_site(),
        subdomain: "blog".into(),
        owner: "alice".into(),
        plan: Some("small".into()),
        cores: None,
        memory_mb: None,
        disk_gb: None,
        template: "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst".into(),
        node: None,
        ha: true,
        app: App::wordpress(),
    }
);

/// Deprovision a site: tear down HA, proxy, DNS and the container, then release leases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SiteDeprovision {
    /// The site to remove.
    pub site_id: SiteId,
}
impl_message!(
    SiteDeprovision,
    "site.deprovision",
    Command,
    "Deprovision a site and release everything it holds.",
    SiteDeprovision {
        site_id: example_site()
    }
);

/// Restore a site from one of its backups: its container is put back as the backup holds it
/// (a destroyed site comes back with a new container, its address, DNS record and route).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SiteRestore {
    /// The site.
    pub site_id: SiteId,
    /// The backup volume; none: the site's latest backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volid: Option<String>,
    /// Who asked (audited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// A clone: the site (a new one, `requested`) is made from this other site's backup, in a
    /// container of its own beside it; the other site is not touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_of: Option<SiteId>,
}
impl_message!(
    SiteRestore,
    "site.restore",
    Command,
    "Restore a site from one of its backups.",
    SiteRestore {
        site_id: example_site(),
        volid: Some("local:backup/vzdump-lxc-123-2026_12_07-02_00_00.tar.zst".into()),
        requested_by: Some("operator".into()),
        clone_of: None,
    }
);

/// A site was restored from a backup and answers again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SiteRestored {
    /// The site.
    pub site_id: SiteId,
    /// Its container.
    pub vmid: Vmid,
    /// The node it runs on.
    pub node: String,
    /// The backup it was restored from.
    pub volid: String,
}
event!(
    SiteRestored,
    "site.restored",
    "A site was restored from a backup.",
    SiteRestored {
        site_id: example_site(),
        vmid: Vmid(123),
        node: "pve1".into(),
        volid: "local:backup/vzdump-lxc-123-2026_12_07-02_00_00.tar.zst".into(),
    }
);

/// A restore failed; the site was put back as it was before it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SiteRestoreFailed {
    /// The site.
    pub site_id: SiteId,
    /// The step that failed, such as `container.start`.
    pub failed_step: String,
    /// Why.
    pub error: StepError,
}
event!(
    SiteRestoreFailed,
    "site.restore_failed",
    "Restoring a site failed and the site was put back as it was.",
    SiteRestoreFailed {
        site_id: example_site(),
        failed_step: "container.start".into(),
        error: StepError::new("proxmox.permanent", "startup for container '123' failed"),
    }
);

/// A site is provisioned and reachable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SiteProvisioned {
    /// The site.
    pub site_id: SiteId,
    /// Its container.
    pub vmid: Vmid,
    /// The node the container runs on.
    pub node: String,
    /// The fully qualified name, when DNS is managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
}
event!(
    SiteProvisioned,
    "site.provisioned",
    "A site was provisioned.",
    SiteProvisioned {
        site_id: example_site(),
        vmid: Vmid(123),
        node: "pve1".into(),
        fqdn: Some("blog.example.org".into()),
    }
);

/// Provisioning failed; the completed steps were compensated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SiteProvisionFailed {
    /// The site.
    pub site_id: SiteId,
    /// The step that failed, such as `container.create`.
    pub failed_step: String,
    /// Why.
    pub error: StepError,
}
event!(
    SiteProvisionFailed,
    "site.provision_failed",
    "Provisioning a site failed and was compensated.",
    SiteProvisionFailed {
        site_id: example_site(),
        failed_step: "container.create".into(),
        error: StepError::new("proxmox.permanent", "storage 'local-lvm' does not exist"),
    }
);

/// A site was removed and its leases released.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SiteDeprovisioned {
    /// The site.
    pub site_id: SiteId,
}
event!(
    SiteDeprovisioned,
    "site.deprovisioned",
    "A site was deprovisioned.",
    SiteDeprovisioned {
        site_id: example_site()
    }
);

/// A `site.provision` published straight to the bus was invalid and was parked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SiteRejected {
    /// The site id, when the message carried a readable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_id: Option<SiteId>,
    /// The field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Why it was rejected.
    pub reason: String,
}
event!(
    SiteRejected,
    "site.rejected",
    "A site request was rejected as invalid.",
    SiteRejected {
        site_id: Some(example_site()),
        field: Some("subdomain".into()),
        reason: "subdomain 'Bad_Name' is not an RFC 1123 label".into(),
    }
);
