//! `backup.create`: a backup the fleet takes itself (on demand, final, before a restore).
//! The record (`backups`) is claimed first, so a redelivered command follows the task
//! already started instead of starting another, and a finished one is answered again. The
//! vzdump task is followed to its end and the new volume found in the storage; a final
//! backup is protected and kept `backup.final_retention`. Nothing is pruned by it: pruning
//! is the policy's job.

use async_trait::async_trait;
use pvefleet_contracts::messages::{BackupCreate, BackupCreated, BackupKind};
use pvefleet_core::audit::{self, Entry};
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError};
use pvefleet_core::db::VmidLock;
use pvefleet_proxmox::client::Params;
use pvefleet_proxmox::client::api::ResourceType;
use pvefleet_proxmox::client::upid::Upid;
use serde_json::json;

use crate::{Backup, jobs, policy};

impl Backup {
    /// The node container `vmid` is on now: the hint when it answers there, else the cluster.
    async fn node_of(&self, vmid: u32, hint: Option<&str>) -> Result<String, HandlerError> {
        let me = &self.inner;
        if let Some(node) = hint.filter(|n| !n.is_empty())
            && me.pve.lxc_status(node, vmid).await.is_ok()
        {
            return Ok(node.to_string());
        }
        let rows = me.pve.resources(Some(ResourceType::Vm)).await?;
        rows.into_iter()
            .find(|r| r.vmid == Some(u64::from(vmid)) && r.kind == "lxc")
            .and_then(|r| r.node)
            .ok_or_else(|| HandlerError::fail("container.missing", format!("container {vmid} does not exist")))
    }

    /// The policy a site's backups follow (its storage, mode and compression).
    async fn policy_of(&self, site: uuid::Uuid) -> Result<policy::Policy, HandlerError> {
        let me = &self.inner;
        let db = me.pool.get().await.map_err(HandlerError::retry)?;
        let row = db
            .query_opt("SELECT backup_policy, spec->>'plan' FROM sites WHERE id = $1", &[&site])
            .await
            .map_err(HandlerError::retry)?;
        let (own, plan): (Option<String>, Option<String>) = row.map(|r| (r.get(0), r.get(1))).unwrap_or_default();
        let name = policy::resolve(own.as_deref(), plan.as_deref(), &me.saga, &me.settings.default_policy);
        let found = policy::get(&**db, &name).await.map_err(HandlerError::retry)?;
        found.ok_or_else(|| {
            HandlerError::fail(
                "backup.policy_missing",
                format!("backup policy '{name}' does not exist"),
            )
        })
    }
}

