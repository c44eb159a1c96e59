//! The watchdog, in the reconciler's pass and from its cluster read: a fleet container (tag
//! `pvefleet`) that is not HA-managed, not on hold and found stopped is started, at most
//! `ha.watchdog_max_restarts` times an hour; then a `restart_loop` alert, and no more tries
//! until it is found running again.
//!
//! A container that a saga or a worker is acting on is never touched. The cluster read is a
//! snapshot, and starting containers one after another takes time, so before each start the
//! watchdog takes the container's per-vmid lock (held by the provisioner, nethotplug and the
//! autoscaler while they act; busy means leave it), asks Postgres whether a saga of its site
//! is in flight, and reads the container's status again (stopped, no PVE lock, no hold tag).
//! Without a database it cannot know, so it starts nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use pvefleet_core::db::{Sql, VmidLock};
use pvefleet_proxmox::client::api::Resource;
use pvefleet_proxmox::client::ha::HaResource;

use crate::{FLEET_TAG, HA_TAG, Ha, Repaired, sid};

/// Recent starts per container, and the ones the watchdog gave up on.
#[derive(Default)]
pub(crate) struct Memory {
    starts: HashMap<u32, VecDeque<Instant>>,
    gave_up: HashSet<u32>,
}

/// Whether a saga of the site on `vmid` is in flight (or waits for an operator), or the site
/// is between states.
const SAGA_IN_FLIGHT: &str = "SELECT EXISTS (
        SELECT 1 FROM sites s
        WHERE s.vmid = $1
          AND (s.state IN ('requested', 'provisioning', 'deprovisioning', 'restoring')
               OR EXISTS (SELECT 1 FROM sagas g WHERE g.site_id = s.id
                          AND g.state IN ('running', 'compensating', 'suspended', 'compensation_failed'))))";

/// Why a stopped container was left alone right before a start.
fn skipped(vmid: u32, reason: &'static str) {
    tracing::debug!(vmid, reason, "The watchdog left a stopped container alone.");
    metrics::counter!("pvefleet_watchdog_skipped_total", "reason" => reason).increment(1);
}

impl Ha {
    /// The watchdog's part of a pass over `rows` (the pass's cluster read) and `ha`.
    pub(crate) async fn watch(&self, rows: &[Resource], ha: &[HaResource], repaired: &mut Repaired) {
        let me = &self.inner;
        let hour = Duration::from_secs(3600);
        for r in rows.iter().filter(|r| r.kind == "lxc") {
            let Some(vmid) = r.vmid.and_then(|v| u32::try_from(v).ok()) else {
                continue;
            };
            let tags = r.tag_list();
            let managed = tags.contains(&FLEET_TAG) && !tags.contains(&me.settings.watchdog_hold_tag.as_str());
            // HA's own (or about to be, by its tag): the HA manager starts it, not the watchdog.
            let ha_managed = r.hastate.is_some() || tags.contains(&HA_TAG) || ha.iter().any(|h| h.sid == sid(vmid));
            if r.status.as_deref() == Some("running") {
                if let Ok(mut w) = me.watchdog.lock() {
                    w.gave_up.remove(&vmid);
                }
                continue;
            }
            if !managed || ha_managed || r.status.as_deref() != Some("stopped") || r.lock.is_some() {
                continue;
            }
            let Some(node) = r.node.clone() else { continue };
            // Within the budget of starts for the last hour, or giving up now.
            let within_budget = {
                let Ok(mut w) = me.watchdog.lock() else { continue };
                if w.gave_up.contains(&vmid) {
                    continue;
                }
                let now = Instant::now();
                let starts = w.starts.entry(vmid).or_default();
                while starts.front().is_some_and(|t| now.duration_since(*t) > hour) {
                    starts.pop_front();
                }
                let within = starts.len() < me.settings.watchdog_max_restarts as usize;
                if !within {
                    w.gave_up.insert(vmid);
                }
                within
            };
            if !within_budget {
                repaired.restart_loops += 1;
                self.restart_loop(vmid, &node).await;
                continue;
            }
            // The lock is held through the start, so no worker acts on the container meanwhile.
            let Some(_lock) = self.clear_to_start(vmid, &node).await else {
                continue;
            };
            match me.pve.lxc_start(&node, vmid).await {
                Ok(_) => {
                    if let Ok(mut w) = me.watchdog.lock() {
                        w.starts.entry(vmid).or_default().push_back(Instant::now());
                    }
                    repaired.started += 1;
                    metrics::counter!("pvefleet_watchdog_starts_total").increment(1);
                    tracing::warn!(vmid, node, "The watchdog started a stopped fleet container.");
                }
                Err(e) => tracing::warn!(vmid, node, error = %e, "The watchdog could not start a container."),
            }
        }
    }

