//! The handlers: each command taken up as its operation, run, and reported; a redelivery
//! of an ended operation answered from its record; a parked command's operation marked.

use async_trait::async_trait;
use pvefleet_contracts::messages::{
    MessageParked, NetAttach, NetAttached, NetDetach, NetDetached, NetOperationFailed, NetUpdate, NetUpdated, VnetBind,
    VnetBound, VnetEnsure, VnetEnsured, VnetRemove, VnetRemoved, VnetUnbind, VnetUnbound,
};
use pvefleet_contracts::{Message, StepError, Vmid};
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::ops::{self, Operation};
use crate::{Applied, Fault, Inner, Nethotplug, Step, success_event};

impl Inner {
    /// Takes an operation up; `Err` is the outcome when the database cannot be reached.
    pub(crate) async fn start(
        &self,
        id: Uuid,
        kind: &str,
        vmid: Option<u32>,
        vnet: Option<&str>,
        request: &Value,
    ) -> Result<Operation, HandlerError> {
        let client = self.pool.get().await?;
        Ok(ops::start(&client, id, kind, vmid, vnet, request).await?)
    }

    /// Ends an operation as the step went, and reports it.
    pub(crate) async fn conclude(&self, ctx: &Context<'_>, op: &Operation, result: Step<Applied>) -> Handled {
        match result {
            Ok(done) => {
                let client = self.pool.get().await?;
                let extra = done.applied_sdn.then(|| json!({ "applied_sdn": true }));
                ops::finish(&client, op.id, done.status(), &done.pending, &[], None, extra.as_ref()).await?;
                let _ = ops::count_event(&client, success_event(&op.kind), done.status()).await;
                if done.needs_reboot {
                    tracing::info!(operation = %op.id, kind = %op.kind, pending = ?done.pending, "Left pending until the container restarts.");
                }
                emit_done(ctx, op, &done).await
            }
            Err(Fault::Error(e)) => Err(e),
            Err(Fault::Ended(ended)) => replay(ctx, &ended).await,
            Err(Fault::Fail(err, nodes)) => self.failed(ctx, op, err, nodes).await,
        }
    }

    pub(crate) async fn failed(
        &self,
        ctx: &Context<'_>,
        op: &Operation,
        err: StepError,
        nodes: Vec<String>,
    ) -> Handled {
        let client = self.pool.get().await?;
        let error = json!({ "code": err.code, "message": err.message });
        ops::finish(&client, op.id, "failed", &[], &nodes, Some(&error), None).await?;
        let _ = ops::count_event(&client, success_event(&op.kind), "failed").await;
        tracing::warn!(operation = %op.id, kind = %op.kind, code = %err.code, error = %err.message, "Network operation failed.");
        emit(ctx, op.id, &failure(op, err, nodes)).await
    }
}

/// Publishes an operation's event, with the operation's id as its correlation id (a saga's
/// step is an operation of its own, named in the saga).
async fn emit<M: pvefleet_contracts::Message>(ctx: &Context<'_>, op: Uuid, msg: &M) -> Handled {
    let mut origin = ctx.origin();
    origin.correlation_id = Some(op);
    let out = pvefleet_core::bus::Outgoing::message(msg, &origin)
        .map_err(|e| HandlerError::retry(anyhow::Error::new(e).context(format!("cannot encode {}", M::TYPE))))?;
    ctx.publisher
        .publish(&out)
        .await
        .map_err(|e| HandlerError::from(e).context(format!("cannot send {}", M::TYPE)))
}

fn failure(op: &Operation, error: StepError, nodes: Vec<String>) -> NetOperationFailed {
    NetOperationFailed {
        operation_id: op.id,
        kind: op.kind.clone(),
        vmid: op.vmid.map(Vmid),
        vnet: op.vnet.clone(),
        nodes,
        error,
    }
}

/// Sends the event of a successful operation.
async fn emit_done(ctx: &Context<'_>, op: &Operation, done: &Applied) -> Handled {
    let vmid = Vmid(op.vmid.unwrap_or_default());
    let status = if done.needs_reboot { "pending_reboot" } else { "live" }.to_string();
    macro_rules! ev {
        ($ty:ident) => {
            emit(
                ctx,
                op.id,
                &$ty {
                    operation_id: op.id,
                    vmid,
                    node: done.node.clone(),
                    index: done.index,
                    line: done.line.clone(),
                    vnet: op.vnet.clone(),
                    status,
                    pending: done.pending.clone(),
                },
            )
            .await
        };
    }
    match op.kind.as_str() {
        "net.attach" => ev!(NetAttached),
        "net.update" => ev!(NetUpdated),
        "net.detach" => ev!(NetDetached),
        "vnet.bind" => ev!(VnetBound),
        "vnet.unbind" => ev!(VnetUnbound),
        other => Err(HandlerError::rejected(format!("no event for {other}"))),
    }
}

