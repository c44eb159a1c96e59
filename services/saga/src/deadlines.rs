//! Step deadlines: a step whose answer has not come by its deadline (`saga.step_timeout`, or
//! `saga.step_timeouts` for its command) is sent again, `saga.step_resends` times at most;
//! then the saga stops for an operator: `suspended` going forward, `compensation_failed`
//! while compensating. The handlers are idempotent, so a re-send of a command that was only
//! slow converges on the same state, and its second answer is ignored as a duplicate.
//!
//! Every coordinator replica scans; `FOR UPDATE SKIP LOCKED` gives each overdue saga to one of
//! them, and the re-send commits with the saga through the outbox.

use std::sync::Arc;

use pvefleet_contracts::StepError;
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::config::SagaSettings;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{SagaData, Step, give_up, send_step};

/// Overdue sagas handled per transaction.
const BATCH: i64 = 100;

/// What the scan did to one overdue saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overdue {
    /// The step was sent again (the n-th re-send).
    Resent { saga: Uuid, step: String, resend: u32 },
    /// The saga gave up: its new state.
    GaveUp { saga: Uuid, step: String, state: String },
}

/// Handles every saga past its deadline, in batches; returns what was done.
pub async fn scan_once(pool: &deadpool_postgres::Pool, settings: &SagaSettings) -> anyhow::Result<Vec<Overdue>> {
    let mut done = Vec::new();
    loop {
        let batch = scan_batch(pool, settings).await?;
        let n = batch.len();
        done.extend(batch);
        if n < BATCH as usize {
            return Ok(done);
        }
    }
}

async fn scan_batch(pool: &deadpool_postgres::Pool, settings: &SagaSettings) -> anyhow::Result<Vec<Overdue>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT id, kind, state, step, data, step_sends FROM sagas
             WHERE state IN ('running', 'compensating') AND deadline <= now()
             ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&BATCH],
        )
        .await?;
    let mut done = Vec::with_capacity(rows.len());
    for row in rows {
        let saga: Uuid = row.get(0);
        let kind: String = row.get(1);
        let state: String = row.get(2);
        let index = usize::try_from(row.get::<_, i32>(3)).unwrap_or(0);
        let sends = u32::try_from(row.get::<_, i32>(5)).unwrap_or(0);
        let data: SagaData = match serde_json::from_value(row.get(4)) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(%saga, error = %e, "A saga's data does not decode; its deadline is cleared.");
                tx.execute("UPDATE sagas SET deadline = NULL WHERE id = $1", &[&saga])
                    .await?;
                continue;
            }
        };
        let (phase, step) = if state == "compensating" {
            ("compensate", data.compensations.get(index).copied())
        } else {
            ("forward", data.plan.get(index).copied())
        };
        let Some(step) = step else {
            tx.execute("UPDATE sagas SET deadline = NULL WHERE id = $1", &[&saga])
                .await?;
            continue;
        };
        done.push(overdue(&tx, settings, saga, &kind, &data, step, phase, sends).await?);
    }
    tx.commit().await?;
    Ok(done)
}

#[allow(clippy::too_many_arguments)]
async fn overdue(
    tx: &tokio_postgres::Transaction<'_>,
    settings: &SagaSettings,
    saga: Uuid,
    kind: &str,
    data: &SagaData,
    step: Step,
    phase: &str,
    sends: u32,
) -> anyhow::Result<Overdue> {
    let command = step.command().to_string();
    let timeout = settings.timeout_of(step.command());
    let db: &tokio_postgres::Client = tx.client();
    if sends < settings.step_resends {
        let origin = Origin {
            correlation_id: Some(saga),
            app_id: Some("saga".into()),
            ..Origin::default()
        };
        send_step(db, &origin, saga, data, step, phase, settings)
            .await
            .map_err(|o| anyhow::anyhow!("cannot re-send {command}: {o:?}"))?;
        let resend = sends + 1;
        tx.execute(
            "UPDATE sagas SET step_sends = $2, updated_at = now() WHERE id = $1",
            &[&saga, &(resend as i32)],
        )
        .await?;
        tracing::warn!(%saga, step = %command, resend, timeout = ?timeout, "No answer by the step's deadline; the command is sent again.");
        return Ok(Overdue::Resent {
            saga,
            step: command,
            resend,
        });
    }
    let error = StepError::new(
        "step.deadline",
        format!(
            "no answer to {command} within {} after {} sends",
            humantime::format_duration(timeout),
            sends + 1
        ),
    );
    tx.execute(
        "UPDATE saga_steps SET state = 'failed', finished_at = now(), error = $4
         WHERE saga_id = $1 AND name = $2 AND phase = $3",
        &[&saga, &command, &phase, &serde_json::json!(error)],
    )
    .await?;
    let state = give_up(db, saga, data, kind, step, phase, &error)
        .await
        .map_err(|o| anyhow::anyhow!("cannot stop saga {saga}: {o:?}"))?;
    Ok(Overdue::GaveUp {
        saga,
        step: command,
        state: state.to_string(),
    })
}

/// Scans every `saga.deadline_scan_interval` until `shutdown`, waking `relay` when it queued
/// re-sends.
pub async fn run(
    pool: deadpool_postgres::Pool,
    settings: SagaSettings,
    relay: Option<Arc<Notify>>,
    shutdown: CancellationToken,
) {
    let every = settings
        .deadline_scan_interval
        .max(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match scan_once(&pool, &settings).await {
            Ok(done) if !done.is_empty() => {
                metrics::counter!("pvefleet_saga_deadlines_total", "action" => "resent")
                    .increment(done.iter().filter(|d| matches!(d, Overdue::Resent { .. })).count() as u64);
                metrics::counter!("pvefleet_saga_deadlines_total", "action" => "gave_up")
                    .increment(done.iter().filter(|d| matches!(d, Overdue::GaveUp { .. })).count() as u64);
                if let Some(r) = &relay {
                    r.notify_one();
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = ?e, "The deadline scan failed; it runs again next interval."),
        }
    }
}
