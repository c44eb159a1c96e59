//! The `vnet.provision` saga: `vnet.ensure` (create the VNet when missing, apply SDN), then
//! `vnet.bind` (attach the container's interface on it). When the binding fails, the
//! compensation deletes the VNet only when this saga created it (`vnet.remove`); a VNet that
//! existed before is left alone. The saga's id is the operation intake returned, and its end
//! is written to that operation (`net_operations`), so `GET /v1/operations/{id}` follows it.
//!
//! States: `ensuring` → `binding` → `completed`; or `failed` (nothing to undo), or
//! `compensating` → `compensated` | `compensation_failed`. Each step's command carries its
//! own operation id, kept on the saga, and each event finds the saga by it.

use crate::legacy::Outcome;
use async_trait::async_trait;
use pvefleet_contracts::messages::{
    NetOperationFailed, VnetBind, VnetBound, VnetEnsure, VnetEnsured, VnetProvision, VnetRemove, VnetRemoved,
};
use pvefleet_core::bus::{Context, Handled, Handler};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{Coordinator, Db, db, origin_of, retry_db, send_from};

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(o) => return o,
        }
    };
}

/// A saga row, found by one of its step operations.
struct Found {
    id: Uuid,
    state: String,
    created: bool,
    request: VnetProvision,
    remove_op: Uuid,
    bind_op: Uuid,
    ensure_op: Uuid,
    error: Option<Value>,
}

async fn find(db: Db<'_>, step_op: Uuid) -> Result<Option<Found>, Outcome> {
    let row = db
        .opt(
            "SELECT id, state, created, request, ensure_op, bind_op, remove_op, error FROM net_sagas
             WHERE ensure_op = $1 OR bind_op = $1 OR remove_op = $1 FOR UPDATE",
            &[&step_op],
        )
        .await
        .map_err(retry_db)?;
    let Some(row) = row else { return Ok(None) };
    let Ok(request) = serde_json::from_value::<VnetProvision>(row.get(3)) else {
        return Ok(None);
    };
    Ok(Some(Found {
        id: row.get(0),
        state: row.get(1),
        created: row.get(2),
        request,
        ensure_op: row.get(4),
        bind_op: row.get(5),
        remove_op: row.get(6),
        error: row.get(7),
    }))
}

async fn set_state(
    db: Db<'_>,
    id: Uuid,
    state: &str,
    created: Option<bool>,
    error: Option<&Value>,
) -> Result<(), Outcome> {
    db.exec(
        "UPDATE net_sagas SET state = $2, created = COALESCE($3, created), error = COALESCE($4, error), updated_at = now()
         WHERE id = $1",
        &[&id, &state, &created, &error],
    )
    .await
    .map_err(retry_db)?;
    Ok(())
}

/// Ends the saga's operation.
#[allow(clippy::too_many_arguments)]
async fn end_operation(
    db: Db<'_>,
    id: Uuid,
    status: &str,
    node: Option<&str>,
    index: Option<i32>,
    line: Option<&str>,
    pending: &[String],
    failed_nodes: &[String],
    error: Option<&Value>,
    result: &Value,
) -> Result<(), Outcome> {
    db.exec(
        "UPDATE net_operations SET status = $2, node = COALESCE($3, node), net_index = COALESCE($4, net_index),
             line = COALESCE($5, line), pending_keys = $6, failed_nodes = $7, error = $8, result = $9,
             updated_at = now(), finished_at = now()
         WHERE id = $1",
        &[
            &id,
            &status,
            &node,
            &index,
            &line,
            &pending,
            &failed_nodes,
            &error,
            result,
        ],
    )
    .await
    .map_err(retry_db)?;
    Ok(())
}

impl Found {
    /// The operation of the step a saga in `state` waits for.
    fn step_op(&self, state: &str) -> Option<Uuid> {
        match state {
            "ensuring" => Some(self.ensure_op),
            "binding" => Some(self.bind_op),
            "compensating" => Some(self.remove_op),
            _ => None,
        }
    }
}

