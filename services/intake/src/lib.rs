//! The intake API (axum): sites and sagas over HTTP.
//!
//! `POST /v1/sites` validates the request against the policy (the saga's own `validate`, so an
//! upstream publisher and intake meet the same rules), then writes the site (`requested`) and a
//! `site.provision` command in one transaction through the outbox, and answers 202 with a
//! `Location`. The saga coordinator starts the saga from that command. Errors are
//! `application/problem+json` naming the field. Bearer tokens carry scopes (`sites:read`,
//! `sites:write`); they are stored hashed.

mod auth;
mod autoscale;
mod dead_letters;
mod guard;
mod network;
mod problem;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pvefleet_contracts::messages::{App, SiteDeprovision, SiteProvision};
use pvefleet_contracts::{Message, SiteId};
use pvefleet_core::Settings;
use pvefleet_core::bus::Outgoing;
use pvefleet_core::bus::outgoing::Origin;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

pub use auth::{create_token, hash_token};
pub use problem::Problem;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pool: deadpool_postgres::Pool,
    settings: Arc<Settings>,
    poke: Option<Arc<tokio::sync::Notify>>,
    /// Opens sites' sealed credentials (`installer.secrets_key`), when configured.
    secrets: Option<pvefleet_core::site_secrets::SecretBox>,
    /// Republishes dead letters.
    publisher: Option<pvefleet_core::bus::Publisher>,
    /// Checks network requests against PVE before they are accepted.
    pve: Option<pvefleet_proxmox::client::PveClient>,
}

impl AppState {
    /// State over a pool; `poke` wakes the outbox relay after each write.
    pub fn new(pool: deadpool_postgres::Pool, settings: Settings, poke: Option<Arc<tokio::sync::Notify>>) -> Self {
        let secrets = match settings.installer.secrets_key.as_ref() {
            None => None,
            Some(key) => match pvefleet_core::site_secrets::SecretBox::from_base64(key.expose()) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::error!(error = %e, "Sites' credentials cannot be revealed.");
                    None
                }
            },
        };
        let pve = match pvefleet_core::pve::client(&settings.pve) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "No Proxmox VE client: the network endpoints answer 503.");
                None
            }
        };
        Self {
            pool,
            settings: Arc::new(settings),
            poke,
            secrets,
            publisher: None,
            pve,
        }
    }

    /// With a publisher for dead-letter replays.
    pub fn with_publisher(mut self, publisher: pvefleet_core::bus::Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }
}

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

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pvefleet intake",
        description = "Provision and remove sites; follow their sagas."
    ),
    paths(
        create_site,
        list_sites,
        get_site,
        site_credentials,
        delete_site,
        get_saga,
        saga_events,
        network::attach,
        network::update,
        network::detach,
        network::bind,
        network::unbind,
        network::operation,
        network::operations,
        network::container_network,
        network::vnet_containers,
        network::stats
    ),
    components(schemas(SiteRequest, Accepted, Problem))
)]
struct ApiDoc;

/// The API router (add the ops router beside it).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/sites", get(list_sites).post(create_site))
        .route("/v1/sites/{id}", get(get_site).delete(delete_site))
        .route("/v1/sites/{id}/credentials", get(site_credentials))
        .route("/v1/sagas/{id}", get(get_saga))
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/groups", get(dead_letters::groups))
        .route("/v1/dead-letters/replay", axum::routing::post(dead_letters::replay))
        .route("/v1/dead-letters/archive", axum::routing::post(dead_letters::archive))
        .route("/v1/dead-letters/purge", axum::routing::post(dead_letters::purge))
        .route("/v1/dead-letters/{id}", get(dead_letters::show))
        .route(
            "/v1/containers/{vmid}/autoscale",
            get(autoscale::get).put(autoscale::put).delete(autoscale::delete),
        )
        .route("/v1/containers/{vmid}/interfaces", axum::routing::post(network::attach))
        .route(
            "/v1/containers/{vmid}/interfaces/{name}",
            axum::routing::patch(network::update).delete(network::detach),
        )
        .route("/v1/containers/{vmid}/operations", get(network::operations))
        .route("/v1/containers/{vmid}/network", get(network::container_network))
        .route(
            "/v1/vnets/{vnet}/bindings",
            axum::routing::post(network::bind).delete(network::unbind),
        )
        .route("/v1/vnets/{vnet}/containers", get(network::vnet_containers))
        .route("/v1/operations/{id}", get(network::operation))
        .route("/v1/network/stats", get(network::stats))
        .route("/v1/sagas/{id}/events", get(saga_events))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "No such resource.") })
        .layer(axum::middleware::from_fn(guard::check_input))
        .with_state(state)
}

