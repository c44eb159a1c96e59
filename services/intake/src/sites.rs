//! Sites: `POST /v1/sites` checks the request against the site policy (pvefleet-policy, the
//! rules the saga applies again to the command), then writes the site (`requested`) and a
//! `site.provision` command in one transaction through the outbox and answers 202 with a
//! `Location`; listing, reading, credentials and `DELETE` (a `site.deprovision`).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pvefleet_contracts::messages::{App, SiteDeprovision, SiteProvision};
use pvefleet_contracts::{Message, SiteId};
use pvefleet_core::audit;
use pvefleet_core::bus::Outgoing;
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_policy::{Invalid, scopes, site};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{AppState, Problem, auth, db_problem, parse_id, sha256_hex};

/// A request to provision a site.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteRequest {
    /// An RFC 1123 label: the site is `<subdomain>.<domain>`.
    pub subdomain: String,
    /// A plan from config (`small`, `medium`, `large`); explicit sizes override it.
    #[serde(default)]
    pub plan: Option<String>,
    /// CPU cores.
    #[serde(default)]
    pub cores: Option<u32>,
    /// Memory, MiB.
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// Root disk, GiB.
    #[serde(default)]
    pub disk_gb: Option<u32>,
    /// A template from the allow-list; the first allowed one when absent.
    #[serde(default)]
    pub template: Option<String>,
    /// Pin the container to a node.
    #[serde(default)]
    pub node: Option<String>,
    /// Make it an HA resource.
    #[serde(default)]
    pub ha: bool,
    /// `wordpress` (the default) or `none` for a bare container.
    #[serde(default)]
    pub app: Option<String>,
    /// The owner; the token's name when absent.
    #[serde(default)]
    pub owner: Option<String>,
    /// Only `true` is accepted: privileged containers are not provisioned.
    #[serde(default)]
    pub unprivileged: Option<bool>,
}

/// The answer to an accepted request.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The site.
    pub id: Uuid,
    /// The saga that provisions (or removes) it.
    pub saga_id: Uuid,
    /// `requested` or `deprovisioning`.
    pub state: String,
}