    /// The container's lock when the watchdog may start it now: nobody holds its vmid lock, no
    /// saga of its site is in flight, and PVE says again that it is stopped, unlocked and not
    /// on hold. `None` (with the reason counted) otherwise.
    async fn clear_to_start(&self, vmid: u32, node: &str) -> Option<VmidLock> {
        let me = &self.inner;
        let Some(pool) = &me.db else {
            skipped(vmid, "no_database");
            return None;
        };
        let lock = match VmidLock::try_acquire(pool, vmid).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                skipped(vmid, "vmid_locked");
                return None;
            }
            Err(e) => {
                tracing::warn!(
                    vmid,
                    error = format!("{e:#}"),
                    "The watchdog cannot take a vmid lock; it starts nothing now."
                );
                skipped(vmid, "database_error");
                return None;
            }
        };
        let in_flight = match lock.client() {
            Some(c) => c.one(SAGA_IN_FLIGHT, &[&i32::try_from(vmid).unwrap_or(i32::MAX)]).await,
            None => return None,
        };
        match in_flight {
            Ok(row) if row.get::<_, bool>(0) => {
                skipped(vmid, "saga_in_flight");
                return None;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(vmid, error = %pvefleet_core::db::describe(&e), "The watchdog cannot read the sagas; it starts nothing now.");
                skipped(vmid, "database_error");
                return None;
            }
        }
        let status = match me.pve.lxc_status(node, vmid).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(vmid, node, error = %e, "The watchdog cannot read a container's status again.");
                skipped(vmid, "status_unknown");
                return None;
            }
        };
        let hold = status
            .tags
            .as_deref()
            .is_some_and(|t| t.split([';', ',', ' ']).any(|t| t == me.settings.watchdog_hold_tag));
        if status.status != "stopped" {
            skipped(vmid, "not_stopped");
            None
        } else if status.lock.is_some() {
            skipped(vmid, "pve_lock");
            None
        } else if hold {
            skipped(vmid, "hold");
            None
        } else {
            Some(lock)
        }
    }

    /// A container that keeps stopping: an ERROR for the operator and a `restart_loop` alert.
    async fn restart_loop(&self, vmid: u32, node: &str) {
        let me = &self.inner;
        tracing::error!(
            vmid,
            node,
            max = me.settings.watchdog_max_restarts,
            "A fleet container keeps stopping; the watchdog gives up on it."
        );
        let Some(p) = &me.publisher else { return };
        let alert = pvefleet_contracts::messages::ResourceAlert {
            subject: format!("lxc/{vmid}"),
            kind: "restart_loop".into(),
            state: "raised".into(),
            value: f64::from(me.settings.watchdog_max_restarts),
            threshold: f64::from(me.settings.watchdog_max_restarts),
            node: Some(node.to_string()),
        };
        let origin = pvefleet_core::bus::outgoing::Origin {
            app_id: Some("ha".into()),
            ..Default::default()
        };
        match pvefleet_core::bus::Outgoing::message(&alert, &origin) {
            Ok(out) => {
                if let Err(e) = p.publish(&out).await {
                    tracing::error!(vmid, error = %e, "Cannot publish the restart_loop alert.");
                }
            }
            Err(e) => tracing::error!(error = %e, "Cannot encode the restart_loop alert."),
        }
    }
}
