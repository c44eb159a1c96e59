//! Verification: a backup is proved by restoring it. Every `backup.verify_interval`, one
//! replica (an advisory lock) takes the active site whose backups were verified longest ago
//! (never first), restores its latest backup into the scratch container
//! (`backup.verify_vmid`, new MAC addresses), cuts it off the network (its one interface on
//! `backup.verify_bridge` with no address, or none at all), starts it, probes it (running;
//! for WordPress, `wp core is-installed` through the installer's transport), and destroys
//! it, whatever happened. The outcome is recorded on the backup (`verify_state`,
//! `verified_at`, `verify_error`), audited, counted, and told as `backup.verified` (the
//! notifier alerts the operators on a failure).
//!
//! The scratch container is tagged `pvefleet-verify`: one left behind by an interrupted run is
//! removed before the next; a guest in that vmid without the tag is never touched.

use std::time::Duration;

use pvefleet_contracts::SiteId;
use pvefleet_contracts::messages::BackupVerified;
use pvefleet_core::audit::{self, Entry};
use pvefleet_core::bus::Outgoing;
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::config::{BackupSettings, InstallerSettings};
use pvefleet_installer::Runner;
use pvefleet_proxmox::client::api::ResourceType;
use pvefleet_proxmox::client::{Params, PveClient};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::jobs;

/// The advisory lock class of verification: one at a time across replicas.
const VERIFY_CLASS: i32 = 0x0bac_0002;

/// The tag of the scratch container.
pub const VERIFY_TAG: &str = "pvefleet-verify";

/// How verification reaches inside a container: the installer's transport and settings.
pub struct Probe {
    /// `pct exec` on a node.
    pub runner: Box<dyn Runner>,
    /// `pct` and its prefix.
    pub installer: InstallerSettings,
}

/// What one verification pass did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    /// Whether this process held the lead (another replica may be verifying).
    pub leader: bool,
    /// The backup verified, when there was one to verify.
    pub backup_id: Option<Uuid>,
    /// Its site.
    pub site_id: Option<Uuid>,
    /// Its volume.
    pub volid: Option<String>,
    /// `ok` or `failed`.
    pub outcome: Option<String>,
    /// What failed.
    pub error: Option<String>,
    /// Whether the scratch container is gone again.
    pub cleaned_up: bool,
}

/// The backup to verify.
struct Candidate {
    id: Uuid,
    site: Uuid,
    volid: String,
    node: Option<String>,
    app: Option<String>,
}

/// One verification: of `site`'s latest backup, or of the site verified longest ago.
pub async fn verify_once(
    pve: &PveClient,
    pool: &deadpool_postgres::Pool,
    settings: &BackupSettings,
    probe: &Probe,
    site: Option<Uuid>,
) -> anyhow::Result<VerifyReport> {
    let db = deadpool_postgres::Object::take(pool.get().await?);
    let leader: bool = db
        .query_one("SELECT pg_try_advisory_lock($1, 0)", &[&VERIFY_CLASS])
        .await?
        .get(0);
    if !leader {
        return Ok(VerifyReport::default());
    }
    let result = verify_locked(pve, &db, settings, probe, site).await;
    let _ = db.execute("SELECT pg_advisory_unlock($1, 0)", &[&VERIFY_CLASS]).await;
    result
}

