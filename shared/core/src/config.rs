//! Typed, layered, fail-fast configuration: defaults < TOML file < `PVEFLEET_*` environment.
//!
//! Nesting in the environment uses `__`: `PVEFLEET_BUS__URL`. Any key may instead be given as a
//! file with a `_FILE` suffix (`PVEFLEET_DB__URL_FILE=/run/secrets/db`), for container secrets.
//! Unknown keys are errors, so a typo never silently falls back to a default.

use serde::{Deserialize, Serialize};

mod autoscaler;
mod backup;
mod bus;
mod db;
mod edge;
mod ha;
mod installer;
mod intake;
mod load;
mod nethotplug;
mod notifier;
mod process;
mod provisioner;
mod pve;
mod saga;

pub use autoscaler::*;
pub use backup::*;
pub use bus::*;
pub use db::*;
pub use edge::*;
pub use ha::*;
pub use installer::*;
pub use intake::*;
pub use load::*;
pub use nethotplug::*;
pub use notifier::*;
pub use process::*;
pub use provisioner::*;
pub use pve::*;
pub use saga::*;

/// The environment variable prefix.
pub const ENV_PREFIX: &str = "PVEFLEET_";
/// The environment variable naming the config file (default `pvefleet.toml` if it exists).
pub const CONFIG_FILE_ENV: &str = "PVEFLEET_CONFIG";

/// Every setting of a pvefleet process.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// RabbitMQ.
    pub bus: BusSettings,
    /// Postgres.
    pub db: DbSettings,
    /// Logs.
    pub telemetry: TelemetrySettings,
    /// The ops HTTP listener (`/metrics`, `/healthz`, `/readyz`).
    pub http: HttpSettings,
    /// The consumer runner.
    pub worker: WorkerSettings,
    /// The outbox relay.
    pub outbox: OutboxSettings,
    /// The Proxmox VE API.
    pub pve: PveSettings,
    /// The provisioner: how containers are built and torn down.
    pub provisioner: ProvisionerSettings,
    /// The ha service: how containers are made highly available.
    pub ha: HaSettings,
    /// The saga coordinator: sites, plans, leases and providers.
    pub saga: SagaSettings,
    /// The edge service: how the DNS and reverse-proxy providers are reached.
    pub edge: EdgeSettings,
    /// The installer: how apps get into containers.
    pub installer: InstallerSettings,
    /// Intake: fair use per token and per owner.
    pub intake: IntakeSettings,
    /// The autoscaler.
    pub autoscaler: AutoscalerSettings,
    /// Network hotplug and SDN VNet binding.
    pub nethotplug: NethotplugSettings,
    /// The notifier: channels, operators, routes.
    pub notifier: NotifierSettings,
    /// Backups: the default policy, job sync, retention of the fleet's own backups.
    pub backup: BackupSettings,
}
