//! The saga coordinator (DESIGN.md §6): sagas as data, persisted in Postgres with a version
//! column; every transition and the commands it sends commit in one transaction, the inbox
//! batch's, through the outbox.
//!
//! Provision: lease a vmid and an IP → `container.create` → `container.start` → `app.install`
//! (skipped for `app: none`) → `container.snapshot` (`initial`) → `dns.upsert` (skipped when
//! `saga.dns_provider` is `none`) → `proxy.upsert` (likewise) → `ha.enable` (when asked) →
//! `site.provisioned`. A `*_failed` event compensates the completed steps in reverse, releases
//! the leases and ends in `site.provision_failed`; a compensation that keeps failing ends in
//! `compensation_failed`. Deprovision: `ha.disable` → `proxy.delete` → `dns.delete` →
//! `container.destroy` → release → `site.deprovisioned`, recovering forward.
//!
//! Events are matched to a saga by their correlation id (the saga id). An event for a step
//! that is not the one in flight (a duplicate, or a late completion) is logged and ignored.

pub mod deadlines;
pub mod dlq;
pub mod keeper;
mod leases;
mod legacy;
mod netsaga;
pub mod ops;
mod steps;

use std::sync::Arc;

use crate::legacy::Outcome;
use async_trait::async_trait;
use pvefleet_contracts::messages::{
    SiteDeprovision, SiteDeprovisioned, SiteProvision, SiteProvisionFailed, SiteProvisioned, SiteRejected,
};
use pvefleet_contracts::{Message, StepError};
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::{Context, Handled, Handler, Outgoing, Router};
use pvefleet_core::config::SagaSettings;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

pub use steps::Step;

/// What a saga carries between steps (`sagas.data`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SagaData {
    /// The request.
    pub site: SiteProvision,
    /// The leased vmid.
    pub vmid: u32,
    /// The leased address, CIDR form.
    pub ip: String,
    /// The node, once known.
    pub node: Option<String>,
    /// The forward steps, in order.
    pub plan: Vec<Step>,
    /// Forward steps completed, in order.
    pub done: Vec<Step>,
    /// Compensations to run, in order.
    pub compensations: Vec<Step>,
    /// The step that failed, and why.
    pub failure: Option<(Step, StepError)>,
    /// vmids given up because PVE already used them for something not ours.
    #[serde(default)]
    pub vmids_taken: Vec<u32>,
}

impl SagaData {
    /// The data of a provisioning that ended before its first step: nothing leased or done.
    fn unstarted(site: SiteProvision, plan: Vec<Step>) -> Self {
        Self {
            site,
            vmid: 0,
            ip: String::new(),
            node: None,
            plan,
            done: Vec::new(),
            compensations: Vec::new(),
            failure: None,
            vmids_taken: Vec::new(),
        }
    }
}

/// The coordinator's handlers.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SagaSettings,
    templates: Vec<String>,
    apps: Vec<String>,
}

type Db<'a> = &'a dyn pvefleet_core::db::Sql;

/// How many vmids a provisioning saga gives up, as found in use in PVE, before it fails.
const VMID_RELEASES: usize = 8;

/// A reason a site request is invalid: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field at fault.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl Coordinator {
    /// A coordinator with the saga settings, the allowed templates and the installer's apps
    /// besides `wordpress` and `none`.
    pub fn new(settings: SagaSettings, templates: Vec<String>, apps: Vec<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                templates,
                apps,
            }),
        }
    }

    /// The router of the saga queue: site commands and every step event.
    pub fn router(&self) -> Router {
        use pvefleet_contracts::messages::*;
        let c = self.clone();
        Router::new()
            .route::<SiteProvision, _>(c.clone())
            .route::<SiteDeprovision, _>(c.clone())
            .route::<ContainerCreated, _>(c.clone())
            .route::<ContainerCreateFailed, _>(c.clone())
            .route::<ContainerStarted, _>(c.clone())
            .route::<ContainerStartFailed, _>(c.clone())
            .route::<ContainerSnapshotted, _>(c.clone())
            .route::<ContainerSnapshotFailed, _>(c.clone())
            .route::<ContainerDestroyed, _>(c.clone())
            .route::<ContainerDestroyFailed, _>(c.clone())
            .route::<AppInstalled, _>(c.clone())
            .route::<AppInstallFailed, _>(c.clone())
            .route::<DnsUpserted, _>(c.clone())
            .route::<DnsUpsertFailed, _>(c.clone())
            .route::<DnsDeleted, _>(c.clone())
            .route::<DnsDeleteFailed, _>(c.clone())
            .route::<ProxyUpserted, _>(c.clone())
            .route::<ProxyUpsertFailed, _>(c.clone())
            .route::<ProxyDeleted, _>(c.clone())
            .route::<ProxyDeleteFailed, _>(c.clone())
            .route::<HaEnabled, _>(c.clone())
            .route::<HaEnableFailed, _>(c.clone())
            .route::<HaDisabled, _>(c.clone())
            .route::<HaDisableFailed, _>(c.clone())
            .route::<MessageParked, _>(c.clone())
            .route::<ContainerScaled, _>(c.clone())
            .route::<VnetProvision, _>(c.clone())
            .route::<VnetEnsured, _>(c.clone())
            .route::<VnetBound, _>(c.clone())
            .route::<VnetRemoved, _>(c.clone())
            .route::<NetOperationFailed, _>(c)
            .on_invalid::<SiteProvision>(rejection_notice)
    }

    /// Checks a request against the policy (DESIGN.md §9): the subdomain, the plan or sizes
    /// within bounds, the template allow-list, a known app.
    pub fn validate(&self, req: &SiteProvision) -> Result<(u32, u32, u32), Invalid> {
        validate(&self.inner.settings, &self.inner.templates, &self.inner.apps, req)
    }
}