async fn verify_locked(
    pve: &PveClient,
    db: &tokio_postgres::Client,
    settings: &BackupSettings,
    probe: &Probe,
    site: Option<Uuid>,
) -> anyhow::Result<VerifyReport> {
    let mut report = VerifyReport {
        leader: true,
        ..VerifyReport::default()
    };
    // Each active site's latest written backup; the site verified longest ago (never first).
    let row = db
        .query_opt(
            "SELECT id, site_id, volid, node, app FROM (
                 SELECT DISTINCT ON (b.site_id) b.id, b.site_id, b.volid, b.node, s.spec->>'app' AS app,
                        (SELECT max(verified_at) FROM backups v WHERE v.site_id = b.site_id) AS last
                 FROM backups b JOIN sites s ON s.id = b.site_id
                 WHERE b.state = 'ok' AND b.volid IS NOT NULL AND s.state = 'active'
                   AND ($1::uuid IS NULL OR b.site_id = $1)
                 ORDER BY b.site_id, b.taken_at DESC NULLS LAST, b.created_at DESC) latest
             ORDER BY last NULLS FIRST, site_id LIMIT 1",
            &[&site],
        )
        .await?;
    let Some(row) = row else {
        return Ok(report);
    };
    let c = Candidate {
        id: row.get(0),
        site: row.get(1),
        volid: row.get(2),
        node: row.get(3),
        app: row.get(4),
    };
    report.backup_id = Some(c.id);
    report.site_id = Some(c.site);
    report.volid = Some(c.volid.clone());
    let vmid = settings.verify_vmid;
    // What an interrupted run left is removed first; a guest not of ours stops the run.
    if let Err(e) = clear_scratch(pve, vmid).await {
        report.error = Some(e.to_string());
        tracing::error!(vmid, error = %e, "The verification's scratch vmid is not free; no verification.");
        return Ok(report);
    }
    let node = match c.node.clone() {
        Some(n) => n,
        None => pve
            .nodes()
            .await?
            .into_iter()
            .find(|n| n.status == "online")
            .map(|n| n.node)
            .ok_or_else(|| anyhow::anyhow!("no online node to verify on"))?,
    };
    tracing::info!(backup = %c.id, volid = %c.volid, node, vmid, "Verifying a backup.");
    let outcome = restore_and_probe(pve, settings, probe, &c, &node, vmid).await;
    report.cleaned_up = match clear_scratch(pve, vmid).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(vmid, error = %e, "The verification's scratch container could not be removed; the next run tries again.");
            false
        }
    };
    let error = outcome.err();
    let state = if error.is_none() { "ok" } else { "failed" };
    report.outcome = Some(state.to_string());
    report.error = error.clone();
    record(db, &c, state, error.as_deref()).await?;
    metrics::counter!("pvefleet_backup_verifications_total", "outcome" => state).increment(1);
    metrics::gauge!("pvefleet_backup_verification_last_ok").set(if error.is_none() { 1.0 } else { 0.0 });
    metrics::gauge!("pvefleet_backup_verification_last_timestamp_seconds").set(chrono::Utc::now().timestamp() as f64);
    match &error {
        None => tracing::info!(backup = %c.id, volid = %c.volid, "The backup restored, started and answered."),
        Some(e) => tracing::error!(backup = %c.id, volid = %c.volid, error = %e, "A backup failed its verification."),
    }
    Ok(report)
}

/// Restores the backup into the scratch vmid, isolates, starts and probes it: what failed, if
/// anything, in words.
async fn restore_and_probe(
    pve: &PveClient,
    settings: &BackupSettings,
    probe: &Probe,
    c: &Candidate,
    node: &str,
    vmid: u32,
) -> Result<(), String> {
    let storage = Some(settings.verify_storage.as_str()).filter(|s| !s.is_empty());
    // Not the fleet's from the first moment (the watchdog starts stopped fleet containers).
    let overrides = Params::new()
        .opt("storage", storage)
        .set("hostname", format!("verify-{vmid}"))
        .set("tags", VERIFY_TAG)
        .set("onboot", 0);
    pve.lxc_restore(node, vmid, &c.volid, false, true, overrides)
        .await
        .map_err(|e| format!("restore: {}", e.message.trim()))?;
    // Off the network before it starts: the site's own address is live elsewhere.
    let config = pve
        .lxc_config(node, vmid, true)
        .await
        .map_err(|e| format!("config: {}", e.message))?;
    let mut nets: Vec<String> = config
        .keys()
        .filter(|k| k.starts_with("net") && k[3..].chars().all(|ch| ch.is_ascii_digit()))
        .cloned()
        .collect();
    nets.sort();
    let mut params = Params::new().set("tags", VERIFY_TAG);
    if settings.verify_bridge.is_empty() {
        if !nets.is_empty() {
            params = params.set("delete", nets.join(","));
        }
    } else {
        params = params.set("net0", format!("name=eth0,bridge={}", settings.verify_bridge));
        let others: Vec<&String> = nets.iter().filter(|n| n.as_str() != "net0").collect();
        if !others.is_empty() {
            params = params.set(
                "delete",
                others.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
            );
        }
    }
    pve.lxc_set_config(node, vmid, params, None)
        .await
        .map_err(|e| format!("isolate: {}", e.message))?;
    pve.lxc_power(node, vmid, "start", Params::new())
        .await
        .map_err(|e| format!("start: {}", e.message.trim()))?;
    let status = pve
        .lxc_status(node, vmid)
        .await
        .map_err(|e| format!("status: {}", e.message))?;
    if status.status != "running" {
        return Err(format!("start: the container is {} after its start", status.status));
    }
    if c.app.as_deref().unwrap_or("wordpress") == "wordpress" {
        // MariaDB and PHP come up with the container; a few tries give them time.
        let mut last = String::new();
        for attempt in 0..5u64 {
            match pvefleet_installer::wordpress_installed(&*probe.runner, &probe.installer, node, vmid).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(why)) => last = why,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_secs(attempt * 2)).await;
        }
        return Err(format!("probe: {last}"));
    }
    Ok(())
}