async fn openapi() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The answer to a failed database call, by what the failure means: a value the database
/// refuses (a NUL, too long) is the request's fault (400); a constraint is a conflict (409);
/// an outage or a lock held elsewhere is 503; anything else is ours (500). The log keeps
/// Postgres's code and message; the answer never echoes a stored value.
pub(crate) fn db_problem(e: impl Into<anyhow::Error>) -> Problem {
    use pvefleet_core::db::fault::{FaultKind, classify_any};
    let e: anyhow::Error = e.into();
    let Some(fault) = classify_any(&e) else {
        tracing::error!(error = format!("{e:#}"), "Intake failed on a request.");
        return Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Intake failed; see its log.",
        );
    };
    let code = fault.code.as_deref().unwrap_or("-");
    match fault.kind {
        FaultKind::InvalidInput => {
            tracing::warn!(code, error = %fault.message, "A request carried a value the database refuses.");
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-input",
                format!("A value in the request cannot be stored (SQLSTATE {code})."),
            )
        }
        FaultKind::Conflict => {
            tracing::warn!(code, error = %fault.message, "A request conflicts with what is stored.");
            Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                "The change conflicts with what is stored.",
            )
        }
        FaultKind::Contention => {
            tracing::warn!(code, error = %fault.message, "A lock was busy for a request.");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Someone else holds what this changes; try again.",
            )
        }
        FaultKind::Outage => {
            tracing::error!(code, error = %fault.message, "The database is unavailable to intake.");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The database is unavailable; try again.",
            )
        }
        FaultKind::Bug => {
            tracing::error!(code, error = %fault.message, "A statement of intake failed.");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Intake failed; see its log.",
            )
        }
    }
}

