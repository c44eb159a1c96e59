//! pvesim: an in-memory Proxmox VE API for tests, demos and benchmarks.
//!
//! It answers the endpoints the fleet uses the way PVE does (pve-behaviour.md): the `{data}`
//! envelope; every request checked against the official schema's rules (400 with an `errors`
//! map); 500 with PVE's messages; 501 for unknown paths and for PVE 9 paths in PVE 8 mode;
//! 403 for missing privileges; `lock: create` while a create task runs; config digests;
//! pending changes and hotplug rules on running containers; snapshots; HA resources, groups
//! and rules; SDN changes pending until applied; `/cluster/resources` driven by per-container
//! load profiles. Container configs are real config text, through the codec. A control API
//! under `/_sim` injects faults, and `/_sim/exec` simulates `pct exec` for the installer's
//! test and demo transport.

mod api;
mod backup;
mod cluster;
mod control;
mod dispatch;
mod exec;
mod faults;
mod ha;
mod lxc;
mod rules;
mod sdn;
mod serve;
mod state;
mod tasks;

use std::sync::{Arc, Mutex};

use axum::Router;

pub(crate) use api::{ApiError, GZIP_OVER, gzip, ok, param};
pub use backup::BackupVolume;
pub use exec::{ExecFault, ExecOutput, ExecRecord};
pub use faults::Fault;
pub use state::{ALL_PRIVILEGES, Load, Recorded, SimConfig, SimState};

/// A simulator instance. Clone to share.
#[derive(Clone)]
pub struct Sim {
    pub(crate) state: Arc<Mutex<SimState>>,
}

impl Sim {
    /// A simulator with the given nodes, version and token.
    pub fn new(config: SimConfig) -> Self {
        Self {
            state: Arc::new(Mutex::new(SimState::new(config))),
        }
    }

    /// The HTTP router: `/api2/json/...` and the control API `/_sim/...`.
    pub fn router(&self) -> Router {
        Router::new().fallback(dispatch::dispatch).with_state(self.clone())
    }

    /// Locks the state (a poisoned lock is recovered: the state is plain data).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
