//! `/v1/containers/{vmid}/autoscale`: a container's own autoscaling policy. `GET` (scope
//! `autoscale:read`) answers the stored keys, the policy they make over the stored global and
//! the config, and the layer each key came from; `PUT` (scope `autoscale:write`) replaces the
//! container's keys, refused (422, naming the key) when a key is unknown or of the wrong type
//! or the policy it makes would not work; `DELETE` removes it, so the container falls back to
//! its tags', the global or the default.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pvefleet_policy::autoscale::{self as policies, Scope};
use serde_json::{Value, json};

use crate::problem::Problem;
use crate::{AppState, auth, db_problem, tenancy};
use pvefleet_core::audit;
use pvefleet_policy::scopes;

/// The audit row of a policy change on container `vmid`, for its site's owner.
async fn record(
    tx: &tokio_postgres::Client,
    caller: &auth::Caller,
    action: &str,
    vmid: u32,
    detail: Value,
) -> Result<(), Problem> {
    let mut entry = audit::Entry::new(action, format!("autoscale/{}", Scope::Vmid(vmid).key())).detail(detail);
    entry.owner = tenancy::vmid_owner(tx, vmid).await?;
    audit::record(tx, &caller.actor(), &entry).await.map_err(db_problem)
}

use crate::vmid;

/// A container's own autoscaling policy: the stored keys and the policy they make.
#[utoipa::path(get, path = "/v1/containers/{vmid}/autoscale", params(("vmid" = u32, Path)),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::AUTOSCALE_READ).await?;
    let v = vmid(&raw)?;
    tenancy::container(&st.pool, &caller, v).await?;
    let scope = Scope::Vmid(v);
    let client = st.pool.get().await.map_err(db_problem)?;
    let all = policies::Policies::load(&client).await.map_err(db_problem)?;
    let Some(stored) = all.stored(&scope).cloned() else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("Container {raw} has no policy of its own."),
        ));
    };
    // Its own keys over the stored global and the config; tag policies apply too when PVE
    // shows the container with tags (`pvefleet autoscale policy get` reads them).
    let layers = all.layers(v, &[]);
    let effective = policies::layered(&st.settings.autoscaler.policy, &layers)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "stored", e.to_string()))?;
    let refused = policies::check(&effective.policy).err().map(|i| i.to_string());
    let from: serde_json::Map<String, Value> = effective
        .from
        .iter()
        .map(|(k, l)| (k.clone(), json!(l.to_string())))
        .collect();
    Ok(Json(json!({
        "scope": scope.key(), "stored": stored, "policy": effective.policy, "from": from, "refused": refused,
    }))
    .into_response())
}

/// Set a container's autoscaling policy: a JSON object of policy keys.
#[utoipa::path(put, path = "/v1/containers/{vmid}/autoscale", params(("vmid" = u32, Path)), request_body = Object,
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::AUTOSCALE_WRITE).await?;
    let v = vmid(&raw)?;
    tenancy::container(&st.pool, &caller, v).await?;
    let scope = Scope::Vmid(v);
    let keys: Value = crate::problem::parse_body(&body, "policy (a JSON object)")?;
    // Thresholds are percentages.
    for k in ["cpu_up", "cpu_down", "mem_up", "mem_down", "emergency_mem"] {
        if let Some(v) = keys.get(k)
            && !v.as_f64().is_some_and(|p| (0.0..=100.0).contains(&p))
        {
            return Err(Problem::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                k,
                format!("{k} is a percentage, 0 to 100"),
            ));
        }
    }
    let client = st.pool.get().await.map_err(db_problem)?;
    pvefleet_core::db::in_tx(&client, async {
        policies::set(
            &client,
            &st.settings.autoscaler.policy,
            &scope,
            &keys,
            policies::Write::Replace,
        )
        .await
        .map_err(|e| match e {
            policies::WriteError::Invalid(i) => {
                Problem::field(StatusCode::UNPROCESSABLE_ENTITY, "invalid", &i.field, i.to_string())
            }
            policies::WriteError::Db(e) => db_problem(e),
        })?;
        record(&client, &caller, "autoscale.policy.set", v, json!({ "keys": keys })).await
    })
    .await?;
    Ok((StatusCode::OK, Json(json!({ "scope": scope.key(), "stored": keys }))).into_response())
}

/// Remove a container's own autoscaling policy.
#[utoipa::path(delete, path = "/v1/containers/{vmid}/autoscale", params(("vmid" = u32, Path)),
    responses((status = 204), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::AUTOSCALE_WRITE).await?;
    let v = vmid(&raw)?;
    tenancy::container(&st.pool, &caller, v).await?;
    let scope = Scope::Vmid(v);
    let client = st.pool.get().await.map_err(db_problem)?;
    let deleted = pvefleet_core::db::in_tx(&client, async {
        let deleted = policies::delete(&client, &scope).await.map_err(db_problem)?;
        if deleted {
            record(&client, &caller, "autoscale.policy.delete", v, Value::Null).await?;
        }
        Ok::<_, Problem>(deleted)
    })
    .await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("Container {raw} has no policy of its own."),
        ))
    }
}