/// Removes the scratch container if it is there and tagged as a verification's.
async fn clear_scratch(pve: &PveClient, vmid: u32) -> anyhow::Result<()> {
    let rows = pve.resources(Some(ResourceType::Vm)).await?;
    let Some(found) = rows.into_iter().find(|r| r.vmid == Some(u64::from(vmid))) else {
        return Ok(());
    };
    let node = found.node.clone().unwrap_or_default();
    // A restore that failed half-way leaves the archive's config, or a lock and no tags: the
    // vmid is ours only by the tag, or by the lock a failed restore leaves.
    let status = pve.lxc_status(&node, vmid).await?;
    let ours = found.tag_list().contains(&VERIFY_TAG) || status.lock.as_deref() == Some("create");
    anyhow::ensure!(
        ours,
        "guest {vmid} on {node} is not a verification's scratch container (no {VERIFY_TAG} tag); backup.verify_vmid must name a free vmid"
    );
    if status.status == "running" {
        pve.lxc_power(&node, vmid, "stop", Params::new()).await?;
    }
    pve.lxc_destroy(&node, vmid, true, true).await?;
    Ok(())
}

/// Records the outcome on the backup, audits it and tells it, in one transaction.
async fn record(db: &tokio_postgres::Client, c: &Candidate, state: &str, error: Option<&str>) -> anyhow::Result<()> {
    // A session-level connection: the transaction is opened by hand.
    db.batch_execute("BEGIN").await?;
    let done = async {
        db.execute(
            "UPDATE backups SET verify_state = $2, verified_at = now(), verify_error = $3, updated_at = now() WHERE id = $1",
            &[&c.id, &state, &error],
        )
        .await?;
        let owner: Option<String> = db
            .query_opt("SELECT owner FROM sites WHERE id = $1", &[&c.site])
            .await?
            .map(|r| r.get(0));
        let mut entry = Entry::new("backup.verify", c.site.to_string())
            .outcome(state)
            .detail(json!({ "backup_id": c.id, "volid": c.volid, "error": error }));
        if let Some(owner) = owner {
            entry = entry.owner(owner);
        }
        audit::record(db, &jobs::service_actor(), &entry).await?;
        let event = BackupVerified {
            site_id: SiteId(c.site),
            backup_id: c.id,
            volid: c.volid.clone(),
            outcome: state.to_string(),
            error: error.map(str::to_string),
        };
        let origin = Origin {
            correlation_id: Some(c.id),
            app_id: Some("backup".into()),
            ..Origin::default()
        };
        pvefleet_core::db::outbox::enqueue(db, &Outgoing::message(&event, &origin)?).await?;
        anyhow::Ok(())
    }
    .await;
    match done {
        Ok(()) => db.batch_execute("COMMIT").await?,
        Err(e) => {
            let _ = db.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    Ok(())
}
