//! `/v1/sites/{id}/backups`: a site's backups (those PVE's jobs took, and the fleet's own:
//! on demand, final, before a restore), with their state and verification; and a backup on
//! demand, carried out by the backup service. An owner's token reaches its own sites' only
//! (another owner's are 404, as if they did not exist). The same operations as
//! `pvefleet site backup(s)`, each request written to `audit_log` with the token.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pvefleet_backup::ops::{self, OpsError};
use pvefleet_contracts::messages::BackupKind;
use pvefleet_policy::scopes;
use serde_json::json;
use uuid::Uuid;

use crate::problem::Problem;
use crate::sites::no_site;
use crate::{AppState, auth, db_problem, parse_id};

pub(crate) fn ops_problem(e: OpsError) -> Problem {
    match e {
        OpsError::NotFound(m) => Problem::new(StatusCode::NOT_FOUND, "not-found", m),
        OpsError::Conflict(m) => Problem::new(StatusCode::CONFLICT, "conflict", m),
        OpsError::Invalid(i) => Problem::field(StatusCode::UNPROCESSABLE_ENTITY, "invalid", i.field, i.why),
        OpsError::Db(e) => db_problem(e),
        other => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", other.to_string()),
    }
}

/// The site's owner, when the caller may see the site.
pub(crate) async fn visible(st: &AppState, caller: &auth::Caller, id: Uuid) -> Result<(), Problem> {
    let client = st.pool.get().await.map_err(db_problem)?;
    let row = client
        .query_opt("SELECT owner FROM sites WHERE id = $1", &[&id])
        .await
        .map_err(db_problem)?;
    match row.map(|r| r.get::<_, String>(0)) {
        Some(owner) if caller.sees(&owner) => Ok(()),
        _ => Err(no_site(id)),
    }
}

/// A site's backups, newest first (at most 500): kind, state, volume, size, when taken, until
/// when kept, and the last verification.
#[utoipa::path(get, path = "/v1/sites/{id}/backups", responses((status = 200, description = "The backups, an array"), (status = 404, body = Problem)))]
pub(crate) async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_READ).await?;
    let id = parse_id(&raw)?;
    visible(&st, &caller, id).await?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let rows = ops::list(&**client, id, 500).await.map_err(ops_problem)?;
    Ok(axum::Json(rows).into_response())
}

/// Back an active site up now, to its policy's storage; the backup service takes it and
/// follows the task. Answers 202 with the backup's id; its state shows in the list.
#[utoipa::path(post, path = "/v1/sites/{id}/backups", responses((status = 202, body = Object), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_WRITE).await?;
    let id = parse_id(&raw)?;
    visible(&st, &caller, id).await?;
    let mut client = st.pool.get().await.map_err(db_problem)?;
    let backup = ops::request(&mut client, &caller.actor(), id, BackupKind::OnDemand)
        .await
        .map_err(ops_problem)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "backup_id": backup, "site_id": id, "state": "requested" })),
    )
        .into_response())
}

/// What to restore: one backup by its volume; without one (or without a body), the latest.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestoreRequest {
    /// The backup volume, as the list shows it; absent: the site's latest kept backup.
    #[serde(default)]
    volid: Option<String>,
    /// Restore into a new site beside this one (a clone), leaving this one untouched.
    #[serde(default)]
    clone: bool,
    /// The clone's subdomain; absent: `<subdomain>-clone`. Only with `clone`.
    #[serde(default)]
    subdomain: Option<String>,
}

/// Restore a site from one of its backups, as a saga: an active site is backed up first and
/// restored in place (put back as it was if any step fails); a deleted site comes back in a
/// new container with its address, DNS record and route. With `clone`, the backup becomes a
/// new site beside this one (its own subdomain, container, address, record and route), and
/// this one is not touched. Answers 202 with the saga to follow (and the clone's site).
#[utoipa::path(post, path = "/v1/sites/{id}/restores", request_body(content = Option<RestoreRequest>, description = "The backup; none: the latest"), responses((status = 202, body = Object), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn restore(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_WRITE).await?;
    let id = parse_id(&raw)?;
    let blank = body.trim_ascii();
    let req: RestoreRequest = if blank.is_empty() || blank == b"null" {
        RestoreRequest::default()
    } else {
        crate::problem::parse_body(&body, "restore request")?
    };
    let volid = req.volid;
    if req.subdomain.is_some() && !req.clone {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid",
            "subdomain",
            "a subdomain names a clone: only with \"clone\": true",
        ));
    }
    visible(&st, &caller, id).await?;
    let mut client = st.pool.get().await.map_err(db_problem)?;
    if req.clone {
        let max = st.settings.saga.max_sites_per_owner;
        let (saga, clone) = ops::clone_site(
            &mut client,
            &caller.actor(),
            id,
            volid.as_deref(),
            req.subdomain.as_deref(),
            max,
        )
        .await
        .map_err(ops_problem)?;
        return Ok((
            StatusCode::ACCEPTED,
            [(axum::http::header::LOCATION, format!("/v1/sites/{clone}"))],
            axum::Json(json!({ "saga_id": saga, "site_id": clone, "clone_of": id, "state": "restoring" })),
        )
            .into_response());
    }
    let saga = ops::restore(&mut client, &caller.actor(), id, volid.as_deref())
        .await
        .map_err(ops_problem)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "saga_id": saga, "site_id": id, "state": "restoring" })),
    )
        .into_response())
}