/// The sizes a request asks for, or why it is invalid.
/// `apps` are the installer's apps besides `wordpress` and `none` (`installer.apps`).
pub fn validate(
    s: &SagaSettings,
    templates: &[String],
    apps: &[String],
    req: &SiteProvision,
) -> Result<(u32, u32, u32), Invalid> {
    let label = &req.subdomain;
    let valid_label = !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if !valid_label {
        return Err(Invalid {
            field: "subdomain",
            reason: format!(
                "'{label}' is not an RFC 1123 label (lowercase letters, digits and inner hyphens, 1 to 63)"
            ),
        });
    }
    let plan = match &req.plan {
        Some(name) => Some(s.plans.get(name).ok_or_else(|| Invalid {
            field: "plan",
            reason: format!(
                "unknown plan '{name}'; known: {}",
                s.plans.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })?),
        None => None,
    };
    let cores = req.cores.or(plan.map(|p| p.cores));
    let memory = req.memory_mb.or(plan.map(|p| p.memory_mb));
    let disk = req.disk_gb.or(plan.map(|p| p.disk_gb));
    let (Some(cores), Some(memory), Some(disk)) = (cores, memory, disk) else {
        return Err(Invalid {
            field: "plan",
            reason: "give a plan, or cores, memory_mb and disk_gb".into(),
        });
    };
    let biggest = s.plans.values().fold((1, 512, 8), |m, p| {
        (m.0.max(p.cores), m.1.max(p.memory_mb), m.2.max(p.disk_gb))
    });
    for (field, value, max) in [
        ("cores", cores, biggest.0),
        ("memory_mb", memory, biggest.1),
        ("disk_gb", disk, biggest.2),
    ] {
        if value == 0 || value > max {
            return Err(Invalid {
                field,
                reason: format!("{value} is outside 1..={max}, the largest plan"),
            });
        }
    }
    if !templates.iter().any(|t| t == &req.template) {
        return Err(Invalid {
            field: "template",
            reason: format!("template '{}' is not allowed (pve.templates)", req.template),
        });
    }
    let app = req.app.as_str();
    if !matches!(app, "wordpress" | "none") && !apps.iter().any(|a| a == app) {
        return Err(Invalid {
            field: "app",
            reason: format!(
                "unknown app '{app}'; known: wordpress, none{}",
                apps.iter().map(|a| format!(", {a}")).collect::<String>()
            ),
        });
    }
    Ok((cores, memory, disk))
}

fn db<'a>(ctx: &'a Context<'a>) -> Result<Db<'a>, Outcome> {
    ctx.db
        .ok_or_else(|| Outcome::reject("the saga coordinator needs its inbox transaction"))
}

/// The origin of what saga `saga` sends while handling `ctx`'s message.
fn origin_of(ctx: &Context<'_>, saga: Uuid) -> Origin {
    Origin {
        correlation_id: Some(saga),
        ..ctx.origin()
    }
}

/// Queues a message of saga `saga` in the handler's transaction.
async fn send<M: Message>(db: Db<'_>, ctx: &Context<'_>, saga: Uuid, msg: &M) -> Result<(), Outcome> {
    send_from(db, &origin_of(ctx, saga), msg).await
}

/// Queues a message with an explicit origin, in the caller's transaction.
async fn send_from<M: Message>(db: Db<'_>, origin: &Origin, msg: &M) -> Result<(), Outcome> {
    let out = Outgoing::message(msg, origin).map_err(|e| Outcome::retry(format!("cannot encode {}: {e}", M::TYPE)))?;
    pvefleet_core::db::outbox::enqueue(db, &out)
        .await
        .map_err(|e| Outcome::retry(format!("cannot queue {}: {e:#}", M::TYPE)))
}

/// The `site.rejected` published when a `site.provision` fails its schema check: the field is
/// the first one the schema names (`/subdomain: ...`).
fn rejection_notice(body: &Value, reason: &str, origin: &Origin) -> Option<Outgoing> {
    let site_id = body
        .get("site_id")
        .and_then(|v| serde_json::from_value::<pvefleet_contracts::SiteId>(v.clone()).ok());
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

/// Sends the command of `step` and records it in the timeline.
async fn send_step(
    db: Db<'_>,
    origin: &Origin,
    saga: Uuid,
    data: &SagaData,
    step: Step,
    phase: &str,
    settings: &SagaSettings,
) -> Result<(), Outcome> {
    steps::send(db, origin, data, step, settings).await?;
    // The timeline row, and the deadline by which the step's answer is due (the deadline scan
    // re-sends it after that), in one statement.
    let timeout = settings.timeout_of(step.command()).as_secs_f64();
    db.exec(
        "WITH step AS (
             INSERT INTO saga_steps (saga_id, name, phase, state) VALUES ($1, $2, $3, 'sent')
             ON CONFLICT (saga_id, name, phase) DO UPDATE SET state = 'sent', started_at = now(), finished_at = NULL,
                 error = NULL, sends = saga_steps.sends + 1
             RETURNING 1)
         UPDATE sagas SET deadline = now() + $4 * interval '1 second', step_sends = 0 WHERE id = $1",
        &[&saga, &step.command(), &phase, &timeout],
    )
    .await
    .map_err(retry_db)?;
    Ok(())
}

/// Publishes `site.rejected` at once: it must not roll back with a message that is parked.
async fn reject(ctx: &Context<'_>, saga: Uuid, req: &SiteProvision, field: &str, reason: &str) -> Result<(), Outcome> {
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
        .map_err(|e| Outcome::retry(format!("cannot encode site.rejected: {e}")))?;
    ctx.publisher
        .publish(&out)
        .await
        .map_err(|e| Outcome::retry(format!("cannot publish site.rejected: {e}")))
}

/// A failed statement inside the handler's transaction: an outage is waited out without
/// parking (the batch's own commit would fail too), anything else is an ordinary retry.
fn retry_db(e: tokio_postgres::Error) -> Outcome {
    let detail = pvefleet_core::db::describe(&e);
    match pvefleet_core::db::fault::classify_pg(&e).kind {
        pvefleet_core::db::fault::FaultKind::Outage => Outcome::Outage(format!("database: {detail}")),
        _ => Outcome::retry(format!("database: {detail}")),
    }
}

/// Stops a saga for an operator: `compensation_failed` when a compensation gave up,
/// `suspended` when a forward step did. The site keeps the error; a site being compensated is
/// `failed`, one being built or torn down keeps that state. Returns the saga's new state.
pub(crate) async fn give_up(
    db: Db<'_>,
    saga: Uuid,
    data: &SagaData,
    kind: &str,
    step: Step,
    phase: &str,
    error: &StepError,
) -> Result<&'static str, Outcome> {
    let (state, site_state) = match (phase, kind) {
        ("compensate", _) => ("compensation_failed", "failed"),
        (_, "deprovision") => ("suspended", "deprovisioning"),
        _ => ("suspended", "provisioning"),
    };
    let detail = json!({ "step": step.command(), "error": error });
    db.exec(
        "UPDATE sagas SET state = $2, error = $3, deadline = NULL, version = version + 1, updated_at = now() WHERE id = $1",
        &[&saga, &state, &detail],
    )
    .await
    .map_err(retry_db)?;
    db.exec(
        "UPDATE sites SET state = $2, error = $3, updated_at = now() WHERE id = $1",
        &[&data.site.site_id.as_uuid(), &site_state, &detail],
    )
    .await
    .map_err(retry_db)?;
    tracing::error!(%saga, step = step.command(), error = %error.message, state, "The saga gave up; an operator must look.");
    Ok(state)
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(o) => return o,
        }
    };
}

