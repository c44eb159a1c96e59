//! Sagas: `GET /v1/sagas/{id}` and its live events (`/events`, server-sent).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use uuid::Uuid;

use crate::{AppState, Problem, auth, db_problem, parse_id, tenancy};
use pvefleet_policy::scopes;

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

/// A saga intake accepted that the coordinator has not started: state `accepted`, no steps.
async fn accepted_json(pool: &deadpool_postgres::Pool, id: Uuid) -> Result<Value, Problem> {
    let client = pool.get().await.map_err(db_problem)?;
    let row = client
        .query_opt(
            "SELECT json_build_object('id', saga_id, 'kind', kind, 'site_id', site_id, 'state', 'accepted', 'error', NULL,
                 'version', 0, 'created_at', accepted_at, 'updated_at', accepted_at, 'steps', '[]'::json, 'in_flight', NULL)
             FROM accepted_sagas WHERE saga_id = $1",
            &[&id],
        )
        .await
        .map_err(db_problem)?;
    row.map(|r| r.get(0))
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "not-found", format!("No saga {id}.")))
}

/// Reads how many consumers a work queue has, on one broker connection opened when first
/// needed. A broker that cannot be reached is not asked again for a few seconds, so the
/// callers polling a saga are not each held up by it.
pub(crate) struct QueueWatch {
    bus: pvefleet_core::config::BusSettings,
    probe: tokio::sync::Mutex<Probing>,
}

#[derive(Default)]
struct Probing {
    probe: Option<pvefleet_core::bus::probe::Probe>,
    /// When the broker last could not be asked, and why.
    failed: Option<(tokio::time::Instant, String)>,
}

/// How long a failure to reach the broker is remembered.
const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// A limit on connecting to the broker, or asking it about a queue.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

impl QueueWatch {
    pub(crate) fn new(bus: pvefleet_core::config::BusSettings) -> Self {
        Self {
            bus,
            probe: tokio::sync::Mutex::new(Probing::default()),
        }
    }

    /// `Ok(Some(n))`: the queue has n consumers; `Ok(None)`: it does not exist; `Err`: the
    /// broker could not be asked.
    pub(crate) async fn consumers(&self, queue: &str) -> Result<Option<u32>, String> {
        let mut p = self.probe.lock().await;
        if let Some((at, why)) = &p.failed
            && at.elapsed() < QUIET_AFTER_FAILURE
        {
            return Err(why.clone());
        }
        if p.probe.is_none() {
            let connect = pvefleet_core::bus::probe::Probe::connect_with(&self.bus);
            match tokio::time::timeout(ASK_TIMEOUT, connect).await {
                Ok(Ok(probe)) => p.probe = Some(probe),
                Ok(Err(e)) => return Err(p.fail(format!("cannot reach RabbitMQ: {e}"))),
                Err(_) => return Err(p.fail("cannot reach RabbitMQ: timed out".into())),
            }
        }
        let Some(probe) = p.probe.as_ref() else {
            return Err("cannot reach RabbitMQ".into());
        };
        match tokio::time::timeout(ASK_TIMEOUT, probe.queue_info(queue)).await {
            Ok(Ok(info)) => {
                p.failed = None;
                Ok(info.map(|(_, consumers)| consumers))
            }
            Ok(Err(e)) => Err(p.fail(format!("cannot ask RabbitMQ: {e}"))),
            Err(_) => Err(p.fail("cannot ask RabbitMQ: timed out".into())),
        }
    }
}

impl Probing {
    /// Drops the connection (with its channels) and remembers why.
    fn fail(&mut self, why: String) -> String {
        self.probe = None;
        self.failed = Some((tokio::time::Instant::now(), why.clone()));
        why
    }
}

/// The step a saga is waiting on, if one is in flight: its command, how long it has been in
/// flight, how often it was sent, when the saga stops waiting for its answer, and the queue
/// that takes it with that queue's consumers (none: no service is running to take it).
async fn in_flight(st: &AppState, id: Uuid) -> Result<Value, Problem> {
    let client = st.pool.get().await.map_err(db_problem)?;
    let row = client
        .query_opt(
            "SELECT json_build_object('step', st.name, 'phase', st.phase, 'since', st.started_at,
                    'seconds', extract(epoch FROM now() - st.started_at)::float8, 'sends', st.sends,
                    'deadline', g.deadline, 'queue', NULL, 'consumers', NULL)
             FROM saga_steps st JOIN sagas g ON g.id = st.saga_id
             WHERE st.saga_id = $1 AND st.state = 'sent' AND g.state IN ('running', 'compensating')
             ORDER BY st.started_at DESC LIMIT 1",
            &[&id],
        )
        .await
        .map_err(db_problem)?;
    let Some(row) = row else {
        return Ok(Value::Null);
    };
    let mut v: Value = row.get(0);
    let step = v["step"].as_str().unwrap_or_default().to_string();
    if let Some(queue) = pvefleet_contracts::routing::command_queue(&step) {
        match st.queues.consumers(&queue).await {
            Ok(Some(n)) => v["consumers"] = n.into(),
            Ok(None) => v["consumers"] = 0.into(),
            Err(e) => v["consumers_error"] = e.into(),
        }
        v["queue"] = queue.into();
    }
    Ok(v)
}

/// A saga with its steps, and the step it is waiting on (`in_flight`, null when none).
#[utoipa::path(get, path = "/v1/sagas/{id}", responses((status = 200), (status = 404, body = Problem)))]
pub(crate) async fn get_saga(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::SITES_READ).await?;
    let id = parse_id(&id)?;
    tenancy::saga(&st.pool, &caller, id).await?;
    match saga_json(&st.pool, id).await? {
        Some(mut v) => {
            v["in_flight"] = in_flight(&st, id).await?;
            Ok(axum::Json(v).into_response())
        }
        None => {
            // Accepted by intake, not yet started by the coordinator: say so when none is
            // running to start it.
            let mut v = accepted_json(&st.pool, id).await?;
            let queue = pvefleet_contracts::routing::work_queue("saga");
            if let Ok(Some(0) | None) = st.queues.consumers(&queue).await {
                v["waiting"] = format!("No service consumes {queue}: is the saga coordinator running?").into();
            }
            Ok(axum::Json(v).into_response())
        }
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
    let caller = auth::require(&st, &headers, scopes::SITES_READ).await?;
    let id = parse_id(&id)?;
    // An unknown saga (or another owner's) is 404, not a stream of keep-alives.
    tenancy::saga(&st.pool, &caller, id).await?;
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
