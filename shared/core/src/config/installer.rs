//! Installer settings (`[installer]`): how apps get into containers, and the apps besides WordPress.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// An app the installer can put into a container, besides the built-in `wordpress`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// The setup script, run with `bash -s -- SITE_URL TITLE ADMIN_EMAIL ADMIN_USER` inside the
    /// container; its exit code is the verdict.
    pub script: PathBuf,
}

/// How the installer reaches containers: `pct exec` on the node that hosts each one, over
/// ssh (or locally on a PVE node), with the setup script on stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstallerSettings {
    /// `ssh` (to the node that hosts the container), `local` (the worker runs on the node), or
    /// `pvesim`: pvesim's simulated `pct exec` at `pve.url`, a test and demo transport that runs
    /// nothing (what `pvefleet dev` uses).
    pub transport: String,
    /// The ssh user on the nodes (root, or one allowed `pct exec` through sudo).
    pub ssh_user: String,
    /// The ssh port of the nodes.
    pub ssh_port: u16,
    /// The private key; none: ssh's defaults and agent.
    pub ssh_key: Option<PathBuf>,
    /// The known_hosts file holding the nodes' host keys; none: ssh's default.
    pub known_hosts: Option<PathBuf>,
    /// Accept and remember an unknown host key (`accept-new`). Off: unknown keys are refused.
    pub accept_new_host_keys: bool,
    /// The address to ssh to per node name; a node not listed is reached by its name.
    pub node_addresses: std::collections::BTreeMap<String, String>,
    /// Limit on opening an ssh connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The `pct` command on the nodes (`sudo pct` for a non-root user).
    pub pct: String,
    /// Readiness probes (`pct exec VMID -- true`) before giving up for now.
    pub ready_attempts: u32,
    /// The first wait between readiness probes; it doubles, up to 30 s.
    #[serde(with = "humantime_serde")]
    pub ready_delay: Duration,
    /// Limit on one setup script run.
    #[serde(with = "humantime_serde")]
    pub script_timeout: Duration,
    /// The key that encrypts sites' credentials in Postgres: 32 bytes, base64.
    pub secrets_key: Option<Secret>,
    /// Apps besides `wordpress`, by name.
    pub apps: std::collections::BTreeMap<String, AppSettings>,
}

impl Default for InstallerSettings {
    fn default() -> Self {
        Self {
            transport: "ssh".into(),
            ssh_user: "root".into(),
            ssh_port: 22,
            ssh_key: None,
            known_hosts: None,
            accept_new_host_keys: false,
            node_addresses: Default::default(),
            connect_timeout: Duration::from_secs(10),
            pct: "pct".into(),
            ready_attempts: 10,
            ready_delay: Duration::from_secs(2),
            script_timeout: Duration::from_secs(30 * 60),
            secrets_key: None,
            apps: Default::default(),
        }
    }
}
