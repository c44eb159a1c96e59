//! `/v1/dead-letters...`: the dead-letter store over HTTP, for a token with the `dlq:admin`
//! scope (403 otherwise). The same operations as `pvefleet dlq`, each change written to
//! `audit_log` with the token.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pvefleet_core::dlq::{self, Filter};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::problem::Problem;
use crate::{AppState, auth, db_problem};

const SCOPE: &str = pvefleet_policy::scopes::DLQ_ADMIN;

/// The caller, when its token holds `dlq:admin` and is an operator's.
async fn operator(st: &AppState, headers: &HeaderMap) -> Result<auth::Caller, Problem> {
    let caller = auth::require(st, headers, SCOPE).await?;
    caller.operator("The dead-letter store")?;
    Ok(caller)
}

/// Which dead letters: query parameters, or the body of a change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    id: Option<Uuid>,
    group: Option<String>,
    queue: Option<String>,
    #[serde(rename = "type")]
    message_type: Option<String>,
    correlation_id: Option<Uuid>,
    since: Option<String>,
    until: Option<String>,
    state: Option<String>,
    limit: Option<i64>,
    /// Replay: show what would be replayed.
    #[serde(default)]
    dry_run: bool,
    /// Replay: at most this many a second.
    rate: Option<f64>,
}

impl Selector {
    /// What the store cannot take, refused with the field named: a state it does not have,
    /// a time that is not RFC 3339, a limit outside 1 to 10000, a rate that is not positive.
    fn checked(mut self) -> Result<Self, Problem> {
        crate::problem::one_of("state", self.state.as_deref(), dlq::STATES)?;
        self.since = crate::problem::timestamp("since", self.since.as_deref())?;
        self.until = crate::problem::timestamp("until", self.until.as_deref())?;
        if let Some(l) = self.limit
            && !(1..=10_000).contains(&l)
        {
            return Err(Problem::field(
                StatusCode::BAD_REQUEST,
                "invalid",
                "limit",
                format!("{l} is outside 1 to 10000"),
            ));
        }
        if let Some(r) = self.rate
            && !(1.0..=100_000.0).contains(&r)
        {
            return Err(Problem::field(
                StatusCode::BAD_REQUEST,
                "invalid",
                "rate",
                format!("{r} is not a replay rate (1 to 100000 a second)"),
            ));
        }
        Ok(self)
    }

    fn filter(&self) -> Filter {
        Filter {
            id: self.id,
            group: self.group.clone(),
            queue: self.queue.clone(),
            message_type: self.message_type.clone(),
            correlation_id: self.correlation_id,
            since: self.since.clone(),
            until: self.until.clone(),
            state: self.state.clone(),
        }
    }

    fn names_some(&self) -> Result<Filter, Problem> {
        let f = self.filter();
        if f.id.is_none()
            && f.group.is_none()
            && f.queue.is_none()
            && f.message_type.is_none()
            && f.correlation_id.is_none()
            && f.since.is_none()
            && f.until.is_none()
        {
            return Err(Problem::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "id",
                "Say which dead letters: id, group, queue, type, correlation_id, since or until.",
            ));
        }
        Ok(f)
    }
}

/// The body as a selector, or a problem naming what is wrong with it.
fn selector(body: &[u8]) -> Result<Selector, Problem> {
    if body.is_empty() {
        return Ok(Selector::default());
    }
    crate::problem::parse_body::<Selector>(body, "dead-letter selector")?.checked()
}

/// Dead letters, newest first, by the selector's query parameters.
#[utoipa::path(get, path = "/v1/dead-letters",
    params(("id" = Option<Uuid>, Query), ("group" = Option<String>, Query), ("queue" = Option<String>, Query),
        ("type" = Option<String>, Query), ("correlation_id" = Option<Uuid>, Query), ("since" = Option<String>, Query),
        ("until" = Option<String>, Query), ("state" = Option<String>, Query), ("limit" = Option<i64>, Query)),
    responses((status = 200, body = [Object]), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<Selector>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    operator(&st, &headers).await?;
    let q = crate::problem::parse_query(q)?.checked()?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let rows = dlq::list(&client, &q.filter(), q.limit.unwrap_or(200).clamp(1, 10_000))
        .await
        .map_err(db_problem)?;
    Ok(Json(rows).into_response())
}

/// Dead letters grouped by queue, type and reason.
#[utoipa::path(get, path = "/v1/dead-letters/groups", responses((status = 200, body = [Object]), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn groups(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, Problem> {
    operator(&st, &headers).await?;
    let client = st.pool.get().await.map_err(db_problem)?;
    Ok(Json(dlq::groups(&client).await.map_err(db_problem)?).into_response())
}

/// One dead letter, with its headers, body and replays.
#[utoipa::path(get, path = "/v1/dead-letters/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn show(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    operator(&st, &headers).await?;
    let id = crate::parse_id(&id)?;
    let client = st.pool.get().await.map_err(db_problem)?;
    match dlq::show(&client, id).await.map_err(db_problem)? {
        Some(v) => Ok(Json(v).into_response()),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("No dead letter {id}."),
        )),
    }
}

/// Republish the selected dead letters to where they came from (audited).
#[utoipa::path(post, path = "/v1/dead-letters/replay", request_body = Object,
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn replay(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let caller = operator(&st, &headers).await?;
    let q = selector(&body)?;
    let f = q.names_some()?;
    let Some(publisher) = &st.publisher else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "This intake has no broker connection for replays.",
        ));
    };
    let client = st.pool.get().await.map_err(db_problem)?;
    let done = dlq::replay(&client, publisher, &f, &caller.actor(), q.dry_run, q.rate, |_, _| {})
        .await
        .map_err(db_problem)?;
    Ok(Json(json!({
        "dry_run": q.dry_run,
        "replayed": done.replayed,
        "skipped": done.skipped.iter().map(|(id, why)| json!({ "id": id, "reason": why })).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn retire(st: AppState, headers: HeaderMap, body: &[u8], purge: bool) -> Result<Response, Problem> {
    let caller = operator(&st, &headers).await?;
    let f = selector(body)?.names_some()?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let n = dlq::retire(&client, &f, &caller.actor(), purge)
        .await
        .map_err(db_problem)?;
    Ok(Json(json!({ "action": if purge { "purge" } else { "archive" }, "count": n })).into_response())
}

/// Archive the selected dead letters: kept, out of the way (audited).
#[utoipa::path(post, path = "/v1/dead-letters/archive", request_body = Object,
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn archive(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    retire(st, headers, &body, false).await
}

/// Delete the selected dead letters (audited).
#[utoipa::path(post, path = "/v1/dead-letters/purge", request_body = Object,
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn purge(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    retire(st, headers, &body, true).await
}
