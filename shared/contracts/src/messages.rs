//! The commands and events of the provisioning and deprovisioning sagas (DESIGN.md §6).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{SiteId, Vmid};
use crate::message::{Command, Event, Kind, Message, StepError};

macro_rules! impl_message {
    ($ty:ident, $name:literal, $kind:ident, $desc:literal, $example:expr) => {
        impl Message for $ty {
            const TYPE: &'static str = $name;
            const VERSION: u32 = 1;
            const KIND: Kind = Kind::$kind;
            const DESCRIPTION: &'static str = $desc;
            fn example() -> Self {
                $example
            }
        }
    };
}

macro_rules! event {
    ($ty:ident, $name:literal, $desc:literal, $example:expr) => {
        impl_message!($ty, $name, Event, $desc, $example);
        impl Event for $ty {}
    };
}

/// A `*_failed` event: every step failure has the same shape.
macro_rules! failed_event {
    ($ty:ident, $name:literal, $desc:literal) => {
        #[doc = $desc]
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
        pub struct $ty {
            /// The site whose step failed.
            pub site_id: SiteId,
            /// The container, when the step concerns one.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub vmid: Option<Vmid>,
            /// What went wrong.
            pub error: StepError,
        }
        event!(
            $ty,
            $name,
            $desc,
            $ty {
                site_id: example_site(),
                vmid: Some(Vmid(123)),
                error: StepError::new("proxmox.permanent", "storage 'local-lvm' does not exist"),
            }
        );
    };
}

/// A command and its failure event.
macro_rules! command {
    ($ty:ident, $name:literal, $desc:literal, $failed:ident, $example:expr) => {
        impl_message!($ty, $name, Command, $desc, $example);
        impl Command for $ty {
            type Failed = $failed;
            fn failed(&self, error: StepError) -> $failed {
                $failed {
                    site_id: self.site_id,
                    vmid: self.vmid_opt(),
                    error,
                }
            }
        }
    };
}

fn example_site() -> SiteId {
    SiteId(Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_0001))
}

/// Something that may name a container.
trait MaybeVmid {
    fn vmid_opt(&self) -> Option<Vmid>;
}

/// The application installed in a site's container: `wordpress` (the default), `none` for a
/// bare container (the install step is skipped), or the name of an app the installer is
/// configured with (`installer.apps.<name>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct App(#[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,31}$"))] pub String);

impl App {
    /// WordPress on nginx, php-fpm and MariaDB.
    pub fn wordpress() -> Self {
        Self("wordpress".into())
    }

    /// A bare container.
    pub fn none() -> Self {
        Self("none".into())
    }

    /// Whether the install step is skipped.
    pub fn is_none(&self) -> bool {
        self.0 == "none"
    }

    /// The app's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for App {
    fn default() -> Self {
        Self::wordpress()
    }
}

// ---------------------------------------------------------------------------------------------
// site.*

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

// ---------------------------------------------------------------------------------------------
// container.*

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

// ---------------------------------------------------------------------------------------------
// app.*

/// Install an application in a running container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppInstall {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// The app name from config, such as `wordpress`.
    pub app: String,
    /// The public URL of the site.
    pub site_url: String,
    /// The site title.
    pub title: String,
    /// The administrator's e-mail address. Credentials are generated and stored, never sent.
    pub admin_email: String,
}
impl MaybeVmid for AppInstall {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    AppInstall,
    "app.install",
    "Install an application in a container through pct exec.",
    AppInstallFailed,
    AppInstall {
        site_id: example_site(),
        vmid: Vmid(123),
        app: "wordpress".into(),
        site_url: "https://blog.example.org".into(),
        title: "Blog".into(),
        admin_email: "alice@example.org".into(),
    }
);

/// The application is installed and verified.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppInstalled {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// The app name.
    pub app: String,
}
event!(
    AppInstalled,
    "app.installed",
    "An application was installed and verified.",
    AppInstalled {
        site_id: example_site(),
        vmid: Vmid(123),
        app: "wordpress".into(),
    }
);
failed_event!(
    AppInstallFailed,
    "app.install_failed",
    "Installing an application failed."
);

// ---------------------------------------------------------------------------------------------
// dns.*

/// A DNS record type pvefleet manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RecordType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    AAAA,
    /// Alias.
    CNAME,
}

/// Create or replace a DNS record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DnsUpsert {
    /// The site.
    pub site_id: SiteId,
    /// The fully qualified name, without trailing dot.
    pub fqdn: String,
    /// Record type.
    pub record_type: RecordType,
    /// Record content, such as an address.
    pub content: String,
    /// TTL in seconds; the provider default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}
