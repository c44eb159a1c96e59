//! The engine's SQL: sagas, their timeline (`saga_steps`) and the correlation ids their steps
//! answer on. Every function runs on the caller's transaction.

use pvefleet_core::db::Sql;
use serde_json::Value;
use tokio_postgres::Error;
use uuid::Uuid;

use super::{Kind, Phase, State};

/// A saga row as stored.
#[derive(Debug, Clone)]
pub struct Row {
    /// Its id.
    pub id: Uuid,
    /// Its kind, as stored.
    pub kind: String,
    /// Its state, as stored.
    pub state: String,
    /// The index of the step in flight.
    pub step: i32,
    /// The site, if any.
    pub site_id: Option<Uuid>,
    /// Progress and the kind's data.
    pub data: Value,
    /// Why it stopped, when it did.
    pub error: Option<Value>,
    /// Sends of the step in flight since its deadline was last set.
    pub step_sends: i32,
}

const COLUMNS: &str = "id, kind, state, step, site_id, data, error, step_sends";

fn row(r: &tokio_postgres::Row) -> Row {
    Row {
        id: r.get(0),
        kind: r.get(1),
        state: r.get(2),
        step: r.get(3),
        site_id: r.get(4),
        data: r.get(5),
        error: r.get(6),
        step_sends: r.get(7),
    }
}

/// Records a new saga; `false` when one with the id exists (a redelivered start).
pub async fn insert(
    db: &dyn Sql,
    id: Uuid,
    kind: Kind,
    site: Option<Uuid>,
    state: State,
    data: &Value,
) -> Result<bool, Error> {
    let n = db
        .exec(
            "INSERT INTO sagas (id, kind, site_id, state, step, data) VALUES ($1, $2, $3, $4, 0, $5)
             ON CONFLICT (id) DO NOTHING",
            &[&id, &kind.as_str(), &site, &state.as_str(), data],
        )
        .await?;
    Ok(n == 1)
}

/// Records the correlation ids the saga's steps answer on (their own operation ids).
pub async fn correlate(db: &dyn Sql, saga: Uuid, ids: &[Uuid]) -> Result<(), Error> {
    if ids.is_empty() {
        return Ok(());
    }
    db.exec(
        "INSERT INTO saga_correlations (correlation, saga_id) SELECT unnest($1::uuid[]), $2 ON CONFLICT DO NOTHING",
        &[&ids, &saga],
    )
    .await?;
    Ok(())
}

/// The saga with id `id`, locked for the transition.
pub async fn lock(db: &dyn Sql, id: Uuid) -> Result<Option<Row>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM sagas WHERE id = $1 FOR UPDATE");
    Ok(db.opt(&sql, &[&id]).await?.as_ref().map(row))
}

/// The saga an event with correlation id `c` belongs to (the saga's own id, or one its steps
/// answer on), locked.
pub async fn lock_by_correlation(db: &dyn Sql, c: Uuid) -> Result<Option<Row>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM sagas WHERE id = COALESCE(
             (SELECT id FROM sagas WHERE id = $1),
             (SELECT saga_id FROM saga_correlations WHERE correlation = $1))
         FOR UPDATE"
    );
    Ok(db.opt(&sql, &[&c]).await?.as_ref().map(row))
}

/// Saves a transition.
pub async fn save(db: &dyn Sql, id: Uuid, state: State, step: usize, data: &Value) -> Result<(), Error> {
    db.exec(
        "UPDATE sagas SET state = $2, step = $3, data = $4, version = version + 1, updated_at = now() WHERE id = $1",
        &[&id, &state.as_str(), &(step as i32), data],
    )
    .await?;
    Ok(())
}

/// Saves a transition, with forward step `done` marked done in the timeline, in one statement.
pub async fn save_done(
    db: &dyn Sql,
    id: Uuid,
    state: State,
    step: usize,
    data: &Value,
    done: &str,
) -> Result<(), Error> {
    db.exec(
        "WITH done AS (
             UPDATE saga_steps SET state = 'done', finished_at = now(), error = NULL
             WHERE saga_id = $1 AND name = $5 AND phase = 'forward' RETURNING 1)
         UPDATE sagas SET state = $2, step = $3, data = $4, version = version + 1, updated_at = now() WHERE id = $1",
        &[&id, &state.as_str(), &(step as i32), data, &done],
    )
    .await?;
    Ok(())
}