impl Inner {
    /// The forward steps of a provisioning saga.
    fn plan(&self, req: &SiteProvision) -> Vec<Step> {
        let mut plan = vec![Step::Create, Step::Start];
        if !req.app.is_none() {
            plan.push(Step::Install);
        }
        plan.push(Step::Snapshot);
        if self.settings.dns_provider != "none" {
            plan.push(Step::DnsUpsert);
        }
        if self.settings.proxy_provider != "none" {
            plan.push(Step::ProxyUpsert);
        }
        if req.ha {
            plan.push(Step::HaEnable);
        }
        plan
    }

    async fn provision(&self, req: SiteProvision, ctx: &Context<'_>) -> Outcome {
        let db = tri!(db(ctx));
        let saga = ctx.correlation_id.unwrap_or_else(Uuid::now_v7);
        if let Err(invalid) = validate(&self.settings, &self.templates, &self.apps, &req) {
            tri!(reject(ctx, saga, &req, invalid.field, &invalid.reason).await);
            return Outcome::reject(format!("{}: {}", invalid.field, invalid.reason));
        }
        let site = req.site_id.as_uuid();
        // A saga that exists already is a redelivery. The subdomain is free unless a live site
        // holds it. (A race between two requests ends in the unique index; the loser's batch is
        // retried and then meets this check.)
        let row = tri!(
            db.one(
                "SELECT EXISTS (SELECT 1 FROM sagas WHERE id = $1),
                        EXISTS (SELECT 1 FROM sites WHERE subdomain = $2 AND id <> $3 AND state NOT IN ('failed', 'rejected', 'deleted'))",
                &[&saga, &req.subdomain, &site],
            )
            .await
            .map_err(retry_db)
        );
        let (existing, taken): (bool, bool) = (row.get(0), row.get(1));
        if existing {
            return Outcome::Ok;
        }
        if taken {
            let reason = format!("subdomain '{}' is already in use", req.subdomain);
            tri!(reject(ctx, saga, &req, "subdomain", &reason).await);
            return Outcome::Ok;
        }
        // A pool with nothing left ends the saga here: no step was sent, so there is nothing to
        // compensate, but the site must end and say why, and give back what it held.
        let leased = match leases::lease_vmid(db, &self.settings, site).await {
            Ok(vmid) => leases::lease_ip(db, &self.settings, site).await.map(|ip| (vmid, ip)),
            Err(o) => Err(o),
        };
        let (vmid, ip) = match leased {
            Ok(l) => l,
            Err(Outcome::Fail(error)) => {
                tri!(self.fail_before_start(db, ctx, saga, &req, "lease", error).await);
                return Outcome::Ok;
            }
            Err(other) => return other,
        };
        let spec = serde_json::to_value(&req).unwrap_or(Value::Null);
        let data = SagaData {
            plan: self.plan(&req),
            site: req,
            vmid,
            ip,
            node: None,
            done: Vec::new(),
            compensations: Vec::new(),
            failure: None,
            vmids_taken: Vec::new(),
        };
        let first = data.plan[0];
        // The site (intake writes it first as `requested`; a publisher straight to the bus does
        // not) and the saga, in one statement.
        tri!(
            db.exec(
                "WITH site AS (
                     INSERT INTO sites (id, subdomain, owner, state, spec, vmid, ip) VALUES ($2, $3, $4, 'provisioning', $5, $6, $7)
                     ON CONFLICT (id) DO UPDATE SET state = 'provisioning', vmid = $6, ip = $7, updated_at = now()
                         WHERE sites.state = 'requested'
                     RETURNING 1)
                 INSERT INTO sagas (id, kind, site_id, state, step, data) VALUES ($1, 'provision', $2, 'running', 0, $8)",
                &[
                    &saga,
                    &site,
                    &data.site.subdomain,
                    &data.site.owner,
                    &spec,
                    &(vmid as i32),
                    &data.ip,
                    &json!(data)
                ],
            )
            .await
            .map_err(retry_db)
        );
        tri!(self.send_step(db, ctx, saga, &data, first, "forward").await);
        Outcome::Ok
    }

    /// Ends a provisioning that failed before its first step (its leases could not be had):
    /// the leases it took in this transaction are released, the site is `failed` with the
    /// reason (which frees its subdomain), the saga is recorded `failed` so a follower of it
    /// sees the end, and `site.provision_failed` goes out, all in the handler's transaction.
    async fn fail_before_start(
        &self,
        db: Db<'_>,
        ctx: &Context<'_>,
        saga: Uuid,
        req: &SiteProvision,
        step: &str,
        error: StepError,
    ) -> Result<(), Outcome> {
        let site = req.site_id.as_uuid();
        tracing::warn!(%saga, %site, code = %error.code, error = %error.message, "A provisioning failed before its first step.");
        db.exec("DELETE FROM leases WHERE site_id = $1", &[&site])
            .await
            .map_err(retry_db)?;
        let detail = json!({ "step": step, "error": error });
        let spec = serde_json::to_value(req).unwrap_or(Value::Null);
        let data = SagaData::unstarted(req.clone(), self.plan(req));
        db.exec(
            "WITH site AS (
                 INSERT INTO sites (id, subdomain, owner, state, spec, error) VALUES ($2, $3, $4, 'failed', $5, $6)
                 ON CONFLICT (id) DO UPDATE SET state = 'failed', error = $6, updated_at = now()
                     WHERE sites.state = 'requested'
                 RETURNING 1)
             INSERT INTO sagas (id, kind, site_id, state, step, data, error) VALUES ($1, 'provision', $2, 'failed', 0, $7, $6)",
            &[&saga, &site, &req.subdomain, &req.owner, &spec, &detail, &json!(data)],
        )
        .await
        .map_err(retry_db)?;
        let msg = SiteProvisionFailed {
            site_id: req.site_id,
            failed_step: step.to_string(),
            error,
        };
        send(db, ctx, saga, &msg).await
    }

    /// A `site.provision` was parked before its saga started. A site intake recorded for it
    /// (still `requested`) ends: `rejected` when the policy refused it (`site.rejected` went
    /// out already), else `failed` with `site.provision_failed`; its subdomain is free again,
    /// and the saga is recorded `failed`, naming the dead letter, so a follower sees the end.
    async fn end_parked_request(
        &self,
        db: Db<'_>,
        ctx: &Context<'_>,
        saga: Uuid,
        parked: &pvefleet_contracts::messages::MessageParked,
    ) -> Result<(), Outcome> {
        let Some(dead) = db
            .opt(
                "SELECT body, fault_message FROM dead_letters WHERE id = $1",
                &[&parked.dead_letter_id],
            )
            .await
            .map_err(retry_db)?
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
        let Some(row) = db
            .opt(
                "SELECT spec FROM sites WHERE id = $1 AND state = 'requested' FOR UPDATE",
                &[&site],
            )
            .await
            .map_err(retry_db)?
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
        db.exec(
            "UPDATE sites SET state = $2, error = $3, updated_at = now() WHERE id = $1",
            &[&site, &state, &detail],
        )
        .await
        .map_err(retry_db)?;
        let data = serde_json::from_value::<SiteProvision>(spec)
            .ok()
            .map(|req| SagaData::unstarted(req.clone(), self.plan(&req)));
        db.exec(
            "INSERT INTO sagas (id, kind, site_id, state, step, data, error) VALUES ($1, 'provision', $2, 'failed', 0, $3, $4)
             ON CONFLICT (id) DO NOTHING",
            &[&saga, &site, &json!(data), &detail],
        )
        .await
        .map_err(retry_db)?;
        tracing::warn!(%saga, %site, state, dead_letter = %parked.dead_letter_id, "A site's request was parked before its saga started; the site ends.");
        if !refused {
            let msg = SiteProvisionFailed {
                site_id: pvefleet_contracts::SiteId(site),
                failed_step: SiteProvision::TYPE.to_string(),
                error,
            };
            send(db, ctx, saga, &msg).await?;
        }
        Ok(())
    }

    /// Sends the command of `step` and records it in the timeline.
    async fn send_step(
        &self,
        db: Db<'_>,
        ctx: &Context<'_>,
        saga: Uuid,
        data: &SagaData,
        step: Step,
        phase: &str,
    ) -> Result<(), Outcome> {
        send_step(db, &origin_of(ctx, saga), saga, data, step, phase, &self.settings).await
    }

    async fn finish_step(
        &self,
        db: Db<'_>,
        saga: Uuid,
        step: Step,
        phase: &str,
        error: Option<&StepError>,
    ) -> Result<(), Outcome> {
        let state = if error.is_some() { "failed" } else { "done" };
        let error = error.map(|e| json!(e));
        db.exec(
            "UPDATE saga_steps SET state = $4, finished_at = now(), error = $5 WHERE saga_id = $1 AND name = $2 AND phase = $3",
            &[&saga, &step.command(), &phase, &state, &error],
        )
        .await
        .map_err(retry_db)?;
        Ok(())
    }

    async fn deprovision(&self, cmd: SiteDeprovision, ctx: &Context<'_>) -> Outcome {
        let db = tri!(db(ctx));
        let site = cmd.site_id.as_uuid();
        let saga = ctx.correlation_id.unwrap_or_else(Uuid::now_v7);
        let row = tri!(
            db.opt(
                "SELECT state, spec, vmid, ip, node FROM sites WHERE id = $1 FOR UPDATE",
                &[&site]
            )
            .await
            .map_err(retry_db)
        );
        let Some(row) = row else {
            return Outcome::Fail(StepError::new("site.missing", format!("site {site} does not exist")));
        };
        let state: String = row.get(0);
        if state == "deleted" || state == "deprovisioning" {
            return Outcome::Ok;
        }
        let Ok(req) = serde_json::from_value::<SiteProvision>(row.get(1)) else {
            return Outcome::Fail(StepError::new("site.corrupt", "the site's spec does not decode"));
        };
        let vmid: Option<i32> = row.get(2);
        let mut plan = Vec::new();
        if req.ha {
            plan.push(Step::HaDisable);
        }
        if self.settings.proxy_provider != "none" {
            plan.push(Step::ProxyDelete);
        }
        if self.settings.dns_provider != "none" {
            plan.push(Step::DnsDelete);
        }
        if vmid.is_some() {
            plan.push(Step::Destroy);
        }
        let data = SagaData {
            site: req,
            vmid: vmid.map_or(0, |v| v as u32),
            ip: row.get::<_, Option<String>>(3).unwrap_or_default(),
            node: row.get(4),
            plan,
            done: Vec::new(),
            compensations: Vec::new(),
            failure: None,
            vmids_taken: Vec::new(),
        };
        tri!(
            db.exec(
                "INSERT INTO sagas (id, kind, site_id, state, step, data) VALUES ($1, 'deprovision', $2, 'running', 0, $3) ON CONFLICT (id) DO NOTHING",
                &[&saga, &site, &json!(data)],
            )
            .await
            .map_err(retry_db)
        );
        tri!(
            db.exec(
                "UPDATE sites SET state = 'deprovisioning', updated_at = now() WHERE id = $1",
                &[&site]
            )
            .await
            .map_err(retry_db)
        );
        // A provisioning saga still in flight stops here: its late events are then ignored.
        tri!(
            db.exec(
                "UPDATE sagas SET state = 'superseded', version = version + 1, updated_at = now()
                 WHERE site_id = $1 AND kind = 'provision' AND state IN ('running', 'compensating', 'suspended', 'compensation_failed')",
                &[&site],
            )
            .await
            .map_err(retry_db)
        );
        match data.plan.first() {
            Some(first) => tri!(self.send_step(db, ctx, saga, &data, *first, "forward").await),
            None => tri!(self.complete(db, ctx, saga, "deprovision", &data, None).await),
        }
        Outcome::Ok
    }

    /// A step event for saga `ctx.correlation_id`.
    async fn on_event(&self, event: &str, body: Value, ctx: &Context<'_>) -> Outcome {
        let db = tri!(db(ctx));
        let Some(saga) = ctx.correlation_id else {
            tracing::warn!(event, "An event without a correlation id; no saga to advance.");
            return Outcome::Ok;
        };
        let Some((step, ok)) = Step::of_event(event) else {
            return Outcome::Ok;
        };
        let row = tri!(
            db.opt(
                "SELECT kind, state, step, data FROM sagas WHERE id = $1 FOR UPDATE",
                &[&saga]
            )
            .await
            .map_err(retry_db)
        );
        let Some(row) = row else {
            tracing::debug!(event, %saga, "An event for no saga of ours; ignored.");
            return Outcome::Ok;
        };
        let kind: String = row.get(0);
        let state: String = row.get(1);
        let index: i32 = row.get(2);
        let Ok(mut data) = serde_json::from_value::<SagaData>(row.get(3)) else {
            return Outcome::reject(format!("saga {saga} has data that does not decode"));
        };
        let index = usize::try_from(index).unwrap_or(0);
        let error: Option<StepError> = if ok {
            None
        } else {
            serde_json::from_value(body.get("error").cloned().unwrap_or(Value::Null)).ok()
        };
        match state.as_str() {
            "running" => {
                if data.plan.get(index) != Some(&step) {
                    tracing::info!(event, %saga, "A late or duplicate event for a step not in flight; ignored.");
                    return Outcome::Ok;
                }
                if let Some(node) = body.get("node").and_then(Value::as_str) {
                    data.node = Some(node.to_string());
                }
                if let Some(error) = error {
                    tri!(self.finish_step(db, saga, step, "forward", Some(&error)).await);
                    if kind == "provision"
                        && step == Step::Create
                        && error.code == "vmid.taken"
                        && data.vmids_taken.len() < VMID_RELEASES
                    {
                        return self.lease_another_vmid(db, ctx, saga, data, index, error).await;
                    }
                    if kind == "deprovision" {
                        // Forward recovery: the step is re-sent, and the saga waits for an operator
                        // after too many failures.
                        return self
                            .suspend_or_resend(db, ctx, saga, &data, &kind, step, "forward", error)
                            .await;
                    }
                    data.failure = Some((step, error));
                    data.compensations = data.done.iter().rev().filter_map(|s| s.compensation()).collect();
                    return self.next_compensation(db, ctx, saga, data, 0).await;
                }
                data.done.push(step);
                let next = index + 1;
                match data.plan.get(next).copied() {
                    Some(next_step) => {
                        tri!(self.save_done(db, saga, "running", next, &data, step).await);
                        tri!(self.send_step(db, ctx, saga, &data, next_step, "forward").await);
                    }
                    None => tri!(self.complete(db, ctx, saga, &kind, &data, Some(step)).await),
                }
                Outcome::Ok
            }
            "compensating" => {
                if data.compensations.get(index) != Some(&step) {
                    tracing::info!(event, %saga, "A late event during compensation; ignored.");
                    return Outcome::Ok;
                }
                tri!(self.finish_step(db, saga, step, "compensate", error.as_ref()).await);
                if let Some(error) = error {
                    return self
                        .suspend_or_resend(db, ctx, saga, &data, &kind, step, "compensate", error)
                        .await;
                }
                tri!(
                    db.exec("UPDATE sagas SET resends = 0 WHERE id = $1", &[&saga])
                        .await
                        .map_err(retry_db)
                );
                self.next_compensation(db, ctx, saga, data, index + 1).await
            }
            _ => {
                tracing::info!(event, %saga, state, "An event for a saga that is not in flight; ignored.");
                Outcome::Ok
            }
        }
    }

    /// The cross-check of a vmid lease against PVE, at the moment it counts: the vmid the
    /// saga leased is used by a guest that is not this site's. It is kept as a lease held
    /// outside the fleet, so no other site is given it, and the create goes again with the
    /// next free vmid.
    async fn lease_another_vmid(
        &self,
        db: Db<'_>,
        ctx: &Context<'_>,
        saga: Uuid,
        mut data: SagaData,
        index: usize,
        error: StepError,
    ) -> Outcome {
        let site = data.site.site_id.as_uuid();
        tri!(
            db.exec(
                "UPDATE leases SET site_id = NULL, holder = $2 WHERE kind = 'vmid' AND value = $1",
                &[&data.vmid.to_string(), &error.message],
            )
            .await
            .map_err(retry_db)
        );
        let vmid = tri!(leases::lease_vmid(db, &self.settings, site).await);
        tracing::warn!(%saga, taken = data.vmid, vmid, reason = %error.message, "The leased vmid is in use in PVE; leased another.");
        data.vmids_taken.push(data.vmid);
        data.vmid = vmid;
        tri!(
            db.exec(
                "UPDATE sites SET vmid = $2, updated_at = now() WHERE id = $1",
                &[&site, &(vmid as i32)],
            )
            .await
            .map_err(retry_db)
        );
        tri!(self.save(db, saga, "running", index, &data).await);
        tri!(self.send_step(db, ctx, saga, &data, Step::Create, "forward").await);
        Outcome::Ok
    }

    /// Re-sends a failed step, or gives up: `compensation_failed` during compensation,
    /// `suspended` for forward recovery.
    #[allow(clippy::too_many_arguments)]
    async fn suspend_or_resend(
        &self,
        db: Db<'_>,
        ctx: &Context<'_>,
        saga: Uuid,
        data: &SagaData,
        kind: &str,
        step: Step,
        phase: &str,
        error: StepError,
    ) -> Outcome {
        let row = tri!(
            db.one(
                "UPDATE sagas SET resends = resends + 1, updated_at = now() WHERE id = $1 RETURNING resends",
                &[&saga]
            )
            .await
            .map_err(retry_db)
        );
        let resends: i32 = row.get(0);
        if resends < self.settings.compensation_attempts as i32 {
            tri!(self.send_step(db, ctx, saga, data, step, phase).await);
            return Outcome::Ok;
        }
        tri!(give_up(db, saga, data, kind, step, phase, &error).await);
        Outcome::Ok
    }

    async fn next_compensation(
        &self,
        db: Db<'_>,
        ctx: &Context<'_>,
        saga: Uuid,
        data: SagaData,
        index: usize,
    ) -> Outcome {
        match data.compensations.get(index).copied() {
            Some(step) => {
                tri!(self.save(db, saga, "compensating", index, &data).await);
                tri!(self.send_step(db, ctx, saga, &data, step, "compensate").await);
                Outcome::Ok
            }
            None => {
                // Compensated: release the leases and fail the site with the step and PVE's message.
                let site = data.site.site_id.as_uuid();
                tri!(
                    db.exec("DELETE FROM leases WHERE site_id = $1", &[&site])
                        .await
                        .map_err(retry_db)
                );
                let (failed, error) = data
                    .failure
                    .clone()
                    .unwrap_or((Step::Create, StepError::new("unknown", "no failure recorded")));
                tri!(self.save(db, saga, "failed", index, &data).await);
                tri!(
                    db.exec(
                        "UPDATE sites SET state = 'failed', error = $2, updated_at = now() WHERE id = $1",
                        &[&site, &json!({ "step": failed.command(), "error": error })],
                    )
                    .await
                    .map_err(retry_db)
                );
                let msg = SiteProvisionFailed {
                    site_id: data.site.site_id,
                    failed_step: failed.command().to_string(),
                    error,
                };
                tri!(send(db, ctx, saga, &msg).await);
                Outcome::Ok
            }
        }
    }

    async fn complete(
        &self,
        db: Db<'_>,
        ctx: &Context<'_>,
        saga: Uuid,
        kind: &str,
        data: &SagaData,
        last: Option<Step>,
    ) -> Result<(), Outcome> {
        let site = data.site.site_id.as_uuid();
        match last {
            Some(step) => {
                self.save_done(db, saga, "completed", data.plan.len(), data, step)
                    .await?
            }
            None => self.save(db, saga, "completed", data.plan.len(), data).await?,
        }
        if kind == "deprovision" {
            db.exec("DELETE FROM leases WHERE site_id = $1", &[&site])
                .await
                .map_err(retry_db)?;
            db.exec(
                "UPDATE sites SET state = 'deleted', updated_at = now() WHERE id = $1",
                &[&site],
            )
            .await
            .map_err(retry_db)?;
            send(
                db,
                ctx,
                saga,
                &SiteDeprovisioned {
                    site_id: data.site.site_id,
                },
            )
            .await
        } else {
            db.exec(
                "UPDATE sites SET state = 'active', node = $2, error = NULL, updated_at = now() WHERE id = $1",
                &[&site, &data.node],
            )
            .await
            .map_err(retry_db)?;
            let fqdn = (self.settings.dns_provider != "none")
                .then(|| format!("{}.{}", data.site.subdomain, self.settings.domain));
            let msg = SiteProvisioned {
                site_id: data.site.site_id,
                vmid: pvefleet_contracts::Vmid(data.vmid),
                node: data.node.clone().unwrap_or_default(),
                fqdn,
            };
            send(db, ctx, saga, &msg).await
        }
    }

    async fn save(&self, db: Db<'_>, saga: Uuid, state: &str, step: usize, data: &SagaData) -> Result<(), Outcome> {
        db.exec(
            "UPDATE sagas SET state = $2, step = $3, data = $4, version = version + 1, updated_at = now() WHERE id = $1",
            &[&saga, &state, &(step as i32), &json!(data)],
        )
        .await
        .map_err(retry_db)?;
        Ok(())
    }

    /// `save`, and the forward step `done` marked done in the timeline, in one statement.
    async fn save_done(
        &self,
        db: Db<'_>,
        saga: Uuid,
        state: &str,
        step: usize,
        data: &SagaData,
        done: Step,
    ) -> Result<(), Outcome> {
        db.exec(
            "WITH done AS (
                 UPDATE saga_steps SET state = 'done', finished_at = now(), error = NULL
                 WHERE saga_id = $1 AND name = $5 AND phase = 'forward' RETURNING 1)
             UPDATE sagas SET state = $2, step = $3, data = $4, version = version + 1, updated_at = now() WHERE id = $1",
            &[&saga, &state, &(step as i32), &json!(data), &done.command()],
        )
        .await
        .map_err(retry_db)?;
        Ok(())
    }
}

