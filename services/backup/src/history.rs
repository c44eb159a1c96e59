//! The configuration history: every fleet container's PVE config, recorded as a new version of
//! its site's history whenever it changed, with what changed from the version before.
//!
//! A version is recorded when the fleet's own workers say they changed a config
//! (`container.created`, `container.scaled`, `net.*`, `vnet.bound`/`unbound`,
//! `backup.restored`: the config is read again and compared), and by a pass every
//! `backup.config_interval` over every site's container, which also catches what an operator
//! changed by hand. A config that is the same as the newest version only marks that version
//! checked (snapshots and locks are PVE's bookkeeping, not configuration: they make no
//! version). Versions older than `backup.config_retention` are removed, a site's newest never.
//!
//! `config.restore` puts a version back through the same digest-guarded write the autoscaler
//! and nethotplug use: under the vmid lock, the keys that differ are written and those the
//! version did not have are deleted, in one `PUT` carrying the digest read just before (a
//! concurrent change makes PVE refuse it, and the restore reads again). Disks, mount points,
//! `unprivileged` and the other keys a config write cannot change safely are left as they are.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use pvefleet_contracts::StepError;
use pvefleet_contracts::messages::{
    BackupRestored, ConfigRestore, ConfigRestored, ContainerCreated, ContainerScaled, NetAttached, NetDetached,
    NetUpdated, VnetBound, VnetUnbound,
};
use pvefleet_core::audit::{self, Entry};
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError};
use pvefleet_core::db::VmidLock;
use pvefleet_proxmox::client::api::ResourceType;
use pvefleet_proxmox::client::error::Reason;
use pvefleet_proxmox::client::{Params, PveClient};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{Backup, jobs};

/// The advisory lock class under which one site's next version is written.
const RECORD_CLASS: i32 = 0x0bac_0003;

/// Keys PVE's answer carries that are bookkeeping, not configuration: a snapshot sets `parent`,
/// a running backup or migration `lock`. They are not recorded, so they make no version.
const BOOKKEEPING: &[&str] = &["lock", "parent"];

/// How often a restore reads again after PVE refused its write for a concurrent change.
const WRITE_ATTEMPTS: usize = 5;

/// One key that differs between two versions (`from` absent: added; `to` absent: removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The config key.
    pub key: String,
    /// Its value before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Its value after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// A config value as PVE writes it (numbers and strings alike).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What differs from `from` to `to`, by key.
pub fn diff(from: &Map<String, Value>, to: &Map<String, Value>) -> Vec<Change> {
    let keys: BTreeSet<&String> = from.keys().chain(to.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (a, b) = (from.get(k).map(text), to.get(k).map(text));
            (a != b).then(|| Change {
                key: k.clone(),
                from: a,
                to: b,
            })
        })
        .collect()
}

/// Whether a config restore writes `key`. Disks (`rootfs`, `mpN`, `unusedN`: deleting an
/// unused volume destroys it), `unprivileged` (only at creation), raw `lxc.*` keys (root
/// only) and PVE's own bookkeeping are left alone.
pub fn restorable(key: &str) -> bool {
    let numbered = |prefix: &str| {
        key.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    !(matches!(
        key,
        "rootfs" | "unprivileged" | "digest" | "lock" | "parent" | "snaptime" | "template" | "lxc"
    ) || numbered("mp")
        || numbered("unused"))
}

/// A version written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recorded {
    /// Its number.
    pub version: i32,
    /// What changed from the version before.
    pub changes: Vec<Change>,
}