/// Provision a site.
#[utoipa::path(post, path = "/v1/sites", request_body = SiteRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: the same site; same key, other body: 409")),
    responses((status = 202, body = Accepted), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn create_site(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let token = auth::require(&st, &headers, scopes::SITES_WRITE).await?;
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json_type {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type",
            "Send the body as application/json.",
        ));
    }
    let req: SiteRequest = crate::problem::parse_body(&body, "site request")?;
    // An owner's token creates that owner's sites only.
    if let (Some(mine), Some(named)) = (&token.owner, &req.owner)
        && mine != named
    {
        return Err(Problem::field(
            StatusCode::FORBIDDEN,
            "forbidden",
            "owner",
            format!("This token creates sites of owner '{mine}' only."),
        ));
    }
    let s = &st.settings;
    site::unprivileged(req.unprivileged).map_err(|i| unprocessable("policy", i))?;
    // Any app name goes to the policy check below, which knows the installer's apps.
    let app = req.app.clone().map_or_else(App::wordpress, App);
    let site_id = SiteId::new();
    let mut cmd = SiteProvision {
        site_id,
        subdomain: req.subdomain.clone(),
        owner: token
            .owner
            .clone()
            .or_else(|| req.owner.clone())
            .unwrap_or_else(|| token.name.clone()),
        plan: req.plan.clone(),
        cores: req.cores,
        memory_mb: req.memory_mb,
        disk_gb: req.disk_gb,
        template: req
            .template
            .clone()
            .or_else(|| s.pve.templates.first().cloned())
            .unwrap_or_default(),
        node: req.node.clone(),
        ha: req.ha,
        app,
    };
    // The site policy the saga applies again when the command arrives (pvefleet-policy).
    let apps: Vec<String> = s.installer.apps.keys().cloned().collect();
    let policy = site::SitePolicy {
        saga: &s.saga,
        templates: &s.pve.templates,
        apps: &apps,
    };
    policy.check(&cmd).map_err(|i| unprocessable("invalid", i))?;
    if let (Some(node), Some(pve)) = (&cmd.node, &st.pve) {
        match site::node_unusable(pve, node).await {
            Ok(None) => {}
            Ok(Some(i)) => return Err(unprocessable("invalid", i)),
            Err(e) => {
                tracing::warn!(error = %e, "PVE could not be asked about a requested node.");
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "PVE cannot be reached to check the node; try again.",
                ));
            }
        }
    }
    let mut client = st.pool.get().await.map_err(db_problem)?;
    let tx = client.transaction().await.map_err(db_problem)?;
    // The same key and body return the same site; the same key with another body is a conflict.
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let request_hash = sha256_hex(&serde_json::to_vec(&req).unwrap_or_default());
    if let Some(key) = &key {
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[key])
            .await
            .map_err(db_problem)?;
        if let Some(row) = tx
            .query_opt(
                "SELECT request_hash, site_id, saga_id FROM idempotency_keys WHERE token_id = $1 AND key = $2",
                &[&token.id, key],
            )
            .await
            .map_err(db_problem)?
        {
            let (hash, site, saga): (String, Uuid, Uuid) = (row.get(0), row.get(1), row.get(2));
            if hash != request_hash {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "idempotency-key-reused",
                    "This Idempotency-Key was used with a different body.",
                ));
            }
            return Ok(accepted(site, saga, "requested"));
        }
    }
    // One owner's requests are counted one at a time, so two at once cannot both take the
    // last place of the quota.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('owner:' || $1))", &[&cmd.owner])
        .await
        .map_err(db_problem)?;
    let max = s.saga.max_sites_per_owner;
    if let Some(i) = site::over_quota(&tx, &cmd.owner, site_id.as_uuid(), max)
        .await
        .map_err(db_problem)?
    {
        return Err(unprocessable("quota", i));
    }
    crate::fair::in_flight(&tx, &cmd.owner, s.intake.max_in_flight_per_owner).await?;
    if let Some(i) = site::subdomain_taken(&tx, &cmd.subdomain, site_id.as_uuid())
        .await
        .map_err(db_problem)?
    {
        return Err(Problem::field(StatusCode::CONFLICT, "taken", &i.field, i.reason));
    }
    cmd.site_id = site_id;
    let saga = Uuid::now_v7();
    let spec = serde_json::to_value(&cmd).unwrap_or(Value::Null);
    tx.execute(
        "INSERT INTO sites (id, subdomain, owner, state, spec) VALUES ($1, $2, $3, 'requested', $4)",
        &[&site_id.as_uuid(), &cmd.subdomain, &cmd.owner, &spec],
    )
    .await
    .map_err(|e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            Problem::field(
                StatusCode::CONFLICT,
                "taken",
                "subdomain",
                format!("Subdomain '{}' is in use.", cmd.subdomain),
            )
        } else {
            db_problem(e)
        }
    })?;
    enqueue(&tx, &cmd, saga, &format!("{site_id} {}", cmd.subdomain)).await?;
    accept_saga(&tx, saga, "provision", site_id.as_uuid(), &cmd.owner).await?;
    let entry = audit::Entry::new("site.create", format!("site/{site_id}"))
        .owner(cmd.owner.clone())
        .outcome("accepted")
        .detail(serde_json::json!({ "saga_id": saga, "subdomain": cmd.subdomain, "plan": cmd.plan, "app": cmd.app.0 }));
    audit::record(&*tx, &token.actor(), &entry).await.map_err(db_problem)?;
    if let Some(key) = &key {
        tx.execute(
            "INSERT INTO idempotency_keys (key, token_id, request_hash, site_id, saga_id) VALUES ($1, $2, $3, $4, $5)",
            &[key, &token.id, &request_hash, &site_id.as_uuid(), &saga],
        )
        .await
        .map_err(db_problem)?;
    }
    tx.commit().await.map_err(db_problem)?;
    if let Some(p) = &st.poke {
        p.notify_one();
    }
    Ok(accepted(site_id.as_uuid(), saga, "requested"))
}

pub(crate) async fn enqueue<M: Message>(
    tx: &deadpool_postgres::Transaction<'_>,
    msg: &M,
    saga: Uuid,
    subject: &str,
) -> Result<(), Problem> {
    // The root of the saga's trace: every span of every service it reaches descends from it.
    let root = tracing::info_span!(
        "intake",
        service = "intake",
        message_type = M::TYPE,
        saga_id = %saga,
        site = subject,
    );
    let origin = Origin {
        correlation_id: Some(saga),
        app_id: Some("intake".into()),
        trace: pvefleet_core::telemetry::adopt(&root, None),
        ..Origin::default()
    };
    let out = Outgoing::message(msg, &origin).map_err(db_problem)?;
    pvefleet_core::db::outbox::enqueue(tx, &out).await.map_err(db_problem)
}

