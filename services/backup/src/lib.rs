//! The backup service (issue 20): keeps PVE's cluster backup jobs in step with the fleet's
//! backup policies, so PVE backs sites up on schedule even while the fleet is down; takes the
//! fleet's own backups (`backup.create`: on demand, final, before a restore) and follows each
//! task to its end; and keeps the fleet's record of every backup in step with the storages
//! (new backups recorded, pruned ones marked, final backups removed when their retention
//! ends), each change audited; and records every container's configuration history, putting
//! a recorded version back on request ([`history`]).

use std::sync::Arc;
use std::time::Duration;

use pvefleet_core::config::{BackupSettings, SagaSettings};
use pvefleet_core::db::Sql;
use pvefleet_proxmox::client::PveClient;
use tokio_util::sync::CancellationToken;

pub mod create;
pub mod history;
pub mod inventory;
pub mod jobs;
pub mod ops;
pub mod policy;
pub mod restore;
pub mod verify;

/// The advisory lock class of the sync's leadership: one replica syncs at a time.
const LEADER_CLASS: i32 = 0x0bac_0001;

/// The service's handlers, sharing one PVE client.
#[derive(Clone)]
pub struct Backup {
    inner: Arc<Inner>,
}

struct Inner {
    pve: PveClient,
    pool: deadpool_postgres::Pool,
    settings: BackupSettings,
    saga: SagaSettings,
    lock_timeout: Duration,
}

impl Backup {
    /// Handlers using `pve` (whose task timeout should be `backup.task_timeout`).
    pub fn new(pve: PveClient, pool: deadpool_postgres::Pool, settings: &pvefleet_core::Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                pve,
                pool,
                settings: settings.backup.clone(),
                saga: settings.saga.clone(),
                lock_timeout: settings.pve.task_timeout,
            }),
        }
    }

    /// The router for the service's queue.
    pub fn router(&self) -> pvefleet_core::bus::Router {
        pvefleet_core::bus::Router::new()
            .command::<pvefleet_contracts::messages::BackupCreate, _>(self.clone())
            .command::<pvefleet_contracts::messages::BackupRestore, _>(self.clone())
            .command::<pvefleet_contracts::messages::ConfigRestore, _>(self.clone())
            .route::<pvefleet_contracts::messages::ContainerCreated, _>(self.clone())
            .route::<pvefleet_contracts::messages::ContainerScaled, _>(self.clone())
            .route::<pvefleet_contracts::messages::NetAttached, _>(self.clone())
            .route::<pvefleet_contracts::messages::NetUpdated, _>(self.clone())
            .route::<pvefleet_contracts::messages::NetDetached, _>(self.clone())
            .route::<pvefleet_contracts::messages::VnetBound, _>(self.clone())
            .route::<pvefleet_contracts::messages::VnetUnbound, _>(self.clone())
            .route::<pvefleet_contracts::messages::BackupRestored, _>(self.clone())
    }
}

/// What one sync pass did: the jobs, then the records.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncOutcome {
    /// Whether this process held the lead (another replica may be syncing).
    pub leader: bool,
    /// The jobs.
    pub jobs: jobs::SyncReport,
    /// The records.
    pub inventory: inventory::InventoryReport,
}

/// One sync: the jobs in step with the policies, then the records with the storages. Only
/// one process syncs at a time (a Postgres advisory lock); the others answer `leader: false`.
pub async fn sync_once(
    pve: &PveClient,
    pool: &deadpool_postgres::Pool,
    settings: &BackupSettings,
    saga: &SagaSettings,
) -> anyhow::Result<SyncOutcome> {
    // A connection of its own, closed when dropped: the session lock goes with it even if this
    // pass is cancelled half-way, instead of staying on a pooled connection.
    let db = deadpool_postgres::Object::take(pool.get().await?);
    let leader: bool = db
        .query_one("SELECT pg_try_advisory_lock($1, 0)", &[&LEADER_CLASS])
        .await?
        .get(0);
    if !leader {
        return Ok(SyncOutcome::default());
    }
    let policies = policy::all(&*db).await?;
    let sites = policy::covered_sites(&*db as &dyn Sql, saga, &settings.default_policy).await?;
    // The jobs and the records are independent: one failing does not stop the other.
    let jobs = jobs::sync(pve, &db, &policies, &sites).await;
    let inventory = inventory::scan(pve, &db).await;
    let _ = db.execute("SELECT pg_advisory_unlock($1, 0)", &[&LEADER_CLASS]).await;
    Ok(SyncOutcome {
        leader: true,
        jobs: jobs?,
        inventory: inventory?,
    })
}

/// The PVE client of the backup service: tasks may run `backup.task_timeout`.
pub fn client(settings: &pvefleet_core::Settings) -> anyhow::Result<PveClient> {
    let mut pve = settings.pve.clone();
    pve.task_timeout = settings.backup.task_timeout;
    pvefleet_core::pve::client(&pve)
}

/// Runs the service until `shutdown`: consumes `pvefleet.backup`, relays its outbox, and
/// syncs every `backup.sync_interval`.
pub async fn run(
    settings: &pvefleet_core::Settings,
    pool: deadpool_postgres::Pool,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pve = client(settings)?;
    let service = Backup::new(pve.clone(), pool.clone(), settings);
    let worker = pvefleet_core::bus::Worker::fleet("backup", settings).ready(ready);
    let relay =
        pvefleet_core::db::outbox::OutboxRelay::new(pool.clone(), worker.publisher().clone(), settings.outbox.clone());
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let worker_task = tokio::spawn(worker.run(service.router(), shutdown.clone()));
    let (b, saga) = (&settings.backup, &settings.saga);
    let (pve, pool) = (&pve, &pool);
    let sync = pvefleet_core::periodic::Periodic::new("backup_sync", b.sync_interval)
        .at_once()
        .run(shutdown.clone(), || async {
            let out = sync_once(pve, pool, b, saga).await?;
            if out.jobs.changed() || out.inventory != inventory::InventoryReport::default() {
                tracing::info!(jobs = ?out.jobs, inventory = ?out.inventory, "Backups synced.");
            }
            anyhow::Ok(())
        });
    let probe = verify::Probe {
        runner: pvefleet_installer::runner(settings)?,
        installer: settings.installer.clone(),
    };
    let verifying = async {
        if b.verify_interval.is_zero() {
            return;
        }
        // The first after one interval: a fresh start does not restore a backup at once.
        pvefleet_core::periodic::Periodic::new("backup_verify", b.verify_interval)
            .run(shutdown.clone(), || async {
                verify::verify_once(pve, pool, b, &probe, None).await.map(drop)
            })
            .await;
    };
    // Every container's config, recorded when it changed (the fleet's own changes are
    // recorded as their events arrive; this pass catches an operator's); old versions removed.
    let configs = async {
        if b.config_interval.is_zero() {
            return;
        }
        pvefleet_core::periodic::Periodic::new("config_history", b.config_interval)
            .at_once()
            .run(shutdown.clone(), || async {
                let out = history::record_all(pve, pool, b.config_retention).await?;
                if out.recorded > 0 || out.removed > 0 || out.failed > 0 {
                    tracing::info!(report = ?out, "Config history pass.");
                }
                anyhow::Ok(())
            })
            .await;
    };
    tokio::join!(sync, verifying, configs);
    let _ = relay_task.await;
    worker_task.await??;
    Ok(())
}