#[async_trait]
impl Handler<BackupCreate> for Backup {
    async fn handle(&self, cmd: BackupCreate, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let site = cmd.site_id.as_uuid();
        // Held throughout, so a second delivery reads what the first did before acting.
        let _lock = VmidLock::acquire(&me.pool, vmid, me.lock_timeout)
            .await
            .map_err(|e| HandlerError::from(e.context(format!("cannot lock vmid {vmid}"))))?;
        let db = me.pool.get().await.map_err(HandlerError::retry)?;
        // Claim the record (or find it from an earlier delivery).
        let policy = self.policy_of(site).await?;
        let resolved = cmd.storage.clone().unwrap_or_else(|| policy.storage.clone());
        db.execute(
            "INSERT INTO backups (id, site_id, vmid, storage, kind, state)
             VALUES ($1, $2, $3, $4, $5, 'requested') ON CONFLICT (id) DO NOTHING",
            &[&cmd.backup_id, &site, &(vmid as i32), &resolved, &cmd.kind.as_str()],
        )
        .await
        .map_err(HandlerError::retry)?;
        let row = db
            .query_one(
                "SELECT state, volid, node, size, upid, storage FROM backups WHERE id = $1",
                &[&cmd.backup_id],
            )
            .await
            .map_err(HandlerError::retry)?;
        let (state, volid, node, size, upid, storage): (
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            String,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
        // A request recorded before its storage was resolved takes the one resolved now.
        let storage = if storage.is_empty() {
            db.execute(
                "UPDATE backups SET storage = $2 WHERE id = $1 AND storage = ''",
                &[&cmd.backup_id, &resolved],
            )
            .await
            .map_err(HandlerError::retry)?;
            resolved
        } else {
            storage
        };
        if state == "ok"
            && let (Some(volid), Some(node)) = (volid, node.clone())
        {
            return ctx
                .emit(&BackupCreated {
                    site_id: cmd.site_id,
                    vmid: cmd.vmid,
                    backup_id: cmd.backup_id,
                    volid,
                    node,
                    size: size.map(|s| s as u64),
                })
                .await;
        }
        let node = self.node_of(vmid, cmd.node.as_deref().or(node.as_deref())).await?;
        let upid = match upid.filter(|_| state == "running") {
            // An earlier delivery started it: follow that task, do not start another.
            Some(u) => u,
            None => {
                let protected = cmd.kind == BackupKind::Final;
                let params = Params::new()
                    .set("vmid", vmid)
                    .set("storage", &storage)
                    .set("mode", &policy.mode)
                    .set("compress", &policy.compress)
                    .set("remove", 0)
                    .set(
                        "notes-template",
                        format!("{{{{guestname}}}} ({{{{vmid}}}}), pvefleet {}", cmd.kind.as_str()),
                    )
                    .flag("protected", protected);
                let upid: String = me
                    .pve
                    .post(&format!("/nodes/{}/vzdump", node_seg(&node)), params)
                    .await?;
                db.execute(
                    "UPDATE backups SET state = 'running', upid = $2, node = $3, updated_at = now() WHERE id = $1",
                    &[&cmd.backup_id, &upid, &node],
                )
                .await
                .map_err(HandlerError::retry)?;
                upid
            }
        };
        if let Err(e) = me.pve.wait_task(&upid).await {
            if e.is_transient() {
                return Err(e.into());
            }
            db.execute(
                "UPDATE backups SET state = 'failed', error = $2, updated_at = now() WHERE id = $1",
                &[
                    &cmd.backup_id,
                    &json!({ "code": "proxmox.task_failed", "message": e.message }),
                ],
            )
            .await
            .map_err(HandlerError::retry)?;
            audit::record(
                &**db,
                &jobs::service_actor(),
                &Entry::new("backup.create", site.to_string()).outcome("failed").detail(
                    json!({ "backup_id": cmd.backup_id, "vmid": vmid, "kind": cmd.kind.as_str(), "error": e.message }),
                ),
            )
            .await
            .map_err(HandlerError::retry)?;
            metrics::counter!("pvefleet_backups_total", "kind" => cmd.kind.as_str(), "outcome" => "failed")
                .increment(1);
            return Err(HandlerError::fail("backup.failed", e.message));
        }
        // The new volume: the newest of this guest's backups written since the task began.
        let started = Upid::parse(&upid).map_or(0, |u| u.starttime);
        let items = me.pve.backups(&node, &storage, Some(vmid)).await?;
        // Volumes another of the fleet's own backups already holds are not this one's.
        let taken_by_others: Vec<String> = db
            .query(
                "SELECT volid FROM backups WHERE vmid = $1 AND id <> $2 AND volid IS NOT NULL AND kind <> 'scheduled'",
                &[&(vmid as i32), &cmd.backup_id],
            )
            .await
            .map_err(HandlerError::retry)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let Some(item) = items
            .into_iter()
            .filter(|b| b.ctime.unwrap_or(0) >= started && !taken_by_others.contains(&b.volid))
            .max_by_key(|b| b.ctime.unwrap_or(0))
        else {
            return Err(HandlerError::fail(
                "backup.missing",
                format!("vzdump of {vmid} ended OK but no new backup is in storage '{storage}'"),
            ));
        };
        let keep_until = (cmd.kind == BackupKind::Final && !me.settings.final_retention.is_zero())
            .then(|| chrono::Utc::now() + me.settings.final_retention);
        let taken = item.ctime.and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0));
        // The sync may have found the volume first and recorded it as a job's: this record is
        // the one that stays.
        let mut db = db;
        let tx = db.transaction().await.map_err(HandlerError::retry)?;
        tx.execute(
            "DELETE FROM backups WHERE volid = $2 AND id <> $1 AND kind = 'scheduled'",
            &[&cmd.backup_id, &item.volid],
        )
        .await
        .map_err(HandlerError::retry)?;
        tx.execute(
            "UPDATE backups SET state = 'ok', volid = $2, size = $3, taken_at = $4, protected = $5,
                 keep_until = $6, error = NULL, updated_at = now() WHERE id = $1",
            &[
                &cmd.backup_id,
                &item.volid,
                &item.size.map(|s| s as i64),
                &taken,
                &item.protected.unwrap_or(false),
                &keep_until,
            ],
        )
        .await
        .map_err(HandlerError::retry)?;
        tx.commit().await.map_err(HandlerError::retry)?;
        audit::record(
            &**db,
            &jobs::service_actor(),
            &Entry::new("backup.create", site.to_string()).detail(json!({
                "backup_id": cmd.backup_id, "vmid": vmid, "kind": cmd.kind.as_str(), "volid": item.volid,
            })),
        )
        .await
        .map_err(HandlerError::retry)?;
        metrics::counter!("pvefleet_backups_total", "kind" => cmd.kind.as_str(), "outcome" => "ok").increment(1);
        ctx.emit(&BackupCreated {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
            backup_id: cmd.backup_id,
            volid: item.volid,
            node,
            size: item.size,
        })
        .await
    }
}

fn node_seg(node: &str) -> String {
    pvefleet_proxmox::client::enc(node)
}