#[async_trait]
impl Handler<SiteProvision> for Coordinator {
    async fn handle(&self, msg: SiteProvision, ctx: &Context<'_>) -> Handled {
        let outcome: Outcome = async { self.inner.provision(msg, ctx).await }.await;
        outcome.into()
    }
}

#[async_trait]
impl Handler<SiteDeprovision> for Coordinator {
    async fn handle(&self, msg: SiteDeprovision, ctx: &Context<'_>) -> Handled {
        let outcome: Outcome = async { self.inner.deprovision(msg, ctx).await }.await;
        outcome.into()
    }
}

/// A parked command of a saga stops the saga for an operator, naming the dead letter: a
/// forward step leaves it `suspended`, a compensation `compensation_failed`. A replay of the
/// dead letter puts it back (`dlq::replay`); `pvefleet saga abort` compensates it.
#[async_trait]
impl Handler<pvefleet_contracts::messages::MessageParked> for Coordinator {
    async fn handle(&self, msg: pvefleet_contracts::messages::MessageParked, ctx: &Context<'_>) -> Handled {
        let outcome: Outcome = async {
        let db = tri!(db(ctx));
        let (Some(saga), Some(mtype)) = (msg.correlation_id, msg.message_type.as_deref()) else {
            return Outcome::Ok;
        };
        let row = tri!(
            db.opt("SELECT state, step, data FROM sagas WHERE id = $1 FOR UPDATE", &[&saga])
                .await
                .map_err(retry_db)
        );
        let Some(row) = row else {
            // A request parked before its saga started (refused by policy, or out of retries):
            // its site must not wait for a saga that will never run.
            if mtype == SiteProvision::TYPE {
                tri!(self.inner.end_parked_request(db, ctx, saga, &msg).await);
            }
            return Outcome::Ok;
        };
        let state: String = row.get(0);
        let index = usize::try_from(row.get::<_, i32>(1)).unwrap_or(0);
        let Ok(data) = serde_json::from_value::<SagaData>(row.get(2)) else {
            return Outcome::Ok;
        };
        let (in_flight, stopped) = match state.as_str() {
            "running" => (data.plan.get(index), "suspended"),
            "compensating" => (data.compensations.get(index), "compensation_failed"),
            _ => return Outcome::Ok,
        };
        if in_flight.map(|s| s.command()) != Some(mtype) {
            // Not the step in flight: an old copy; the saga is not waiting on it.
            return Outcome::Ok;
        }
        let error = json!({
            "step": mtype,
            "dead_letter_id": msg.dead_letter_id.to_string(),
            "error": { "code": "parked", "message": format!("the command was parked ({}); see pvefleet dlq show {}", msg.fault_class, msg.dead_letter_id) },
        });
        tri!(
            db.exec(
                "UPDATE sagas SET state = $2, error = $3, deadline = NULL, version = version + 1, updated_at = now() WHERE id = $1",
                &[&saga, &stopped, &error],
            )
            .await
            .map_err(retry_db)
        );
        tracing::error!(%saga, step = mtype, dead_letter = %msg.dead_letter_id, state = stopped, "A saga's command was parked; the saga waits for an operator.");
        Outcome::Ok
    }
        .await;
        outcome.into()
    }
}

