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
mod backups;
mod config_history;
mod dead_letters;
mod doc;
mod fair;
mod guard;
mod network;
mod notifications;
mod problem;
mod sagas;
mod sites;
mod tenancy;

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use pvefleet_core::Settings;
use utoipa::OpenApi;
use uuid::Uuid;

pub use auth::{
    Caller, Minted, NewToken, create_owned_token, create_token, hash_token, list_tokens, mint, revoke, rotate,
};
pub use problem::Problem;
pub use sites::{Accepted, SiteRequest};

pub(crate) use sites::enqueue;

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
    /// Reads how many consumers a work queue has, for a saga's step in flight.
    queues: Arc<sagas::QueueWatch>,
    /// Each token's request rate.
    limits: Arc<fair::RateLimits>,
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
        let queues = Arc::new(sagas::QueueWatch::new(settings.bus.clone()));
        let limits = Arc::new(fair::RateLimits::new(
            settings.intake.rate_per_second,
            settings.intake.rate_burst,
        ));
        Self {
            pool,
            settings: Arc::new(settings),
            poke,
            secrets,
            publisher: None,
            pve,
            queues,
            limits,
        }
    }

    /// Wakes the outbox relay: a command was just written to the outbox.
    pub(crate) fn poke_relay(&self) {
        if let Some(p) = &self.poke {
            p.notify_one();
        }
    }

    /// With a publisher for dead-letter replays.
    pub fn with_publisher(mut self, publisher: pvefleet_core::bus::Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pvefleet intake",
        description = "Provision and remove sites; follow their sagas; network, autoscaling and dead letters. Every error is application/problem+json."
    ),
    paths(
        whoami,
        sites::create_site,
        sites::list_sites,
        sites::get_site,
        sites::site_credentials,
        sites::delete_site,
        backups::list,
        backups::create,
        backups::restore,
        config_history::list,
        config_history::show,
        config_history::diff,
        config_history::restore,
        config_history::restore_status,
        sagas::get_saga,
        sagas::saga_events,
        dead_letters::list,
        dead_letters::groups,
        dead_letters::show,
        dead_letters::replay,
        dead_letters::archive,
        dead_letters::purge,
        notifications::list,
        notifications::show,
        notifications::resend,
        notifications::test,
        notifications::get_contacts,
        notifications::put_contacts,
        autoscale::get,
        autoscale::put,
        autoscale::delete,
        network::attach,
        network::update,
        network::detach,
        network::bind,
        network::unbind,
        network::operation,
        network::operations,
        network::container_network,
        network::vnet_containers,
        network::stats,
        openapi
    ),
    components(schemas(
        config_history::ConfigRestoreRequest,
        sites::SiteRequest,
        sites::Accepted,
        Problem,
        Whoami
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document intake serves at `/openapi.json`, for intake configured with `s`.
pub fn openapi_document(s: &Settings) -> serde_json::Value {
    doc::document(s)
}

type Handlers = axum::routing::MethodRouter<AppState>;

/// Every route intake serves: its method, its path, its handler. The router is made from this
/// list, and the tests walk it (tenancy route by route, the OpenAPI document against it), so a
/// route cannot be added without them seeing it.
fn table() -> Vec<(Method, &'static str, Handlers)> {
    use axum::routing::{delete, get, patch, post, put};
    vec![
        (Method::GET, "/v1/whoami", get(whoami)),
        (Method::GET, "/v1/sites", get(sites::list_sites)),
        (Method::POST, "/v1/sites", post(sites::create_site)),
        (Method::GET, "/v1/sites/{id}", get(sites::get_site)),
        (Method::DELETE, "/v1/sites/{id}", delete(sites::delete_site)),
        (Method::GET, "/v1/sites/{id}/credentials", get(sites::site_credentials)),
        (Method::GET, "/v1/sites/{id}/backups", get(backups::list)),
        (Method::POST, "/v1/sites/{id}/backups", post(backups::create)),
        (Method::POST, "/v1/sites/{id}/restores", post(backups::restore)),
        (Method::GET, "/v1/sites/{id}/config/versions", get(config_history::list)),
        (
            Method::GET,
            "/v1/sites/{id}/config/versions/{version}",
            get(config_history::show),
        ),
        (Method::GET, "/v1/sites/{id}/config/diff", get(config_history::diff)),
        (
            Method::POST,
            "/v1/sites/{id}/config/restores",
            post(config_history::restore),
        ),
        (
            Method::GET,
            "/v1/sites/{id}/config/restores/{restore_id}",
            get(config_history::restore_status),
        ),
        (Method::GET, "/v1/sagas/{id}", get(sagas::get_saga)),
        (Method::GET, "/v1/sagas/{id}/events", get(sagas::saga_events)),
        (Method::GET, "/v1/dead-letters", get(dead_letters::list)),
        (Method::GET, "/v1/dead-letters/groups", get(dead_letters::groups)),
        (Method::POST, "/v1/dead-letters/replay", post(dead_letters::replay)),
        (Method::POST, "/v1/dead-letters/archive", post(dead_letters::archive)),
        (Method::POST, "/v1/dead-letters/purge", post(dead_letters::purge)),
        (Method::GET, "/v1/dead-letters/{id}", get(dead_letters::show)),
        (Method::GET, "/v1/notifications", get(notifications::list)),
        (Method::POST, "/v1/notifications/test", post(notifications::test)),
        (Method::GET, "/v1/notifications/{id}", get(notifications::show)),
        (
            Method::POST,
            "/v1/notifications/{id}/resend",
            post(notifications::resend),
        ),
        (
            Method::GET,
            "/v1/owners/{owner}/contacts",
            get(notifications::get_contacts),
        ),
        (
            Method::PUT,
            "/v1/owners/{owner}/contacts",
            put(notifications::put_contacts),
        ),
        (Method::GET, "/v1/containers/{vmid}/autoscale", get(autoscale::get)),
        (Method::PUT, "/v1/containers/{vmid}/autoscale", put(autoscale::put)),
        (
            Method::DELETE,
            "/v1/containers/{vmid}/autoscale",
            delete(autoscale::delete),
        ),
        (Method::POST, "/v1/containers/{vmid}/interfaces", post(network::attach)),
        (
            Method::PATCH,
            "/v1/containers/{vmid}/interfaces/{name}",
            patch(network::update),
        ),
        (
            Method::DELETE,
            "/v1/containers/{vmid}/interfaces/{name}",
            delete(network::detach),
        ),
        (
            Method::GET,
            "/v1/containers/{vmid}/operations",
            get(network::operations),
        ),
        (
            Method::GET,
            "/v1/containers/{vmid}/network",
            get(network::container_network),
        ),
        (Method::POST, "/v1/vnets/{vnet}/bindings", post(network::bind)),
        (Method::DELETE, "/v1/vnets/{vnet}/bindings", delete(network::unbind)),
        (
            Method::GET,
            "/v1/vnets/{vnet}/containers",
            get(network::vnet_containers),
        ),
        (Method::GET, "/v1/operations/{id}", get(network::operation)),
        (Method::GET, "/v1/network/stats", get(network::stats)),
        (Method::GET, "/openapi.json", get(openapi)),
    ]
}

/// Every route intake serves, as (method, path), in the router's own path syntax.
pub fn routes() -> Vec<(Method, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The API router (add the ops router beside it).
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (_, path, handlers) in table() {
        router = router.route(path, handlers);
    }
    router
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "No such resource.") })
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            // The route the router chose: a static path before one with parameters.
            let routes = table();
            let exact = routes.iter().any(|(_, p, _)| *p == uri.path());
            let allowed: Vec<String> = routes
                .iter()
                .filter(|(_, p, _)| {
                    if exact {
                        *p == uri.path()
                    } else {
                        path_matches(p, uri.path())
                    }
                })
                .map(|(m, _, _)| m.to_string())
                .collect();
            let mut r = Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{method} is not served on this path; it serves {}.", allowed.join(", ")),
            )
            .into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&allowed.join(", ")) {
                r.headers_mut().insert(axum::http::header::ALLOW, v);
            }
            r
        })
        .layer(axum::middleware::from_fn(guard::check_input))
        .layer(axum::middleware::from_fn(with_request_id))
        .with_state(state)
}

