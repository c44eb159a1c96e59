//! The commands that start a saga: `site.provision` (checked against the site policy, its
//! leases taken), `site.deprovision` (a provisioning still in flight is superseded) and
//! `vnet.provision` (its operation recorded). A start whose saga exists is a redelivery and
//! does nothing; one that fails before its first step ends the site with the reason.

use async_trait::async_trait;
use pvefleet_contracts::messages::{
    MessageParked, SiteDeprovision, SiteProvision, SiteProvisionFailed, SiteRejected, SiteRestore, SiteRestoreFailed,
    VnetProvision,
};
use pvefleet_contracts::{Message, SiteId, StepError};
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError, Outgoing};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::coordinator::{Coordinator, Inner};
use crate::engine::{Exec, Progress, SagaKind, Stored, store};
use crate::kinds::restore::RestoreSaga;
use crate::kinds::site::SiteSaga;
use crate::kinds::vnet::{VnetProvisioning, VnetSaga};
use crate::leases;

#[async_trait]
impl Handler<SiteProvision> for Coordinator {
    async fn handle(&self, req: SiteProvision, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let x = me.exec(ctx)?;
        let saga = ctx.correlation_id.unwrap_or_else(Uuid::now_v7);
        let site = req.site_id.as_uuid();
        // A saga that exists already is a redelivery: it was checked when it first arrived.
        if started(&x, saga).await? {
            return Ok(());
        }
        // The site policy, every rule of it, as intake applies it to an HTTP caller. A refusal
        // is told at once and the message parked (it must not roll back with the message);
        // parking ends a site intake recorded (`end_parked_request`).
        if let Some((invalid, park)) = refusal(me, &x, &req, site).await? {
            if !park {
                // Someone else's live site holds the subdomain: the request is answered.
                return reject(ctx, saga, &req, &invalid.field, &invalid.reason).await;
            }
            reject(ctx, saga, &req, &invalid.field, &invalid.reason).await?;
            return Err(HandlerError::rejected(invalid.to_string()));
        }
        // A pool with nothing left ends the saga here: no step was sent, so there is nothing to
        // compensate, but the site must end and say why, and give back what it held.
        let leased = match leases::lease_vmid(x.db, &me.settings, site).await {
            Ok(vmid) => leases::lease_ip(x.db, &me.settings, site).await.map(|ip| (vmid, ip)),
            Err(e) => Err(e),
        };
        let (vmid, ip) = match leased {
            Ok(l) => l,
            Err(HandlerError::Fail(error)) => return fail_before_start(me, &x, saga, &req, "lease", error).await,
            Err(other) => return Err(other),
        };
        // The site: intake writes it first as `requested`; a publisher straight to the bus does not.
        let spec = serde_json::to_value(&req).unwrap_or(Value::Null);
        x.db.exec(
            "INSERT INTO sites (id, subdomain, owner, state, spec, vmid, ip) VALUES ($1, $2, $3, 'provisioning', $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET state = 'provisioning', vmid = $5, ip = $6, updated_at = now()
                 WHERE sites.state = 'requested'",
            &[&site, &req.subdomain, &req.owner, &spec, &(vmid as i32), &ip],
        )
        .await?;
        let data = SiteSaga {
            site: req,
            vmid,
            ip,
            node: None,
            vmids_taken: Vec::new(),
            final_backup: false,
        };
        me.provision.start(&x, saga, Some(site), data, &[]).await.map(drop)
    }
}

#[async_trait]
impl Handler<SiteDeprovision> for Coordinator {
    async fn handle(&self, cmd: SiteDeprovision, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let x = me.exec(ctx)?;
        let site = cmd.site_id.as_uuid();
        let saga = ctx.correlation_id.unwrap_or_else(Uuid::now_v7);
        let (state, mut data) = locked_site(&x, site).await?;
        if state == "deleted" || state == "deprovisioning" {
            return Ok(());
        }
        if state == "restoring" {
            return Err(HandlerError::fail(
                "site.restoring",
                format!("site {site} is being restored: replay this once its restore saga has ended"),
            ));
        }
        data.final_backup = state == "active";
        x.db.exec(
            "UPDATE sites SET state = 'deprovisioning', updated_at = now() WHERE id = $1",
            &[&site],
        )
        .await?;
        // A provisioning saga still in flight stops here: its late events are then ignored.
        x.db.exec(
            "UPDATE sagas SET state = 'superseded', version = version + 1, updated_at = now()
             WHERE site_id = $1 AND kind = 'provision' AND state IN ('running', 'compensating', 'suspended', 'compensation_failed')",
            &[&site],
        )
        .await?;
        me.deprovision.start(&x, saga, Some(site), data, &[]).await.map(drop)
    }
}