/// An operation that has ended already (a redelivery): its event again, from the record.
async fn replay(ctx: &Context<'_>, op: &Operation) -> Handled {
    if op.status == "failed" {
        let err = op
            .error
            .as_ref()
            .and_then(|e| serde_json::from_value::<StepError>(e.clone()).ok())
            .unwrap_or_else(|| StepError::new("failed", "failed earlier"));
        return emit(ctx, op.id, &failure(op, err, op.failed_nodes.clone())).await;
    }
    match op.kind.as_str() {
        "vnet.ensure" => {
            let created = op
                .result
                .as_ref()
                .and_then(|r| r.get("created"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            emit(
                ctx,
                op.id,
                &VnetEnsured {
                    operation_id: op.id,
                    vnet: op.vnet.clone().unwrap_or_default(),
                    created,
                },
            )
            .await
        }
        "vnet.remove" => {
            emit(
                ctx,
                op.id,
                &VnetRemoved {
                    operation_id: op.id,
                    vnet: op.vnet.clone().unwrap_or_default(),
                },
            )
            .await
        }
        _ => {
            let done = Applied {
                node: op.node.clone().unwrap_or_default(),
                index: op.net_index.unwrap_or_default(),
                line: if op.kind.ends_with("detach") || op.kind.ends_with("unbind") {
                    None
                } else {
                    op.line.clone()
                },
                pending: op.pending_keys.clone(),
                needs_reboot: op.status == "pending_reboot",
                applied_sdn: false,
            };
            emit_done(ctx, op, &done).await
        }
    }
}

/// Takes the command's operation up, or answers a redelivery of an ended one from its record.
/// Records the command's operation, or reads it back for a copy: `None` when it has ended
/// already, and its end event was published again for whoever waits on it.
async fn take_up<C: Message + serde::Serialize>(
    me: &Inner,
    ctx: &Context<'_>,
    cmd: &C,
    id: Uuid,
    vmid: Option<u32>,
    vnet: Option<&str>,
) -> Result<Option<Operation>, HandlerError> {
    let request = serde_json::to_value(cmd).unwrap_or(Value::Null);
    let op = me.start(id, C::TYPE, vmid, vnet, &request).await?;
    if ops::is_final(&op.status) {
        replay(ctx, &op).await?;
        return Ok(None);
    }
    Ok(Some(op))
}

#[async_trait]
impl Handler<NetAttach> for Nethotplug {
    async fn handle(&self, cmd: NetAttach, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let Some(op) = take_up(
            me,
            ctx,
            &cmd,
            cmd.operation_id,
            Some(cmd.vmid.0),
            cmd.iface.vnet.as_deref(),
        )
        .await?
        else {
            return Ok(());
        };
        let result = me.attach(&op, cmd.vmid.0, &cmd.iface).await;
        me.conclude(ctx, &op, result).await
    }
}

#[async_trait]
impl Handler<NetUpdate> for Nethotplug {
    async fn handle(&self, cmd: NetUpdate, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let Some(op) = take_up(me, ctx, &cmd, cmd.operation_id, Some(cmd.vmid.0), None).await? else {
            return Ok(());
        };
        let result = me.update(&op, cmd.vmid.0, cmd.index, &cmd.changes).await;
        me.conclude(ctx, &op, result).await
    }
}

#[async_trait]
impl Handler<NetDetach> for Nethotplug {
    async fn handle(&self, cmd: NetDetach, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let Some(op) = take_up(me, ctx, &cmd, cmd.operation_id, Some(cmd.vmid.0), None).await? else {
            return Ok(());
        };
        let result = me.detach(&op, cmd.vmid.0, cmd.index).await;
        me.conclude(ctx, &op, result).await
    }
}

#[async_trait]
impl Handler<VnetBind> for Nethotplug {
    async fn handle(&self, cmd: VnetBind, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let Some(op) = take_up(
            me,
            ctx,
            &cmd,
            cmd.operation_id,
            Some(cmd.vmid.0),
            Some(cmd.vnet.as_str()),
        )
        .await?
        else {
            return Ok(());
        };
        let result = me.bind(&op, &cmd.vnet, cmd.vmid.0, &cmd.iface).await;
        me.conclude(ctx, &op, result).await
    }
}

#[async_trait]
impl Handler<VnetUnbind> for Nethotplug {
    async fn handle(&self, cmd: VnetUnbind, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let Some(op) = take_up(
            me,
            ctx,
            &cmd,
            cmd.operation_id,
            Some(cmd.vmid.0),
            Some(cmd.vnet.as_str()),
        )
        .await?
        else {
            return Ok(());
        };
        let result = me.unbind(&op, &cmd.vnet, cmd.vmid.0, cmd.index).await;
        me.conclude(ctx, &op, result).await
    }
}

#[async_trait]
impl Handler<VnetEnsure> for Nethotplug {
    async fn handle(&self, cmd: VnetEnsure, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        // Two copies of one ensure would both find the VNet missing and both create it: one at
        // a time per name, across replicas; the second then finds the operation ended.
        let _vnet = me.vnet_lock(&cmd.vnet).await?;
        let Some(op) = take_up(me, ctx, &cmd, cmd.operation_id, None, Some(cmd.vnet.as_str())).await? else {
            return Ok(());
        };
        match me.ensure(&op, &cmd).await {
            Ok(created) => {
                let client = me.pool.get().await?;
                let result = json!({ "created": created });
                ops::finish(&client, op.id, "succeeded", &[], &[], None, Some(&result)).await?;
                let _ = ops::count_event(&client, "vnet.ensured", "succeeded").await;
                emit(
                    ctx,
                    op.id,
                    &VnetEnsured {
                        operation_id: op.id,
                        vnet: cmd.vnet.clone(),
                        created,
                    },
                )
                .await
            }
            Err(Fault::Error(e)) => Err(e),
            Err(Fault::Ended(ended)) => replay(ctx, &ended).await,
            Err(Fault::Fail(err, nodes)) => me.failed(ctx, &op, err, nodes).await,
        }
    }
}

#[async_trait]
impl Handler<VnetRemove> for Nethotplug {
    async fn handle(&self, cmd: VnetRemove, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        // Not while an ensure of the same name is between its check and its create.
        let _vnet = me.vnet_lock(&cmd.vnet).await?;
        let Some(op) = take_up(me, ctx, &cmd, cmd.operation_id, None, Some(cmd.vnet.as_str())).await? else {
            return Ok(());
        };
        match me.remove(&cmd).await {
            Ok(()) => {
                let client = me.pool.get().await?;
                ops::finish(&client, op.id, "succeeded", &[], &[], None, None).await?;
                let _ = ops::count_event(&client, "vnet.removed", "succeeded").await;
                emit(
                    ctx,
                    op.id,
                    &VnetRemoved {
                        operation_id: op.id,
                        vnet: cmd.vnet.clone(),
                    },
                )
                .await
            }
            Err(Fault::Error(e)) => Err(e),
            Err(Fault::Ended(ended)) => replay(ctx, &ended).await,
            Err(Fault::Fail(err, nodes)) => me.failed(ctx, &op, err, nodes).await,
        }
    }
}

/// The network commands: a parked one leaves its operation `parked`.
const COMMANDS: [&str; 7] = [
    "net.attach",
    "net.update",
    "net.detach",
    "vnet.bind",
    "vnet.unbind",
    "vnet.ensure",
    "vnet.remove",
];

/// A network command that gave up and was parked: its operation (the message's correlation
/// id; for a saga's step, the saga's operation) becomes `parked`, naming the dead letter, so
/// `GET /v1/operations/{id}` does not say `running` for ever. It is not an end: a replay of the
/// dead letter takes the operation up again.
#[async_trait]
impl Handler<MessageParked> for Nethotplug {
    async fn handle(&self, msg: MessageParked, _ctx: &Context<'_>) -> Handled {
        let (Some(op), Some(kind)) = (msg.correlation_id, msg.message_type.as_deref()) else {
            return Ok(());
        };
        if !COMMANDS.contains(&kind) {
            return Ok(());
        }
        let client = self.inner.pool.get().await?;
        let error = json!({
            "code": "parked",
            "message": format!(
                "{kind} was parked ({}); see pvefleet dlq show {}, and replay it when the cause is fixed",
                msg.fault_class, msg.dead_letter_id
            ),
            "dead_letter_id": msg.dead_letter_id,
        });
        match client
            .execute(
                "UPDATE net_operations SET status = 'parked', error = $2, updated_at = now()
                 WHERE id = $1 AND status IN ('pending', 'running')",
                &[&op, &error],
            )
            .await
        {
            Ok(n) => {
                if n > 0 {
                    tracing::warn!(operation = %op, kind, dead_letter = %msg.dead_letter_id, "A network command was parked; its operation waits for an operator.");
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}
