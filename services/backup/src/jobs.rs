//! Keeping PVE's cluster backup jobs in step with the policies: one job per enabled policy
//! that has sites (`pvefleet-<policy>`), its vmid list the policy's active sites, created,
//! updated and removed idempotently. Jobs whose id does not start with `pvefleet-` are an
//! operator's and are never touched. PVE runs the jobs itself, so backups go on while the
//! fleet is down; PVE also drops a destroyed guest from a job (and a job it empties), which
//! the next sync puts right.

use std::collections::BTreeMap;

use pvefleet_core::audit::{self, Actor, Entry};
use pvefleet_proxmox::client::backup::BackupJob;
use pvefleet_proxmox::client::{Params, PveClient};
use serde::Serialize;
use serde_json::json;

use crate::policy::{self, JOB_PREFIX, Policy};

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Jobs created.
    pub created: Vec<String>,
    /// Jobs changed.
    pub updated: Vec<String>,
    /// Jobs removed.
    pub removed: Vec<String>,
    /// Jobs already as they should be.
    pub unchanged: Vec<String>,
    /// Jobs PVE refused to create, change or remove, with its words (tried again next sync).
    pub failed: Vec<(String, String)>,
}

impl SyncReport {
    /// Whether it changed anything.
    pub fn changed(&self) -> bool {
        !(self.created.is_empty() && self.updated.is_empty() && self.removed.is_empty())
    }
}

/// The comment a managed job carries.
fn comment(p: &Policy) -> String {
    format!(
        "pvefleet policy '{}': managed by pvefleet, changes here are overwritten",
        p.name
    )
}

/// What a policy's job should hold, as the parameters written to PVE.
fn desired(p: &Policy, vmids: &[u32]) -> Vec<(&'static str, String)> {
    let list: Vec<String> = vmids.iter().map(u32::to_string).collect();
    vec![
        ("schedule", p.schedule.clone()),
        ("storage", p.storage.clone()),
        ("mode", p.mode.clone()),
        ("compress", p.compress.clone()),
        ("vmid", list.join(",")),
        ("prune-backups", p.keep().write()),
        ("enabled", "1".into()),
        ("comment", comment(p)),
        ("notes-template", notes(p)),
    ]
}

fn notes(p: &Policy) -> String {
    "{{guestname}} ({{vmid}}), pvefleet policy ".to_string() + &p.name
}

/// Keys of a job that choose guests or nodes some other way: an operator's addition to a
/// managed job, removed so that the job backs up exactly the policy's sites.
const FOREIGN: &[&str] = &["all", "exclude", "pool", "node"];

/// Whether an existing job already holds what `want` says.
fn matches(job: &BackupJob, p: &Policy, vmids: &[u32]) -> bool {
    let mut have = job.vmids();
    have.sort_unstable();
    have == vmids
        && job.schedule.as_deref() == Some(p.schedule.as_str())
        && job.storage.as_deref() == Some(p.storage.as_str())
        && job.mode.as_deref() == Some(p.mode.as_str())
        && job.compress.as_deref() == Some(p.compress.as_str())
        && job.prune_backups.as_ref() == Some(&p.keep())
        && job.enabled != Some(false)
        && job.comment.as_deref() == Some(comment(p).as_str())
        && job.notes_template.as_deref() == Some(notes(p).as_str())
        && FOREIGN.iter().all(|k| !job.other.contains_key(*k))
}

fn params(items: Vec<(&'static str, String)>) -> Params {
    items.into_iter().fold(Params::new(), |acc, (k, v)| acc.set(k, v))
}

/// The actor of the service's own changes, in the audit trail.
pub fn service_actor() -> Actor {
    Actor {
        name: "service:backup".into(),
        token_id: None,
        owner: None,
        request_id: None,
    }
}

/// Brings PVE's backup jobs in step with `policies` and the active sites (each site's
/// policy in `sites`: vmid → policy name). Every change is audited through `db`.
pub async fn sync(
    pve: &PveClient,
    db: &tokio_postgres::Client,
    policies: &BTreeMap<String, Policy>,
    sites: &[policy::CoveredSite],
) -> anyhow::Result<SyncReport> {
    let mut by_policy: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for s in sites {
        by_policy.entry(s.policy.as_str()).or_default().push(s.vmid);
    }
    for (name, vmids) in by_policy.iter_mut() {
        vmids.sort_unstable();
        vmids.dedup();
        if !policies.contains_key(*name) {
            tracing::warn!(
                policy = name,
                sites = vmids.len(),
                "Sites follow a policy that does not exist; they have no backup job."
            );
        }
    }
    let jobs = pve.backup_jobs().await?;
    let mut report = SyncReport::default();
    let actor = service_actor();
    // What should exist: enabled policies with sites.
    let mut wanted: BTreeMap<String, (&Policy, &Vec<u32>)> = BTreeMap::new();
    for (name, vmids) in &by_policy {
        if let Some(p) = policies.get(*name).filter(|p| p.enabled) {
            wanted.insert(p.job_id(), (p, vmids));
        }
    }
    for job in jobs.iter().filter(|j| j.id.starts_with(JOB_PREFIX)) {
        match wanted.get(&job.id) {
            None => {
                if let Err(e) = pve.backup_job_delete(&job.id).await {
                    report.failed.push((job.id.clone(), e.to_string()));
                    continue;
                }
                audit::record(
                    db,
                    &actor,
                    &Entry::new("backup.job.delete", job.id.clone()).detail(json!({ "vmids": job.vmids() })),
                )
                .await?;
                report.removed.push(job.id.clone());
            }
            Some((p, vmids)) if !matches(job, p, vmids) => {
                let foreign: Vec<&str> = FOREIGN.iter().copied().filter(|k| job.other.contains_key(*k)).collect();
                let mut update = params(desired(p, vmids));
                if !foreign.is_empty() {
                    update = update.set("delete", foreign.join(","));
                }
                if let Err(e) = pve.backup_job_update(&job.id, update).await {
                    report.failed.push((job.id.clone(), e.to_string()));
                    continue;
                }
                audit::record(
                    db,
                    &actor,
                    &Entry::new("backup.job.update", job.id.clone())
                        .detail(json!({ "policy": p.name, "vmids": vmids, "was": job.vmids() })),
                )
                .await?;
                report.updated.push(job.id.clone());
            }
            Some(_) => report.unchanged.push(job.id.clone()),
        }
    }
    for (id, (p, vmids)) in &wanted {
        if jobs.iter().any(|j| &j.id == id) {
            continue;
        }
        let mut items = desired(p, vmids);
        items.push(("id", id.clone()));
        if let Err(e) = pve.backup_job_create(params(items)).await {
            report.failed.push((id.clone(), e.to_string()));
            continue;
        }
        audit::record(
            db,
            &actor,
            &Entry::new("backup.job.create", id.clone()).detail(json!({ "policy": p.name, "vmids": vmids })),
        )
        .await?;
        report.created.push(id.clone());
    }
    for (id, why) in &report.failed {
        tracing::warn!(
            job = id,
            error = why,
            "PVE refused a change to a backup job; trying again at the next sync."
        );
    }
    for (action, n) in [
        ("create", report.created.len()),
        ("update", report.updated.len()),
        ("delete", report.removed.len()),
    ] {
        metrics::counter!("pvefleet_backup_job_changes_total", "action" => action).increment(n as u64);
    }
    Ok(report)
}
