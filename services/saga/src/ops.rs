//! What operators do to sagas (`pvefleet saga ...`): list, show, retry the step in flight,
//! resume a suspended saga, abort (compensate) one. Every change is audited (`saga_audit`) and
//! its commands go through the outbox, in one transaction.

use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::config::SagaSettings;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::coordinator::Coordinator;
use crate::engine::{Exec, store};

/// Sagas, newest first, optionally in one state: id, kind, site, subdomain, state, the step in
/// flight, error, updated.
pub async fn list(client: &tokio_postgres::Client, state: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let row = client
        .query_one(
            "SELECT coalesce(json_agg(x ORDER BY x.updated_at DESC), '[]'::json) FROM (
                 SELECT g.id, g.kind, g.site_id, s.subdomain, g.state, g.error, g.updated_at,
                        (SELECT name FROM saga_steps st WHERE st.saga_id = g.id ORDER BY started_at DESC LIMIT 1) AS step
                 FROM sagas g LEFT JOIN sites s ON s.id = g.site_id
                 WHERE ($1::text IS NULL OR g.state = $1)
                 ORDER BY g.updated_at DESC LIMIT 500) x",
            &[&state],
        )
        .await?;
    let v: Value = row.get(0);
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// One saga with its timeline and audit trail.
pub async fn show(client: &tokio_postgres::Client, id: Uuid) -> anyhow::Result<Option<Value>> {
    let row = client
        .query_opt(
            "SELECT json_build_object('id', g.id, 'kind', g.kind, 'site_id', g.site_id, 'state', g.state, 'error', g.error,
                 'version', g.version, 'data', g.data, 'created_at', g.created_at, 'updated_at', g.updated_at,
                 'steps', coalesce((SELECT json_agg(st ORDER BY st.started_at) FROM (SELECT name, phase, state, started_at, finished_at, error FROM saga_steps WHERE saga_id = g.id) st), '[]'::json),
                 'audit', coalesce((SELECT json_agg(a ORDER BY a.at) FROM (SELECT action, actor, detail, at FROM saga_audit WHERE saga_id = g.id) a), '[]'::json))
             FROM sagas g WHERE g.id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// The saga `id`, locked, with its kind's machine.
async fn load(
    tx: &tokio_postgres::Client,
    settings: &SagaSettings,
    id: Uuid,
) -> anyhow::Result<(Coordinator, store::Row)> {
    let row = store::lock(tx, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no saga {id}"))?;
    Ok((Coordinator::new(settings.clone(), Vec::new(), Vec::new()), row))
}

fn exec<'a>(tx: &'a tokio_postgres::Client, settings: &'a SagaSettings, id: Uuid) -> Exec<'a> {
    Exec {
        db: tx,
        origin: origin(id),
        settings,
    }
}

/// The action in the saga's own record (`saga_audit`, shown by `saga show`) and in the audit
/// trail (`audit_log`, as `saga.<action>`, for the site's owner), in the same transaction.
async fn audit(tx: &tokio_postgres::Client, id: Uuid, action: &str, actor: &str, detail: Value) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO saga_audit (saga_id, action, actor, detail) VALUES ($1, $2, $3, $4)",
        &[&id, &action, &actor, &detail],
    )
    .await?;
    let owner: Option<String> = tx
        .query_opt(
            "SELECT s.owner FROM sagas g JOIN sites s ON s.id = g.site_id WHERE g.id = $1",
            &[&id],
        )
        .await?
        .map(|r| r.get(0));
    let action = format!("saga.{action}");
    let mut entry = pvefleet_core::audit::Entry::new(&action, format!("saga/{id}")).detail(detail);
    entry.owner = owner;
    pvefleet_core::audit::record(tx, &pvefleet_core::audit::Actor::from(actor), &entry).await?;
    Ok(())
}

fn origin(id: Uuid) -> Origin {
    Origin {
        correlation_id: Some(id),
        app_id: Some("pvefleet-cli".into()),
        ..Origin::default()
    }
}

/// Re-sends the step in flight: the compensation of a `compensation_failed` saga, the step of a
/// `suspended` one, or a step that seems stuck. Returns the step re-sent.
pub async fn retry_step(
    client: &tokio_postgres::Client,
    settings: &SagaSettings,
    id: Uuid,
    actor: &str,
) -> anyhow::Result<String> {
    pvefleet_core::db::in_tx(client, retry_step_tx(client, settings, id, actor, "retry-step")).await
}

async fn retry_step_tx(
    tx: &tokio_postgres::Client,
    settings: &SagaSettings,
    id: Uuid,
    actor: &str,
    action: &str,
) -> anyhow::Result<String> {
    let (coordinator, row) = load(tx, settings, id).await?;
    let was = row.state.clone();
    let driver = coordinator
        .inner
        .driver(&row.kind)
        .ok_or_else(|| anyhow::anyhow!("saga {id} is of an unknown kind '{}'", row.kind))?;
    let step = driver.retry_step(&exec(tx, settings, id), row).await?;
    audit(tx, id, action, actor, json!({ "step": step, "was": was })).await?;
    Ok(step)
}

/// Resumes a suspended saga: its step is sent again.
pub async fn resume(
    client: &tokio_postgres::Client,
    settings: &SagaSettings,
    id: Uuid,
    actor: &str,
) -> anyhow::Result<String> {
    pvefleet_core::db::in_tx(client, async {
        let (_, row) = load(client, settings, id).await?;
        anyhow::ensure!(row.state == "suspended", "saga {id} is {}, not suspended", row.state);
        retry_step_tx(client, settings, id, actor, "resume").await
    })
    .await
}

/// Aborts a running or suspended provisioning saga: the completed steps are compensated in
/// reverse, as for a failure. Returns the compensations queued.
pub async fn abort(
    client: &tokio_postgres::Client,
    settings: &SagaSettings,
    id: Uuid,
    actor: &str,
) -> anyhow::Result<Vec<String>> {
    pvefleet_core::db::in_tx(client, abort_tx(client, settings, id, actor)).await
}

async fn abort_tx(
    tx: &tokio_postgres::Client,
    settings: &SagaSettings,
    id: Uuid,
    actor: &str,
) -> anyhow::Result<Vec<String>> {
    let (coordinator, row) = load(tx, settings, id).await?;
    let was = row.state.clone();
    let driver = coordinator
        .inner
        .driver(&row.kind)
        .ok_or_else(|| anyhow::anyhow!("saga {id} is of an unknown kind '{}'", row.kind))?;
    let queued = driver.abort(&exec(tx, settings, id), row, actor).await?;
    // Its parked commands are not for replay any more: kept for the record, out of the way.
    tx.execute(
        "UPDATE dead_letters SET state = 'archived', updated_at = now() WHERE correlation_id = $1 AND state = 'parked'",
        &[&id],
    )
    .await?;
    audit(tx, id, "abort", actor, json!({ "compensations": queued, "was": was })).await?;
    Ok(queued)
}