#[async_trait]
impl Handler<VnetProvision> for Coordinator {
    async fn handle(&self, cmd: VnetProvision, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let x = me.exec(ctx)?;
        // The saga's id is the operation's: intake returned it to follow.
        let id = cmd.operation_id;
        let request = serde_json::to_value(&cmd).unwrap_or(Value::Null);
        // Published directly (not through intake): the operation is recorded here.
        x.db.exec(
            "INSERT INTO net_operations (id, kind, vmid, vnet, request) VALUES ($1, 'vnet.provision', $2, $3, $4)
             ON CONFLICT (id) DO NOTHING",
            &[&id, &(cmd.vmid.0 as i32), &cmd.vnet, &request],
        )
        .await?;
        x.db.exec(
            "UPDATE net_operations SET status = 'running', updated_at = now() WHERE id = $1 AND status = 'pending'",
            &[&id],
        )
        .await?;
        let (vnet, vmid) = (cmd.vnet.clone(), cmd.vmid.0);
        let data = VnetSaga {
            request: cmd,
            ensure_op: Uuid::now_v7(),
            bind_op: Uuid::now_v7(),
            remove_op: Uuid::now_v7(),
            created: false,
            bound: None,
            error: None,
            failed_nodes: Vec::new(),
        };
        let answers = VnetProvisioning::answers_on(&data);
        if me.vnet.start(&x, id, None, data, &answers).await? {
            tracing::info!(saga = %id, vnet = %vnet, vmid, "VNet saga started: ensuring the VNet.");
        }
        Ok(())
    }
}

/// Whether saga `id` exists already: its start command is delivered again, and was handled.
async fn started(x: &Exec<'_>, id: Uuid) -> Result<bool, HandlerError> {
    Ok(x.db
        .one("SELECT EXISTS (SELECT 1 FROM sagas WHERE id = $1)", &[&id])
        .await?
        .get(0))
}

/// Site `site`, locked to the end of the transaction: its state, and what a site saga carries
/// of it (its request, vmid, address and node).
async fn locked_site(x: &Exec<'_>, site: Uuid) -> Result<(String, SiteSaga), HandlerError> {
    let Some(row) =
        x.db.opt(
            "SELECT state, spec, vmid, ip, node FROM sites WHERE id = $1 FOR UPDATE",
            &[&site],
        )
        .await?
    else {
        return Err(HandlerError::fail(
            "site.missing",
            format!("site {site} does not exist"),
        ));
    };
    let Ok(req) = serde_json::from_value::<SiteProvision>(row.get(1)) else {
        return Err(HandlerError::fail("site.corrupt", "the site's spec does not decode"));
    };
    let data = SiteSaga {
        site: req,
        vmid: row.get::<_, Option<i32>>(2).map_or(0, |v| v as u32),
        ip: row.get::<_, Option<String>>(3).unwrap_or_default(),
        node: row.get(4),
        vmids_taken: Vec::new(),
        final_backup: false,
    };
    Ok((row.get(0), data))
}

/// The `site.rejected` published when a `site.provision` fails its schema check: the field is
/// the first one the schema names (`/subdomain: ...`).
pub(crate) fn rejection_notice(body: &Value, reason: &str, origin: &Origin) -> Option<Outgoing> {
    let site_id = body
        .get("site_id")
        .and_then(|v| serde_json::from_value::<SiteId>(v.clone()).ok());
    let field = reason
        .split(": /")
        .nth(1)
        .and_then(|rest| rest.split([':', '/']).next())
        .filter(|f| !f.is_empty())
        .map(str::to_string);
    let rejected = SiteRejected {
        site_id,
        field,
        reason: reason.to_string(),
    };
    Outgoing::message(&rejected, origin).ok()
}