/// Records the saga id intake answers with, before the coordinator starts it.
pub(crate) async fn accept_saga(
    tx: &deadpool_postgres::Transaction<'_>,
    saga: Uuid,
    kind: &str,
    site: Uuid,
    owner: &str,
) -> Result<(), Problem> {
    tx.execute(
        "INSERT INTO accepted_sagas (saga_id, kind, site_id, owner) VALUES ($1, $2, $3, $4)",
        &[&saga, &kind, &site, &owner],
    )
    .await
    .map(drop)
    .map_err(db_problem)
}

fn accepted(site: Uuid, saga: Uuid, state: &str) -> Response {
    let body = Accepted {
        id: site,
        saga_id: saga,
        state: state.into(),
    };
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/sites/{site}"))],
        axum::Json(body),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    owner: Option<String>,
    state: Option<String>,
}

/// List sites, newest first (at most 500).
#[utoipa::path(get, path = "/v1/sites", params(("owner" = Option<String>, Query), ("state" = Option<String>, Query)), responses((status = 200)))]
pub(crate) async fn list_sites(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_READ).await?;
    let q = crate::problem::parse_query(q)?;
    if let Some(o) = &q.owner {
        site::owner(o).map_err(|i| Problem::field(StatusCode::BAD_REQUEST, "invalid", "owner", i.reason))?;
    }
    crate::problem::one_of("state", q.state.as_deref(), site::STATES)?;
    let owner = crate::tenancy::list_owner(&caller, q.owner.as_ref(), "sites")?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let row = client
        .query_one(
            "SELECT coalesce(json_agg(s ORDER BY s.created_at DESC), '[]'::json) FROM (
                 SELECT id, subdomain, owner, state, vmid, ip, node, error, created_at, updated_at FROM sites
                 WHERE ($1::text IS NULL OR owner = $1) AND ($2::text IS NULL OR state = $2)
                 ORDER BY created_at DESC LIMIT 500) s",
            &[&owner, &q.state],
        )
        .await
        .map_err(db_problem)?;
    let list: Value = row.get(0);
    Ok(axum::Json(list).into_response())
}

/// A site, with its step timeline (every saga of it, with times and errors).
#[utoipa::path(get, path = "/v1/sites/{id}", responses((status = 200), (status = 404, body = Problem)))]
pub(crate) async fn get_site(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_READ).await?;
    let id = parse_id(&id)?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let row = client
        .query_opt(
            "SELECT json_build_object(
                 'id', s.id, 'subdomain', s.subdomain, 'owner', s.owner, 'state', s.state, 'vmid', s.vmid,
                 'ip', s.ip, 'node', s.node, 'error', s.error, 'spec', s.spec,
                 'created_at', s.created_at, 'updated_at', s.updated_at,
                 'sagas', coalesce((SELECT json_agg(json_build_object('id', g.id, 'kind', g.kind, 'state', g.state, 'error', g.error,
                     'steps', coalesce((SELECT json_agg(st ORDER BY st.started_at) FROM (SELECT name, phase, state, started_at, finished_at, error FROM saga_steps WHERE saga_id = g.id) st), '[]'::json))
                     ORDER BY g.created_at) FROM sagas g WHERE g.site_id = s.id), '[]'::json))
             FROM sites s WHERE s.id = $1",
            &[&id],
        )
        .await
        .map_err(db_problem)?;
    match row.map(|r| r.get::<_, Value>(0)) {
        Some(v) if caller.sees(v["owner"].as_str().unwrap_or_default()) => Ok(axum::Json(v).into_response()),
        _ => Err(no_site(id)),
    }
}