/// The autoscaler's `container.scaled` matches the saga queue's `container.*` binding; it is
/// no saga's step.
#[async_trait]
impl Handler<pvefleet_contracts::messages::ContainerScaled> for Coordinator {
    async fn handle(&self, _msg: pvefleet_contracts::messages::ContainerScaled, _ctx: &Context<'_>) -> Handled {
        let outcome: Outcome = async { Outcome::Ok }.await;
        outcome.into()
    }
}

/// Every step event goes to the same state machine.
macro_rules! step_events {
    ($($ty:ident),* $(,)?) => {
        $(
            #[async_trait]
            impl Handler<pvefleet_contracts::messages::$ty> for Coordinator {
                async fn handle(&self, msg: pvefleet_contracts::messages::$ty, ctx: &Context<'_>) -> Handled {
        let outcome: Outcome = async {
                    let body = serde_json::to_value(&msg).unwrap_or(Value::Null);
                    self.inner
                        .on_event(<pvefleet_contracts::messages::$ty as Message>::TYPE, body, ctx)
                        .await
                }
        .await;
        outcome.into()
    }
            }
        )*
    };
}

step_events!(
    ContainerCreated,
    ContainerCreateFailed,
    ContainerStarted,
    ContainerStartFailed,
    ContainerSnapshotted,
    ContainerSnapshotFailed,
    ContainerDestroyed,
    ContainerDestroyFailed,
    AppInstalled,
    AppInstallFailed,
    DnsUpserted,
    DnsUpsertFailed,
    DnsDeleted,
    DnsDeleteFailed,
    ProxyUpserted,
    ProxyUpsertFailed,
    ProxyDeleted,
    ProxyDeleteFailed,
    HaEnabled,
    HaEnableFailed,
    HaDisabled,
    HaDisableFailed,
);