/// The saga, locked, when it waits for the step whose operation is `op`; `None` for any other
/// event (an old copy, a redelivery, or no saga's step at all).
async fn waiting(db: Db<'_>, op: Uuid) -> Result<Option<Found>, Outcome> {
    Ok(find(db, op).await?.filter(|s| s.step_op(&s.state) == Some(op)))
}

/// Ends the saga in `state` and its operation `failed`.
async fn end_failed(
    db: Db<'_>,
    s: &Found,
    state: &str,
    error: &Value,
    result: &Value,
    nodes: &[String],
) -> Result<(), Outcome> {
    set_state(db, s.id, state, None, Some(error)).await?;
    end_operation(db, s.id, "failed", None, None, None, &[], nodes, Some(error), result).await
}

#[async_trait]
impl Handler<VnetProvision> for Coordinator {
    async fn handle(&self, cmd: VnetProvision, ctx: &Context<'_>) -> Handled {
        let outcome: Outcome = async {
            let db = tri!(db(ctx));
            let id = cmd.operation_id;
            let (ensure_op, bind_op, remove_op) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
            let request = serde_json::to_value(&cmd).unwrap_or(Value::Null);
            let inserted = tri!(
                db.exec(
                    "INSERT INTO net_sagas (id, vnet, vmid, state, ensure_op, bind_op, remove_op, request)
                 VALUES ($1, $2, $3, 'ensuring', $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
                    &[
                        &id,
                        &cmd.vnet,
                        &(cmd.vmid.0 as i32),
                        &ensure_op,
                        &bind_op,
                        &remove_op,
                        &request
                    ],
                )
                .await
                .map_err(retry_db)
            );
            if inserted == 0 {
                return Outcome::Ok;
            }
            // Published directly (not through intake): the operation is recorded here.
            tri!(
            db.exec(
                "INSERT INTO net_operations (id, kind, vmid, vnet, request) VALUES ($1, 'vnet.provision', $2, $3, $4)
                 ON CONFLICT (id) DO NOTHING",
                &[&id, &(cmd.vmid.0 as i32), &cmd.vnet, &request],
            )
            .await
            .map_err(retry_db)
        );
            tri!(
            db.exec(
                "UPDATE net_operations SET status = 'running', updated_at = now() WHERE id = $1 AND status = 'pending'",
                &[&id],
            )
            .await
            .map_err(retry_db)
        );
            let ensure = VnetEnsure {
                operation_id: ensure_op,
                vnet: cmd.vnet.clone(),
                zone: cmd.zone.clone(),
                tag: cmd.tag,
            };
            tri!(send_from(db, &origin_of(ctx, id), &ensure).await);
            tracing::info!(saga = %id, vnet = %cmd.vnet, vmid = cmd.vmid.0, "VNet saga started: ensuring the VNet.");
            Outcome::Ok
        }
        .await;
        outcome.into()
    }
}

#[async_trait]
impl Handler<VnetEnsured> for Coordinator {
    async fn handle(&self, ev: VnetEnsured, ctx: &Context<'_>) -> Handled {
        let outcome: Outcome = async {
            let db = tri!(db(ctx));
            let Some(s) = tri!(waiting(db, ev.operation_id).await).filter(|s| s.state == "ensuring") else {
                return Outcome::Ok;
            };
            tri!(set_state(db, s.id, "binding", Some(ev.created), None).await);
            let bind = VnetBind {
                operation_id: s.bind_op,
                vnet: s.request.vnet.clone(),
                vmid: s.request.vmid,
                iface: s.request.iface.clone(),
            };
            tri!(send_from(db, &origin_of(ctx, s.id), &bind).await);
            Outcome::Ok
        }
        .await;
        outcome.into()
    }
}

#[async_trait]
impl Handler<VnetBound> for Coordinator {
    async fn handle(&self, ev: VnetBound, ctx: &Context<'_>) -> Handled {
        let outcome: Outcome = async {
            let db = tri!(db(ctx));
            let Some(s) = tri!(waiting(db, ev.operation_id).await).filter(|s| s.state == "binding") else {
                return Outcome::Ok;
            };
            tri!(set_state(db, s.id, "completed", None, None).await);
            let status = if ev.status == "pending_reboot" {
                "pending_reboot"
            } else {
                "succeeded"
            };
            let result = json!({ "created_vnet": s.created, "saga": "completed" });
            let index = Some(i32::from(ev.index));
            tri!(
                end_operation(
                    db,
                    s.id,
                    status,
                    Some(&ev.node),
                    index,
                    ev.line.as_deref(),
                    &ev.pending,
                    &[],
                    None,
                    &result
                )
                .await
            );
            tracing::info!(saga = %s.id, vnet = %s.request.vnet, "VNet saga completed.");
            Outcome::Ok
        }
        .await;
        outcome.into()
    }
}

#[async_trait]
impl Handler<NetOperationFailed> for Coordinator {
    async fn handle(&self, ev: NetOperationFailed, ctx: &Context<'_>) -> Handled {
        let outcome: Outcome = async {
        let db = tri!(db(ctx));
        let Some(s) = tri!(waiting(db, ev.operation_id).await) else {
            return Outcome::Ok;
        };
        let error = json!({ "step": ev.kind, "code": ev.error.code, "message": ev.error.message, "nodes": ev.nodes });
        // `vnet.ensure` may have created the VNet before its apply failed: its operation says.
        let created = s.created
            || (s.state == "ensuring"
                && tri!(
                    db.opt(
                        "SELECT COALESCE((result->>'created')::boolean, false) FROM net_operations WHERE id = $1",
                        &[&s.ensure_op],
                    )
                    .await
                    .map_err(retry_db)
                )
                .is_some_and(|r| r.get::<_, bool>(0)));
        match s.state.as_str() {
            "ensuring" | "binding" if created => {
                tri!(set_state(db, s.id, "compensating", Some(true), Some(&error)).await);
                let remove = VnetRemove {
                    operation_id: s.remove_op,
                    vnet: s.request.vnet.clone(),
                };
                tri!(send_from(db, &origin_of(ctx, s.id), &remove).await);
                tracing::warn!(saga = %s.id, vnet = %s.request.vnet, step = %ev.kind, "A step failed; removing the VNet this saga created.");
            }
            "ensuring" => {
                let result = json!({ "created_vnet": false, "saga": "failed" });
                tri!(end_failed(db, &s, "failed", &error, &result, &ev.nodes).await);
            }
            "binding" => {
                let result = json!({ "created_vnet": false, "saga": "failed", "compensation": "the VNet existed before this saga and is left alone" });
                tri!(end_failed(db, &s, "failed", &error, &result, &ev.nodes).await);
            }
            _ => {
                // A compensation that failed: both errors are kept.
                let first = s.error.clone().unwrap_or(Value::Null);
                let both = json!({ "step": first["step"], "code": first["code"], "message": first["message"], "compensation_error": error });
                let result = json!({ "created_vnet": true, "saga": "compensation_failed" });
                tri!(end_failed(db, &s, "compensation_failed", &both, &result, &ev.nodes).await);
                tracing::error!(saga = %s.id, vnet = %s.request.vnet, "Removing the VNet this saga created failed; it needs an operator.");
            }
        }
        Outcome::Ok
    }
        .await;
        outcome.into()
    }
}

#[async_trait]
impl Handler<VnetRemoved> for Coordinator {
    async fn handle(&self, ev: VnetRemoved, ctx: &Context<'_>) -> Handled {
        let outcome: Outcome = async {
        let db = tri!(db(ctx));
        let Some(s) = tri!(waiting(db, ev.operation_id).await).filter(|s| s.state == "compensating") else {
            return Outcome::Ok;
        };
        let error = s.error.clone().unwrap_or(Value::Null);
        let result = json!({ "created_vnet": true, "saga": "compensated", "compensation": format!("vnet '{}' created by this saga was removed", ev.vnet) });
        // The nodes where the failed step's SDN apply failed, kept from its failure.
        let nodes: Vec<String> = serde_json::from_value(error["nodes"].clone()).unwrap_or_default();
        tri!(end_failed(db, &s, "compensated", &error, &result, &nodes).await);
        Outcome::Ok
    }
        .await;
        outcome.into()
    }
}