/// Why the site policy refuses `req`, if it does, and whether the message is parked: the
/// request's own rules, then the subdomain (in use: answered, not parked), the owner's quota
/// and the node (when one is asked for). The quota is counted in the inbox transaction under
/// the owner's lock; an unreachable PVE is retried, not a refusal.
async fn refusal(
    me: &Inner,
    x: &Exec<'_>,
    req: &SiteProvision,
    site: Uuid,
) -> Result<Option<(pvefleet_policy::Invalid, bool)>, HandlerError> {
    use pvefleet_policy::site;
    let policy = site::SitePolicy {
        saga: &me.settings,
        templates: &me.templates,
        apps: &me.apps,
    };
    if let Err(invalid) = policy.check(req) {
        return Ok(Some((invalid, true)));
    }
    if let Some(invalid) = site::subdomain_taken(x.db, &req.subdomain, site).await? {
        return Ok(Some((invalid, false)));
    }
    // One owner's requests are counted one at a time across batches (and with intake, which
    // takes the same lock), so two batches cannot both take the owner's last place. The lock
    // is held to the batch's commit; a deadlock between two batches is retried like any other.
    if site::limited(me.settings.max_sites_per_owner) {
        x.db.exec("SELECT pg_advisory_xact_lock(hashtext('owner:' || $1))", &[&req.owner])
            .await?;
    }
    if let Some(invalid) = site::over_quota(x.db, &req.owner, site, me.settings.max_sites_per_owner).await? {
        return Ok(Some((invalid, true)));
    }
    if let (Some(node), Some(pve)) = (&req.node, &me.pve) {
        return Ok(site::node_unusable(pve, node).await?.map(|i| (i, true)));
    }
    Ok(None)
}

/// Publishes `site.rejected` at once: it must not roll back with a message that is parked.
async fn reject(ctx: &Context<'_>, saga: Uuid, req: &SiteProvision, field: &str, reason: &str) -> Handled {
    let rejected = SiteRejected {
        site_id: Some(req.site_id),
        field: Some(field.to_string()),
        reason: reason.to_string(),
    };
    let origin = Origin {
        correlation_id: Some(saga),
        ..ctx.origin()
    };
    let out = Outgoing::message(&rejected, &origin)
        .map_err(|e| HandlerError::retry(anyhow::Error::new(e).context("cannot encode site.rejected")))?;
    ctx.publisher
        .publish(&out)
        .await
        .map_err(|e| HandlerError::from(e).context("cannot publish site.rejected"))
}

/// The data of a provisioning that ended before its first step: nothing leased or done.
fn unstarted(me: &Inner, req: SiteProvision) -> Value {
    let data = SiteSaga {
        site: req,
        vmid: 0,
        ip: String::new(),
        node: None,
        vmids_taken: Vec::new(),
        final_backup: false,
    };
    let plan = me
        .provision
        .kind()
        .table()
        .forward
        .iter()
        .filter(|s| (s.applies)(&data, &me.settings))
        .map(|s| s.key.to_string())
        .collect();
    serde_json::to_value(Stored {
        progress: Progress {
            plan,
            ..Progress::default()
        },
        data,
    })
    .unwrap_or(Value::Null)
}

/// Ends a provisioning that failed before its first step (its leases could not be had): the
/// leases it took in this transaction are released, the site is `failed` with the reason
/// (which frees its subdomain), the saga is recorded `failed` so a follower of it sees the
/// end, and `site.provision_failed` goes out, all in the handler's transaction.
async fn fail_before_start(
    me: &Inner,
    x: &Exec<'_>,
    saga: Uuid,
    req: &SiteProvision,
    step: &str,
    error: StepError,
) -> Handled {
    let site = req.site_id.as_uuid();
    tracing::warn!(%saga, %site, code = %error.code, error = %error.message, "A provisioning failed before its first step.");
    x.db.exec("DELETE FROM leases WHERE site_id = $1", &[&site]).await?;
    let detail = json!({ "step": step, "error": error });
    let spec = serde_json::to_value(req).unwrap_or(Value::Null);
    x.db.exec(
        "WITH site AS (
             INSERT INTO sites (id, subdomain, owner, state, spec, error) VALUES ($2, $3, $4, 'failed', $5, $6)
             ON CONFLICT (id) DO UPDATE SET state = 'failed', error = $6, updated_at = now()
                 WHERE sites.state = 'requested'
             RETURNING 1)
         INSERT INTO sagas (id, kind, site_id, state, step, data, error) VALUES ($1, 'provision', $2, 'failed', 0, $7, $6)",
        &[&saga, &site, &req.subdomain, &req.owner, &spec, &detail, &unstarted(me, req.clone())],
    )
    .await?;
    let msg = SiteProvisionFailed {
        site_id: req.site_id,
        failed_step: step.to_string(),
        error,
    };
    x.send(saga, &msg).await
}

