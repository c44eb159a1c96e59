//! What `pvefleet backup` and `pvefleet site backup(s)` do, and intake's backup routes: set,
//! list and delete policies; ask for a backup of a site; list a site's backups. Each change
//! is one transaction with its audit row; a backup request also writes its `backup.create`
//! command into the outbox in that transaction.

use pvefleet_contracts::ids::{SiteId, Vmid};
use pvefleet_contracts::messages::{BackupCreate, BackupKind, SiteRestore};
use pvefleet_core::audit::{self, Actor, Entry};
use pvefleet_core::bus::Outgoing;
use pvefleet_core::bus::outgoing::Origin;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::policy::{self, Invalid, Policy};

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A field is wrong.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Not now: the thing is in a state that does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The database.
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// Writing the command.
    #[error(transparent)]
    Outbox(#[from] pvefleet_core::db::outbox::OutboxError),
    /// Encoding the command.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
}

/// Creates or replaces a policy.
pub async fn set_policy(db: &mut tokio_postgres::Client, actor: &Actor, p: &Policy) -> Result<bool, OpsError> {
    p.check()?;
    let tx = db.transaction().await?;
    let existed = tx
        .query_opt("SELECT 1 FROM backup_policies WHERE name = $1 FOR UPDATE", &[&p.name])
        .await?
        .is_some();
    tx.execute(
        "INSERT INTO backup_policies (name, schedule, storage, mode, compress, retention, enabled)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (name) DO UPDATE SET schedule = $2, storage = $3, mode = $4, compress = $5,
             retention = $6, enabled = $7, updated_at = now()",
        &[
            &p.name,
            &p.schedule,
            &p.storage,
            &p.mode,
            &p.compress,
            &p.retention,
            &p.enabled,
        ],
    )
    .await?;
    audit::record(
        &tx,
        actor,
        &Entry::new(
            if existed {
                "backup.policy.update"
            } else {
                "backup.policy.create"
            },
            p.name.clone(),
        )
        .detail(json!(p)),
    )
    .await?;
    tx.commit().await?;
    Ok(!existed)
}

/// Deletes a policy; its sites fall back to their plan's policy or the default. The default
/// policy, and one a plan names, cannot go while they are named.
pub async fn delete_policy(
    db: &mut tokio_postgres::Client,
    actor: &Actor,
    name: &str,
    default: &str,
    saga: &pvefleet_core::config::SagaSettings,
) -> Result<(), OpsError> {
    if name == default {
        return Err(OpsError::Conflict(format!(
            "'{name}' is backup.default_policy: name another default first"
        )));
    }
    if let Some((plan, _)) = saga
        .plans
        .iter()
        .find(|(_, p)| p.backup_policy.as_deref() == Some(name))
    {
        return Err(OpsError::Conflict(format!(
            "plan '{plan}' names '{name}' as its backup policy: change the plan first"
        )));
    }
    let tx = db.transaction().await?;
    let n = tx
        .execute("DELETE FROM backup_policies WHERE name = $1", &[&name])
        .await?;
    if n == 0 {
        return Err(OpsError::NotFound(format!("No backup policy '{name}'.")));
    }
    audit::record(&tx, actor, &Entry::new("backup.policy.delete", name.to_string())).await?;
    tx.commit().await?;
    Ok(())
}

