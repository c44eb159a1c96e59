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
mod sagas;
mod sites;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pvefleet_core::Settings;
use utoipa::OpenApi;
use uuid::Uuid;

pub use auth::{create_token, hash_token};
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
        Self {
            pool,
            settings: Arc::new(settings),
            poke,
            secrets,
            publisher: None,
            pve,
            queues,
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
        description = "Provision and remove sites; follow their sagas."
    ),
    paths(
        sites::create_site,
        sites::list_sites,
        sites::get_site,
        sites::site_credentials,
        sites::delete_site,
        sagas::get_saga,
        sagas::saga_events,
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
    components(schemas(sites::SiteRequest, sites::Accepted, Problem))
)]
struct ApiDoc;

/// The API router (add the ops router beside it).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/sites", get(sites::list_sites).post(sites::create_site))
        .route("/v1/sites/{id}", get(sites::get_site).delete(sites::delete_site))
        .route("/v1/sites/{id}/credentials", get(sites::site_credentials))
        .route("/v1/sagas/{id}", get(sagas::get_saga))
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
        .route("/v1/sagas/{id}/events", get(sagas::saga_events))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "No such resource.") })
        .layer(axum::middleware::from_fn(guard::check_input))
        .with_state(state)
}

async fn openapi() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
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
