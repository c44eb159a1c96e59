//! What operators do to sagas (`pvefleet saga ...`): list, show, retry the step in flight,
//! resume a suspended saga, abort (compensate) one. Every change is audited (`saga_audit`) and
//! its commands go through the outbox, in one transaction.

use pvefleet_contracts::StepError;
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::config::SagaSettings;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{SagaData, Step, send_step};

/// Sagas, newest first, optionally in one state: id, kind, site, subdomain, state, the step in
/// flight, error, updated.
pub async fn list(client: &tokio_postgres::Client, state: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let row = client
        .query_one(
            "SELECT coalesce(json_agg(x ORDER BY x.updated_at DESC), '[]'::json) FROM (
                 SELECT g.id, g.kind, g.site_id, s.subdomain, g.state, g.error, g.updated_at,
                        (SELECT name FROM saga_steps st WHERE st.saga_id = g.id ORDER BY started_at DESC LIMIT 1) AS step
                 FROM sagas g JOIN sites s ON s.id = g.site_id
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

fn outcome_error(o: crate::legacy::Outcome) -> anyhow::Error {
    anyhow::anyhow!("{o:?}")
}

struct Loaded {
    kind: String,
    state: String,
    step: usize,
    data: SagaData,
}

async fn load(tx: &tokio_postgres::Client, id: Uuid) -> anyhow::Result<Loaded> {
    let row = tx
        .query_opt(
            "SELECT kind, state, step, data FROM sagas WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("no saga {id}"))?;
    Ok(Loaded {
        kind: row.get(0),
        state: row.get(1),
        step: usize::try_from(row.get::<_, i32>(2)).unwrap_or(0),
        data: serde_json::from_value(row.get(3))?,
    })
}

async fn audit(tx: &tokio_postgres::Client, id: Uuid, action: &str, actor: &str, detail: Value) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO saga_audit (saga_id, action, actor, detail) VALUES ($1, $2, $3, $4)",
        &[&id, &action, &actor, &detail],
    )
    .await?;
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
    in_tx(client, retry_step_tx(client, settings, id, actor)).await
}

/// Runs `body` in a transaction on `client`: COMMIT when it succeeds, ROLLBACK when not.
async fn in_tx<T>(
    client: &tokio_postgres::Client,
    body: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    client.batch_execute("BEGIN").await?;
    match body.await {
        Ok(v) => {
            client.batch_execute("COMMIT").await?;
            Ok(v)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn retry_step_tx(
    tx: &tokio_postgres::Client,
    settings: &SagaSettings,
    id: Uuid,
    actor: &str,
) -> anyhow::Result<String> {
    let l = load(tx, id).await?;
    let (state, phase, step) = match l.state.as_str() {
        "compensation_failed" | "compensating" => {
            ("compensating", "compensate", l.data.compensations.get(l.step).copied())
        }
        "suspended" | "running" => ("running", "forward", l.data.plan.get(l.step).copied()),
        other => anyhow::bail!("saga {id} is {other}; there is no step to retry"),
    };
    let step = step.ok_or_else(|| anyhow::anyhow!("saga {id} has no step {} to retry", l.step))?;
    tx.execute(
        "UPDATE sagas SET state = $2, resends = 0, error = NULL, version = version + 1, updated_at = now() WHERE id = $1",
        &[&id, &state],
    )
    .await?;
    send_step(tx, &origin(id), id, &l.data, step, phase, settings)
        .await
        .map_err(outcome_error)?;
    audit(
        tx,
        id,
        "retry-step",
        actor,
        json!({ "step": step.command(), "phase": phase, "was": l.state }),
    )
    .await?;
    Ok(step.command().to_string())
}

/// Resumes a suspended saga: its step is sent again.
pub async fn resume(
    client: &tokio_postgres::Client,
    settings: &SagaSettings,
    id: Uuid,
    actor: &str,
) -> anyhow::Result<String> {
    in_tx(client, async {
        let l = load(client, id).await?;
        anyhow::ensure!(l.state == "suspended", "saga {id} is {}, not suspended", l.state);
        retry_step_tx(client, settings, id, actor).await
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
    in_tx(client, abort_tx(client, settings, id, actor)).await
}

async fn abort_tx(
    tx: &tokio_postgres::Client,
    settings: &SagaSettings,
    id: Uuid,
    actor: &str,
) -> anyhow::Result<Vec<String>> {
    let mut l = load(tx, id).await?;
    anyhow::ensure!(
        l.kind == "provision",
        "only provisioning sagas can be aborted; a deprovision recovers forward"
    );
    anyhow::ensure!(
        matches!(l.state.as_str(), "running" | "suspended"),
        "saga {id} is {}; only running or suspended sagas can be aborted",
        l.state
    );
    let current = l.data.plan.get(l.step).copied().unwrap_or(Step::Create);
    l.data.failure = Some((current, StepError::new("aborted", format!("aborted by {actor}"))));
    l.data.compensations = l.data.done.iter().rev().filter_map(|s| s.compensation()).collect();
    let queued: Vec<String> = l.data.compensations.iter().map(|s| s.command().to_string()).collect();
    tx.execute(
        "UPDATE sagas SET state = 'compensating', step = 0, resends = 0, data = $2, version = version + 1, updated_at = now() WHERE id = $1",
        &[&id, &json!(l.data)],
    )
    .await?;
    match l.data.compensations.first().copied() {
        Some(step) => send_step(tx, &origin(id), id, &l.data, step, "compensate", settings)
            .await
            .map_err(outcome_error)?,
        None => {
            // Nothing was built: fail the site and free its leases now.
            let site = l.data.site.site_id.as_uuid();
            tx.execute("DELETE FROM leases WHERE site_id = $1", &[&site]).await?;
            tx.execute(
                "UPDATE sagas SET state = 'failed', updated_at = now() WHERE id = $1",
                &[&id],
            )
            .await?;
            tx.execute(
                "UPDATE sites SET state = 'failed', error = $2, updated_at = now() WHERE id = $1",
                &[&site, &json!({ "step": current.command(), "error": { "code": "aborted", "message": format!("aborted by {actor}") } })],
            )
            .await?;
        }
    }
    // Its parked commands are not for replay any more: kept for the record, out of the way.
    tx.execute(
        "UPDATE dead_letters SET state = 'archived', updated_at = now() WHERE correlation_id = $1 AND state = 'parked'",
        &[&id],
    )
    .await?;
    audit(
        tx,
        id,
        "abort",
        actor,
        json!({ "compensations": queued, "was": l.state }),
    )
    .await?;
    Ok(queued)
}