impl MaybeVmid for DnsUpsert {
    fn vmid_opt(&self) -> Option<Vmid> {
        None
    }
}
command!(
    DnsUpsert,
    "dns.upsert",
    "Create or replace a DNS record.",
    DnsUpsertFailed,
    DnsUpsert {
        site_id: example_site(),
        fqdn: "blog.example.org".into(),
        record_type: RecordType::A,
        content: "203.0.113.10".into(),
        ttl: Some(300),
    }
);

/// The DNS record is in place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DnsUpserted {
    /// The site.
    pub site_id: SiteId,
    /// The name.
    pub fqdn: String,
}
event!(
    DnsUpserted,
    "dns.upserted",
    "A DNS record was created or replaced.",
    DnsUpserted {
        site_id: example_site(),
        fqdn: "blog.example.org".into(),
    }
);
failed_event!(DnsUpsertFailed, "dns.upsert_failed", "Writing a DNS record failed.");

/// Delete a DNS record; absence counts as success.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DnsDelete {
    /// The site.
    pub site_id: SiteId,
    /// The name.
    pub fqdn: String,
    /// Record type.
    pub record_type: RecordType,
}
impl MaybeVmid for DnsDelete {
    fn vmid_opt(&self) -> Option<Vmid> {
        None
    }
}
command!(
    DnsDelete,
    "dns.delete",
    "Delete a DNS record (absence is success).",
    DnsDeleteFailed,
    DnsDelete {
        site_id: example_site(),
        fqdn: "blog.example.org".into(),
        record_type: RecordType::A,
    }
);

/// The DNS record is gone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DnsDeleted {
    /// The site.
    pub site_id: SiteId,
    /// The name.
    pub fqdn: String,
}
event!(
    DnsDeleted,
    "dns.deleted",
    "A DNS record was deleted.",
    DnsDeleted {
        site_id: example_site(),
        fqdn: "blog.example.org".into(),
    }
);
failed_event!(DnsDeleteFailed, "dns.delete_failed", "Deleting a DNS record failed.");

// ---------------------------------------------------------------------------------------------
// proxy.*

/// Create or replace a reverse-proxy route for a site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyUpsert {
    /// The site.
    pub site_id: SiteId,
    /// The host name the proxy matches.
    pub host: String,
    /// The upstream, `ip:port`.
    pub upstream: String,
}
impl MaybeVmid for ProxyUpsert {
    fn vmid_opt(&self) -> Option<Vmid> {
        None
    }
}
command!(
    ProxyUpsert,
    "proxy.upsert",
    "Create or replace a reverse-proxy route.",
    ProxyUpsertFailed,
    ProxyUpsert {
        site_id: example_site(),
        host: "blog.example.org".into(),
        upstream: "10.10.0.23:80".into(),
    }
);

/// The route is in place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyUpserted {
    /// The site.
    pub site_id: SiteId,
    /// The host.
    pub host: String,
}
event!(
    ProxyUpserted,
    "proxy.upserted",
    "A reverse-proxy route was created or replaced.",
    ProxyUpserted {
        site_id: example_site(),
        host: "blog.example.org".into(),
    }
);
failed_event!(
    ProxyUpsertFailed,
    "proxy.upsert_failed",
    "Writing a reverse-proxy route failed."
);

/// Delete a site's reverse-proxy route; absence counts as success.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyDelete {
    /// The site.
    pub site_id: SiteId,
    /// The host.
    pub host: String,
}
impl MaybeVmid for ProxyDelete {
    fn vmid_opt(&self) -> Option<Vmid> {
        None
    }
}
command!(
    ProxyDelete,
    "proxy.delete",
    "Delete a reverse-proxy route (absence is success).",
    ProxyDeleteFailed,
    ProxyDelete {
        site_id: example_site(),
        host: "blog.example.org".into(),
    }
);

/// The route is gone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyDeleted {
    /// The site.
    pub site_id: SiteId,
    /// The host.
    pub host: String,
}
event!(
    ProxyDeleted,
    "proxy.deleted",
    "A reverse-proxy route was deleted.",
    ProxyDeleted {
        site_id: example_site(),
        host: "blog.example.org".into(),
    }
);
failed_event!(
    ProxyDeleteFailed,
    "proxy.delete_failed",
    "Deleting a reverse-proxy route failed."
);

// ---------------------------------------------------------------------------------------------
// ha.*

/// Make a container an HA resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HaEnable {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// PVE 8 group or PVE 9 node-affinity rule to place it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}
impl MaybeVmid for HaEnable {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    HaEnable,
    "ha.enable",
    "Add a container to HA with requested state started.",
    HaEnableFailed,
    HaEnable {
        site_id: example_site(),
        vmid: Vmid(123),
        group: None,
    }
);