/// A site's generated credentials (WordPress admin, database), to a token with the `admin`
/// scope only. Every reveal is written to `audit_log` with the token, in the same transaction.
#[utoipa::path(get, path = "/v1/sites/{id}/credentials", responses((status = 200), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub(crate) async fn site_credentials(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_CREDENTIALS).await?;
    let id = parse_id(&id)?;
    let Some(sbox) = &st.secrets else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-configured",
            "installer.secrets_key is not set here: credentials cannot be opened.",
        ));
    };
    let mut client = st.pool.get().await.map_err(db_problem)?;
    let tx = client.transaction().await.map_err(db_problem)?;
    let owner: Option<String> = tx
        .query_opt("SELECT owner FROM sites WHERE id = $1", &[&id])
        .await
        .map_err(db_problem)?
        .map(|r| r.get(0));
    let Some(owner) = owner.filter(|o| caller.sees(o)) else {
        return Err(no_site(id));
    };
    let row = tx
        .query_opt("SELECT sealed FROM site_secrets WHERE site_id = $1", &[&id])
        .await
        .map_err(db_problem)?;
    let Some(row) = row else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("Site {id} has no stored credentials."),
        ));
    };
    let creds = sbox.open(id, row.get(0)).map_err(|e| {
        tracing::error!(site = %id, error = %e, "Stored credentials do not open.");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "sealed",
            "The stored credentials do not open with this key.",
        )
    })?;
    let entry = audit::Entry::new("site.credentials.reveal", format!("site/{id}")).owner(owner);
    audit::record(&*tx, &caller.actor(), &entry).await.map_err(db_problem)?;
    tx.commit().await.map_err(db_problem)?;
    tracing::info!(site = %id, token = %caller.id, "Site credentials revealed.");
    let body = serde_json::json!({
        "site_id": id,
        "admin_user": creds.admin_user,
        "admin_password": creds.admin_password,
        "db_password": creds.db_password,
    });
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// Deprovision a site.
#[utoipa::path(delete, path = "/v1/sites/{id}", responses((status = 202, body = Accepted), (status = 404, body = Problem), (status = 409, body = Problem), (status = 410, body = Problem)))]
pub(crate) async fn delete_site(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_WRITE).await?;
    let id = parse_id(&id)?;
    let mut client = st.pool.get().await.map_err(db_problem)?;
    let tx = client.transaction().await.map_err(db_problem)?;
    let site: Option<(String, String)> = tx
        .query_opt("SELECT state, owner FROM sites WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .map_err(db_problem)?
        .map(|r| (r.get(0), r.get(1)));
    let Some((state, owner)) = site.filter(|(_, o)| caller.sees(o)) else {
        return Err(no_site(id));
    };
    // One deprovision at a time: a second DELETE while one runs answers with that one's saga.
    if let Some(running) = tx
        .query_opt(
            "SELECT a.saga_id FROM accepted_sagas a LEFT JOIN sagas g ON g.id = a.saga_id
             WHERE a.site_id = $1 AND a.kind = 'deprovision'
               AND (g.id IS NULL OR g.state IN ('running', 'compensating', 'suspended'))
             ORDER BY a.accepted_at DESC LIMIT 1",
            &[&id],
        )
        .await
        .map_err(db_problem)?
    {
        return Ok(accepted(id, running.get(0), "deprovisioning"));
    }
    if state == "deleted" {
        return Err(Problem::new(
            StatusCode::GONE,
            "gone",
            format!("Site {id} is already deleted."),
        ));
    }
    if state == "restoring" {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("Site {id} is being restored: delete it once its restore saga has ended."),
        ));
    }
    crate::fair::in_flight(&tx, &owner, st.settings.intake.max_in_flight_per_owner).await?;
    let saga = Uuid::now_v7();
    enqueue(&tx, &SiteDeprovision { site_id: SiteId(id) }, saga, &id.to_string()).await?;
    accept_saga(&tx, saga, "deprovision", id, &owner).await?;
    let entry = audit::Entry::new("site.delete", format!("site/{id}"))
        .owner(owner)
        .outcome("accepted")
        .detail(serde_json::json!({ "saga_id": saga, "was": state }));
    audit::record(&*tx, &caller.actor(), &entry).await.map_err(db_problem)?;
    tx.commit().await.map_err(db_problem)?;
    if let Some(p) = &st.poke {
        p.notify_one();
    }
    Ok(accepted(id, saga, "deprovisioning"))
}

pub(crate) fn no_site(id: Uuid) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", format!("No site {id}."))
}

/// A 422 naming the field the policy refused.
fn unprocessable(kind: &str, i: Invalid) -> Problem {
    Problem::field(StatusCode::UNPROCESSABLE_ENTITY, kind, &i.field, i.reason)
}
