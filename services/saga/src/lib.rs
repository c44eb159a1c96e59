//! The saga coordinator (DESIGN.md §6). Every saga kind is a declared table (`kinds`) run by
//! one engine (`engine`): provisioning and deprovisioning sites, and creating and binding SDN
//! VNets. Sagas persist in Postgres with a version column; every transition and the commands
//! it sends commit in one transaction, the inbox batch's, through the outbox. Events are
//! matched to a saga by their correlation id. An event for a step that is not the one in
//! flight (a duplicate, or a late completion) is logged and ignored.
//!
//! The service also runs the step-deadline scan (`deadlines`), the vmid lease sync with PVE
//! (`leases`) and the dead-letter keeper (`keeper`); `ops` and `dlq` are the operator tools.

mod coordinator;
pub mod deadlines;
// The operator tools on dead letters live in core, so intake reaches them without this crate.
pub use pvefleet_core::dlq;
pub mod engine;
pub mod keeper;
pub mod kinds;
mod leases;
pub mod ops;
mod start;

pub use coordinator::Coordinator;

/// Runs the coordinator until `shutdown`: the saga queue with the inbox, and the outbox relay.
pub async fn run(
    settings: &pvefleet_core::Settings,
    pool: deadpool_postgres::Pool,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let worker = pvefleet_core::bus::Worker::fleet("saga", settings).ready(ready);
    let pve = match pvefleet_core::pve::client(&settings.pve) {
        Ok(pve) => Some(pve),
        Err(e) => {
            tracing::warn!(error = %e, "No PVE client: a requested node is not checked, and vmid leases are not cross-checked with PVE ahead of time.");
            None
        }
    };
    let coordinator = Coordinator::checking_nodes(
        settings.saga.clone(),
        settings.pve.templates.clone(),
        settings.installer.apps.keys().cloned().collect(),
        pve.clone(),
    );
    let relay =
        pvefleet_core::db::outbox::OutboxRelay::new(pool.clone(), worker.publisher().clone(), settings.outbox.clone());
    let poke = relay.poker();
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let deadline_task = tokio::spawn(deadlines::run(
        pool.clone(),
        settings.saga.clone(),
        Some(poke.clone()),
        shutdown.clone(),
    ));
    let sync_task = match pve {
        Some(pve) if !settings.saga.lease_sync_interval.is_zero() => Some(tokio::spawn(leases::run_sync(
            pool.clone(),
            pve,
            settings.saga.clone(),
            shutdown.clone(),
        ))),
        _ => None,
    };
    let keeper_task = tokio::spawn(keeper::run(
        settings.bus.clone(),
        worker.topology().clone(),
        pool.clone(),
        Some(poke.clone()),
        shutdown.clone(),
    ));
    // Every transition commits in the batch's inbox transaction; what it queued in the outbox
    // is published as soon as that commits.
    let worker = worker.inbox(pool, Some(poke));
    // A table that cannot work stops the service before it consumes anything.
    coordinator
        .validate()
        .map_err(|e| anyhow::anyhow!("a saga table cannot work: {e}"))?;
    let result = worker.run(coordinator.router(), shutdown).await;
    let _ = relay_task.await;
    let _ = deadline_task.await;
    let _ = keeper_task.await;
    if let Some(t) = sync_task {
        let _ = t.await;
    }
    result
}