/// The container is an HA resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HaEnabled {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
}
event!(
    HaEnabled,
    "ha.enabled",
    "A container became an HA resource.",
    HaEnabled {
        site_id: example_site(),
        vmid: Vmid(123)
    }
);
failed_event!(HaEnableFailed, "ha.enable_failed", "Adding a container to HA failed.");

/// Remove a container from HA; absence counts as success.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HaDisable {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
}
impl MaybeVmid for HaDisable {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    HaDisable,
    "ha.disable",
    "Remove a container from HA (absence is success).",
    HaDisableFailed,
    HaDisable {
        site_id: example_site(),
        vmid: Vmid(123),
    }
);

/// The container is no longer an HA resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HaDisabled {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
}
event!(
    HaDisabled,
    "ha.disabled",
    "A container was removed from HA.",
    HaDisabled {
        site_id: example_site(),
        vmid: Vmid(123)
    }
);
failed_event!(
    HaDisableFailed,
    "ha.disable_failed",
    "Removing a container from HA failed."
);

// ---------------------------------------------------------------------------------------------
// message.*

/// A message gave up and was stored as a dead letter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageParked {
    /// The dead letter's id in the store.
    pub dead_letter_id: Uuid,
    /// The parked message's type, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// The parked message's correlation id (saga or operation), when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The queue it was consumed from.
    pub queue: String,
    /// The grouping fingerprint: type + error class + normalised message.
    pub group: String,
    /// The fault class.
    pub fault_class: String,
}
event!(
    MessageParked,
    "message.parked",
    "A message was parked as a dead letter.",
    MessageParked {
        dead_letter_id: Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_00ff),
        message_type: Some("container.create".into()),
        correlation_id: Some(Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_0002)),
        queue: "pvefleet.provisioner".into(),
        group: "container.create/retries-exhausted/3f2a9c1d".into(),
        fault_class: "retries-exhausted".into(),
    }
);

// ---------------------------------------------------------------------------------------------
// autoscaler

/// The autoscaler changed a container's cores or memory (or, in a dry run, would have).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerScaled {
    /// The container.
    pub vmid: Vmid,
    /// The node it runs on.
    pub node: String,
    /// `cpu` (cores) or `memory` (MiB).
    pub resource: String,
    /// The value before.
    pub from: u64,
    /// The value after.
    pub to: u64,
    /// `scaled`, or `would_scale` in a dry run.
    pub outcome: String,
    /// An emergency scale-up that bypassed the cooldown.
    #[serde(default)]
    pub emergency: bool,
}
event!(
    ContainerScaled,
    "container.scaled",
    "The autoscaler changed a container's cores or memory.",
    ContainerScaled {
        vmid: Vmid(123),
        node: "pve1".into(),
        resource: "memory".into(),
        from: 2048,
        to: 2560,
        outcome: "scaled".into(),
        emergency: false,
    }
);

/// A container or node crossed a resource threshold (`raised`), or went back below it
/// (`cleared`); once per crossing, never every tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceAlert {
    /// `lxc/101` or `node/pve1`.
    pub subject: String,
    /// `cpu`, `memory`, `disk`, or `restart_loop` (the watchdog gave up restarting it).
    pub kind: String,
    /// `raised` or `cleared`.
    pub state: String,
    /// The usage, %, when it changed.
    pub value: f64,
    /// The threshold, %.
    pub threshold: f64,
}
event!(
    ResourceAlert,
    "resource.alert",
    "A container or node crossed a resource threshold, or went back below it.",
    ResourceAlert {
        subject: "lxc/123".into(),
        kind: "memory".into(),
        state: "raised".into(),
        value: 91.5,
        threshold: 85.0,
    }
);

/// Set (or, with no policy, delete) an autoscaling policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AutoscalePolicySet {
    /// `global`, `tag:<tag>` or `vmid:<n>`.
    #[schemars(regex(pattern = r"^(global|tag:[A-Za-z0-9_.-]{1,64}|vmid:[0-9]{1,9})$"))]
    pub scope: String,
    /// The keys to change over the default (`{"max_cores": 4}`); absent: delete the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Map<String, serde_json::Value>>,
}
impl_message!(
    AutoscalePolicySet,
    "autoscale.policy.set",
    Command,
    "Set or delete an autoscaling policy.",
    AutoscalePolicySet {
        scope: "tag:web".into(),
        policy: Some(serde_json::Map::from_iter([(
            "max_cores".to_string(),
            serde_json::json!(4)
        )])),
    }
);

// ---------------------------------------------------------------------------------------------
// network hotplug and SDN

mod network;
pub use network::*;
