//! The restore saga: a site put back as one of its backups holds it.
//!
//! A site whose container exists (`active`): `backup.create` (a pre-restore backup) →
//! `ha.disable` (when HA) → `backup.restore` (stop, overwrite, tags back) → `container.start`
//! → `app.check` (not for `app: none`) → `ha.enable` (when HA) → `site.restored`. A failed
//! step puts the site back as it was: the pre-restore backup is restored over the container
//! and started, and HA is enabled again.
//!
//! A destroyed site (`deleted`): a vmid and an address are leased again, then
//! `backup.restore` into the new vmid (its first interface given the new address) →
//! `container.start` → `app.check` → `dns.upsert` and `proxy.upsert` → `ha.enable` →
//! `site.restored`. A failed step destroys what was made, takes the record and the route
//! away, and the site stays deleted, its leases released.
//!
//! A clone (`site restore --clone`): a new site, recorded `requested` with its own subdomain,
//! is made the same way from another site's backup, beside it: new MAC addresses, its own
//! hostname, tag, address, DNS record and route. A failed step leaves the new site `failed`,
//! holding nothing; the site it was cloned from is never touched.

use async_trait::async_trait;
use pvefleet_contracts::messages::{
    AppCheck, AppChecked, BackupCreate, BackupCreated, BackupKind, BackupRestore, BackupRestored, ContainerDestroy,
    ContainerDestroyed, ContainerStart, ContainerStarted, DnsDelete, DnsDeleted, DnsUpsert, DnsUpserted, HaDisable,
    HaDisabled, HaEnable, HaEnabled, NetSpec, ProxyDelete, ProxyDeleted, ProxyUpsert, ProxyUpserted, SiteRestoreFailed,
    SiteRestored,
};
use pvefleet_contracts::{SiteId, StepError, Vmid};
use pvefleet_core::bus::Handled;
use pvefleet_core::config::SagaSettings;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::site::{self, SiteSaga};
use crate::engine::{Exec, Kind, Recovery, Saga, SagaKind, State, StepDef, Table, Undo};

/// The fleet's own tag, which the provisioner gives every container it makes.
const FLEET_TAG: &str = "pvefleet";

/// A restore saga's data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreSaga {
    /// The site, as the site sagas carry it (its request, vmid, address, node).
    #[serde(flatten)]
    pub site: SiteSaga,
    /// The backup restored.
    pub volid: String,
    /// The node that holds the backup (where a destroyed site's container is made).
    pub backup_node: Option<String>,
    /// The pre-restore backup's record.
    pub pre_restore_id: Uuid,
    /// The pre-restore backup's volume, once written: what a failed restore puts back.
    #[serde(default)]
    pub previous: Option<String>,
    /// The site had been destroyed: its container, leases, record and route are made anew.
    pub was_deleted: bool,
    /// A clone: the site is new, made (like a destroyed one) from this other site's backup, in
    /// a container of its own with new MAC addresses and its own hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_of: Option<SiteId>,
}

fn existing(d: &RestoreSaga, _: &SagaSettings) -> bool {
    !d.was_deleted
}

fn deleted(d: &RestoreSaga, _: &SagaSettings) -> bool {
    d.was_deleted
}

fn ha_existing(d: &RestoreSaga, _: &SagaSettings) -> bool {
    !d.was_deleted && d.site.site.ha
}

fn ha(d: &RestoreSaga, _: &SagaSettings) -> bool {
    d.site.site.ha
}

fn dns(d: &RestoreSaga, s: &SagaSettings) -> bool {
    d.was_deleted && site::dns(&d.site, s)
}

fn proxy(d: &RestoreSaga, s: &SagaSettings) -> bool {
    d.was_deleted && site::proxy(&d.site, s)
}

fn tags(d: &RestoreSaga) -> Vec<String> {
    vec![FLEET_TAG.to_string(), format!("site-{}", d.site.site.subdomain)]
}

fn pre_restore(d: &RestoreSaga, _: &SagaSettings) -> BackupCreate {
    BackupCreate {
        site_id: d.site.site.site_id,
        vmid: Vmid(d.site.vmid),
        backup_id: d.pre_restore_id,
        kind: BackupKind::PreRestore,
        storage: None,
        node: d.site.node.clone(),
    }
}

fn take_previous(d: &mut RestoreSaga, event: &Value) {
    d.previous = event.get("volid").and_then(Value::as_str).map(str::to_string);
}

