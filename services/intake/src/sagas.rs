//! Sagas: `GET /v1/sagas/{id}` and its live events (`/events`, server-sent).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use uuid::Uuid;

use crate::{AppState, Problem, auth, db_problem, parse_id};

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
pub(crate) async fn get_saga(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
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
pub(crate) async fn saga_events(
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
