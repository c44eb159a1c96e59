//! `/v1/notifications` and `/v1/owners/{owner}/contacts`: the notifier's deliveries and where an
//! owner's own notices go. An owner's token sees and resends its owner's deliveries only, and
//! reads and sets its owner's contacts only (another owner's are 404, as if they did not exist);
//! an operator's token reaches all, and alone may send a test notice. The same operations as
//! `pvefleet notify`, each change written to `audit_log` with the token.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pvefleet_notifier::ops::{self, OpsError, Resend};
use pvefleet_notifier::store;
use pvefleet_policy::{scopes, site};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::problem::Problem;
use crate::{AppState, auth, db_problem, parse_id};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    state: Option<String>,
    owner: Option<String>,
    event_type: Option<String>,
    before: Option<Uuid>,
    limit: Option<i64>,
}

fn ops_problem(e: OpsError) -> Problem {
    match e {
        OpsError::Db(e) => db_problem(e),
        OpsError::Invalid { field, why } => Problem::field(StatusCode::UNPROCESSABLE_ENTITY, "invalid", field, why),
        other => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", other.to_string()),
    }
}

fn no_delivery(id: Uuid) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", format!("No delivery {id}."))
}

/// A body that must be one JSON object (serde would take an array for a struct, by position).
fn object_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Problem> {
    // Valid JSON that starts with `{` is an object: no second parse to tell.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "body",
            format!("The body is not a valid {what}: not a JSON object"),
        ));
    }
    crate::problem::parse_body(body, what)
}

/// Deliveries, newest first: each with its event, channel, target, state, tries and last error.
#[utoipa::path(get, path = "/v1/notifications", responses((status = 200, description = "The deliveries, an array")))]
pub(crate) async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NOTIFICATIONS_READ).await?;
    let q = crate::problem::parse_query(q)?;
    crate::problem::one_of("state", q.state.as_deref(), store::STATES)?;
    if let Some(o) = &q.owner {
        site::owner(o).map_err(|i| Problem::field(StatusCode::BAD_REQUEST, "invalid", "owner", i.reason))?;
    }
    if let Some(l) = q.limit
        && !(1..=1000).contains(&l)
    {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid",
            "limit",
            format!("{l} is outside 1 to 1000"),
        ));
    }
    let owner = crate::tenancy::list_owner(&caller, q.owner.as_ref(), "notifications")?;
    let filter = store::Filter {
        state: q.state,
        owner,
        // An owner's token sees what went to its owner, never the operators' copies.
        audience: caller.owner.as_ref().map(|_| "owner".to_string()),
        event_type: q.event_type,
        before: q.before,
        limit: q.limit.unwrap_or(100),
    };
    let client = st.pool.get().await.map_err(db_problem)?;
    let rows = store::list(&client, &filter).await.map_err(db_problem)?;
    Ok(Json(rows).into_response())
}

/// One delivery.
#[utoipa::path(get, path = "/v1/notifications/{id}", responses((status = 200, body = Object)))]
pub(crate) async fn show(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NOTIFICATIONS_READ).await?;
    let id = parse_id(&raw)?;
    let client = st.pool.get().await.map_err(db_problem)?;
    match store::get(&client, id).await.map_err(db_problem)? {
        Some(d)
            if caller.owner.is_none()
                || (d.audience == "owner" && d.owner.as_deref().is_some_and(|o| caller.sees(o))) =>
        {
            Ok(Json(d).into_response())
        }
        _ => Err(no_delivery(id)),
    }
}

/// Send a delivery again (a failed one, one in doubt, or one already sent): it becomes pending
/// and the notifier sends it. 409 while it is pending, retrying or being sent.
#[utoipa::path(post, path = "/v1/notifications/{id}/resend", responses((status = 202, body = Object), (status = 409, body = Problem)))]
pub(crate) async fn resend(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NOTIFICATIONS_WRITE).await?;
    let id = parse_id(&raw)?;
    let mut client = st.pool.get().await.map_err(db_problem)?;
    let done = ops::resend(&mut client, id, caller.owner.as_deref(), &caller.actor())
        .await
        .map_err(ops_problem)?;
    match done {
        Resend::Queued => {
            st.poke_relay();
            Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "state": "pending" }))).into_response())
        }
        Resend::Unsettled(state) => Err(Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "Delivery {id} is {state}: it is on its way already; resend it once it settles (sent, failed or suppressed)."
            ),
        )),
        Resend::Missing => Err(no_delivery(id)),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    message: Option<String>,
}

