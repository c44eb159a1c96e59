//! What the site sagas (provision and deprovision) carry, and the commands of their steps,
//! built from it.

use pvefleet_contracts::Vmid;
use pvefleet_contracts::messages::{
    AppInstall, BackupCreate, BackupKind, ContainerCreate, ContainerDestroy, ContainerSnapshot, ContainerStart,
    DnsDelete, DnsUpsert, HaDisable, HaEnable, NetSpec, ProxyDelete, ProxyUpsert, RecordType, SiteProvision,
};
use pvefleet_core::config::SagaSettings;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A site saga's own data (`sagas.data`, beside the engine's progress).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteSaga {
    /// The request.
    pub site: SiteProvision,
    /// The leased vmid (0 before one is leased).
    pub vmid: u32,
    /// The leased address, CIDR form.
    pub ip: String,
    /// The node, once known.
    pub node: Option<String>,
    /// vmids given up because PVE already used them for something not ours.
    #[serde(default)]
    pub vmids_taken: Vec<u32>,
    /// A deprovisioning of an active site: its container is backed up before it goes
    /// (`saga.final_backup`). A site that never became active has nothing worth keeping.
    #[serde(default)]
    pub final_backup: bool,
}

impl SiteSaga {
    fn fqdn(&self, s: &SagaSettings) -> String {
        format!("{}.{}", self.site.subdomain, s.domain)
    }

    fn address(&self) -> String {
        self.ip.split('/').next().unwrap_or_default().to_string()
    }
}

/// Takes the node an event names (a container landed, or was found, there).
pub fn take_node(d: &mut SiteSaga, event: &Value) {
    if let Some(node) = event.get("node").and_then(Value::as_str) {
        d.node = Some(node.to_string());
    }
}

/// Whether the DNS steps run (provider `none` skips them).
pub fn dns(_: &SiteSaga, s: &SagaSettings) -> bool {
    s.dns_provider != "none"
}

/// Whether the proxy steps run.
pub fn proxy(_: &SiteSaga, s: &SagaSettings) -> bool {
    s.proxy_provider != "none"
}

/// Whether the site is (to be) an HA resource.
pub fn ha(d: &SiteSaga, _: &SagaSettings) -> bool {
    d.site.ha
}

pub fn create(d: &SiteSaga, s: &SagaSettings) -> ContainerCreate {
    let plan = d.site.plan.as_ref().and_then(|p| s.plans.get(p));
    ContainerCreate {
        site_id: d.site.site_id,
        vmid: Vmid(d.vmid),
        node: d.site.node.clone().unwrap_or_default(),
        hostname: d.site.subdomain.clone(),
        template: d.site.template.clone(),
        storage: s.storage.clone(),
        cores: d.site.cores.or(plan.map(|p| p.cores)).unwrap_or(1),
        memory_mb: d.site.memory_mb.or(plan.map(|p| p.memory_mb)).unwrap_or(1024),
        swap_mb: s.swap_mb,
        disk_gb: d.site.disk_gb.or(plan.map(|p| p.disk_gb)).unwrap_or(8),
        net: NetSpec {
            bridge: s.bridge.clone(),
            ip: d.ip.clone(),
            gw: Some(s.gateway.clone()),
            hwaddr: None,
            tag: None,
        },
        unprivileged: true,
        tags: vec![format!("site-{}", d.site.subdomain)],
    }
}

pub fn start(d: &SiteSaga, _: &SagaSettings) -> ContainerStart {
    ContainerStart {
        site_id: d.site.site_id,
        vmid: Vmid(d.vmid),
        node: d.node.clone(),
    }
}

pub fn install(d: &SiteSaga, s: &SagaSettings) -> AppInstall {
    AppInstall {
        site_id: d.site.site_id,
        vmid: Vmid(d.vmid),
        app: d.site.app.as_str().into(),
        site_url: format!("https://{}", d.fqdn(s)),
        title: d.site.subdomain.clone(),
        admin_email: format!("{}@{}", d.site.owner, s.domain),
    }
}

pub fn snapshot(d: &SiteSaga, _: &SagaSettings) -> ContainerSnapshot {
    ContainerSnapshot {
        site_id: d.site.site_id,
        vmid: Vmid(d.vmid),
        name: "initial".into(),
        description: Some(format!("pvefleet: {} as provisioned", d.site.subdomain)),
        node: d.node.clone(),
    }
}

pub fn dns_upsert(d: &SiteSaga, s: &SagaSettings) -> DnsUpsert {
    DnsUpsert {
        site_id: d.site.site_id,
        fqdn: d.fqdn(s),
        record_type: RecordType::A,
        content: d.address(),
        ttl: None,
    }
}

pub fn proxy_upsert(d: &SiteSaga, s: &SagaSettings) -> ProxyUpsert {
    ProxyUpsert {
        site_id: d.site.site_id,
        host: d.fqdn(s),
        upstream: format!("{}:80", d.address()),
    }
}

pub fn ha_enable(d: &SiteSaga, _: &SagaSettings) -> HaEnable {
    HaEnable {
        site_id: d.site.site_id,
        vmid: Vmid(d.vmid),
        group: None,
    }
}

pub fn ha_disable(d: &SiteSaga, _: &SagaSettings) -> HaDisable {
    HaDisable {
        site_id: d.site.site_id,
        vmid: Vmid(d.vmid),
    }
}

pub fn proxy_delete(d: &SiteSaga, s: &SagaSettings) -> ProxyDelete {
    ProxyDelete {
        site_id: d.site.site_id,
        host: d.fqdn(s),
    }
}

pub fn dns_delete(d: &SiteSaga, s: &SagaSettings) -> DnsDelete {
    DnsDelete {
        site_id: d.site.site_id,
        fqdn: d.fqdn(s),
        record_type: RecordType::A,
    }
}

pub fn destroy(d: &SiteSaga, _: &SagaSettings) -> ContainerDestroy {
    ContainerDestroy {
        site_id: d.site.site_id,
        vmid: Vmid(d.vmid),
        purge: true,
    }
}

/// The final backup's record id: the site's own, so a re-sent step names the same backup.
pub fn final_backup_id(site: &pvefleet_contracts::SiteId) -> uuid::Uuid {
    uuid::Uuid::from_u128(site.as_uuid().as_u128() ^ 0x0000_0000_0000_0000_00f1_0a1b_acc0_0000)
}

/// Whether the deprovisioning backs the container up first.
pub fn backs_up(d: &SiteSaga, s: &SagaSettings) -> bool {
    s.final_backup && d.final_backup && d.vmid != 0
}

pub fn final_backup(d: &SiteSaga, _: &SagaSettings) -> BackupCreate {
    BackupCreate {
        site_id: d.site.site_id,
        vmid: Vmid(d.vmid),
        backup_id: final_backup_id(&d.site.site_id),
        kind: BackupKind::Final,
        storage: None,
        node: d.node.clone(),
    }
}