/// Stores `config` (as `GET …/config` answered it) as the site's next version when it differs
/// from the newest; otherwise marks the newest checked. `None`: nothing changed.
pub async fn store(
    db: &mut tokio_postgres::Client,
    site: Uuid,
    vmid: u32,
    node: &str,
    mut config: Map<String, Value>,
    cause: &str,
    cause_ref: Option<&str>,
) -> Result<Option<Recorded>, tokio_postgres::Error> {
    let digest = config.remove("digest").map(|d| text(&d)).unwrap_or_default();
    for key in BOOKKEEPING {
        config.remove(*key);
    }
    let tx = db.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&RECORD_CLASS, &site.to_string()],
    )
    .await?;
    let newest = tx
        .query_opt(
            "SELECT version, config FROM config_versions WHERE site_id = $1 ORDER BY version DESC LIMIT 1",
            &[&site],
        )
        .await?;
    let (version, changes) = match newest {
        None => (1, Vec::new()),
        Some(row) => {
            let last: i32 = row.get(0);
            let before: Value = row.get(1);
            let changes = diff(before.as_object().unwrap_or(&Map::new()), &config);
            if changes.is_empty() {
                tx.execute(
                    "UPDATE config_versions SET checked_at = now(), digest = $3, vmid = $4, node = $5
                     WHERE site_id = $1 AND version = $2",
                    &[&site, &last, &digest, &(vmid as i32), &node],
                )
                .await?;
                tx.commit().await?;
                return Ok(None);
            }
            (last + 1, changes)
        }
    };
    tx.execute(
        "INSERT INTO config_versions (site_id, version, vmid, node, digest, config, changes, cause, cause_ref)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &site,
            &version,
            &(vmid as i32),
            &node,
            &digest,
            &Value::Object(config),
            &json!(changes),
            &cause,
            &cause_ref,
        ],
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("pvefleet_config_versions_total", "cause" => cause.to_string()).increment(1);
    Ok(Some(Recorded { version, changes }))
}

/// Reads the container's config and stores it (see [`store`]). A container that is gone
/// records nothing.
pub async fn record(
    pve: &PveClient,
    pool: &deadpool_postgres::Pool,
    site: Uuid,
    vmid: u32,
    node: &str,
    cause: &str,
    cause_ref: Option<&str>,
) -> Result<Option<Recorded>, HandlerError> {
    let config = match pve.lxc_config(node, vmid, false).await {
        Ok(c) => c,
        Err(e) if e.reason == Reason::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut db = pool.get().await.map_err(HandlerError::retry)?;
    let recorded = store(&mut db, site, vmid, node, config, cause, cause_ref)
        .await
        .map_err(HandlerError::retry)?;
    if let Some(r) = &recorded {
        tracing::info!(%site, vmid, version = r.version, cause, changed = r.changes.len(), "Config version recorded.");
    }
    Ok(recorded)
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PassReport {
    /// Containers read.
    pub checked: usize,
    /// New versions.
    pub recorded: usize,
    /// Old versions removed.
    pub removed: u64,
    /// Containers that could not be read.
    pub failed: usize,
}

/// Reads every site's container and records what changed since its newest version, then
/// removes versions past `retention` (a site's newest is kept whatever its age).
pub async fn record_all(
    pve: &PveClient,
    pool: &deadpool_postgres::Pool,
    retention: Duration,
) -> anyhow::Result<PassReport> {
    let mut report = PassReport::default();
    let sites: Vec<(Uuid, u32)> = pool
        .get()
        .await?
        .query(
            "SELECT id, vmid FROM sites WHERE vmid IS NOT NULL AND state NOT IN ('deleted', 'restoring')",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get::<_, i32>(1) as u32))
        .collect();
    let guests = pve.resources(Some(ResourceType::Vm)).await?;
    for (site, vmid) in sites {
        let Some(node) = guests
            .iter()
            .find(|g| g.kind == "lxc" && g.vmid == Some(u64::from(vmid)))
            .and_then(|g| g.node.clone())
        else {
            continue;
        };
        report.checked += 1;
        match record(pve, pool, site, vmid, &node, "schedule", None).await {
            Ok(Some(_)) => report.recorded += 1,
            Ok(None) => {}
            Err(e) => {
                report.failed += 1;
                tracing::warn!(%site, vmid, error = %e, "Cannot record the container's config.");
            }
        }
    }
    let secs = retention.as_secs_f64();
    report.removed = pool
        .get()
        .await?
        .execute(
            "DELETE FROM config_versions v
             WHERE recorded_at < now() - make_interval(secs => $1)
               AND version < (SELECT max(version) FROM config_versions w WHERE w.site_id = v.site_id)",
            &[&secs],
        )
        .await?;
    Ok(report)
}

/// An event saying a container's config was changed: which container, where, and whether the
/// config really changed (a dry run's `would_scale` did not).
trait ConfigChanged: Send + Sync + 'static {
    fn container(&self) -> Option<(u32, &str)>;
    /// The site, when the event names it.
    fn site(&self) -> Option<Uuid> {
        None
    }
}

impl ConfigChanged for ContainerScaled {
    fn container(&self) -> Option<(u32, &str)> {
        (self.outcome == "scaled").then_some((self.vmid.0, self.node.as_str()))
    }
}

impl ConfigChanged for ContainerCreated {
    fn container(&self) -> Option<(u32, &str)> {
        Some((self.vmid.0, &self.node))
    }
    fn site(&self) -> Option<Uuid> {
        Some(self.site_id.as_uuid())
    }
}