/// A `site.provision` was parked before its saga started. A site intake recorded for it
/// (still `requested`) ends: `rejected` when the policy refused it (`site.rejected` went out
/// already), else `failed` with `site.provision_failed`; its subdomain is free again, and the
/// saga is recorded `failed`, naming the dead letter, so a follower sees the end.
pub(crate) async fn end_parked_request(me: &Inner, x: &Exec<'_>, saga: Uuid, parked: &MessageParked) -> Handled {
    let Some(dead) =
        x.db.opt(
            "SELECT body, fault_message FROM dead_letters WHERE id = $1",
            &[&parked.dead_letter_id],
        )
        .await?
    else {
        return Ok(());
    };
    let (body, reason): (Vec<u8>, String) = (dead.get(0), dead.get(1));
    // The body may be anything a publisher sent; only a readable site id leads anywhere.
    let Some(site) = serde_json::from_slice::<Value>(&body).ok().and_then(|b| {
        b.get("site_id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Uuid>().ok())
    }) else {
        return Ok(());
    };
    let Some(row) =
        x.db.opt(
            "SELECT spec FROM sites WHERE id = $1 AND state = 'requested' FOR UPDATE",
            &[&site],
        )
        .await?
    else {
        return Ok(());
    };
    let spec: Value = row.get(0);
    let refused = parked.fault_class == "rejected";
    let error = StepError::new(if refused { "rejected" } else { "parked" }, reason);
    let detail = json!({
        "step": SiteProvision::TYPE,
        "dead_letter_id": parked.dead_letter_id.to_string(),
        "error": error,
    });
    let state = if refused { "rejected" } else { "failed" };
    x.db.exec(
        "UPDATE sites SET state = $2, error = $3, updated_at = now() WHERE id = $1",
        &[&site, &state, &detail],
    )
    .await?;
    let data = serde_json::from_value::<SiteProvision>(spec)
        .ok()
        .map(|req| unstarted(me, req));
    store::insert(
        x.db,
        saga,
        crate::engine::Kind::Provision,
        Some(site),
        crate::engine::State::Failed,
        &json!(data),
    )
    .await?;
    x.db.exec("UPDATE sagas SET error = $2 WHERE id = $1", &[&saga, &detail])
        .await?;
    tracing::warn!(%saga, %site, state, dead_letter = %parked.dead_letter_id, "A site's request was parked before its saga started; the site ends.");
    if !refused {
        let msg = SiteProvisionFailed {
            site_id: SiteId(site),
            failed_step: SiteProvision::TYPE.to_string(),
            error,
        };
        x.send(saga, &msg).await?;
    }
    Ok(())
}

/// `site.restore`: an active site is restored in place; a deleted one gets a vmid and an
/// address again and comes back in a new container. The backup is the one named (it must be
/// one of the site's, written and still there) or the site's latest. A restore that cannot
/// start (a site in another state, no such backup, its subdomain taken meanwhile, nothing
/// left to lease) ends at once, recorded as a failed saga with `site.restore_failed`.
#[async_trait]
impl Handler<SiteRestore> for Coordinator {
    async fn handle(&self, cmd: SiteRestore, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let x = me.exec(ctx)?;
        let saga = ctx.correlation_id.unwrap_or_else(Uuid::now_v7);
        let site = cmd.site_id.as_uuid();
        if started(&x, saga).await? {
            return Ok(());
        }
        let (state, site_data) = locked_site(&x, site).await?;
        let mut data = RestoreSaga {
            site: site_data,
            volid: cmd.volid.clone().unwrap_or_default(),
            backup_node: None,
            pre_restore_id: Uuid::now_v7(),
            previous: None,
            // A clone is made like a destroyed site: everything anew.
            was_deleted: state == "deleted" || cmd.clone_of.is_some(),
            clone_of: cmd.clone_of,
        };
        if cmd.clone_of.is_some() && state != "requested" {
            let why = format!("site {site} is {state}: a clone is made into a new site, recorded as requested");
            return refuse_restore(&x, saga, data, StepError::new("site.state", why)).await;
        }
        if cmd.clone_of.is_none() && state != "active" && state != "deleted" {
            let why = format!("site {site} is {state}: only an active or a deleted site is restored");
            return refuse_restore(&x, saga, data, StepError::new("site.state", why)).await;
        }
        // The backup: the one named, else the latest, of this site's (a clone: the other
        // site's) that are written and kept.
        let source = cmd.clone_of.map_or(site, |s| s.as_uuid());
        let backup =
            x.db.opt(
                "SELECT volid, node FROM backups
             WHERE site_id = $1 AND state = 'ok' AND volid IS NOT NULL
               AND (volid = $2 OR ($2::text IS NULL AND kind <> 'pre_restore'))
             ORDER BY taken_at DESC NULLS LAST, created_at DESC LIMIT 1",
                &[&source, &cmd.volid],
            )
            .await?;
        let Some(backup) = backup else {
            let why = match &cmd.volid {
                Some(v) => format!("'{v}' is no backup of site {source} that is written and kept"),
                None => format!("site {source} has no backup to restore"),
            };
            return refuse_restore(&x, saga, data, StepError::new("backup.missing", why)).await;
        };
        data.volid = backup.get(0);
        data.backup_node = backup.get(1);
        if data.was_deleted {
            if let Some(invalid) = pvefleet_policy::site::subdomain_taken(x.db, &data.site.site.subdomain, site).await?
            {
                return refuse_restore(&x, saga, data, StepError::new("site.subdomain", invalid.reason)).await;
            }
            let leased = match leases::lease_vmid(x.db, &me.settings, site).await {
                Ok(vmid) => leases::lease_ip(x.db, &me.settings, site).await.map(|ip| (vmid, ip)),
                Err(e) => Err(e),
            };
            match leased {
                Ok((vmid, ip)) => {
                    data.site.vmid = vmid;
                    data.site.ip = ip;
                    data.site.node = None;
                }
                Err(HandlerError::Fail(error)) => {
                    x.db.exec("DELETE FROM leases WHERE site_id = $1", &[&site]).await?;
                    return refuse_restore(&x, saga, data, error).await;
                }
                Err(other) => return Err(other),
            }
        }
        x.db.exec(
            "UPDATE sites SET state = 'restoring', updated_at = now() WHERE id = $1",
            &[&site],
        )
        .await?;
        tracing::info!(%saga, %site, volid = %data.volid, was_deleted = data.was_deleted, clone_of = ?cmd.clone_of, by = ?cmd.requested_by, "Restoring a site.");
        me.restore.start(&x, saga, Some(site), data, &[]).await.map(drop)
    }
}

/// Ends a restore that could not start: recorded failed (a follower sees the end), with
/// `site.restore_failed`; the site is untouched.
async fn refuse_restore(x: &Exec<'_>, saga: Uuid, data: RestoreSaga, error: StepError) -> Handled {
    tracing::warn!(%saga, site = %data.site.site.site_id, code = %error.code, error = %error.message, "A restore cannot start.");
    let site = data.site.site.site_id;
    let data_clone = data.clone_of.is_some();
    let detail = json!({ "step": SiteRestore::TYPE, "error": error });
    let stored = serde_json::to_value(Stored {
        progress: Progress::default(),
        data,
    })
    .unwrap_or(Value::Null);
    store::insert(
        x.db,
        saga,
        crate::engine::Kind::Restore,
        Some(site.as_uuid()),
        crate::engine::State::Failed,
        &stored,
    )
    .await?;
    x.db.exec("UPDATE sagas SET error = $2 WHERE id = $1", &[&saga, &detail])
        .await?;
    // A clone's site was made for it: it ends failed, saying why.
    if data_clone {
        x.db.exec(
            "UPDATE sites SET state = 'failed', error = $2, updated_at = now() WHERE id = $1 AND state = 'requested'",
            &[&site.as_uuid(), &detail],
        )
        .await?;
    }
    let msg = SiteRestoreFailed {
        site_id: site,
        failed_step: SiteRestore::TYPE.to_string(),
        error,
    };
    x.send(saga, &msg).await
}
