//! `backup.restore`: a site's container put back from a backup volume, under the container's
//! vmid lock (the autoscaler, nethotplug and the watchdog leave it alone meanwhile).
//!
//! Over the site's own container (it exists, and carries the site's tag): it is put on hold
//! (so the watchdog does not start it again), stopped, and overwritten with `force`. When the
//! container is gone (a destroyed site), the backup is restored into the vmid the saga leased,
//! on the node that holds the volume. A vmid used by a guest that is not the site's is never
//! overwritten. Then the fleet's tags are put back (the hold taken off) and, when the site's
//! address changed, its first interface is rewritten; with `start`, the container is started.
//!
//! A restore done is recorded (`restores`, by restore and volume): a redelivery is answered
//! again without touching the container. Every restore, and every failed one, is audited.

use async_trait::async_trait;
use pvefleet_contracts::StepError;
use pvefleet_contracts::ids::SITE_MARKER_PREFIX;
use pvefleet_contracts::messages::{BackupRestore, BackupRestored};
use pvefleet_core::audit::{self, Entry};
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError};
use pvefleet_core::db::VmidLock;
use pvefleet_proxmox::client::Params;
use pvefleet_proxmox::client::api::ResourceType;
use pvefleet_proxmox::codec::net::NetConfig;
use serde_json::json;

use crate::{Backup, jobs};

/// The provisioner's hold tag: the watchdog leaves a container carrying it stopped.
const HOLD_TAG: &str = "pvefleet-hold";

fn db_err(e: impl Into<anyhow::Error>) -> HandlerError {
    HandlerError::retry(e)
}

