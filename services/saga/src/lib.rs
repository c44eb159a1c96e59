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

use pvefleet_contracts::messages::SiteProvision;
use pvefleet_core::config::SagaSettings;

pub use coordinator::Coordinator;

/// A reason a site request is invalid: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field at fault.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

/// The sizes a request asks for, or why it is invalid.
/// `apps` are the installer's apps besides `wordpress` and `none` (`installer.apps`).
pub fn validate(
    s: &SagaSettings,
    templates: &[String],
    apps: &[String],
    req: &SiteProvision,
) -> Result<(u32, u32, u32), Invalid> {
    let label = &req.subdomain;
    let valid_label = !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if !valid_label {
        return Err(Invalid {
            field: "subdomain",
            reason: format!(
                "'{label}' is not an RFC 1123 label (lowercase letters, digits and inner hyphens, 1 to 63)"
            ),
        });
    }
    let plan = match &req.plan {
        Some(name) => Some(s.plans.get(name).ok_or_else(|| Invalid {
            field: "plan",
            reason: format!(
                "unknown plan '{name}'; known: {}",
                s.plans.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })?),
        None => None,
    };
    let cores = req.cores.or(plan.map(|p| p.cores));
    let memory = req.memory_mb.or(plan.map(|p| p.memory_mb));
    let disk = req.disk_gb.or(plan.map(|p| p.disk_gb));
    let (Some(cores), Some(memory), Some(disk)) = (cores, memory, disk) else {
        return Err(Invalid {
            field: "plan",
            reason: "give a plan, or cores, memory_mb and disk_gb".into(),
        });
    };
    let biggest = s.plans.values().fold((1, 512, 8), |m, p| {
        (m.0.max(p.cores), m.1.max(p.memory_mb), m.2.max(p.disk_gb))
    });
    for (field, value, max) in [
        ("cores", cores, biggest.0),
        ("memory_mb", memory, biggest.1),
        ("disk_gb", disk, biggest.2),
    ] {
        if value == 0 || value > max {
            return Err(Invalid {
                field,
                reason: format!("{value} is outside 1..={max}, the largest plan"),
            });
        }
    }
    if !templates.iter().any(|t| t == &req.template) {
        return Err(Invalid {
            field: "template",
            reason: format!("template '{}' is not allowed (pve.templates)", req.template),
        });
    }
    let app = req.app.as_str();
    if !matches!(app, "wordpress" | "none") && !apps.iter().any(|a| a == app) {
        return Err(Invalid {
            field: "app",
            reason: format!(
                "unknown app '{app}'; known: wordpress, none{}",
                apps.iter().map(|a| format!(", {a}")).collect::<String>()
            ),
        });
    }
    Ok((cores, memory, disk))
}

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
    let coordinator = Coordinator::new(
        settings.saga.clone(),
        settings.pve.templates.clone(),
        settings.installer.apps.keys().cloned().collect(),
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
    let sync_task = if settings.saga.lease_sync_interval.is_zero() {
        None
    } else {
        match pvefleet_core::pve::client(&settings.pve) {
            Ok(pve) => Some(tokio::spawn(leases::run_sync(
                pool.clone(),
                pve,
                settings.saga.clone(),
                shutdown.clone(),
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "No PVE client: vmid leases are not cross-checked with PVE ahead of time.");
                None
            }
        }
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
