//! PVE API errors, classified transient or permanent (DESIGN.md §7, pve-behaviour.md §2.5).
//!
//! The text comes from the JSON `message` or, on servers before libpve-http-server 5.2.0,
//! the HTTP reason phrase. A 400 keeps its per-parameter `errors` map.

use std::collections::BTreeMap;

/// Whether retrying the same call may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Connection trouble, timeouts, proxy pseudo-codes 595–599, locks, busy workers.
    Transient,
    /// Bad parameters, permissions, unknown paths, missing or already existing objects.
    Permanent,
}

/// What kind of permanent failure, when PVE says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The object does not exist ("does not exist", "no such resource", ...).
    NotFound,
    /// The object exists already.
    AlreadyExists,
    /// Locked ("CT is locked", "can't lock file").
    Locked,
    /// Parameter verification failed (400).
    InvalidParameters,
    /// Permission check failed (403) or authentication failed (401).
    Forbidden,
    /// No handler (501): an unknown path or a PVE-9-only path on PVE 8.
    NotImplemented,
    /// A task ran and ended in error.
    TaskFailed,
    /// Anything else.
    Other,
}

/// A failed PVE call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{method} {path}: {}{message}", status.map(|s| format!("{s} ")).unwrap_or_default())]
pub struct PveError {
    /// HTTP method.
    pub method: String,
    /// API path.
    pub path: String,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// PVE's message (or the reason phrase, or the transport error).
    pub message: String,
    /// Per-parameter errors of a 400.
    pub errors: BTreeMap<String, String>,
    /// Transient or permanent.
    pub class: Class,
    /// The kind of failure.
    pub reason: Reason,
    /// The last lines of a failed task's log.
    pub task_log: Vec<String>,
}

impl PveError {
    /// Classifies an HTTP error response.
    pub fn from_response(
        method: &str,
        path: &str,
        status: u16,
        message: String,
        errors: BTreeMap<String, String>,
    ) -> Self {
        let (class, reason) = classify(status, &message, &errors);
        Self {
            method: method.into(),
            path: path.into(),
            status: Some(status),
            message,
            errors,
            class,
            reason,
            task_log: Vec::new(),
        }
    }

    /// A transport failure (connect, TLS, timeout, reset): always transient.
    pub fn transport(method: &str, path: &str, message: String) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            status: None,
            message,
            errors: BTreeMap::new(),
            class: Class::Transient,
            reason: Reason::Other,
            task_log: Vec::new(),
        }
    }

    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        self.class == Class::Transient
    }
}

/// The classification rules, from status and message.
pub fn classify(status: u16, message: &str, errors: &BTreeMap<String, String>) -> (Class, Reason) {
    let m = message.to_ascii_lowercase();
    let all = errors
        .values()
        .map(|v| v.to_ascii_lowercase())
        .chain(std::iter::once(m.clone()))
        .collect::<Vec<_>>();
    let any = |needles: &[&str]| all.iter().any(|t| needles.iter().any(|n| t.contains(n)));
    // "CT 101 already exists", HA's "resource ID 'ct:100' already defined", snapshots'
    // "snapshot name 'x' already used".
    if any(&["already exists", "already defined", "already used"]) {
        return (Class::Permanent, Reason::AlreadyExists);
    }
    match status {
        595..=599 => (Class::Transient, Reason::Other),
        401 | 403 => (Class::Permanent, Reason::Forbidden),
        404 => (Class::Permanent, Reason::NotFound),
        501 => (Class::Permanent, Reason::NotImplemented),
        400 => (Class::Permanent, Reason::InvalidParameters),
        _ if any(&["is locked", "can't lock file", "got timeout"]) => (Class::Transient, Reason::Locked),
        _ if any(&["got no worker upid", "temporarily unavailable", "try again"]) => (Class::Transient, Reason::Other),
        _ if any(&[
            "does not exist",
            "no such resource",
            "no such ha",
            "no such file or directory",
            "not found",
        ]) =>
        {
            (Class::Permanent, Reason::NotFound)
        }
        500..=594 => (Class::Transient, Reason::Other),
        _ => (Class::Permanent, Reason::Other),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn c(status: u16, msg: &str) -> (Class, Reason) {
        classify(status, msg, &BTreeMap::new())
    }

    #[test]
    fn pve_failures_are_classified_as_the_notes_say() {
        assert_eq!(
            c(500, "create resource failed: resource ID 'ct:100' already defined"),
            (Class::Permanent, Reason::AlreadyExists)
        );
        assert_eq!(
            c(500, "snapshot name 'initial' already used"),
            (Class::Permanent, Reason::AlreadyExists)
        );
        assert_eq!(
            c(500, "CT 101 already exists on node 'pve1'"),
            (Class::Permanent, Reason::AlreadyExists)
        );
        assert_eq!(c(500, "CT is locked (create)"), (Class::Transient, Reason::Locked));
        assert_eq!(
            c(500, "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout"),
            (Class::Transient, Reason::Locked)
        );
        assert_eq!(
            c(500, "Configuration file 'nodes/pve/lxc/101.conf' does not exist"),
            (Class::Permanent, Reason::NotFound)
        );
        assert_eq!(
            c(500, "no such resource 'ct:201'"),
            (Class::Permanent, Reason::NotFound)
        );
        assert_eq!(
            c(500, "got no worker upid - start worker failed"),
            (Class::Transient, Reason::Other)
        );
        assert_eq!(c(500, "unexpected failure"), (Class::Transient, Reason::Other));
        assert_eq!(
            c(501, "Method 'GET /cluster/ha/rules' not implemented"),
            (Class::Permanent, Reason::NotImplemented)
        );
        assert_eq!(
            c(403, "Permission check failed (/vms/100, VM.Allocate)"),
            (Class::Permanent, Reason::Forbidden)
        );
        assert_eq!(c(595, "Connection refused"), (Class::Transient, Reason::Other));
        assert_eq!(c(596, "Connection timed out"), (Class::Transient, Reason::Other));
        assert_eq!(
            c(400, "Parameter verification failed."),
            (Class::Permanent, Reason::InvalidParameters)
        );
        let errors = BTreeMap::from([("vmid".to_string(), "VM 218 already exists".to_string())]);
        assert_eq!(
            classify(400, "Parameter verification failed.", &errors),
            (Class::Permanent, Reason::AlreadyExists)
        );
    }
}
