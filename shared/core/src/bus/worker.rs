//! The one way a service assembles its worker: the fleet's topology, a publisher named after
//! the service, its work queue, the runner's settings, and then what differs (the inbox, a
//! database for it, readiness). `Worker::fleet("edge", settings).ready(r).run(router, stop)`.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::runner::{WorkerDeps, WorkerSpec, run_worker};
use super::topology::Topology;
use super::{Publisher, Router};
use crate::Settings;
use crate::http::ReadyFlag;

/// A worker being assembled.
pub struct Worker {
    deps: WorkerDeps,
    spec: WorkerSpec,
}

impl Worker {
    /// The worker of `service` on its work queue (`pvefleet.{service}`), declaring the fleet's
    /// topology, with the runner's settings from `settings` (`[bus]`, `[worker]`).
    pub fn fleet(service: &str, settings: &Settings) -> Self {
        let topology = Topology::fleet(&settings.bus);
        let publisher = Publisher::new(&settings.bus, service, Some(topology.clone()));
        let queue = pvefleet_contracts::routing::work_queue(service);
        Self {
            deps: WorkerDeps {
                bus: settings.bus.clone(),
                topology,
                publisher,
                db: None,
                ready: None,
            },
            spec: WorkerSpec::from_settings(service, &queue, settings),
        }
    }

    /// Handlers run in one inbox transaction per batch on `pool`, and `after_commit` is
    /// notified after each commit (the outbox relay, so what a batch queued goes out at once).
    pub fn inbox(mut self, pool: deadpool_postgres::Pool, after_commit: Option<Arc<Notify>>) -> Self {
        self.deps.db = Some(pool);
        self.spec.inbox = true;
        self.spec.after_commit = after_commit;
        self
    }

    /// Set while the worker consumes.
    pub fn ready(mut self, ready: Option<ReadyFlag>) -> Self {
        self.deps.ready = ready;
        self
    }

    /// The publisher the worker uses (for handlers that publish on their own).
    pub fn publisher(&self) -> &Publisher {
        &self.deps.publisher
    }

    /// The topology the worker declares.
    pub fn topology(&self) -> &Topology {
        &self.deps.topology
    }

    /// Consumes until `shutdown`, then drains (see `run_worker`).
    pub async fn run(self, router: Router, shutdown: CancellationToken) -> anyhow::Result<()> {
        run_worker(self.deps, router, self.spec, shutdown).await
    }
}