impl ConfigChanged for BackupRestored {
    fn container(&self) -> Option<(u32, &str)> {
        Some((self.vmid.0, &self.node))
    }
    fn site(&self) -> Option<Uuid> {
        Some(self.site_id.as_uuid())
    }
}

macro_rules! net_changed {
    ($($ty:ty),*) => {$(
        impl ConfigChanged for $ty {
            fn container(&self) -> Option<(u32, &str)> {
                Some((self.vmid.0, &self.node))
            }
        }
    )*};
}
net_changed!(NetAttached, NetUpdated, NetDetached, VnetBound, VnetUnbound);

#[async_trait]
impl<M> Handler<M> for Backup
where
    M: ConfigChanged + pvefleet_contracts::message::Message,
{
    async fn handle(&self, event: M, ctx: &Context<'_>) -> Handled {
        let Some((vmid, node)) = event.container() else {
            return Ok(());
        };
        let me = &self.inner;
        let site = match event.site() {
            Some(s) => Some(s),
            None => me
                .pool
                .get()
                .await
                .map_err(HandlerError::retry)?
                .query_opt(
                    "SELECT id FROM sites WHERE vmid = $1 AND state <> 'deleted' ORDER BY created_at DESC LIMIT 1",
                    &[&(vmid as i32)],
                )
                .await
                .map_err(HandlerError::retry)?
                .map(|r| r.get(0)),
        };
        // Not a site's container (a verification's scratch container, a guest of its own).
        let Some(site) = site else { return Ok(()) };
        record(&me.pve, &me.pool, site, vmid, node, M::TYPE, Some(&ctx.message_id)).await?;
        Ok(())
    }
}

/// The row of a version, for listings (without the config itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRow {
    /// Its number.
    pub version: i32,
    /// The container then.
    pub vmid: i32,
    /// Its node.
    pub node: String,
    /// What made it known.
    pub cause: String,
    /// The message or restore that did.
    #[serde(default)]
    pub cause_ref: Option<String>,
    /// When recorded.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    /// When last seen still so (the newest version).
    pub checked_at: chrono::DateTime<chrono::Utc>,
    /// What changed from the version before.
    pub changes: Vec<Change>,
    /// The config (in a single version's answer only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Map<String, Value>>,
}

fn version_row(r: &tokio_postgres::Row, with_config: bool) -> VersionRow {
    let changes: Value = r.get("changes");
    VersionRow {
        version: r.get("version"),
        vmid: r.get("vmid"),
        node: r.get("node"),
        cause: r.get("cause"),
        cause_ref: r.get("cause_ref"),
        recorded_at: r.get("recorded_at"),
        checked_at: r.get("checked_at"),
        changes: serde_json::from_value(changes).unwrap_or_default(),
        config: with_config.then(|| r.get::<_, Value>("config").as_object().cloned().unwrap_or_default()),
    }
}

const VERSION_COLUMNS: &str = "version, vmid, node, cause, cause_ref, recorded_at, checked_at, changes, config";

/// A site's versions, newest first, at most `limit`.
pub async fn versions(
    db: &impl tokio_postgres::GenericClient,
    site: Uuid,
    limit: i64,
) -> Result<Vec<VersionRow>, tokio_postgres::Error> {
    Ok(db
        .query(
            &format!("SELECT {VERSION_COLUMNS} FROM config_versions WHERE site_id = $1 ORDER BY version DESC LIMIT $2"),
            &[&site, &limit],
        )
        .await?
        .iter()
        .map(|r| version_row(r, false))
        .collect())
}

/// One version with its config; `None` as the number: the newest.
pub async fn version(
    db: &impl tokio_postgres::GenericClient,
    site: Uuid,
    number: Option<i32>,
) -> Result<Option<VersionRow>, tokio_postgres::Error> {
    Ok(db
        .query_opt(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM config_versions WHERE site_id = $1 AND ($2::int IS NULL OR version = $2)
                 ORDER BY version DESC LIMIT 1"
            ),
            &[&site, &number],
        )
        .await?
        .map(|r| version_row(&r, true)))
}

/// A config restore request, as `config_restores` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreRow {
    /// The request.
    pub id: Uuid,
    /// The site.
    pub site_id: Uuid,
    /// The version put back.
    pub version: i32,
    /// requested, done or failed.
    pub state: String,
    /// The version recorded after it.
    #[serde(default)]
    pub result_version: Option<i32>,
    /// Keys written or deleted.
    pub changed: Vec<String>,
    /// Keys PVE left pending until a restart.
    pub pending: Vec<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// When asked.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it last changed.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// One restore request of a site.
