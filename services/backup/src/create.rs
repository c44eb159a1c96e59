//! `backup.create`: a backup the fleet takes itself (on demand, final, before a restore).
//! The record (`backups`) is claimed first, under the container's vmid lock, so a redelivered
//! command follows the task already started instead of starting another, and a finished one
//! is answered again. The lock is held only while the record is claimed and the task started;
//! the task is followed without it (a long vzdump must not stop the autoscaler, nethotplug or
//! the watchdog). The new volume is found in the storage; a final backup is protected and kept
//! `backup.final_retention`. Nothing is pruned by it: pruning is the policy's job. Every
//! definitive failure marks the record `failed` with the reason.

use async_trait::async_trait;
use pvefleet_contracts::StepError;
use pvefleet_contracts::messages::{BackupCreate, BackupCreated, BackupKind};
use pvefleet_core::audit::{self, Entry};
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError};
use pvefleet_core::db::VmidLock;
use pvefleet_proxmox::client::Params;
use pvefleet_proxmox::client::api::ResourceType;
use pvefleet_proxmox::client::upid::Upid;
use serde_json::json;

use crate::{Backup, jobs, policy};

/// The message of the client's own give-up on a task still running (not the task's end).
const STILL_RUNNING: &str = "did not finish within";

fn db_err(e: impl Into<anyhow::Error>) -> HandlerError {
    HandlerError::retry(e)
}

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

    /// The policy a site's backups follow (its storage, mode and compression); when the one it
    /// names is gone, the default's.
    async fn policy_of(&self, site: uuid::Uuid) -> Result<policy::Policy, HandlerError> {
        let me = &self.inner;
        let db = me.pool.get().await.map_err(db_err)?;
        let row = db
            .query_opt("SELECT backup_policy, spec->>'plan' FROM sites WHERE id = $1", &[&site])
            .await
            .map_err(db_err)?;
        let (own, plan): (Option<String>, Option<String>) = row.map(|r| (r.get(0), r.get(1))).unwrap_or_default();
        let name = policy::resolve(own.as_deref(), plan.as_deref(), &me.saga, &me.settings.default_policy);
        for candidate in [name.as_str(), me.settings.default_policy.as_str()] {
            if let Some(p) = policy::get(&**db, candidate).await.map_err(db_err)? {
                if candidate != name {
                    tracing::warn!(site = %site, policy = name, fallback = candidate, "The site's backup policy does not exist; using the default.");
                }
                return Ok(p);
            }
        }
        Err(HandlerError::fail(
            "backup.policy_missing",
            format!(
                "backup policy '{name}' does not exist, nor the default '{}'",
                me.settings.default_policy
            ),
        ))
    }

    /// The site's owner, for the audit rows.
    async fn owner_of(&self, site: uuid::Uuid) -> Option<String> {
        let db = self.inner.pool.get().await.ok()?;
        let row = db
            .query_opt("SELECT owner FROM sites WHERE id = $1", &[&site])
            .await
            .ok()??;
        Some(row.get(0))
    }

    /// Marks the record failed with the reason, audited and counted.
    async fn record_failure(&self, cmd: &BackupCreate, error: &StepError) -> Result<(), HandlerError> {
        let site = cmd.site_id.as_uuid();
        let db = self.inner.pool.get().await.map_err(db_err)?;
        db.execute(
            "UPDATE backups SET state = 'failed', error = $2, updated_at = now() WHERE id = $1 AND state <> 'ok'",
            &[&cmd.backup_id, &json!({ "code": error.code, "message": error.message })],
        )
        .await
        .map_err(db_err)?;
        let mut entry = Entry::new("backup.create", site.to_string())
            .outcome("failed")
            .detail(json!({
                "backup_id": cmd.backup_id, "vmid": cmd.vmid.0, "kind": cmd.kind.as_str(), "error": error.message,
            }));
        if let Some(owner) = self.owner_of(site).await {
            entry = entry.owner(owner);
        }
        audit::record(&**db, &jobs::service_actor(), &entry)
            .await
            .map_err(db_err)?;
        metrics::counter!("pvefleet_backups_total", "kind" => cmd.kind.as_str(), "outcome" => "failed").increment(1);
        Ok(())
    }

    /// Claims the record and starts the vzdump task, or finds the one an earlier delivery
    /// started; answers the task to follow, or `None` with the event when it is done already.
    async fn start(&self, cmd: &BackupCreate) -> Result<Started, HandlerError> {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let site = cmd.site_id.as_uuid();
        // Held while claiming and starting, so a second delivery reads what the first did.
        let _lock = VmidLock::acquire(&me.pool, vmid, me.lock_timeout)
            .await
            .map_err(|e| HandlerError::from(e.context(format!("cannot lock vmid {vmid}"))))?;
        let db = me.pool.get().await.map_err(db_err)?;
        db.execute(
            "INSERT INTO backups (id, site_id, vmid, storage, kind, state)
             VALUES ($1, $2, $3, $4, $5, 'requested') ON CONFLICT (id) DO NOTHING",
            &[
                &cmd.backup_id,
                &site,
                &(vmid as i32),
                &cmd.storage.clone().unwrap_or_default(),
                &cmd.kind.as_str(),
            ],
        )
        .await
        .map_err(db_err)?;
        let row = db
            .query_one(
                "SELECT state, volid, node, size, upid, storage FROM backups WHERE id = $1",
                &[&cmd.backup_id],
            )
            .await
            .map_err(db_err)?;
        let (state, volid, node, size, upid, storage): (
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            String,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
        if state == "ok"
            && let (Some(volid), Some(node)) = (volid, node.clone())
        {
            return Ok(Started::Done(BackupCreated {
                site_id: cmd.site_id,
                vmid: cmd.vmid,
                backup_id: cmd.backup_id,
                volid,
                node,
                size: size.map(|s| s as u64),
            }));
        }
        if state == "running"
            && let Some(upid) = upid
        {
            // An earlier delivery started it: follow that task on its own node.
            let node = Upid::parse(&upid).map(|u| u.node).or(node).unwrap_or_default();
            return Ok(Started::Follow { upid, node, storage });
        }
        let policy = self.policy_of(site).await?;
        let storage = if storage.is_empty() {
            let s = cmd.storage.clone().unwrap_or_else(|| policy.storage.clone());
            db.execute("UPDATE backups SET storage = $2 WHERE id = $1", &[&cmd.backup_id, &s])
                .await
                .map_err(db_err)?;
            s
        } else {
            storage
        };
        let node = self.node_of(vmid, cmd.node.as_deref().or(node.as_deref())).await?;
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
            .flag("protected", cmd.kind == BackupKind::Final);
        let upid: String = me
            .pve
            .post(
                &format!("/nodes/{}/vzdump", pvefleet_proxmox::client::enc(&node)),
                params,
            )
            .await?;
        db.execute(
            "UPDATE backups SET state = 'running', upid = $2, node = $3, error = NULL, updated_at = now() WHERE id = $1",
            &[&cmd.backup_id, &upid, &node],
        )
        .await
        .map_err(db_err)?;
        Ok(Started::Follow { upid, node, storage })
    }

    async fn take(&self, cmd: &BackupCreate, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let site = cmd.site_id.as_uuid();
        let (upid, node, storage) = match self.start(cmd).await? {
            Started::Done(event) => return ctx.emit(&event).await,
            Started::Follow { upid, node, storage } => (upid, node, storage),
        };
        if let Err(e) = me.pve.wait_task(&upid).await {
            if e.is_transient() {
                if !e.message.contains(STILL_RUNNING) {
                    // The task ended in an error worth another try (a lock, a timeout): the
                    // next delivery starts a new one rather than following this one again.
                    let db = me.pool.get().await.map_err(db_err)?;
                    db.execute(
                        "UPDATE backups SET state = 'requested', upid = NULL, updated_at = now() WHERE id = $1 AND state = 'running'",
                        &[&cmd.backup_id],
                    )
                    .await
                    .map_err(db_err)?;
                }
                return Err(e.into());
            }
            return Err(HandlerError::fail("backup.failed", e.message));
        }
        // The new volume: the first of this guest's backups written since the task began (a
        // later one is a job's), and not one another of the fleet's own backups holds.
        let started = Upid::parse(&upid).map_or(0, |u| u.starttime);
        let items = me.pve.backups(&node, &storage, Some(vmid)).await?;
        let mut db = me.pool.get().await.map_err(db_err)?;
        let taken_by_others: Vec<String> = db
            .query(
                "SELECT volid FROM backups WHERE vmid = $1 AND id <> $2 AND volid IS NOT NULL AND kind <> 'scheduled'",
                &[&(vmid as i32), &cmd.backup_id],
            )
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let Some(item) = items
            .into_iter()
            .filter(|b| b.ctime.unwrap_or(0) >= started && !taken_by_others.contains(&b.volid))
            .min_by_key(|b| b.ctime.unwrap_or(0))
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
        let tx = db.transaction().await.map_err(db_err)?;
        tx.execute(
            "DELETE FROM backups WHERE volid = $2 AND id <> $1 AND kind = 'scheduled'",
            &[&cmd.backup_id, &item.volid],
        )
        .await
        .map_err(db_err)?;
        tx.execute(
            "UPDATE backups SET state = 'ok', volid = $2, size = $3, taken_at = $4, protected = $5,
                 keep_until = $6, node = $7, error = NULL, updated_at = now() WHERE id = $1",
            &[
                &cmd.backup_id,
                &item.volid,
                &item.size.map(|s| s as i64),
                &taken,
                &item.protected.unwrap_or(false),
                &keep_until,
                &node,
            ],
        )
        .await
        .map_err(db_err)?;
        let mut entry = Entry::new("backup.create", site.to_string()).detail(json!({
            "backup_id": cmd.backup_id, "vmid": vmid, "kind": cmd.kind.as_str(), "volid": item.volid,
        }));
        if let Some(owner) = self.owner_of(site).await {
            entry = entry.owner(owner);
        }
        audit::record(&*tx, &jobs::service_actor(), &entry)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
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

/// What claiming found.
enum Started {
    /// Written already: answer again.
    Done(BackupCreated),
    /// A task to follow: its UPID, node and storage.
    Follow {
        upid: String,
        node: String,
        storage: String,
    },
}

#[async_trait]
impl Handler<BackupCreate> for Backup {
    async fn handle(&self, cmd: BackupCreate, ctx: &Context<'_>) -> Handled {
        match self.take(&cmd, ctx).await {
            Err(HandlerError::Fail(e)) => {
                self.record_failure(&cmd, &e).await?;
                Err(HandlerError::Fail(e))
            }
            other => other,
        }
    }
}
