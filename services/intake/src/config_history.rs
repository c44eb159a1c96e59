//! `/v1/sites/{id}/config/...`: a site's configuration history (every recorded version of its
//! container's PVE config, each with what changed from the one before), one version in full,
//! the difference between two, and a version put back (carried out by the backup service with
//! the digest-guarded config write). An owner's token reaches its own sites' only; the same
//! operations as `pvefleet site config`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pvefleet_backup::history;
use pvefleet_backup::ops;
use pvefleet_policy::scopes;
use serde_json::json;
use uuid::Uuid;

use crate::backups::{ops_problem, visible};
use crate::problem::Problem;
use crate::{AppState, auth, db_problem, parse_id};

/// A version number from the path: any whole number the schema allows (`u32`); one no
/// version has (0, or past the newest) is then a 404, not a refusal of the request.
fn version_number(field: &str, raw: &str) -> Result<u32, Problem> {
    raw.parse::<u32>().map_err(|_| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid",
            field,
            format!("'{raw}' is not a version number (1, 2, ...)"),
        )
    })
}

/// A version as the database numbers them; `None`: no version can have it.
fn stored(v: u32) -> Option<i32> {
    i32::try_from(v).ok().filter(|v| *v >= 1)
}

fn no_version(id: Uuid, v: u32) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("Site {id} has no config version {v}."),
    )
}

/// The site's config versions, newest first (at most 500): number, container, cause, when,
/// and what changed from the version before.
#[utoipa::path(get, path = "/v1/sites/{id}/config/versions", params(("id" = Uuid, Path)),
    responses((status = 200, description = "The versions, an array"), (status = 404, body = Problem)))]
pub(crate) async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_READ).await?;
    let id = parse_id(&raw)?;
    visible(&st, &caller, id).await?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let rows = history::versions(&**client, id, 500).await.map_err(db_problem)?;
    Ok(axum::Json(rows).into_response())
}

/// One version with the whole config as PVE answered it.
#[utoipa::path(get, path = "/v1/sites/{id}/config/versions/{version}", params(("id" = Uuid, Path), ("version" = u32, Path)),
    responses((status = 200, description = "The version"), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub(crate) async fn show(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((raw, v)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_READ).await?;
    let id = parse_id(&raw)?;
    let v = version_number("version", &v)?;
    visible(&st, &caller, id).await?;
    let number = stored(v).ok_or_else(|| no_version(id, v))?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let row = history::version(&**client, id, Some(number))
        .await
        .map_err(db_problem)?
        .ok_or_else(|| no_version(id, v))?;
    Ok(axum::Json(row).into_response())
}

/// The two versions a diff compares.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DiffQuery {
    /// The older version.
    from: u32,
    /// The newer one; absent: the newest.
    #[serde(default)]
    to: Option<u32>,
}

/// What differs between two versions, key by key (`from` absent: added; `to` absent: removed).
#[utoipa::path(get, path = "/v1/sites/{id}/config/diff", params(("id" = Uuid, Path), DiffQuery),
    responses((status = 200, description = "{from, to, changes}"), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub(crate) async fn diff(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    q: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_READ).await?;
    let id = parse_id(&raw)?;
    let q = crate::problem::parse_query(q)?;
    visible(&st, &caller, id).await?;
    let from = stored(q.from).ok_or_else(|| no_version(id, q.from))?;
    let to = match q.to {
        Some(t) => Some(stored(t).ok_or_else(|| no_version(id, t))?),
        None => None,
    };
    let client = st.pool.get().await.map_err(db_problem)?;
    let a = history::version(&**client, id, Some(from))
        .await
        .map_err(db_problem)?
        .ok_or_else(|| no_version(id, q.from))?;
    let b = history::version(&**client, id, to)
        .await
        .map_err(db_problem)?
        .ok_or_else(|| no_version(id, q.to.unwrap_or(q.from)))?;
    let changes = history::diff(
        a.config.as_ref().unwrap_or(&Default::default()),
        b.config.as_ref().unwrap_or(&Default::default()),
    );
    Ok(axum::Json(json!({ "from": a.version, "to": b.version, "changes": changes })).into_response())
}

/// Which version to put back.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigRestoreRequest {
    /// The version, as the history lists it.
    version: u32,
}

/// Put a recorded version of an active site's config back: the keys that differ are written
/// and those it did not have deleted, in one digest-guarded write (disks, mount points and
/// `unprivileged` are left alone). Answers 202 with the request to follow.
#[utoipa::path(post, path = "/v1/sites/{id}/config/restores", params(("id" = Uuid, Path)), request_body = ConfigRestoreRequest,
    responses((status = 202, body = Object), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn restore(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_WRITE).await?;
    let id = parse_id(&raw)?;
    let req: ConfigRestoreRequest = crate::problem::parse_body(&body, "config restore request")?;
    let v = req.version;
    visible(&st, &caller, id).await?;
    let number = stored(v).ok_or_else(|| no_version(id, v))?;
    let mut client = st.pool.get().await.map_err(db_problem)?;
    let restore = ops::restore_config(&mut client, &caller.actor(), id, number)
        .await
        .map_err(ops_problem)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "restore_id": restore, "site_id": id, "version": v, "state": "requested" })),
    )
        .into_response())
}

/// A config restore: requested, done (with the version recorded after it, the keys written
/// and those PVE left pending until a restart) or failed (with why).
#[utoipa::path(get, path = "/v1/sites/{id}/config/restores/{restore_id}", params(("id" = Uuid, Path), ("restore_id" = Uuid, Path)),
    responses((status = 200, description = "The request"), (status = 404, body = Problem)))]
pub(crate) async fn restore_status(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((raw, rid)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_READ).await?;
    let id = parse_id(&raw)?;
    let rid = parse_id(&rid)?;
    visible(&st, &caller, id).await?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let row = history::restore_row(&**client, id, rid)
        .await
        .map_err(db_problem)?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("No config restore {rid} of site {id}."),
            )
        })?;
    Ok(axum::Json(row).into_response())
}
