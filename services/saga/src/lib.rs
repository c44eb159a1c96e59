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
pub mod dlq;
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
    use pvefleet_core::bus::runner::{WorkerDeps, WorkerSpec, run_worker};
    let topology = pvefleet_core::bus::topology::Topology::fleet(&settings.bus);
    let publisher = pvefleet_core::bus::Publisher::new(&settings.bus, "saga", Some(topology.clone()));
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
    let relay = pvefleet_core::db::outbox::OutboxRelay::new(pool.clone(), publisher.clone(), settings.outbox.clone());
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
        topology.clone(),
        pool.clone(),
        Some(poke.clone()),
        shutdown.clone(),
    ));
    let queue = pvefleet_contracts::routing::work_queue("saga");
    let mut spec = WorkerSpec::from_settings("saga", &queue, settings);
    spec.inbox = true;
    // What a transition queues in the outbox is published as soon as it commits.
    spec.after_commit = Some(poke);
    let deps = WorkerDeps {
        bus: settings.bus.clone(),
        topology,
        publisher,
        db: Some(pool),
        ready,
    };
    // A table that cannot work stops the service before it consumes anything.
    coordinator
        .validate()
        .map_err(|e| anyhow::anyhow!("a saga table cannot work: {e}"))?;
    let result = run_worker(deps, coordinator.router(), spec, shutdown).await;
    let _ = relay_task.await;
    let _ = deadline_task.await;
    let _ = keeper_task.await;
    if let Some(t) = sync_task {
        let _ = t.await;
    }
    result
}
