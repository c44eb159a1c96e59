//! Proxmox VE API settings (`[pve]`): where, as whom, and how to trust it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// How TLS certificates of the PVE API are checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PveTls {
    /// The system's trust store (the default).
    #[default]
    Verified,
    /// Only certificates signed by the CA in `ca_file` (PVE's own cluster CA).
    CaFile,
    /// Only the certificate whose SHA-256 fingerprint is `fingerprint` (pinning).
    Fingerprint,
    /// No checks at all; logs a warning. Only for a lab.
    Insecure,
}

/// The Proxmox VE API: where, as whom, and how to trust it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PveSettings {
    /// `https://pve1.lan:8006`.
    pub url: String,
    /// An API token id, `USER@REALM!TOKENID` (preferred).
    pub token_id: Option<String>,
    /// The token's secret.
    pub token_secret: Option<Secret>,
    /// A user, `USER@REALM`, for ticket login when no token is set.
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<Secret>,
    /// Certificate checking.
    pub tls: PveTls,
    /// The CA file for `tls = "ca-file"`.
    pub ca_file: Option<PathBuf>,
    /// The SHA-256 fingerprint for `tls = "fingerprint"` (`AB:CD:...`).
    pub fingerprint: Option<String>,
    /// Limit on one API request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Limit on following a task (create, start, ...) to its end.
    #[serde(with = "humantime_serde")]
    pub task_timeout: Duration,
    /// Retries of a read (GET) that failed transiently, with backoff from 100 ms; writes are
    /// never retried by the client (the handlers are idempotent and decide).
    pub read_retries: usize,
    /// Container templates the fleet creates from (`local:vztmpl/...`).
    pub templates: Vec<String>,
}

impl Default for PveSettings {
    fn default() -> Self {
        Self {
            url: "https://127.0.0.1:8006".into(),
            token_id: None,
            token_secret: None,
            user: None,
            password: None,
            tls: PveTls::Verified,
            ca_file: None,
            fingerprint: None,
            request_timeout: Duration::from_secs(30),
            task_timeout: Duration::from_secs(600),
            read_retries: 2,
            templates: vec!["local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst".into()],
        }
    }
}
