//! The provisioning saga: lease a vmid and an address → `container.create` →
//! `container.start` → `app.install` (not for `app: none`) → `container.snapshot` (`initial`)
//! → `dns.upsert` and `proxy.upsert` (not for provider `none`) → `ha.enable` (when asked) →
//! `site.provisioned`. A failed step compensates the completed ones in reverse (`ha.disable`,
//! `proxy.delete`, `dns.delete`, `container.destroy`), then the leases are released and the
//! site fails with `site.provision_failed`.

use async_trait::async_trait;
use pvefleet_contracts::messages::{
    AppInstalled, ContainerCreated, ContainerDestroyed, ContainerSnapshotted, ContainerStarted, DnsDeleted,
    DnsUpserted, HaDisabled, HaEnabled, ProxyDeleted, ProxyUpserted, SiteProvisionFailed, SiteProvisioned,
};
use pvefleet_contracts::{StepError, Vmid};
use pvefleet_core::bus::{Handled, HandlerError};
use serde_json::{Value, json};

use super::site::{self, SiteSaga};
use crate::engine::{Exec, Kind, OnFailure, Recovery, Saga, SagaKind, State, StepDef, Table, Undo};
use crate::leases;

/// How many vmids a provisioning saga gives up, as found in use in PVE, before it fails.
const VMID_RELEASES: usize = 8;

/// The provisioning kind.
pub struct Provision {
    table: Table<SiteSaga>,
}

impl Provision {
    /// The kind, with its table.
    pub fn new() -> Self {
        use pvefleet_contracts::messages::{
            AppInstall, ContainerCreate, ContainerDestroy, ContainerSnapshot, ContainerStart, DnsDelete, DnsUpsert,
            HaDisable, HaEnable, ProxyDelete, ProxyUpsert,
        };
        let table = Table {
            forward: vec![
                StepDef::new::<ContainerCreate, ContainerCreated>("create", site::create)
                    .undo(Undo::Step("destroy"))
                    .on_done(site::take_node),
                StepDef::new::<ContainerStart, ContainerStarted>("start", site::start)
                    .undo(Undo::CoveredBy("create"))
                    .on_done(site::take_node),
                StepDef::new::<AppInstall, AppInstalled>("install", site::install)
                    .when(|d, _| !d.site.app.is_none())
                    .undo(Undo::CoveredBy("create")),
                StepDef::new::<ContainerSnapshot, ContainerSnapshotted>("snapshot", site::snapshot)
                    .undo(Undo::CoveredBy("create")),
                StepDef::new::<DnsUpsert, DnsUpserted>("dns_upsert", site::dns_upsert)
                    .when(site::dns)
                    .undo(Undo::Step("dns_delete")),
                StepDef::new::<ProxyUpsert, ProxyUpserted>("proxy_upsert", site::proxy_upsert)
                    .when(site::proxy)
                    .undo(Undo::Step("proxy_delete")),
                StepDef::new::<HaEnable, HaEnabled>("ha_enable", site::ha_enable)
                    .when(site::ha)
                    .undo(Undo::Step("ha_disable")),
            ],
            compensations: vec![
                StepDef::new::<HaDisable, HaDisabled>("ha_disable", site::ha_disable),
                StepDef::new::<ProxyDelete, ProxyDeleted>("proxy_delete", site::proxy_delete),
                StepDef::new::<DnsDelete, DnsDeleted>("dns_delete", site::dns_delete),
                StepDef::new::<ContainerDestroy, ContainerDestroyed>("destroy", site::destroy),
            ],
            recovery: Recovery::Backward,
        };
        Self { table }
    }
}

impl Default for Provision {
    fn default() -> Self {
        Self::new()
    }
}

fn site_of(saga: &Saga<SiteSaga>) -> uuid::Uuid {
    saga.data.site.site_id.as_uuid()
}

#[async_trait]
impl SagaKind for Provision {
    type Data = SiteSaga;

    fn kind(&self) -> Kind {
        Kind::Provision
    }

