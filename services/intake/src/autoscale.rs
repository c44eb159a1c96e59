//! `/v1/containers/{vmid}/autoscale`: a container's autoscaling policy. `GET` (scope
//! `autoscale:read`) answers the stored keys and the policy they make; `PUT` (scope
//! `autoscale:write`) stores a JSON object of keys over the default, refusing unknown ones;
//! `DELETE` removes it, so the container falls back to its tags', the global or the default.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pvefleet_policy::autoscale::{self as policies, Scope};
use serde_json::{Value, json};

use crate::problem::Problem;
use crate::{AppState, auth, db_problem};

fn vmid(raw: &str) -> Result<u32, Problem> {
    raw.parse().map_err(|_| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid",
            "vmid",
            format!("'{raw}' is not a vmid."),
        )
    })
}

pub(crate) async fn get(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    auth::require(&st.pool, &headers, "autoscale:read").await?;
    let scope = Scope::Vmid(vmid(&raw)?);
    let client = st.pool.get().await.map_err(db_problem)?;
    let stored = policies::list(&client)
        .await
        .map_err(db_problem)?
        .into_iter()
        .find(|(k, _)| *k == scope.key())
        .map(|(_, p)| p);
    let Some(stored) = stored else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("Container {raw} has no policy of its own."),
        ));
    };
    let effective = policies::overlay(&st.settings.autoscaler.policy, &stored)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "stored", e))?;
    Ok(Json(json!({ "scope": scope.key(), "stored": stored, "policy": effective })).into_response())
}

pub(crate) async fn put(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    auth::require(&st.pool, &headers, "autoscale:write").await?;
    let scope = Scope::Vmid(vmid(&raw)?);
    let keys: Value = serde_json::from_slice(&body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            format!("The body is not JSON: {e}"),
        )
    })?;
    let client = st.pool.get().await.map_err(db_problem)?;
    policies::set(&client, &st.settings.autoscaler.policy, &scope, &keys)
        .await
        .map_err(|e| Problem::field(StatusCode::UNPROCESSABLE_ENTITY, "invalid", "policy", e))?;
    Ok((StatusCode::OK, Json(json!({ "scope": scope.key(), "stored": keys }))).into_response())
}

pub(crate) async fn delete(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    auth::require(&st.pool, &headers, "autoscale:write").await?;
    let scope = Scope::Vmid(vmid(&raw)?);
    let client = st.pool.get().await.map_err(db_problem)?;
    if policies::delete(&client, &scope).await.map_err(db_problem)? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("Container {raw} has no policy of its own."),
        ))
    }
}