/// Runs the coordinator until `shutdown`: the saga queue with the inbox, and the outbox relay.
pub async fn run(
    settings: &pvefleet_core::Settings,
    pool: deadpool_postgres::Pool,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use pvefleet_core::bus::runner::{WorkerDeps, WorkerSpec, run_worker};
    let topology = pvefleet_core::bus::topology::Topology::fleet(&settings.bus);
    let publisher = pvefleet_core::bus::Publisher::new(&settings.bus, "saga", Some(topology.clone()));
    let coordinator = Coordinator::new(
        settings.saga.clone(),
        settings.pve.templates.clone(),
        settings.installer.apps.keys().cloned().collect(),
    );
    let relay = pvefleet_core::db::outbox::OutboxRelay::new(pool.clone(), publisher.clone(), settings.outbox.clone());
    let poke = relay.poker();
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let deadline_task = tokio::spawn(deadlines::run(
        pool.clone(),
        settings.saga.clone(),
        Some(poke.clone()),
        shutdown.clone(),
    ));
    let sync_task = if settings.saga.lease_sync_interval.is_zero() {
        None
    } else {
        match pvefleet_core::pve::client(&settings.pve) {
            Ok(pve) => Some(tokio::spawn(leases::run_sync(
                pool.clone(),
                pve,
                settings.saga.clone(),
                shutdown.clone(),
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "No PVE client: vmid leases are not cross-checked with PVE ahead of time.");
                None
            }
        }
    };
    let keeper_task = tokio::spawn(keeper::run(
        settings.bus.clone(),
        topology.clone(),
        pool.clone(),
        Some(poke.clone()),
        shutdown.clone(),
    ));
    let queue = pvefleet_contracts::routing::work_queue("saga");
    let mut spec = WorkerSpec::from_settings("saga", &queue, settings);
    spec.inbox = true;
    // What a transition queues in the outbox is published as soon as it commits.
    spec.after_commit = Some(poke);
    let deps = WorkerDeps {
        bus: settings.bus.clone(),
        topology,
        publisher,
        db: Some(pool),
        ready,
    };
    let result = run_worker(deps, coordinator.router(), spec, shutdown).await;
    let _ = relay_task.await;
    let _ = deadline_task.await;
    let _ = keeper_task.await;
    if let Some(t) = sync_task {
        let _ = t.await;
    }
    result
}
