//! The `vnet.provision` saga: `vnet.ensure` (create the VNet when missing, apply SDN), then
//! `vnet.bind` (attach the container's interface on it). When a step fails, the compensation
//! removes the VNet (`vnet.remove`) only when this saga created it; a VNet that existed before
//! is left alone. The saga's id is the operation intake returned, and its end is written to
//! that operation (`net_operations`), so `GET /v1/operations/{id}` follows it. Each step's
//! command carries an operation id of its own, which its events come back with.

use async_trait::async_trait;
use pvefleet_contracts::messages::{
    VnetBind, VnetBound, VnetEnsure, VnetEnsured, VnetProvision, VnetRemove, VnetRemoved,
};
use pvefleet_contracts::{Message, StepError};
use pvefleet_core::bus::{Handled, HandlerError};
use pvefleet_core::config::SagaSettings;
use pvefleet_core::db::Sql;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::engine::{Exec, Kind, OnFailure, Recovery, Saga, SagaKind, State, StepDef, Table, Undo};

/// The VNet saga's own data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VnetSaga {
    /// The request.
    pub request: VnetProvision,
    /// The operations of the steps.
    pub ensure_op: Uuid,
    pub bind_op: Uuid,
    pub remove_op: Uuid,
    /// Whether this saga created the VNet (only then is it removed on failure).
    #[serde(default)]
    pub created: bool,
    /// The binding's event, once bound.
    #[serde(default)]
    pub bound: Option<Value>,
    /// The failing step's error as the operation shows it, and the nodes where SDN failed.
    #[serde(default)]
    pub error: Option<Value>,
    #[serde(default)]
    pub failed_nodes: Vec<String>,
}

fn ensure(d: &VnetSaga, _: &SagaSettings) -> VnetEnsure {
    VnetEnsure {
        operation_id: d.ensure_op,
        vnet: d.request.vnet.clone(),
        zone: d.request.zone.clone(),
        tag: d.request.tag,
    }
}

fn bind(d: &VnetSaga, _: &SagaSettings) -> VnetBind {
    VnetBind {
        operation_id: d.bind_op,
        vnet: d.request.vnet.clone(),
        vmid: d.request.vmid,
        iface: d.request.iface.clone(),
    }
}

fn remove(d: &VnetSaga, _: &SagaSettings) -> VnetRemove {
    VnetRemove {
        operation_id: d.remove_op,
        vnet: d.request.vnet.clone(),
    }
}

/// The VNet provisioning kind.
pub struct VnetProvisioning {
    table: Table<VnetSaga>,
}

impl VnetProvisioning {
    /// The kind, with its table.
    pub fn new() -> Self {
        let table = Table {
            forward: vec![
                StepDef::new::<VnetEnsure, VnetEnsured>("ensure", ensure)
                    .answers_on(|d| Some(d.ensure_op))
                    .on_done(|d, ev| d.created = ev.get("created").and_then(Value::as_bool).unwrap_or(false))
                    .undo(Undo::Step("remove"))
                    // It may have created the VNet before its apply failed.
                    .undone_even_when_failed(),
                StepDef::new::<VnetBind, VnetBound>("bind", bind)
                    .answers_on(|d| Some(d.bind_op))
                    .on_done(|d, ev| d.bound = Some(ev.clone()))
                    .undo(Undo::Nothing("a binding that failed left no interface behind")),
            ],
            compensations: vec![
                StepDef::new::<VnetRemove, VnetRemoved>("remove", remove)
                    .answers_on(|d| Some(d.remove_op))
                    .when(|d, _| d.created),
            ],
            recovery: Recovery::Backward,
        };
        Self { table }
    }

    /// The correlation ids its steps answer on.
    pub fn answers_on(d: &VnetSaga) -> [Uuid; 3] {
        [d.ensure_op, d.bind_op, d.remove_op]
    }
}

impl Default for VnetProvisioning {
    fn default() -> Self {
        Self::new()
    }
}

