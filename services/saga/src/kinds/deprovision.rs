//! The deprovisioning saga: `backup.create` (a final backup of an active site's container,
//! when `saga.final_backup`) → `ha.disable` (when HA) → `proxy.delete` → `dns.delete` (not for
//! provider `none`) → `container.destroy` (when a container was made) → release the leases →
//! `site.deprovisioned`. It recovers forward: a failed step is sent again, then the saga stops
//! for an operator, since going back would bring back what the user asked to remove.

use async_trait::async_trait;
use pvefleet_contracts::StepError;
use pvefleet_contracts::messages::{
    BackupCreated, ContainerDestroyed, DnsDeleted, HaDisabled, ProxyDeleted, SiteDeprovisioned,
};
use pvefleet_core::bus::{Handled, HandlerError};
use serde_json::Value;

use super::site::{self, SiteSaga};
use crate::engine::{Exec, Kind, OnFailure, Recovery, Saga, SagaKind, State, StepDef, Table, Undo};

/// The deprovisioning kind.
pub struct Deprovision {
    table: Table<SiteSaga>,
}

const FORWARD: Undo = Undo::Nothing("a removal recovers forward: it is sent again, never undone");

impl Deprovision {
    /// The kind, with its table.
    pub fn new() -> Self {
        use pvefleet_contracts::messages::{BackupCreate, ContainerDestroy, DnsDelete, HaDisable, ProxyDelete};
        let table = Table {
            forward: vec![
                // First, while the site still serves: a failed backup stops the removal for
                // an operator (retry, or abort the removal) before anything is taken away.
                StepDef::new::<BackupCreate, BackupCreated>("final_backup", site::final_backup)
                    .when(site::backs_up)
                    .undo(Undo::Nothing(
                        "a backup taken is kept: it is what the removal leaves behind",
                    )),
                StepDef::new::<HaDisable, HaDisabled>("ha_disable", site::ha_disable)
                    .when(site::ha)
                    .undo(FORWARD),
                StepDef::new::<ProxyDelete, ProxyDeleted>("proxy_delete", site::proxy_delete)
                    .when(site::proxy)
                    .undo(FORWARD),
                StepDef::new::<DnsDelete, DnsDeleted>("dns_delete", site::dns_delete)
                    .when(site::dns)
                    .undo(FORWARD),
                StepDef::new::<ContainerDestroy, ContainerDestroyed>("destroy", site::destroy)
                    .when(|d, _| d.vmid != 0)
                    .undo(FORWARD),
            ],
            compensations: Vec::new(),
            recovery: Recovery::Forward,
        };
        Self { table }
    }
}

impl Default for Deprovision {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl SagaKind for Deprovision {
    type Data = SiteSaga;

    fn kind(&self) -> Kind {
        Kind::Deprovision
    }

    fn table(&self) -> &Table<SiteSaga> {
        &self.table
    }

    async fn completed(&self, x: &Exec<'_>, saga: &Saga<SiteSaga>) -> Handled {
        let site = saga.data.site.site_id;
        x.db.exec("DELETE FROM leases WHERE site_id = $1", &[&site.as_uuid()])
            .await?;
        x.db.exec(
            "UPDATE sites SET state = 'deleted', updated_at = now() WHERE id = $1",
            &[&site.as_uuid()],
        )
        .await?;
        x.send(saga.id, &SiteDeprovisioned { site_id: site }).await
    }

    async fn failed(&self, _x: &Exec<'_>, saga: &Saga<SiteSaga>, step: &str, error: &StepError) -> Handled {
        // Forward recovery never compensates, so it never ends failed; say so if it does.
        tracing::error!(saga = %saga.id, step, error = %error.message, "A deprovisioning ended failed, which it should not.");
        Ok(())
    }

    /// A final backup of a container that is already gone (removed by hand, or by a
    /// half-done earlier removal) has nothing to back up: the removal goes on.
    async fn step_failed(
        &self,
        _x: &Exec<'_>,
        saga: &mut Saga<SiteSaga>,
        step: &str,
        error: &StepError,
        _event: &Value,
    ) -> Result<OnFailure, HandlerError> {
        if step == "final_backup" && error.code == "container.missing" {
            tracing::warn!(saga = %saga.id, vmid = saga.data.vmid, "The container is gone: no final backup to take.");
            return Ok(OnFailure::Skip);
        }
        Ok(OnFailure::Recover)
    }

    async fn stopped(&self, x: &Exec<'_>, saga: &Saga<SiteSaga>, state: State, detail: &Value) -> Handled {
        let site_state = if state == State::CompensationFailed {
            "failed"
        } else {
            "deprovisioning"
        };
        x.db.exec(
            "UPDATE sites SET state = $2, error = $3, updated_at = now() WHERE id = $1",
            &[&saga.data.site.site_id.as_uuid(), &site_state, detail],
        )
        .await?;
        Ok(())
    }
}