/// Send a test notice wherever the routes send `notify.test` (every operator channel by
/// default). Operators' tokens only; 422 when no route sends it anywhere.
#[utoipa::path(post, path = "/v1/notifications/test", responses((status = 202, body = Object), (status = 422, body = Problem)))]
pub(crate) async fn test(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NOTIFICATIONS_WRITE).await?;
    caller.operator("A test notice")?;
    let req: TestRequest = if body.is_empty() {
        TestRequest::default()
    } else {
        object_body(&body, "test notice")?
    };
    let message = req.message.unwrap_or_else(|| "the channels work".into());
    let mut client = st.pool.get().await.map_err(db_problem)?;
    let ids = ops::test(&mut client, &st.settings, &message, &caller.actor())
        .await
        .map_err(ops_problem)?;
    if ids.is_empty() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no-route",
            "No route sends notify.test anywhere: configure [notifier.operator] channels or a route for it.",
        ));
    }
    st.poke_relay();
    Ok((StatusCode::ACCEPTED, Json(json!({ "deliveries": ids }))).into_response())
}

/// The owner named in the path, when the caller may reach it; else 404 (or 400 for a bad name).
fn owner_path(caller: &auth::Caller, raw: &str) -> Result<String, Problem> {
    site::owner(raw).map_err(|i| Problem::field(StatusCode::BAD_REQUEST, "invalid", "owner", i.reason))?;
    if !caller.sees(raw) {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("No owner '{raw}' (or not this token's)."),
        ));
    }
    Ok(raw.to_string())
}

fn owner_key(st: &AppState) -> Result<Option<String>, Problem> {
    ops::owner_key(&st.settings.notifier).map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("The owner webhook key cannot be read: {e:#}"),
        )
    })
}

/// Where an owner's own notices go: its e-mail address and webhook URL, with the secret its
/// webhooks are signed with (Standard Webhooks) when an owner webhook key is configured.
#[utoipa::path(get, path = "/v1/owners/{owner}/contacts", responses((status = 200, body = Object)))]
pub(crate) async fn get_contacts(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NOTIFICATIONS_READ).await?;
    let owner = owner_path(&caller, &raw)?;
    let key = owner_key(&st)?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let c = ops::contacts(&client, &owner, key.as_deref())
        .await
        .map_err(ops_problem)?;
    Ok(Json(c).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactsRequest {
    email: Option<String>,
    webhook_url: Option<String>,
}

/// Set an owner's contacts: a member left out stays as it is, an empty string clears it. 422
/// naming the member when an address or URL is not one.
#[utoipa::path(put, path = "/v1/owners/{owner}/contacts", request_body = Object, responses((status = 200, body = Object), (status = 422, body = Problem)))]
pub(crate) async fn put_contacts(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NOTIFICATIONS_WRITE).await?;
    let owner = owner_path(&caller, &raw)?;
    let req: ContactsRequest = object_body(&body, "contacts object")?;
    // An owner's webhook goes out to the internet, not into the stack's own network.
    if caller.owner.is_some()
        && let Some(url) = req.webhook_url.as_deref().filter(|u| ops::internal_url(u))
    {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "webhook_url",
            format!(
                "'{url}' is an address of this network (loopback, private or link-local); an owner's webhook must be reachable on the internet"
            ),
        ));
    }
    let key = owner_key(&st)?;
    let mut client = st.pool.get().await.map_err(db_problem)?;
    let c = ops::set_contacts(
        &mut client,
        &owner,
        req.email.as_deref(),
        req.webhook_url.as_deref(),
        key.as_deref(),
        &caller.actor(),
    )
    .await
    .map_err(ops_problem)?;
    Ok(Json(c).into_response())
}