/// The timeline row of a step just sent, and the deadline by which its answer is due (the
/// deadline scan re-sends it after that), in one statement.
pub async fn sent(db: &dyn Sql, saga: Uuid, command: &str, phase: Phase, timeout_secs: f64) -> Result<(), Error> {
    db.exec(
        "WITH step AS (
             INSERT INTO saga_steps (saga_id, name, phase, state) VALUES ($1, $2, $3, 'sent')
             ON CONFLICT (saga_id, name, phase) DO UPDATE SET state = 'sent', started_at = now(), finished_at = NULL,
                 error = NULL, sends = saga_steps.sends + 1
             RETURNING 1)
         UPDATE sagas SET deadline = now() + $4 * interval '1 second', step_sends = 0 WHERE id = $1",
        &[&saga, &command, &phase.as_str(), &timeout_secs],
    )
    .await?;
    Ok(())
}

/// A re-send of the step in flight: its send is counted and its deadline set again.
pub async fn resent(
    db: &dyn Sql,
    saga: Uuid,
    command: &str,
    phase: Phase,
    timeout_secs: f64,
    sends: i32,
) -> Result<(), Error> {
    db.exec(
        "WITH step AS (
             UPDATE saga_steps SET sends = sends + 1 WHERE saga_id = $1 AND name = $2 AND phase = $3 RETURNING 1)
         UPDATE sagas SET deadline = now() + $4 * interval '1 second', step_sends = $5, updated_at = now() WHERE id = $1",
        &[&saga, &command, &phase.as_str(), &timeout_secs, &sends],
    )
    .await?;
    Ok(())
}

/// Ends a step in the timeline, failed when there is an error.
pub async fn finished(
    db: &dyn Sql,
    saga: Uuid,
    command: &str,
    phase: Phase,
    error: Option<&Value>,
) -> Result<(), Error> {
    let state = if error.is_some() { "failed" } else { "done" };
    db.exec(
        "UPDATE saga_steps SET state = $4, finished_at = now(), error = $5 WHERE saga_id = $1 AND name = $2 AND phase = $3",
        &[&saga, &command, &phase.as_str(), &state, &error],
    )
    .await?;
    Ok(())
}

/// Stops a saga in `state` with `error`, its deadline cleared.
pub async fn stop(db: &dyn Sql, id: Uuid, state: State, error: &Value) -> Result<(), Error> {
    db.exec(
        "UPDATE sagas SET state = $2, error = $3, deadline = NULL, version = version + 1, updated_at = now() WHERE id = $1",
        &[&id, &state.as_str(), error],
    )
    .await?;
    Ok(())
}

/// Counts one more re-send of a failing step; returns the count.
pub async fn bump_resends(db: &dyn Sql, id: Uuid) -> Result<i32, Error> {
    Ok(db
        .one(
            "UPDATE sagas SET resends = resends + 1, updated_at = now() WHERE id = $1 RETURNING resends",
            &[&id],
        )
        .await?
        .get(0))
}

/// Starts the count of re-sends again (a step succeeded, or an operator stepped in).
pub async fn reset_resends(db: &dyn Sql, id: Uuid) -> Result<(), Error> {
    db.exec("UPDATE sagas SET resends = 0, error = NULL WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

/// Sagas past their deadline, locked and skipped by other scanners, at most `limit`.
pub async fn overdue(db: &dyn Sql, limit: i64) -> Result<Vec<Row>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM sagas WHERE state IN ('running', 'compensating') AND deadline <= now()
         ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED"
    );
    Ok(db.rows(&sql, &[&limit]).await?.iter().map(row).collect())
}

/// Clears a saga's deadline (nothing to wait for).
pub async fn clear_deadline(db: &dyn Sql, id: Uuid) -> Result<(), Error> {
    db.exec("UPDATE sagas SET deadline = NULL WHERE id = $1", &[&id])
        .await?;
    Ok(())
}
