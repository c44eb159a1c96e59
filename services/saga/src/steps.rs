//! The steps of the sagas: each a command, the events that end it, and its compensation.

use crate::legacy::Outcome;
use pvefleet_contracts::Vmid;
use pvefleet_contracts::messages::{
    AppInstall, ContainerCreate, ContainerDestroy, ContainerSnapshot, ContainerStart, DnsDelete, DnsUpsert, HaDisable,
    HaEnable, NetSpec, ProxyDelete, ProxyUpsert, RecordType,
};
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::config::SagaSettings;
use serde::{Deserialize, Serialize};

use crate::SagaData;

/// A saga step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// `container.create`.
    Create,
    /// `container.start`.
    Start,
    /// `app.install`.
    Install,
    /// `container.snapshot` (`initial`).
    Snapshot,
    /// `dns.upsert`.
    DnsUpsert,
    /// `proxy.upsert`.
    ProxyUpsert,
    /// `ha.enable`.
    HaEnable,
    /// `ha.disable`.
    HaDisable,
    /// `proxy.delete`.
    ProxyDelete,
    /// `dns.delete`.
    DnsDelete,
    /// `container.destroy`.
    Destroy,
}

impl Step {
    /// The command type.
    pub fn command(self) -> &'static str {
        match self {
            Step::Create => "container.create",
            Step::Start => "container.start",
            Step::Install => "app.install",
            Step::Snapshot => "container.snapshot",
            Step::DnsUpsert => "dns.upsert",
            Step::ProxyUpsert => "proxy.upsert",
            Step::HaEnable => "ha.enable",
            Step::HaDisable => "ha.disable",
            Step::ProxyDelete => "proxy.delete",
            Step::DnsDelete => "dns.delete",
            Step::Destroy => "container.destroy",
        }
    }

    /// The step an event ends, and whether it succeeded.
    pub fn of_event(event: &str) -> Option<(Step, bool)> {
        Some(match event {
            "container.created" => (Step::Create, true),
            "container.create_failed" => (Step::Create, false),
            "container.started" => (Step::Start, true),
            "container.start_failed" => (Step::Start, false),
            "app.installed" => (Step::Install, true),
            "app.install_failed" => (Step::Install, false),
            "container.snapshotted" => (Step::Snapshot, true),
            "container.snapshot_failed" => (Step::Snapshot, false),
            "dns.upserted" => (Step::DnsUpsert, true),
            "dns.upsert_failed" => (Step::DnsUpsert, false),
            "proxy.upserted" => (Step::ProxyUpsert, true),
            "proxy.upsert_failed" => (Step::ProxyUpsert, false),
            "ha.enabled" => (Step::HaEnable, true),
            "ha.enable_failed" => (Step::HaEnable, false),
            "ha.disabled" => (Step::HaDisable, true),
            "ha.disable_failed" => (Step::HaDisable, false),
            "proxy.deleted" => (Step::ProxyDelete, true),
            "proxy.delete_failed" => (Step::ProxyDelete, false),
            "dns.deleted" => (Step::DnsDelete, true),
            "dns.delete_failed" => (Step::DnsDelete, false),
            "container.destroyed" => (Step::Destroy, true),
            "container.destroy_failed" => (Step::Destroy, false),
            _ => return None,
        })
    }

    /// What undoes a completed forward step. Destroying the container undoes start, install
    /// and snapshot too.
    pub fn compensation(self) -> Option<Step> {
        match self {
            Step::Create => Some(Step::Destroy),
            Step::DnsUpsert => Some(Step::DnsDelete),
            Step::ProxyUpsert => Some(Step::ProxyDelete),
            Step::HaEnable => Some(Step::HaDisable),
            _ => None,
        }
    }
}

/// Queues the command of `step` for saga `saga`.
pub(crate) async fn send(
    db: &dyn pvefleet_core::db::Sql,
    origin: &Origin,
    data: &SagaData,
    step: Step,
    s: &SagaSettings,
) -> Result<(), Outcome> {
    let site = data.site.site_id;
    let vmid = Vmid(data.vmid);
    let fqdn = format!("{}.{}", data.site.subdomain, s.domain);
    let address = data.ip.split('/').next().unwrap_or_default().to_string();
    match step {
        Step::Create => {
            let plan = data.site.plan.as_ref().and_then(|p| s.plans.get(p));
            let cmd = ContainerCreate {
                site_id: site,
                vmid,
                node: data.site.node.clone().unwrap_or_default(),
                hostname: data.site.subdomain.clone(),
                template: data.site.template.clone(),
                storage: s.storage.clone(),
                cores: data.site.cores.or(plan.map(|p| p.cores)).unwrap_or(1),
                memory_mb: data.site.memory_mb.or(plan.map(|p| p.memory_mb)).unwrap_or(1024),
                swap_mb: s.swap_mb,
                disk_gb: data.site.disk_gb.or(plan.map(|p| p.disk_gb)).unwrap_or(8),
                net: NetSpec {
                    bridge: s.bridge.clone(),
                    ip: data.ip.clone(),
                    gw: Some(s.gateway.clone()),
                    hwaddr: None,
                    tag: None,
                },
                unprivileged: true,
                tags: vec![format!("site-{}", data.site.subdomain)],
            };
            crate::send_from(db, origin, &cmd).await
        }
        Step::Start => {
            let cmd = ContainerStart {
                site_id: site,
                vmid,
                node: data.node.clone(),
            };
            crate::send_from(db, origin, &cmd).await
        }
        Step::Install => {
            let app = data.site.app.as_str();
            let cmd = AppInstall {
                site_id: site,
                vmid,
                app: app.into(),
                site_url: format!("https://{fqdn}"),
                title: data.site.subdomain.clone(),
                admin_email: format!("{}@{}", data.site.owner, s.domain),
            };
            crate::send_from(db, origin, &cmd).await
        }
        Step::Snapshot => {
            let cmd = ContainerSnapshot {
                site_id: site,
                vmid,
                name: "initial".into(),
                description: Some(format!("pvefleet: {} as provisioned", data.site.subdomain)),
                node: data.node.clone(),
            };
            crate::send_from(db, origin, &cmd).await
        }
        Step::DnsUpsert => {
            let cmd = DnsUpsert {
                site_id: site,
                fqdn,
                record_type: RecordType::A,
                content: address,
                ttl: None,
            };
            crate::send_from(db, origin, &cmd).await
        }
        Step::ProxyUpsert => {
            let cmd = ProxyUpsert {
                site_id: site,
                host: fqdn,
                upstream: format!("{address}:80"),
            };
            crate::send_from(db, origin, &cmd).await
        }
        Step::HaEnable => {
            crate::send_from(
                db,
                origin,
                &HaEnable {
                    site_id: site,
                    vmid,
                    group: None,
                },
            )
            .await
        }
        Step::HaDisable => crate::send_from(db, origin, &HaDisable { site_id: site, vmid }).await,
        Step::ProxyDelete => {
            crate::send_from(
                db,
                origin,
                &ProxyDelete {
                    site_id: site,
                    host: fqdn,
                },
            )
            .await
        }
        Step::DnsDelete => {
            crate::send_from(
                db,
                origin,
                &DnsDelete {
                    site_id: site,
                    fqdn,
                    record_type: RecordType::A,
                },
            )
            .await
        }
        Step::Destroy => {
            crate::send_from(
                db,
                origin,
                &ContainerDestroy {
                    site_id: site,
                    vmid,
                    purge: true,
                },
            )
            .await
        }
    }
}