/// Sets the policy a site follows (`None`: its plan's, else the default).
pub async fn set_site_policy(
    db: &mut tokio_postgres::Client,
    actor: &Actor,
    site: Uuid,
    name: Option<&str>,
) -> Result<(), OpsError> {
    let tx = db.transaction().await?;
    if let Some(n) = name
        && policy::get(&tx, n).await?.is_none()
    {
        return Err(OpsError::NotFound(format!("No backup policy '{n}'.")));
    }
    let row = tx
        .query_opt(
            "UPDATE sites SET backup_policy = $2, updated_at = now() WHERE id = $1 RETURNING owner",
            &[&site, &name],
        )
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("No site {site}.")))?;
    let owner: String = row.get(0);
    audit::record(
        &tx,
        actor,
        &Entry::new("site.backup_policy", site.to_string())
            .owner(owner)
            .detail(json!({ "policy": name })),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A site's backup, as listed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackupRow {
    /// The record.
    pub id: Uuid,
    /// The site.
    pub site_id: Option<Uuid>,
    /// The container.
    pub vmid: u32,
    /// `scheduled`, `on_demand`, `final`, `pre_restore`.
    pub kind: String,
    /// `requested`, `running`, `ok`, `failed`, `pruned`, `deleted`.
    pub state: String,
    /// The volume, once written.
    pub volid: Option<String>,
    /// The node that wrote it.
    pub node: Option<String>,
    /// The storage.
    pub storage: String,
    /// Bytes.
    pub size: Option<i64>,
    /// When it was taken.
    pub taken_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Protected from pruning.
    pub protected: bool,
    /// Kept until then (final backups).
    pub keep_until: Option<chrono::DateTime<chrono::Utc>>,
    /// The last verification: `ok` or `failed`; none when never verified.
    pub verify_state: Option<String>,
    /// When it was verified.
    pub verified_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why it failed, when it did.
    pub error: Option<serde_json::Value>,
    /// Who asked for it, for the fleet's own backups.
    pub requested_by: Option<String>,
    /// Recorded at.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

const ROW: &str = "id, site_id, vmid, kind, state, volid, node, storage, size, taken_at, protected, keep_until,
    verify_state, verified_at, error, requested_by, created_at";

fn row(r: &tokio_postgres::Row) -> BackupRow {
    BackupRow {
        id: r.get(0),
        site_id: r.get(1),
        vmid: r.get::<_, i32>(2) as u32,
        kind: r.get(3),
        state: r.get(4),
        volid: r.get(5),
        node: r.get(6),
        storage: r.get(7),
        size: r.get(8),
        taken_at: r.get(9),
        protected: r.get(10),
        keep_until: r.get(11),
        verify_state: r.get(12),
        verified_at: r.get(13),
        error: r.get(14),
        requested_by: r.get(15),
        created_at: r.get(16),
    }
}

/// A site's backups, newest first (at most `limit`).
pub async fn list(db: &dyn pvefleet_core::db::Sql, site: Uuid, limit: i64) -> Result<Vec<BackupRow>, OpsError> {
    let rows = db
        .rows(
            &format!(
                "SELECT {ROW} FROM backups WHERE site_id = $1
                 ORDER BY COALESCE(taken_at, created_at) DESC, created_at DESC LIMIT $2"
            ),
            &[&site, &limit],
        )
        .await?;
    Ok(rows.iter().map(row).collect())
}

/// One backup.
pub async fn get(db: &dyn pvefleet_core::db::Sql, id: Uuid) -> Result<Option<BackupRow>, OpsError> {
    Ok(db
        .opt(&format!("SELECT {ROW} FROM backups WHERE id = $1"), &[&id])
        .await?
        .as_ref()
        .map(row))
}

/// Asks for a backup of an active site now: records it (`requested`) and writes its
/// `backup.create` into the outbox, with the audit row, in one transaction.
pub async fn request(
    db: &mut tokio_postgres::Client,
    actor: &Actor,
    site: Uuid,
    kind: BackupKind,
) -> Result<Uuid, OpsError> {
    let tx = db.transaction().await?;
    let found = tx
        .query_opt(
            "SELECT state, vmid, node, owner FROM sites WHERE id = $1 FOR UPDATE",
            &[&site],
        )
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("No site {site}.")))?;
    let (state, vmid, node, owner): (String, Option<i32>, Option<String>, String) =
        (found.get(0), found.get(1), found.get(2), found.get(3));
    let Some(vmid) = vmid.filter(|_| state == "active") else {
        return Err(OpsError::Conflict(format!(
            "Site {site} is {state}: only an active site with a container can be backed up."
        )));
    };
    // One on-demand backup of a site at a time: another is refused until it has ended.
    if kind == BackupKind::OnDemand
        && let Some(busy) = tx
            .query_opt(
                "SELECT id FROM backups WHERE site_id = $1 AND kind = 'on_demand' AND state IN ('requested', 'running')",
                &[&site],
            )
            .await?
    {
        let busy: Uuid = busy.get(0);
        return Err(OpsError::Conflict(format!(
            "Backup {busy} of site {site} has not ended yet: wait for it before asking for another."
        )));
    }
    let id = Uuid::now_v7();
    // The storage ('' until then) is the site's policy's, resolved by the backup service.
    tx.execute(
        "INSERT INTO backups (id, site_id, vmid, node, storage, kind, state, requested_by)
         VALUES ($1, $2, $3, $4, '', $5, 'requested', $6)",
        &[&id, &site, &vmid, &node, &kind.as_str(), &actor.name],
    )
    .await?;
    let cmd = BackupCreate {
        site_id: SiteId(site),
        vmid: Vmid(vmid as u32),
        backup_id: id,
        kind,
        storage: None,
        node,
    };
    let origin = Origin {
        correlation_id: Some(id),
        app_id: Some("backup".into()),
        ..Origin::default()
    };
    pvefleet_core::db::outbox::enqueue(&tx, &Outgoing::message(&cmd, &origin)?).await?;
    audit::record(
        &tx,
        actor,
        &Entry::new("backup.request", site.to_string())
            .owner(owner)
            .detail(json!({ "backup_id": id, "vmid": vmid, "kind": kind.as_str() })),
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// The backup a restore of `site` takes: the one named, else the newest written and kept one
/// that was not taken before an earlier restore (those are restored by name).
async fn restorable_backup(
    tx: &tokio_postgres::Transaction<'_>,
    site: Uuid,
    volid: Option<&str>,
    doing: &str,
) -> Result<String, OpsError> {
    let backup = tx
        .query_opt(
            "SELECT volid FROM backups
             WHERE site_id = $1 AND state = 'ok' AND volid IS NOT NULL
               AND (volid = $2 OR ($2::text IS NULL AND kind <> 'pre_restore'))
             ORDER BY taken_at DESC NULLS LAST, created_at DESC LIMIT 1",
            &[&site, &volid],
        )
        .await?;
    match (backup, volid) {
        (Some(b), _) => Ok(b.get(0)),
        (None, Some(v)) => Err(OpsError::NotFound(format!("Site {site} has no kept backup '{v}'."))),
        (None, None) => Err(OpsError::Conflict(format!("Site {site} has no backup to {doing}."))),
    }
}

/// Queues `cmd` for the saga coordinator as saga `saga` of the site it names, followable at
/// once (`GET /v1/sagas/{id}`, `--wait`) before the coordinator has started it.
async fn queue_restore(
    tx: &tokio_postgres::Transaction<'_>,
    cmd: &SiteRestore,
    saga: Uuid,
    owner: &str,
) -> Result<(), OpsError> {
    let origin = Origin {
        correlation_id: Some(saga),
        app_id: Some("backup".into()),
        ..Origin::default()
    };
    pvefleet_core::db::outbox::enqueue(tx, &Outgoing::message(cmd, &origin)?).await?;
    tx.execute(
        "INSERT INTO accepted_sagas (saga_id, kind, site_id, owner) VALUES ($1, 'restore', $2, $3)",
        &[&saga, &cmd.site_id.as_uuid(), &owner],
    )
    .await?;
    Ok(())
}

/// Asks for a restore of `site` from `volid` (none: its latest backup, not counting the
/// backups taken before earlier restores, which are restored only by name): an active site is
/// restored in place, a deleted one brought back. The backup must be one of the site's, written
/// and still kept; one restore of a site at a time. Queues `site.restore` for the saga
/// coordinator through the outbox, audited, in one transaction; answers the saga's id.
pub async fn restore(
    db: &mut tokio_postgres::Client,
    actor: &Actor,
    site: Uuid,
    volid: Option<&str>,
) -> Result<Uuid, OpsError> {
    let tx = db.transaction().await?;
    let found = tx
        .query_opt("SELECT state, owner FROM sites WHERE id = $1 FOR UPDATE", &[&site])
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("No site {site}.")))?;
    let (state, owner): (String, String) = (found.get(0), found.get(1));
    if state != "active" && state != "deleted" {
        return Err(OpsError::Conflict(format!(
            "Site {site} is {state}: only an active site, or a deleted one, can be restored."
        )));
    }
    let chosen = restorable_backup(&tx, site, volid, "restore").await?;
    let saga = Uuid::now_v7();
    let cmd = SiteRestore {
        site_id: SiteId(site),
        volid: Some(chosen.clone()),
        requested_by: Some(actor.name.clone()),
        clone_of: None,
    };
    queue_restore(&tx, &cmd, saga, &owner).await?;
    audit::record(
        &tx,
        actor,
        &Entry::new("site.restore", site.to_string())
            .owner(owner)
            .detail(json!({ "saga": saga, "volid": chosen, "was": state })),
    )
    .await?;
    tx.commit().await?;
    Ok(saga)
}