fn restore(d: &RestoreSaga, s: &SagaSettings) -> BackupRestore {
    BackupRestore {
        site_id: d.site.site.site_id,
        vmid: Vmid(d.site.vmid),
        volid: d.volid.clone(),
        restore_id: d.pre_restore_id,
        node: d.backup_node.clone().or_else(|| d.site.node.clone()),
        storage: d.was_deleted.then(|| s.storage.clone()),
        net: d.was_deleted.then(|| NetSpec {
            bridge: s.bridge.clone(),
            ip: d.site.ip.clone(),
            gw: Some(s.gateway.clone()),
            hwaddr: None,
            tag: None,
        }),
        tags: tags(d),
        start: false,
        unique: d.clone_of.is_some(),
        hostname: d.clone_of.is_some().then(|| d.site.site.subdomain.clone()),
    }
}

/// The compensation of an in-place restore: the pre-restore backup over the container,
/// started again (an active site was running).
fn put_back(d: &RestoreSaga, _: &SagaSettings) -> BackupRestore {
    BackupRestore {
        site_id: d.site.site.site_id,
        vmid: Vmid(d.site.vmid),
        volid: d.previous.clone().unwrap_or_default(),
        restore_id: d.pre_restore_id,
        node: d.site.node.clone(),
        storage: None,
        net: None,
        tags: tags(d),
        start: true,
        unique: false,
        hostname: None,
    }
}

/// A `backup.restored` of the restore itself (not of the put-back, which answers the same).
fn restored_target(d: &RestoreSaga, event: &Value) -> bool {
    event.get("volid").and_then(Value::as_str) == Some(d.volid.as_str())
}

fn take_node(d: &mut RestoreSaga, event: &Value) {
    site::take_node(&mut d.site, event);
}

fn start(d: &RestoreSaga, s: &SagaSettings) -> ContainerStart {
    site::start(&d.site, s)
}

fn app_check(d: &RestoreSaga, _: &SagaSettings) -> AppCheck {
    AppCheck {
        site_id: d.site.site.site_id,
        vmid: Vmid(d.site.vmid),
        app: d.site.site.app.as_str().to_string(),
    }
}

fn ha_disable(d: &RestoreSaga, s: &SagaSettings) -> HaDisable {
    site::ha_disable(&d.site, s)
}

fn ha_enable(d: &RestoreSaga, s: &SagaSettings) -> HaEnable {
    site::ha_enable(&d.site, s)
}

fn dns_upsert(d: &RestoreSaga, s: &SagaSettings) -> DnsUpsert {
    site::dns_upsert(&d.site, s)
}

fn dns_delete(d: &RestoreSaga, s: &SagaSettings) -> DnsDelete {
    site::dns_delete(&d.site, s)
}

fn proxy_upsert(d: &RestoreSaga, s: &SagaSettings) -> ProxyUpsert {
    site::proxy_upsert(&d.site, s)
}

fn proxy_delete(d: &RestoreSaga, s: &SagaSettings) -> ProxyDelete {
    site::proxy_delete(&d.site, s)
}

fn destroy(d: &RestoreSaga, s: &SagaSettings) -> ContainerDestroy {
    site::destroy(&d.site, s)
}

/// The restore kind.
pub struct Restore {
    table: Table<RestoreSaga>,
}

