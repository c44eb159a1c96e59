//! `container.*`: creating, starting, snapshotting and destroying a site's LXC container.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MaybeVmid, example_site};
use crate::ids::{SiteId, Vmid};
use crate::message::{Command, Event, Kind, Message, StepError};

/// The container's first network interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NetSpec {
    /// The bridge or SDN VNet, such as `vmbr0`.
    pub bridge: String,
    /// Static address in CIDR form, or `dhcp`.
    pub ip: String,
    /// Gateway for a static address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// MAC address; PVE generates one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hwaddr: Option<String>,
    /// VLAN tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4094))]
    pub tag: Option<u16>,
}

/// Create an LXC container (not started).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerCreate {
    /// The site it belongs to.
    pub site_id: SiteId,
    /// The leased vmid.
    pub vmid: Vmid,
    /// The node to create it on.
    pub node: String,
    /// The container hostname.
    pub hostname: String,
    /// The template volume id.
    pub template: String,
    /// The storage for the root disk.
    pub storage: String,
    /// CPU cores.
    #[schemars(range(min = 1, max = 8192))]
    pub cores: u32,
    /// Memory in MiB.
    #[schemars(range(min = 16))]
    pub memory_mb: u32,
    /// Swap in MiB.
    #[serde(default)]
    pub swap_mb: u32,
    /// Root disk in GiB.
    #[schemars(range(min = 1))]
    pub disk_gb: u32,
    /// The network interface `net0`.
    pub net: NetSpec,
    /// Unprivileged container (the default, and required unless policy allows otherwise).
    #[serde(default = "yes")]
    pub unprivileged: bool,
    /// PVE tags; the provisioner always adds `pvefleet`.
    #[serde(default)]
    pub tags: Vec<String>,
}
fn yes() -> bool {
    true
}
impl MaybeVmid for ContainerCreate {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    ContainerCreate,
    "container.create",
    "Create an LXC container from a template.",
    ContainerCreateFailed,
    ContainerCreate {
        site_id: example_site(),
        vmid: Vmid(123),
        node: "pve1".into(),
        hostname: "blog".into(),
        template: "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst".into(),
        storage: "local-lvm".into(),
        cores: 2,
        memory_mb: 2048,
        swap_mb: 512,
        disk_gb: 8,
        net: NetSpec {
            bridge: "vmbr0".into(),
            ip: "10.10.0.23/24".into(),
            gw: Some("10.10.0.1".into()),
            hwaddr: None,
            tag: None
        },
        unprivileged: true,
        tags: vec!["site".into()],
    }
);

/// The container exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerCreated {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// Where it was created.
    pub node: String,
}
event!(
    ContainerCreated,
    "container.created",
    "An LXC container was created.",
    ContainerCreated {
        site_id: example_site(),
        vmid: Vmid(123),
        node: "pve1".into(),
    }
);
failed_event!(
    ContainerCreateFailed,
    "container.create_failed",
    "Creating a container failed."
);

/// Start a container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerStart {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// Where the container was last seen (from `container.created`): tried first, so the
    /// cluster is read only when HA has moved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}
impl MaybeVmid for ContainerStart {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    ContainerStart,
    "container.start",
    "Start a container.",
    ContainerStartFailed,
    ContainerStart {
        site_id: example_site(),
        vmid: Vmid(123),
        node: Some("pve1".into()),
    }
);

/// The container is running.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerStarted {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// The node it runs on.
    pub node: String,
}
event!(
    ContainerStarted,
    "container.started",
    "A container was started.",
    ContainerStarted {
        site_id: example_site(),
        vmid: Vmid(123),
        node: "pve1".into(),
    }
);
failed_event!(
    ContainerStartFailed,
    "container.start_failed",
    "Starting a container failed."
);

/// Take a snapshot of a container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerSnapshot {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// The snapshot name, such as `initial`.
    #[schemars(regex(pattern = r"^[A-Za-z][A-Za-z0-9_\-]{1,39}$"))]
    pub name: String,
    /// A description stored with the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the container was last seen: tried first, as for `container.start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}
impl MaybeVmid for ContainerSnapshot {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    ContainerSnapshot,
    "container.snapshot",
    "Take a named snapshot of a container.",
    ContainerSnapshotFailed,
    ContainerSnapshot {
        site_id: example_site(),
        vmid: Vmid(123),
        name: "initial".into(),
        description: Some("after WordPress install".into()),
        node: Some("pve1".into()),
    }
);

/// The snapshot exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerSnapshotted {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// The snapshot name.
    pub name: String,
}
event!(
    ContainerSnapshotted,
    "container.snapshotted",
    "A container snapshot was taken.",
    ContainerSnapshotted {
        site_id: example_site(),
        vmid: Vmid(123),
        name: "initial".into(),
    }
);
failed_event!(
    ContainerSnapshotFailed,
    "container.snapshot_failed",
    "Taking a container snapshot failed."
);

/// Stop (gracefully, then forcibly) and destroy a container with its snapshots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerDestroy {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// Also remove it from backup jobs, replication and HA (PVE `purge`).
    #[serde(default = "yes")]
    pub purge: bool,
}
impl MaybeVmid for ContainerDestroy {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    ContainerDestroy,
    "container.destroy",
    "Stop and destroy a container.",
    ContainerDestroyFailed,
    ContainerDestroy {
        site_id: example_site(),
        vmid: Vmid(123),
        purge: true,
    }
);

/// The container is gone (or never existed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerDestroyed {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
}
event!(
    ContainerDestroyed,
    "container.destroyed",
    "A container was destroyed.",
    ContainerDestroyed {
        site_id: example_site(),
        vmid: Vmid(123),
    }
);
failed_event!(
    ContainerDestroyFailed,
    "container.destroy_failed",
    "Destroying a container failed."
);
