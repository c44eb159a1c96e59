//! What operators do to dead letters (`pvefleet dlq ...`): list, group, show, replay, purge
//! and archive. Every action is written to `audit_log`.
//!
//! A replay republishes the stored message to its origin exchange and routing key with its
//! message id, properties and every header intact, plus `pvefleet-replay-of` (the dead
//! letter's id) and `pvefleet-replay-count`. The row becomes `replayed` and is kept. A dead
//! letter of a saga that is `suspended` on it puts the saga back to `running`, so the
//! replayed command's answer moves it on. One of a saga that has ended (failed, aborted,
//! superseded) is not replayed: that would act for a saga no one is following.

pub use crate::audit::Actor;

/// Every state a dead letter can be in.
pub const STATES: &[&str] = &["parked", "replayed", "resolved", "archived"];
use crate::bus::envelope::Properties;
use serde_json::{Value, json};
use uuid::Uuid;

/// Which dead letters an operation takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// One dead letter.
    pub id: Option<Uuid>,
    /// Its fingerprint.
    pub group: Option<String>,
    /// The queue it was parked from.
    pub queue: Option<String>,
    /// Its message type.
    pub message_type: Option<String>,
    /// Its correlation id.
    pub correlation_id: Option<Uuid>,
    /// Parked at or after (RFC 3339).
    pub since: Option<String>,
    /// Parked before (RFC 3339).
    pub until: Option<String>,
    /// Its state; `parked` unless given.
    pub state: Option<String>,
}

const WHERE: &str = "($1::uuid IS NULL OR id = $1)
    AND ($2::text IS NULL OR fingerprint = $2)
    AND ($3::text IS NULL OR origin_queue = $3)
    AND ($4::text IS NULL OR message_type = $4)
    AND ($5::uuid IS NULL OR correlation_id = $5)
    AND ($6::text IS NULL OR parked_at >= $6::timestamptz)
    AND ($7::text IS NULL OR parked_at < $7::timestamptz)
    AND state = coalesce($8::text, 'parked')";

macro_rules! filter_params {
    ($f:expr) => {
        [
            &$f.id as &(dyn tokio_postgres::types::ToSql + Sync),
            &$f.group,
            &$f.queue,
            &$f.message_type,
            &$f.correlation_id,
            &$f.since,
            &$f.until,
            &$f.state,
        ]
    };
}

mod edit;
mod replay;
mod transfer;

pub use edit::{EditError, edit};
pub use replay::{Replayed, replay};
pub use transfer::{export, import};

/// The dead letters a filter selects, newest first: the summary columns.
pub async fn list(client: &tokio_postgres::Client, f: &Filter, limit: i64) -> anyhow::Result<Vec<Value>> {
    let sql = format!(
        "SELECT coalesce(json_agg(x ORDER BY x.parked_at DESC), '[]'::json) FROM (
             SELECT id, message_id, message_type, correlation_id, origin_queue AS queue, fault_class,
                    fault_message, fingerprint AS \"group\", state, replay_count,
                    attempts, parked_at
             FROM dead_letters WHERE {WHERE} ORDER BY parked_at DESC LIMIT {limit}) x"
    );
    let row = client.query_one(&sql, &filter_params!(f)).await?;
    let v: Value = row.get(0);
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Counts per fingerprint of parked dead letters, with the newest example of each.
pub async fn groups(client: &tokio_postgres::Client) -> anyhow::Result<Vec<Value>> {
    let row = client
        .query_one(
            "SELECT coalesce(json_agg(g ORDER BY g.count DESC), '[]'::json) FROM (
                 SELECT fingerprint AS \"group\", count(*) AS count, max(parked_at) AS newest,
                        (array_agg(id ORDER BY parked_at DESC))[1] AS example,
                        (array_agg(fault_message ORDER BY parked_at DESC))[1] AS fault_message
                 FROM dead_letters WHERE state = 'parked' GROUP BY fingerprint) g",
            &[],
        )
        .await?;
    let v: Value = row.get(0);
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// One dead letter: properties, headers, the body (as JSON when it is), the fault and its
/// replay history.
pub async fn show(client: &tokio_postgres::Client, id: Uuid) -> anyhow::Result<Option<Value>> {
    let Some(row) = client
        .query_opt(
            "SELECT json_build_object('id', d.id, 'message_id', d.message_id, 'message_type', d.message_type,
                 'correlation_id', d.correlation_id, 'properties', d.properties,
                 'origin', json_build_object('exchange', d.origin_exchange, 'routing_key', d.origin_routing_key, 'queue', d.origin_queue),
                 'fault', json_build_object('class', d.fault_class, 'message', d.fault_message, 'attempts', d.attempts,
                     'first_failure', d.first_failure, 'last_failure', d.last_failure, 'x_death', d.x_death),
                 'group', d.fingerprint, 'state', d.state, 'replay_count', d.replay_count, 'parked_at', d.parked_at,
                 'replays', coalesce((SELECT json_agg(json_build_object('actor', r.actor, 'at', r.replayed_at) ORDER BY r.id)
                     FROM dead_letter_replays r WHERE r.dead_letter_id = d.id), '[]'::json)), d.body
             FROM dead_letters d WHERE d.id = $1",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut v: Value = row.get(0);
    // Headers as they were published (strings, numbers, tables), not as stored.
    if let Ok(p) = Properties::from_stored(&v["properties"]) {
        let mut shown = serde_json::to_value(&p).unwrap_or(Value::Null);
        if let Some(o) = shown.as_object_mut() {
            o.remove("v");
            o.insert("headers".into(), p.plain_headers());
        }
        v["properties"] = shown;
    }
    let body: Vec<u8> = row.get(1);
    v["body"] = match serde_json::from_slice::<Value>(&body) {
        Ok(json) => json,
        Err(_) => json!(String::from_utf8_lossy(&body)),
    };
    Ok(Some(v))
}

/// Writes an operator action on dead letters to `audit_log`.
pub async fn audit(
    client: &tokio_postgres::Client,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: Value,
) -> anyhow::Result<()> {
    crate::audit::record(client, actor, &crate::audit::Entry::new(action, target).detail(detail)).await?;
    Ok(())
}

/// Sets the dead letters `f` selects to `archived` (kept, out of the way) or deletes them
/// (`purge`); returns how many.
pub async fn retire(client: &tokio_postgres::Client, f: &Filter, actor: &Actor, purge: bool) -> anyhow::Result<u64> {
    client.batch_execute("BEGIN").await?;
    let work = async {
        let ids: Vec<Uuid> = client
            .query(
                &format!("SELECT id FROM dead_letters WHERE {WHERE}"),
                &filter_params!(f),
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let n = if purge {
            client
                .execute(
                    "DELETE FROM dead_letter_replays WHERE dead_letter_id = ANY($1)",
                    &[&ids],
                )
                .await?;
            client
                .execute("DELETE FROM dead_letters WHERE id = ANY($1)", &[&ids])
                .await?
        } else {
            client
                .execute(
                    "UPDATE dead_letters SET state = 'archived', updated_at = now() WHERE id = ANY($1)",
                    &[&ids],
                )
                .await?
        };
        let action = if purge { "dlq.purge" } else { "dlq.archive" };
        audit(
            client,
            actor,
            action,
            &format!("{} dead letters", ids.len()),
            json!({ "ids": ids }),
        )
        .await?;
        anyhow::Ok(n)
    }
    .await;
    match work {
        Ok(n) => {
            client.batch_execute("COMMIT").await?;
            Ok(n)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}