impl Restore {
    /// The kind, with its table.
    pub fn new() -> Self {
        let table = Table {
            forward: vec![
                StepDef::new::<BackupCreate, BackupCreated>("pre_restore", pre_restore)
                    .when(existing)
                    .undo(Undo::Nothing(
                        "the pre-restore backup is kept: it is what a failed restore puts back",
                    ))
                    .on_done(take_previous),
                StepDef::new::<HaDisable, HaDisabled>("ha_disable", ha_disable)
                    .when(ha_existing)
                    .undo(Undo::Step("ha_reenable")),
                // Over the site's own container: a failed restore may have overwritten part of
                // it, so the pre-restore backup goes back even then.
                StepDef::new::<BackupRestore, BackupRestored>("restore", restore)
                    .when(existing)
                    .undo(Undo::Step("put_back"))
                    .undone_even_when_failed()
                    .owns(restored_target)
                    .on_done(take_node),
                // Into a new container for a destroyed site: a failed one is destroyed.
                StepDef::new::<BackupRestore, BackupRestored>("restore_new", restore)
                    .when(deleted)
                    .undo(Undo::Step("destroy"))
                    .undone_even_when_failed()
                    .owns(restored_target)
                    .on_done(take_node),
                StepDef::new::<ContainerStart, ContainerStarted>("start", start)
                    .undo(Undo::CoveredBy("restore"))
                    .on_done(take_node),
                StepDef::new::<AppCheck, AppChecked>("app_check", app_check)
                    .when(|d, _| !d.site.site.app.is_none())
                    .undo(Undo::Nothing("a check changes nothing")),
                StepDef::new::<DnsUpsert, DnsUpserted>("dns_upsert", dns_upsert)
                    .when(dns)
                    .undo(Undo::Step("dns_delete")),
                StepDef::new::<ProxyUpsert, ProxyUpserted>("proxy_upsert", proxy_upsert)
                    .when(proxy)
                    .undo(Undo::Step("proxy_delete")),
                StepDef::new::<HaEnable, HaEnabled>("ha_enable", ha_enable)
                    .when(ha)
                    .undo(Undo::Nothing("the last step: nothing after it can fail")),
            ],
            compensations: vec![
                StepDef::new::<HaEnable, HaEnabled>("ha_reenable", ha_enable).when(ha_existing),
                StepDef::new::<ProxyDelete, ProxyDeleted>("proxy_delete", proxy_delete).when(proxy),
                StepDef::new::<DnsDelete, DnsDeleted>("dns_delete", dns_delete).when(dns),
                StepDef::new::<BackupRestore, BackupRestored>("put_back", put_back)
                    .when(|d, _| !d.was_deleted && d.previous.is_some()),
                StepDef::new::<ContainerDestroy, ContainerDestroyed>("destroy", destroy).when(deleted),
            ],
            recovery: Recovery::Backward,
        };
        Self { table }
    }
}

impl Default for Restore {
    fn default() -> Self {
        Self::new()
    }
}

fn site_of(saga: &Saga<RestoreSaga>) -> Uuid {
    saga.data.site.site.site_id.as_uuid()
}

#[async_trait]
impl SagaKind for Restore {
    type Data = RestoreSaga;

    fn kind(&self) -> Kind {
        Kind::Restore
    }

    fn table(&self) -> &Table<RestoreSaga> {
        &self.table
    }

    async fn completed(&self, x: &Exec<'_>, saga: &Saga<RestoreSaga>) -> Handled {
        let d = &saga.data;
        x.db.exec(
            "UPDATE sites SET state = 'active', node = $2, vmid = $3, ip = $4, error = NULL, updated_at = now()
             WHERE id = $1",
            &[&site_of(saga), &d.site.node, &(d.site.vmid as i32), &d.site.ip],
        )
        .await?;
        let msg = SiteRestored {
            site_id: d.site.site.site_id,
            vmid: Vmid(d.site.vmid),
            node: d.site.node.clone().unwrap_or_default(),
            volid: d.volid.clone(),
        };
        x.send(saga.id, &msg).await
    }

    async fn failed(&self, x: &Exec<'_>, saga: &Saga<RestoreSaga>, step: &str, error: &StepError) -> Handled {
        // Put back: an active site is active again (its container as before the restore); a
        // destroyed one is deleted again, holding nothing.
        let site = site_of(saga);
        let state = if saga.data.was_deleted {
            x.db.exec("DELETE FROM leases WHERE site_id = $1", &[&site]).await?;
            // A clone's site never served: it ends failed (and can be deleted), not deleted.
            if saga.data.clone_of.is_some() {
                "failed"
            } else {
                "deleted"
            }
        } else {
            "active"
        };
        x.db.exec(
            "UPDATE sites SET state = $2, updated_at = now() WHERE id = $1",
            &[&site, &state],
        )
        .await?;
        tracing::warn!(saga = %saga.id, %site, step, error = %error.message, "A restore failed; the site is as it was.");
        let msg = SiteRestoreFailed {
            site_id: saga.data.site.site.site_id,
            failed_step: step.to_string(),
            error: error.clone(),
        };
        x.send(saga.id, &msg).await
    }

    async fn stopped(&self, x: &Exec<'_>, saga: &Saga<RestoreSaga>, state: State, detail: &Value) -> Handled {
        let site_state = if state == State::CompensationFailed {
            "failed"
        } else {
            "restoring"
        };
        x.db.exec(
            "UPDATE sites SET state = $2, error = $3, updated_at = now() WHERE id = $1",
            &[&site_of(saga), &site_state, &json!({ "restore": detail })],
        )
        .await?;
        Ok(())
    }
}