pub async fn restore_row(
    db: &impl tokio_postgres::GenericClient,
    site: Uuid,
    id: Uuid,
) -> Result<Option<RestoreRow>, tokio_postgres::Error> {
    Ok(db
        .query_opt(
            "SELECT id, site_id, version, state, result_version, changed, pending, error, created_at, updated_at
             FROM config_restores WHERE site_id = $1 AND id = $2",
            &[&site, &id],
        )
        .await?
        .map(|r| RestoreRow {
            id: r.get(0),
            site_id: r.get(1),
            version: r.get(2),
            state: r.get(3),
            result_version: r.get(4),
            changed: serde_json::from_value(r.get(5)).unwrap_or_default(),
            pending: serde_json::from_value(r.get(6)).unwrap_or_default(),
            error: r.get(7),
            created_at: r.get(8),
            updated_at: r.get(9),
        }))
}

fn fail(code: &str, message: impl Into<String>) -> HandlerError {
    HandlerError::fail(code, message.into())
}

impl Backup {
    /// Writes the version back; answers the keys written and those left pending.
    async fn restore_config(&self, cmd: &ConfigRestore) -> Result<ConfigRestored, HandlerError> {
        let me = &self.inner;
        let site = cmd.site_id.as_uuid();
        let db = me.pool.get().await.map_err(HandlerError::retry)?;
        let request = restore_row(&**db, site, cmd.restore_id)
            .await
            .map_err(HandlerError::retry)?;
        // Done already (a redelivery): answered again, the container left as it is.
        if let Some(done) = request.as_ref().filter(|r| r.state == "done") {
            return Ok(ConfigRestored {
                site_id: cmd.site_id,
                vmid: cmd.vmid,
                restore_id: cmd.restore_id,
                version: cmd.version,
                recorded_version: done.result_version.unwrap_or_default() as u32,
                changed: done.changed.clone(),
                pending: done.pending.clone(),
            });
        }
        let target = version(&**db, site, Some(cmd.version as i32))
            .await
            .map_err(HandlerError::retry)?
            .and_then(|v| v.config)
            .ok_or_else(|| {
                fail(
                    "config.version_missing",
                    format!("site {site} has no config version {}", cmd.version),
                )
            })?;
        drop(db);
        let vmid = cmd.vmid.0;
        let node = me
            .pve
            .lxc_node(vmid)
            .await?
            .ok_or_else(|| fail("container.missing", format!("container {vmid} does not exist")))?;
        let _lock = VmidLock::acquire(&me.pool, vmid, me.lock_timeout)
            .await
            .map_err(|e| HandlerError::from(e.context(format!("cannot lock vmid {vmid}"))))?;
        let mut changed = Vec::new();
        let mut written = false;
        for _ in 0..WRITE_ATTEMPTS {
            let mut now = me.pve.lxc_config(&node, vmid, false).await?;
            let digest = now.remove("digest").map(|d| text(&d));
            for key in BOOKKEEPING {
                now.remove(*key);
            }
            let plan: Vec<Change> = diff(&now, &target).into_iter().filter(|c| restorable(&c.key)).collect();
            changed = plan.iter().map(|c| c.key.clone()).collect();
            if plan.is_empty() {
                written = true;
                break;
            }
            let mut params = Params::new();
            let mut delete = Vec::new();
            for c in &plan {
                match &c.to {
                    Some(v) => params = params.set(&c.key, v),
                    None => delete.push(c.key.as_str()),
                }
            }
            if !delete.is_empty() {
                params = params.set("delete", delete.join(","));
            }
            match me.pve.lxc_set_config(&node, vmid, params, digest.as_deref()).await {
                Ok(()) => {
                    written = true;
                    break;
                }
                Err(e) if e.message.contains("file changed by other user") => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if !written {
            return Err(HandlerError::retry(anyhow::anyhow!(
                "the config of {vmid} kept changing under the restore"
            )));
        }
        let pending: Vec<String> = me
            .pve
            .lxc_pending(&node, vmid)
            .await?
            .into_iter()
            .filter(|p| (p.pending.is_some() || p.delete == Some(true)) && changed.contains(&p.key))
            .map(|p| p.key)
            .collect();
        let recorded = record(
            &me.pve,
            &me.pool,
            site,
            vmid,
            &node,
            "config.restore",
            Some(&cmd.restore_id.to_string()),
        )
        .await?;
        let recorded_version = match recorded {
            Some(r) => r.version,
            None => version(&**me.pool.get().await.map_err(HandlerError::retry)?, site, None)
                .await
                .map_err(HandlerError::retry)?
                .map(|v| v.version)
                .unwrap_or_default(),
        };
        Ok(ConfigRestored {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
            restore_id: cmd.restore_id,
            version: cmd.version,
            recorded_version: recorded_version as u32,
            changed,
            pending,
        })
    }

    /// Records the outcome on the request and in the audit log.
    async fn finish_config_restore(
        &self,
        cmd: &ConfigRestore,
        done: Result<&ConfigRestored, &StepError>,
    ) -> Result<(), HandlerError> {
        let site = cmd.site_id.as_uuid();
        let db = self.inner.pool.get().await.map_err(HandlerError::retry)?;
        let (state, result, changed, pending, error) = match done {
            Ok(d) => (
                "done",
                Some(d.recorded_version as i32),
                json!(d.changed),
                json!(d.pending),
                None,
            ),
            Err(e) => ("failed", None, json!([]), json!([]), Some(e.message.clone())),
        };
        db.execute(
            "UPDATE config_restores SET state = $3, result_version = $4, changed = $5, pending = $6, error = $7,
                 updated_at = now()
             WHERE id = $1 AND site_id = $2",
            &[&cmd.restore_id, &site, &state, &result, &changed, &pending, &error],
        )
        .await
        .map_err(HandlerError::retry)?;
        let owner: Option<String> = db
            .query_opt("SELECT owner FROM sites WHERE id = $1", &[&site])
            .await
            .map_err(HandlerError::retry)?
            .map(|r| r.get(0));
        let mut entry = Entry::new("config.restore", site.to_string())
            .outcome(if error.is_some() { "failed" } else { "ok" })
            .detail(json!({
                "restore_id": cmd.restore_id,
                "vmid": cmd.vmid.0,
                "version": cmd.version,
                "recorded_version": result,
                "changed": changed,
                "pending": pending,
                "error": error,
            }));
        if let Some(owner) = owner {
            entry = entry.owner(owner);
        }
        audit::record(&**db, &jobs::service_actor(), &entry)
            .await
            .map_err(HandlerError::retry)?;
        metrics::counter!("pvefleet_config_restores_total", "outcome" => if error.is_some() { "failed" } else { "ok" })
            .increment(1);
        Ok(())
    }
}

#[async_trait]
impl Handler<ConfigRestore> for Backup {
    async fn handle(&self, cmd: ConfigRestore, ctx: &Context<'_>) -> Handled {
        match self.restore_config(&cmd).await {
            Ok(done) => {
                self.finish_config_restore(&cmd, Ok(&done)).await?;
                tracing::info!(vmid = cmd.vmid.0, version = cmd.version, changed = ?done.changed, "Config restored.");
                ctx.emit(&done).await
            }
            Err(HandlerError::Fail(e)) => {
                self.finish_config_restore(&cmd, Err(&e)).await?;
                Err(HandlerError::Fail(e))
            }
            Err(other) => Err(other),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_diff_names_each_added_removed_and_changed_key_and_numbers_compare_as_pve_writes_them() {
        let a = map(json!({"memory": 1024, "cores": "2", "net0": "name=eth0", "hostname": "a"}));
        let b = map(json!({"memory": "512", "cores": 2, "net1": "name=eth1", "hostname": "a"}));
        assert_eq!(
            diff(&a, &b),
            vec![
                Change {
                    key: "memory".into(),
                    from: Some("1024".into()),
                    to: Some("512".into())
                },
                Change {
                    key: "net0".into(),
                    from: Some("name=eth0".into()),
                    to: None
                },
                Change {
                    key: "net1".into(),
                    from: None,
                    to: Some("name=eth1".into())
                },
            ]
        );
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn a_restore_leaves_disks_and_creation_only_keys_alone() {
        for key in [
            "rootfs",
            "mp0",
            "mp12",
            "unused3",
            "unprivileged",
            "digest",
            "lock",
            "lxc",
            "parent",
        ] {
            assert!(!restorable(key), "{key}");
        }
        for key in [
            "memory",
            "cores",
            "swap",
            "net0",
            "net11",
            "tags",
            "hostname",
            "mpx",
            "description",
            "onboot",
        ] {
            assert!(restorable(key), "{key}");
        }
    }
}
