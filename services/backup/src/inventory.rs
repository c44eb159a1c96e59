//! The fleet's record of backups kept in step with the storages: a backup a PVE job wrote
//! for a fleet container is recorded (`scheduled`) with an audit row; a recorded backup that
//! is gone from its storage was pruned (or removed by hand) and is marked so, audited; a
//! final backup past its `keep_until` is unprotected and removed.

use std::collections::{BTreeMap, BTreeSet};

use pvefleet_core::audit::{self, Entry};
use pvefleet_proxmox::client::PveClient;
use pvefleet_proxmox::client::backup::BackupItem;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::jobs::service_actor;

/// What one pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InventoryReport {
    /// Backups newly recorded.
    pub recorded: usize,
    /// Recorded backups found gone.
    pub pruned: usize,
    /// Final backups removed at the end of their retention.
    pub expired: usize,
}

/// A site that held a vmid, and when (seconds since the epoch).
struct Holder {
    site: Uuid,
    owner: String,
    from: i64,
    until: Option<i64>,
}

/// Reads every storage the policies and records name, on every online node, and brings
/// `backups` in step.
pub async fn scan(pve: &PveClient, db: &tokio_postgres::Client) -> anyhow::Result<InventoryReport> {
    let mut report = InventoryReport::default();
    let storages: Vec<String> = db
        .query(
            "SELECT storage FROM backup_policies UNION SELECT DISTINCT storage FROM backups WHERE state = 'ok'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Every site that has had a container, with its lifetime: a backup belongs to the site
    // that held the vmid when it was taken (vmids are leased again after a site goes).
    let mut owners: BTreeMap<u32, Vec<Holder>> = BTreeMap::new();
    for r in db
        .query(
            "SELECT vmid, id, owner, extract(epoch FROM created_at)::bigint,
                    CASE WHEN state = 'deleted' THEN extract(epoch FROM updated_at)::bigint END
             FROM sites WHERE vmid IS NOT NULL",
            &[],
        )
        .await?
    {
        owners.entry(r.get::<_, i32>(0) as u32).or_default().push(Holder {
            site: r.get(1),
            owner: r.get(2),
            from: r.get(3),
            until: r.get(4),
        });
    }
    // Anything marked pruned must have been recorded before the storages were read.
    let scan_started: chrono::DateTime<chrono::Utc> = db.query_one("SELECT now()", &[]).await?.get(0);
    let nodes: Vec<String> = pve
        .nodes()
        .await?
        .into_iter()
        .filter(|n| n.status == "online")
        .map(|n| n.node)
        .collect();
    // Every backup seen, by volid, and which (node, storage) listings succeeded.
    let mut seen: BTreeMap<String, (String, String, BackupItem)> = BTreeMap::new();
    let mut listed: BTreeSet<(String, String)> = BTreeSet::new();
    for storage in &storages {
        for node in &nodes {
            match pve.backups(node, storage, None).await {
                Ok(items) => {
                    listed.insert((node.clone(), storage.clone()));
                    for item in items {
                        seen.entry(item.volid.clone())
                            .or_insert_with(|| (node.clone(), storage.clone(), item));
                    }
                }
                Err(e) => tracing::debug!(node, storage, error = %e, "Storage not listed on this node."),
            }
        }
    }
    let actor = service_actor();
    // New backups of fleet containers.
    let known: BTreeSet<String> = db
        .query("SELECT volid FROM backups WHERE volid IS NOT NULL", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (volid, (node, storage, item)) in &seen {
        if known.contains(volid) {
            continue;
        }
        let Some(vmid) = item.vmid.map(|v| v as u32) else {
            continue;
        };
        // Containers only (a VM's backups share the vmid space), named by vzdump's scheme.
        if !volid.contains("vzdump-lxc-") || item.subtype.as_deref().is_some_and(|t| t != "lxc") {
            continue;
        }
        let ctime = item.ctime.unwrap_or(0) as i64;
        let Some(holder) = owners.get(&vmid).and_then(|hs| {
            hs.iter()
                .find(|h| h.from - 60 <= ctime && h.until.is_none_or(|u| ctime <= u + 60))
        }) else {
            continue;
        };
        let (site, owner) = (&holder.site, &holder.owner);
        let taken = item.ctime.and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0));
        let id = Uuid::now_v7();
        let inserted = db
            .execute(
                "INSERT INTO backups (id, site_id, vmid, node, storage, volid, kind, state, size, taken_at, protected)
                 VALUES ($1, $2, $3, $4, $5, $6, 'scheduled', 'ok', $7, $8, $9) ON CONFLICT (volid) DO NOTHING",
                &[
                    &id,
                    site,
                    &(vmid as i32),
                    node,
                    storage,
                    volid,
                    &item.size.map(|s| s as i64),
                    &taken,
                    &item.protected.unwrap_or(false),
                ],
            )
            .await?;
        if inserted == 1 {
            audit::record(
                db,
                &actor,
                &Entry::new("backup.recorded", site.to_string())
                    .owner(owner.clone())
                    .detail(json!({ "backup_id": id, "vmid": vmid, "volid": volid, "kind": "scheduled" })),
            )
            .await?;
            report.recorded += 1;
        }
    }
    // Recorded backups gone from a storage that was listed where they live.
    let rows = db
        .query(
            "SELECT b.id, b.volid, b.node, b.storage, b.site_id, s.owner FROM backups b
             LEFT JOIN sites s ON s.id = b.site_id
             WHERE b.state = 'ok' AND b.volid IS NOT NULL AND b.updated_at < $1",
            &[&scan_started],
        )
        .await?;
    for r in rows {
        let (id, volid, node, storage): (Uuid, String, Option<String>, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let site: Option<Uuid> = r.get(4);
        let owner: Option<String> = r.get(5);
        let was_listed = match &node {
            Some(n) => listed.contains(&(n.clone(), storage.clone())),
            None => false,
        };
        if !was_listed || seen.contains_key(&volid) {
            continue;
        }
        let changed = db
            .execute(
                "UPDATE backups SET state = 'pruned', updated_at = now() WHERE id = $1 AND state = 'ok' AND updated_at < $2",
                &[&id, &scan_started],
            )
            .await?;
        if changed == 0 {
            continue;
        }
        let mut entry = Entry::new("backup.pruned", site.map(|s| s.to_string()).unwrap_or_default())
            .detail(json!({ "backup_id": id, "volid": volid }));
        if let Some(o) = owner {
            entry = entry.owner(o);
        }
        audit::record(db, &actor, &entry).await?;
        report.pruned += 1;
    }
    // Final backups past their retention.
    let expired = db
        .query(
            "SELECT id, volid, node, site_id FROM backups
             WHERE kind = 'final' AND state = 'ok' AND keep_until IS NOT NULL AND keep_until < now()",
            &[],
        )
        .await?;
    for r in expired {
        let (id, volid, node, site): (Uuid, Option<String>, Option<String>, Option<Uuid>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let (Some(volid), Some(node)) = (volid, node) else {
            continue;
        };
        // One that cannot be removed now (its node is down) is tried again at the next sync.
        if let Err(e) = pve.backup_annotate(&node, &volid, None, Some(false)).await {
            tracing::warn!(volid, node, error = %e, "A final backup past its retention could not be unprotected; trying again later.");
            continue;
        }
        if let Err(e) = pve.backup_delete(&node, &volid).await {
            tracing::warn!(volid, node, error = %e, "A final backup past its retention could not be removed; trying again later.");
            let _ = pve.backup_annotate(&node, &volid, None, Some(true)).await;
            continue;
        }
        db.execute(
            "UPDATE backups SET state = 'deleted', protected = false, updated_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
        audit::record(
            db,
            &actor,
            &Entry::new("backup.expired", site.map(|s| s.to_string()).unwrap_or_default())
                .detail(json!({ "backup_id": id, "volid": volid })),
        )
        .await?;
        report.expired += 1;
    }
    metrics::counter!("pvefleet_backups_recorded_total").increment(report.recorded as u64);
    metrics::counter!("pvefleet_backups_pruned_total").increment(report.pruned as u64);
    metrics::counter!("pvefleet_backups_expired_total").increment(report.expired as u64);
    Ok(report)
}
