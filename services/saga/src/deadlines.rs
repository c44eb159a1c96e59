//! Step deadlines: a step whose answer has not come by its deadline (`saga.step_timeout`, or
//! `saga.step_timeouts` for its command) is sent again, `saga.step_resends` times at most;
//! then the saga stops for an operator: `suspended` going forward, `compensation_failed`
//! while compensating. The handlers are idempotent, so a re-send of a command that was only
//! slow converges on the same state, and its second answer is ignored as a duplicate.
//!
//! Every coordinator replica scans; `FOR UPDATE SKIP LOCKED` gives each overdue saga to one of
//! them, and the re-send commits with the saga through the outbox.

use std::sync::Arc;

use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::config::SagaSettings;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::coordinator::Coordinator;
pub use crate::engine::Overdue;
use crate::engine::{Exec, store};

/// Overdue sagas handled per transaction.
const BATCH: i64 = 100;

/// Handles every saga past its deadline, in batches; returns what was done.
pub async fn scan_once(pool: &deadpool_postgres::Pool, settings: &SagaSettings) -> anyhow::Result<Vec<Overdue>> {
    let coordinator = Coordinator::new(settings.clone(), Vec::new(), Vec::new());
    let mut done = Vec::new();
    loop {
        let batch = scan_batch(pool, &coordinator, settings).await?;
        let n = batch.len();
        done.extend(batch);
        if n < BATCH as usize {
            return Ok(done);
        }
    }
}

async fn scan_batch(
    pool: &deadpool_postgres::Pool,
    coordinator: &Coordinator,
    settings: &SagaSettings,
) -> anyhow::Result<Vec<Overdue>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = store::overdue(&tx, BATCH).await?;
    let x = Exec {
        db: &tx,
        origin: Origin {
            app_id: Some("saga".into()),
            ..Origin::default()
        },
        settings,
    };
    let mut done = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(driver) = coordinator.inner.driver(&row.kind) else {
            tracing::error!(saga = %row.id, kind = %row.kind, "A saga of an unknown kind; its deadline is cleared.");
            store::clear_deadline(&tx, row.id).await?;
            continue;
        };
        let saga = row.id;
        match driver.overdue(&x, row).await {
            Ok(Some(o)) => done.push(o),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(%saga, error = format!("{e:#}"), "An overdue saga cannot be handled; its deadline is cleared.");
                store::clear_deadline(&tx, saga).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(done)
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
    let (pool, settings) = (&pool, &settings);
    pvefleet_core::periodic::Periodic::new("saga_deadlines", every)
        .run(shutdown, || async {
            let done = scan_once(pool, settings).await?;
            if !done.is_empty() {
                metrics::counter!("pvefleet_saga_deadlines_total", "action" => "resent")
                    .increment(done.iter().filter(|d| matches!(d, Overdue::Resent { .. })).count() as u64);
                metrics::counter!("pvefleet_saga_deadlines_total", "action" => "gave_up")
                    .increment(done.iter().filter(|d| matches!(d, Overdue::GaveUp { .. })).count() as u64);
                if let Some(r) = &relay {
                    r.notify_one();
                }
            }
            anyhow::Ok(())
        })
        .await
}