impl Backup {
    async fn restore(&self, cmd: &BackupRestore) -> Result<BackupRestored, HandlerError> {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let _lock = VmidLock::acquire(&me.pool, vmid, me.lock_timeout)
            .await
            .map_err(|e| HandlerError::from(e.context(format!("cannot lock vmid {vmid}"))))?;
        // Done already (a redelivery, or a copy): answered again, the container left as it is.
        let db = me.pool.get().await.map_err(db_err)?;
        if let Some(done) = db
            .query_opt(
                "SELECT node FROM restores WHERE restore_id = $1 AND volid = $2",
                &[&cmd.restore_id, &cmd.volid],
            )
            .await
            .map_err(db_err)?
        {
            return Ok(BackupRestored {
                site_id: cmd.site_id,
                vmid: cmd.vmid,
                volid: cmd.volid.clone(),
                node: done.get(0),
                restore_id: cmd.restore_id,
            });
        }
        drop(db);
        let rows = me.pve.resources(Some(ResourceType::Vm)).await?;
        let found = rows.into_iter().find(|r| r.vmid == Some(u64::from(vmid)));
        let site_tag = cmd.tags.iter().find(|t| t.starts_with("site-"));
        let node = match &found {
            Some(r) => {
                let tagged = r.kind == "lxc" && site_tag.is_some_and(|t| r.tag_list().contains(&t.as_str()));
                let ours = tagged || self.leased_to_site(cmd).await?;
                if !ours {
                    return Err(HandlerError::fail(
                        "vmid.taken",
                        format!("guest {vmid} is not this site's container: it is not overwritten"),
                    ));
                }
                let node = r.node.clone().unwrap_or_default();
                self.stop_for_restore(&node, vmid, &r.tag_list()).await?;
                node
            }
            None => match cmd.node.clone().filter(|n| !n.is_empty()) {
                Some(n) => n,
                None => {
                    return Err(HandlerError::fail(
                        "backup.node",
                        format!("container {vmid} does not exist and the restore names no node"),
                    ));
                }
            },
        };
        let extra = Params::new()
            .opt("storage", cmd.storage.as_deref())
            .opt("hostname", cmd.hostname.as_deref());
        if let Err(e) = me
            .pve
            .lxc_restore(&node, vmid, &cmd.volid, found.is_some(), cmd.unique, extra)
            .await
        {
            if e.is_transient() {
                return Err(e.into());
            }
            return Err(HandlerError::fail("backup.restore_failed", e.message));
        }
        // The fleet's tags (the hold off), and the interface as the site has it now.
        let config = me.pve.lxc_config(&node, vmid, true).await?;
        let archived: Vec<String> = config
            .get("tags")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .split([';', ',', ' '])
            // A container has the one site tag the command gives: a clone's archive carries
            // the tag of the site it was cloned from.
            .filter(|t| !t.is_empty() && *t != HOLD_TAG && !t.starts_with("site-"))
            .map(str::to_string)
            .collect();
        let mut tags = archived;
        for t in &cmd.tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        let mut params = Params::new().set("tags", tags.join(";"));
        // The description's site marker names this site (a clone's archive names the site it
        // was cloned from): the provisioner destroys only a container marked as the site's.
        let description = config.get("description").and_then(|d| d.as_str()).unwrap_or_default();
        let marker = cmd.site_id.marker();
        if !description.lines().any(|l| l.trim() == marker) {
            let mut lines: Vec<&str> = description
                .lines()
                .filter(|l| !l.trim().starts_with(SITE_MARKER_PREFIX))
                .collect();
            lines.push(&marker);
            params = params.set("description", lines.join("\n"));
        }
        if let Some(net) = &cmd.net {
            let mut net0 = config
                .get("net0")
                .and_then(|v| v.as_str())
                .and_then(|v| NetConfig::parse("net0", v).ok())
                .unwrap_or_else(|| NetConfig::new("eth0"));
            net0.bridge = Some(net.bridge.clone());
            net0.ip = Some(net.ip.clone());
            net0.gw = net.gw.clone();
            net0.tag = net.tag.map(u32::from);
            if net.hwaddr.is_some() {
                net0.hwaddr = net.hwaddr.clone();
            }
            let value = net0
                .to_property_string("net0")
                .map_err(|e| HandlerError::fail("backup.net", e.to_string()))?;
            params = params.set("net0", value);
        }
        me.pve.lxc_set_config(&node, vmid, params, None).await?;
        if cmd.start {
            me.pve.lxc_power(&node, vmid, "start", Params::new()).await?;
        }
        let db = me.pool.get().await.map_err(db_err)?;
        db.execute(
            "INSERT INTO restores (restore_id, volid, site_id, vmid, node) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[
                &cmd.restore_id,
                &cmd.volid,
                &cmd.site_id.as_uuid(),
                &(vmid as i32),
                &node,
            ],
        )
        .await
        .map_err(db_err)?;
        Ok(BackupRestored {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
            volid: cmd.volid.clone(),
            node,
            restore_id: cmd.restore_id,
        })
    }

    /// A guest without the site's tag may still be this restore's own: a restore that failed
    /// half-way leaves the container locked with the archive's config, or none. It is ours when
    /// the fleet leased its vmid to this site.
    async fn leased_to_site(&self, cmd: &BackupRestore) -> Result<bool, HandlerError> {
        let db = self.inner.pool.get().await.map_err(db_err)?;
        let row = db
            .query_opt(
                "SELECT 1 FROM leases WHERE kind = 'vmid' AND value = $1 AND site_id = $2",
                &[&cmd.vmid.0.to_string(), &cmd.site_id.as_uuid()],
            )
            .await
            .map_err(db_err)?;
        Ok(row.is_some())
    }

    /// Puts the container on hold and stops it: a restore never overwrites a running one.
    async fn stop_for_restore(&self, node: &str, vmid: u32, tags: &[&str]) -> Result<(), HandlerError> {
        let me = &self.inner;
        let status = me.pve.lxc_status(node, vmid).await?;
        if !tags.contains(&HOLD_TAG) && status.lock.is_none() {
            let mut held: Vec<&str> = tags.to_vec();
            held.push(HOLD_TAG);
            me.pve
                .lxc_set_config(node, vmid, Params::new().set("tags", held.join(";")), None)
                .await?;
        }
        if status.status == "running" {
            tracing::info!(vmid, node, "Stopping the container for its restore.");
            me.pve.lxc_power(node, vmid, "stop", Params::new()).await?;
        }
        Ok(())
    }

    async fn audit_restore(&self, cmd: &BackupRestore, error: Option<&StepError>) -> Result<(), HandlerError> {
        let site = cmd.site_id.as_uuid();
        let db = self.inner.pool.get().await.map_err(db_err)?;
        let owner: Option<String> = db
            .query_opt("SELECT owner FROM sites WHERE id = $1", &[&site])
            .await
            .map_err(db_err)?
            .map(|r| r.get(0));
        let mut detail = json!({ "restore_id": cmd.restore_id, "vmid": cmd.vmid.0, "volid": cmd.volid });
        if let Some(e) = error {
            detail["error"] = json!(e.message);
        }
        let mut entry = Entry::new("backup.restore", site.to_string())
            .outcome(if error.is_some() { "failed" } else { "ok" })
            .detail(detail);
        if let Some(owner) = owner {
            entry = entry.owner(owner);
        }
        audit::record(&**db, &jobs::service_actor(), &entry)
            .await
            .map_err(db_err)?;
        let outcome = if error.is_some() { "failed" } else { "ok" };
        metrics::counter!("pvefleet_restores_total", "outcome" => outcome).increment(1);
        Ok(())
    }
}

#[async_trait]
impl Handler<BackupRestore> for Backup {
    async fn handle(&self, cmd: BackupRestore, ctx: &Context<'_>) -> Handled {
        match self.restore(&cmd).await {
            Ok(done) => {
                self.audit_restore(&cmd, None).await?;
                tracing::info!(vmid = cmd.vmid.0, volid = %cmd.volid, node = %done.node, "Restored.");
                ctx.emit(&done).await
            }
            Err(HandlerError::Fail(e)) => {
                self.audit_restore(&cmd, Some(&e)).await?;
                Err(HandlerError::Fail(e))
            }
            Err(other) => Err(other),
        }
    }
}