/// Asks the backup service to put version `version` of an active site's config back
/// (`config.restore`, through the outbox in the same transaction as the request and its audit
/// row). Answers the request's id, which [`crate::history::restore_row`] follows.
pub async fn restore_config(
    db: &mut tokio_postgres::Client,
    actor: &Actor,
    site: Uuid,
    version: i32,
) -> Result<Uuid, OpsError> {
    let tx = db.transaction().await?;
    let found = tx
        .query_opt(
            "SELECT state, owner, vmid FROM sites WHERE id = $1 FOR UPDATE",
            &[&site],
        )
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("No site {site}.")))?;
    let (state, owner, vmid): (String, String, Option<i32>) = (found.get(0), found.get(1), found.get(2));
    let Some(vmid) = vmid.filter(|_| state == "active") else {
        return Err(OpsError::Conflict(format!(
            "Site {site} is {state}: only an active site's config can be restored."
        )));
    };
    let exists = tx
        .query_opt(
            "SELECT 1 FROM config_versions WHERE site_id = $1 AND version = $2",
            &[&site, &version],
        )
        .await?
        .is_some();
    if !exists {
        return Err(OpsError::NotFound(format!(
            "Site {site} has no config version {version}."
        )));
    }
    let busy = tx
        .query_opt(
            // One at a time; a request whose command was parked does not block for ever.
            "SELECT id FROM config_restores
             WHERE site_id = $1 AND state = 'requested' AND created_at > now() - interval '1 hour'",
            &[&site],
        )
        .await?;
    if let Some(busy) = busy {
        let id: Uuid = busy.get(0);
        return Err(OpsError::Conflict(format!(
            "Site {site} has a config restore in progress ({id}): wait for it first."
        )));
    }
    let id = Uuid::now_v7();
    tx.execute(
        "INSERT INTO config_restores (id, site_id, version, requested_by) VALUES ($1, $2, $3, $4)",
        &[&id, &site, &version, &actor.name],
    )
    .await?;
    let cmd = pvefleet_contracts::messages::ConfigRestore {
        site_id: SiteId(site),
        vmid: Vmid(vmid as u32),
        version: version as u32,
        restore_id: id,
    };
    let origin = Origin {
        correlation_id: Some(id),
        app_id: Some("backup".into()),
        ..Origin::default()
    };
    pvefleet_core::db::outbox::enqueue(&tx, &Outgoing::message(&cmd, &origin)?).await?;
    audit::record(
        &tx,
        actor,
        &Entry::new("site.config_restore", site.to_string())
            .owner(owner)
            .detail(json!({ "restore_id": id, "version": version, "vmid": vmid })),
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Clones a site from one of its backups into a new site beside it (`restore` saga, the
/// clone way): a new site is recorded `requested` with its own subdomain (none given:
/// `<subdomain>-clone`), the same owner and spec, and `site.restore` names the site it is
/// cloned from. Checked as a new site is: the subdomain a DNS label no live site holds, the
/// owner under `max_sites` (`saga.max_sites_per_owner`). Answers the saga and the new site.
pub async fn clone_site(
    db: &mut tokio_postgres::Client,
    actor: &Actor,
    site: Uuid,
    volid: Option<&str>,
    subdomain: Option<&str>,
    max_sites: u32,
) -> Result<(Uuid, Uuid), OpsError> {
    let tx = db.transaction().await?;
    let found = tx
        .query_opt(
            "SELECT state, owner, subdomain, spec FROM sites WHERE id = $1",
            &[&site],
        )
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("No site {site}.")))?;
    let (state, owner, from_sub, mut spec): (String, String, String, serde_json::Value) =
        (found.get(0), found.get(1), found.get(2), found.get(3));
    let subdomain = subdomain.map_or_else(|| format!("{from_sub}-clone"), str::to_string);
    let refused = |i: pvefleet_policy::Invalid| {
        OpsError::Invalid(Invalid {
            field: "subdomain",
            why: i.reason,
        })
    };
    pvefleet_policy::site::label(&subdomain).map_err(refused)?;
    let clone = Uuid::now_v7();
    // One clone of a subdomain at a time, as one site creation.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&subdomain])
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('owner:' || $1))", &[&owner])
        .await?;
    let sql: &dyn pvefleet_core::db::Sql = &tx;
    if let Some(taken) = pvefleet_policy::site::subdomain_taken(sql, &subdomain, clone).await? {
        return Err(OpsError::Conflict(taken.reason));
    }
    if let Some(over) = pvefleet_policy::site::over_quota(sql, &owner, clone, max_sites).await? {
        return Err(OpsError::Conflict(over.reason));
    }
    let chosen = restorable_backup(&tx, site, volid, "clone").await?;
    if let Some(o) = spec.as_object_mut() {
        o.insert("site_id".into(), json!(clone));
        o.insert("subdomain".into(), json!(subdomain));
    }
    tx.execute(
        "INSERT INTO sites (id, subdomain, owner, state, spec, backup_policy)
         SELECT $1, $2, owner, 'requested', $3, backup_policy FROM sites WHERE id = $4",
        &[&clone, &subdomain, &spec, &site],
    )
    .await?;
    let saga = Uuid::now_v7();
    let cmd = SiteRestore {
        site_id: SiteId(clone),
        volid: Some(chosen.clone()),
        requested_by: Some(actor.name.clone()),
        clone_of: Some(SiteId(site)),
    };
    queue_restore(&tx, &cmd, saga, &owner).await?;
    audit::record(
        &tx,
        actor,
        &Entry::new("site.clone", site.to_string())
            .owner(owner)
            .detail(json!({ "saga": saga, "volid": chosen, "clone": clone, "subdomain": subdomain, "was": state })),
    )
    .await?;
    tx.commit().await?;
    Ok((saga, clone))
}