    fn table(&self) -> &Table<SiteSaga> {
        &self.table
    }

    async fn completed(&self, x: &Exec<'_>, saga: &Saga<SiteSaga>) -> Handled {
        let d = &saga.data;
        x.db.exec(
            "UPDATE sites SET state = 'active', node = $2, error = NULL, updated_at = now() WHERE id = $1",
            &[&site_of(saga), &d.node],
        )
        .await?;
        let fqdn = (x.settings.dns_provider != "none").then(|| format!("{}.{}", d.site.subdomain, x.settings.domain));
        let msg = SiteProvisioned {
            site_id: d.site.site_id,
            vmid: Vmid(d.vmid),
            node: d.node.clone().unwrap_or_default(),
            fqdn,
        };
        x.send(saga.id, &msg).await
    }

    async fn failed(&self, x: &Exec<'_>, saga: &Saga<SiteSaga>, step: &str, error: &StepError) -> Handled {
        // Compensated: the leases go back and the site fails with the step and PVE's message.
        let site = site_of(saga);
        x.db.exec("DELETE FROM leases WHERE site_id = $1", &[&site]).await?;
        x.db.exec(
            "UPDATE sites SET state = 'failed', error = $2, updated_at = now() WHERE id = $1",
            &[&site, &json!({ "step": step, "error": error })],
        )
        .await?;
        let msg = SiteProvisionFailed {
            site_id: saga.data.site.site_id,
            failed_step: step.to_string(),
            error: error.clone(),
        };
        x.send(saga.id, &msg).await
    }

    async fn stopped(&self, x: &Exec<'_>, saga: &Saga<SiteSaga>, state: State, detail: &Value) -> Handled {
        // A site being compensated has failed; one being built keeps its state, with the error.
        let site_state = if state == State::CompensationFailed {
            "failed"
        } else {
            "provisioning"
        };
        x.db.exec(
            "UPDATE sites SET state = $2, error = $3, updated_at = now() WHERE id = $1",
            &[&site_of(saga), &site_state, detail],
        )
        .await?;
        Ok(())
    }

    /// The site is being, or has been, removed: a late copy of a provisioning step must not
    /// bring back what the removal takes away.
    async fn withdrawn(&self, x: &Exec<'_>, saga: &Saga<SiteSaga>) -> Result<bool, HandlerError> {
        let row =
            x.db.opt("SELECT state FROM sites WHERE id = $1", &[&site_of(saga)])
                .await?;
        Ok(row.is_none_or(|r| matches!(r.get::<_, &str>(0), "deprovisioning" | "deleted")))
    }

    /// The cross-check of a vmid lease against PVE, at the moment it counts: the leased vmid
    /// is used by a guest that is not this site's. It is kept as a lease held outside the
    /// fleet, so no other site is given it, and the create goes again with the next free vmid.
    async fn step_failed(
        &self,
        x: &Exec<'_>,
        saga: &mut Saga<SiteSaga>,
        step: &str,
        error: &StepError,
        _event: &Value,
    ) -> Result<OnFailure, HandlerError> {
        if step != "create" || error.code != "vmid.taken" || saga.data.vmids_taken.len() >= VMID_RELEASES {
            return Ok(OnFailure::Recover);
        }
        let site = site_of(saga);
        x.db.exec(
            "UPDATE leases SET site_id = NULL, holder = $2 WHERE kind = 'vmid' AND value = $1",
            &[&saga.data.vmid.to_string(), &error.message],
        )
        .await?;
        let vmid = leases::lease_vmid(x.db, x.settings, site).await?;
        tracing::warn!(saga = %saga.id, taken = saga.data.vmid, vmid, reason = %error.message, "The leased vmid is in use in PVE; leased another.");
        saga.data.vmids_taken.push(saga.data.vmid);
        saga.data.vmid = vmid;
        x.db.exec(
            "UPDATE sites SET vmid = $2, updated_at = now() WHERE id = $1",
            &[&site, &(vmid as i32)],
        )
        .await?;
        Ok(OnFailure::Resend)
    }
}