/// Provision a site.
#[utoipa::path(post, path = "/v1/sites", request_body = SiteRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: the same site; same key, other body: 409")),
    responses((status = 202, body = Accepted), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_site(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, Problem> {
    let token = auth::require(&st.pool, &headers, "sites:write").await?;
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
    let req: SiteRequest = serde_json::from_slice(&body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-json",
            format!("The body is not a valid site request: {e}"),
        )
    })?;
    let s = &st.settings;
    if req.unprivileged == Some(false) {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy",
            "unprivileged",
            "Only unprivileged containers are provisioned.",
        ));
    }
    // Any app name goes to the policy check below, which knows the installer's apps.
    let app = req.app.clone().map_or_else(App::wordpress, App);
    let site_id = SiteId::new();
    let mut cmd = SiteProvision {
        site_id,
        subdomain: req.subdomain.clone(),
        owner: req.owner.clone().unwrap_or_else(|| token.name.clone()),
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
    let apps: Vec<String> = s.installer.apps.keys().cloned().collect();
    if let Err(invalid) = pvefleet_saga::validate(&s.saga, &s.pve.templates, &apps, &cmd) {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            invalid.field,
            invalid.reason,
        ));
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
    let live: i64 = tx
        .query_one(
            "SELECT count(*) FROM sites WHERE owner = $1 AND state NOT IN ('failed', 'rejected', 'deleted')",
            &[&cmd.owner],
        )
        .await
        .map_err(db_problem)?
        .get(0);
    if live >= i64::from(s.saga.max_sites_per_owner) {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "quota",
            "owner",
            format!(
                "Owner '{}' has {live} live sites; the limit is {}.",
                cmd.owner, s.saga.max_sites_per_owner
            ),
        ));
    }
    let taken = tx
        .query_opt(
            "SELECT 1 FROM sites WHERE subdomain = $1 AND state NOT IN ('failed', 'rejected', 'deleted')",
            &[&cmd.subdomain],
        )
        .await
        .map_err(db_problem)?;
    if taken.is_some() {
        return Err(Problem::field(
            StatusCode::CONFLICT,
            "taken",
            "subdomain",
            format!("Subdomain '{}' is in use.", cmd.subdomain),
        ));
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
    enqueue(&tx, &cmd, saga).await?;
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
) -> Result<(), Problem> {
    let origin = Origin {
        correlation_id: Some(saga),
        app_id: Some("intake".into()),
        ..Origin::default()
    };
    let out = Outgoing::message(msg, &origin).map_err(db_problem)?;
    pvefleet_core::db::outbox::enqueue(tx, &out).await.map_err(db_problem)
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
struct ListQuery {
    owner: Option<String>,
    state: Option<String>,
}

/// List sites, newest first (at most 500).
#[utoipa::path(get, path = "/v1/sites", params(("owner" = Option<String>, Query), ("state" = Option<String>, Query)), responses((status = 200)))]
async fn list_sites(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, Problem> {
    auth::require(&st.pool, &headers, "sites:read").await?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let row = client
        .query_one(
            "SELECT coalesce(json_agg(s ORDER BY s.created_at DESC), '[]'::json) FROM (
                 SELECT id, subdomain, owner, state, vmid, ip, node, error, created_at, updated_at FROM sites
                 WHERE ($1::text IS NULL OR owner = $1) AND ($2::text IS NULL OR state = $2)
                 ORDER BY created_at DESC LIMIT 500) s",
            &[&q.owner, &q.state],
        )
        .await
        .map_err(db_problem)?;
    let list: Value = row.get(0);
    Ok(axum::Json(list).into_response())
}

pub(crate) fn parse_id(id: &str) -> Result<Uuid, Problem> {
    id.parse().map_err(|_| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid",
            "id",
            format!("'{id}' is not a UUID."),
        )
    })
}

/// A site, with its step timeline (every saga of it, with times and errors).
#[utoipa::path(get, path = "/v1/sites/{id}", responses((status = 200), (status = 404, body = Problem)))]
async fn get_site(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, Problem> {
    auth::require(&st.pool, &headers, "sites:read").await?;
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
    match row {
        Some(r) => Ok(axum::Json(r.get::<_, Value>(0)).into_response()),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("No site {id}."),
        )),
    }
}

/// A site's generated credentials (WordPress admin, database), to a token with the `admin`
/// scope only. Every reveal is written to `audit_log` with the token, in the same transaction.
#[utoipa::path(get, path = "/v1/sites/{id}/credentials", responses((status = 200), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn site_credentials(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st.pool, &headers, "admin").await?;
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
    tx.execute(
        "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, 'site.credentials.reveal', $2, $3)",
        &[
            &format!("token:{} ({})", caller.id, caller.name),
            &id.to_string(),
            &serde_json::json!({ "token_id": caller.id }),
        ],
    )
    .await
    .map_err(db_problem)?;
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
#[utoipa::path(delete, path = "/v1/sites/{id}", responses((status = 202, body = Accepted), (status = 404, body = Problem)))]
async fn delete_site(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    auth::require(&st.pool, &headers, "sites:write").await?;
    let id = parse_id(&id)?;
    let mut client = st.pool.get().await.map_err(db_problem)?;
    let tx = client.transaction().await.map_err(db_problem)?;
    let state: Option<String> = tx
        .query_opt("SELECT state FROM sites WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .map_err(db_problem)?
        .map(|r| r.get(0));
    match state.as_deref() {
        None => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("No site {id}."),
            ));
        }
        Some("deleted") => {
            return Err(Problem::new(
                StatusCode::GONE,
                "gone",
                format!("Site {id} is already deleted."),
            ));
        }
        Some(_) => {}
    }
    let saga = Uuid::now_v7();
    enqueue(&tx, &SiteDeprovision { site_id: SiteId(id) }, saga).await?;
    tx.commit().await.map_err(db_problem)?;
    if let Some(p) = &st.poke {
        p.notify_one();
    }
    Ok(accepted(id, saga, "deprovisioning"))
}