/// Whether a concrete path is one of a route's (`{param}` matches one segment).
fn path_matches(route: &str, path: &str) -> bool {
    let (r, p): (Vec<&str>, Vec<&str>) = (route.split('/').collect(), path.split('/').collect());
    r.len() == p.len()
        && r.iter()
            .zip(&p)
            .all(|(r, p)| (r.starts_with('{') && !p.is_empty()) || r == p)
}

/// The header naming a request: the caller's, when it is a short printable token, else one
/// made here. Echoed on the answer and written with every audit row of the request.
pub const REQUEST_ID: &str = "x-request-id";

async fn with_request_id(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let given = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string);
    let id = given.unwrap_or_else(|| Uuid::now_v7().to_string());
    let value = axum::http::HeaderValue::from_str(&id).unwrap_or(axum::http::HeaderValue::from_static("-"));
    req.headers_mut().insert(REQUEST_ID, value.clone());
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(REQUEST_ID, value);
    resp
}

/// This request's id (set by the middleware).
pub(crate) fn request_id(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

/// Who the token is: its id, name, owner (null: an operator's token) and scopes.
#[utoipa::path(get, path = "/v1/whoami",
    responses((status = 200, body = Whoami), (status = 401, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn whoami(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Problem> {
    let c = auth::authenticate(&st, &headers).await?;
    Ok(axum::Json(Whoami {
        token_id: c.id,
        name: c.name,
        operator: c.owner.is_none(),
        owner: c.owner,
        scopes: c.scopes,
    })
    .into_response())
}

/// The caller behind a token.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Whoami {
    /// The token's id.
    token_id: Uuid,
    /// Its name.
    name: String,
    /// The owner it acts for; null for an operator's token.
    owner: Option<String>,
    /// Whether it is an operator's token (it sees the whole fleet).
    operator: bool,
    /// Its scopes.
    scopes: Vec<String>,
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, body = Object, description = "The OpenAPI document")))]
pub(crate) async fn openapi(axum::extract::State(st): axum::extract::State<AppState>) -> Response {
    axum::Json(doc::document(&st.settings)).into_response()
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
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

impl From<tokio_postgres::Error> for Problem {
    fn from(e: tokio_postgres::Error) -> Self {
        db_problem(e)
    }
}

/// A vmid in a path or query: 100 to 999999999, as PVE allows.
pub(crate) fn vmid(raw: &str) -> Result<u32, Problem> {
    raw.parse::<u32>()
        .ok()
        .filter(|v| (100..=999_999_999).contains(v))
        .ok_or_else(|| {
            Problem::field(
                StatusCode::BAD_REQUEST,
                "invalid",
                "vmid",
                format!(
                    "'{}' is not a vmid (100 to 999999999).",
                    raw.chars().take(20).collect::<String>()
                ),
            )
        })
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