/// Ends the saga's operation.
async fn end_operation(db: &dyn Sql, id: Uuid, status: &str, d: &VnetSaga, result: &Value) -> Handled {
    let bound = d.bound.clone().unwrap_or(Value::Null);
    let index = bound.get("index").and_then(Value::as_i64).map(|i| i as i32);
    let pending: Vec<String> = serde_json::from_value(bound["pending"].clone()).unwrap_or_default();
    db.exec(
        "UPDATE net_operations SET status = $2, node = COALESCE($3, node), net_index = COALESCE($4, net_index),
             line = COALESCE($5, line), pending_keys = $6, failed_nodes = $7, error = $8, result = $9,
             updated_at = now(), finished_at = now()
         WHERE id = $1",
        &[
            &id,
            &status,
            &bound.get("node").and_then(Value::as_str),
            &index,
            &bound.get("line").and_then(Value::as_str),
            &pending,
            &d.failed_nodes,
            &d.error,
            result,
        ],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl SagaKind for VnetProvisioning {
    type Data = VnetSaga;

    fn kind(&self) -> Kind {
        Kind::VnetProvision
    }

    fn table(&self) -> &Table<VnetSaga> {
        &self.table
    }

    async fn completed(&self, x: &Exec<'_>, saga: &Saga<VnetSaga>) -> Handled {
        let d = &saga.data;
        let status = match d.bound.as_ref().and_then(|b| b.get("status")).and_then(Value::as_str) {
            Some("pending_reboot") => "pending_reboot",
            _ => "succeeded",
        };
        let result = json!({ "created_vnet": d.created, "saga": "completed" });
        end_operation(x.db, saga.id, status, d, &result).await?;
        tracing::info!(saga = %saga.id, vnet = %d.request.vnet, "VNet saga completed.");
        Ok(())
    }

    async fn failed(&self, x: &Exec<'_>, saga: &Saga<VnetSaga>, step: &str, _error: &StepError) -> Handled {
        let d = &saga.data;
        let result = if d.created {
            json!({ "created_vnet": true, "saga": "compensated",
                    "compensation": format!("vnet '{}' created by this saga was removed", d.request.vnet) })
        } else if step == VnetBind::TYPE {
            json!({ "created_vnet": false, "saga": "failed",
                    "compensation": "the VNet existed before this saga and is left alone" })
        } else {
            json!({ "created_vnet": false, "saga": "failed" })
        };
        end_operation(x.db, saga.id, "failed", d, &result).await
    }

    async fn stopped(&self, x: &Exec<'_>, saga: &Saga<VnetSaga>, state: State, detail: &Value) -> Handled {
        if state != State::CompensationFailed {
            return Ok(());
        }
        // Removing what it created failed: both errors are kept, for an operator.
        let mut d = saga.data.clone();
        let first = d.error.clone().unwrap_or(Value::Null);
        d.error = Some(
            json!({ "step": first["step"], "code": first["code"], "message": first["message"],
                               "compensation_error": detail["error"] }),
        );
        let result = json!({ "created_vnet": true, "saga": "compensation_failed" });
        end_operation(x.db, saga.id, "failed", &d, &result).await?;
        tracing::error!(saga = %saga.id, vnet = %d.request.vnet, "Removing the VNet this saga created failed; it needs an operator.");
        Ok(())
    }

    async fn step_failed(
        &self,
        x: &Exec<'_>,
        saga: &mut Saga<VnetSaga>,
        step: &str,
        error: &StepError,
        event: &Value,
    ) -> Result<OnFailure, HandlerError> {
        let d = &mut saga.data;
        d.failed_nodes = serde_json::from_value(event["nodes"].clone()).unwrap_or_default();
        d.error = Some(
            json!({ "step": event["kind"], "code": error.code, "message": error.message, "nodes": d.failed_nodes }),
        );
        // `vnet.ensure` may have created the VNet before its apply failed: its operation says.
        if step == "ensure" && !d.created {
            d.created =
                x.db.opt(
                    "SELECT COALESCE((result->>'created')::boolean, false) FROM net_operations WHERE id = $1",
                    &[&d.ensure_op],
                )
                .await?
                .is_some_and(|r| r.get::<_, bool>(0));
        }
        if d.created {
            tracing::warn!(saga = %saga.id, vnet = %d.request.vnet, step, "A step failed; removing the VNet this saga created.");
        }
        Ok(OnFailure::Recover)
    }
}