async fn saga_json(pool: &deadpool_postgres::Pool, id: Uuid) -> Result<Option<Value>, Problem> {
    let client = pool.get().await.map_err(db_problem)?;
    let row = client
        .query_opt(
            "SELECT json_build_object('id', g.id, 'kind', g.kind, 'site_id', g.site_id, 'state', g.state, 'error', g.error,
                 'version', g.version, 'created_at', g.created_at, 'updated_at', g.updated_at,
                 'steps', coalesce((SELECT json_agg(st ORDER BY st.started_at) FROM (SELECT name, phase, state, started_at, finished_at, error FROM saga_steps WHERE saga_id = g.id) st), '[]'::json))
             FROM sagas g WHERE g.id = $1",
            &[&id],
        )
        .await
        .map_err(db_problem)?;
    Ok(row.map(|r| r.get(0)))
}

/// A saga with its steps.
#[utoipa::path(get, path = "/v1/sagas/{id}", responses((status = 200), (status = 404, body = Problem)))]
async fn get_saga(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, Problem> {
    auth::require(&st.pool, &headers, "sites:read").await?;
    let id = parse_id(&id)?;
    match saga_json(&st.pool, id).await? {
        Some(v) => Ok(axum::Json(v).into_response()),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("No saga {id} (yet)."),
        )),
    }
}

/// Server-Sent Events of a saga's progress: a `step` event whenever a step starts or ends, and
/// a final `saga` event when it ends (completed, failed, compensation_failed or suspended).
#[utoipa::path(get, path = "/v1/sagas/{id}/events", responses((status = 200, content_type = "text/event-stream")))]
async fn saga_events(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    auth::require(&st.pool, &headers, "sites:read").await?;
    let id = parse_id(&id)?;
    let pool = st.pool.clone();
    let stream = futures::stream::unfold(
        (
            pool,
            std::collections::HashMap::<String, Value>::new(),
            false,
            tokio::time::Instant::now(),
        ),
        move |(pool, mut seen, done, started)| async move {
            if done {
                return None;
            }
            loop {
                let saga = saga_json(&pool, id).await.ok().flatten();
                let mut events: Vec<Result<Event, std::convert::Infallible>> = Vec::new();
                let mut finished = false;
                if let Some(saga) = &saga {
                    for step in saga["steps"].as_array().into_iter().flatten() {
                        let key = format!("{}/{}", step["name"], step["phase"]);
                        if seen.get(&key) != Some(step) {
                            seen.insert(key, step.clone());
                            events.push(Ok(Event::default().event("step").data(step.to_string())));
                        }
                    }
                    let state = saga["state"].as_str().unwrap_or_default();
                    if matches!(state, "completed" | "failed" | "compensation_failed" | "suspended") {
                        events.push(Ok(Event::default().event("saga").data(saga.to_string())));
                        finished = true;
                    }
                }
                if !events.is_empty() {
                    return Some((futures::stream::iter(events), (pool, seen, finished, started)));
                }
                if started.elapsed() > Duration::from_secs(3600) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    );
    use futures::StreamExt;
    Ok(Sse::new(stream.flatten())
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Runs intake until `shutdown`: the API and ops routes on `listen`, and the outbox relay.
pub async fn run(
    settings: &Settings,
    pool: deadpool_postgres::Pool,
    listener: tokio::net::TcpListener,
    readiness: pvefleet_core::http::Readiness,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let topology = pvefleet_core::bus::topology::Topology::fleet(&settings.bus);
    let publisher = pvefleet_core::bus::Publisher::new(&settings.bus, "intake", Some(topology));
    let relay = pvefleet_core::db::outbox::OutboxRelay::new(pool.clone(), publisher.clone(), settings.outbox.clone());
    let poke = relay.poker();
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let state = AppState::new(pool, settings.clone(), Some(poke)).with_publisher(publisher);
    let app = router(state).merge(pvefleet_core::http::ops_router(readiness));
    let served = pvefleet_core::http::serve_listener(listener, app, shutdown.clone()).await;
    shutdown.cancel();
    let _ = relay_task.await;
    served.map_err(Into::into)
}
