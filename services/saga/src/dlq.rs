//! What operators do to dead letters (`pvefleet dlq ...`): list, group, show, replay, purge
//! and archive. Every action is written to `audit_log`.
//!
//! A replay republishes the stored message to its origin exchange and routing key with its
//! message id, properties and every header intact, plus `pvefleet-replay-of` (the dead
//! letter's id) and `pvefleet-replay-count`. The row becomes `replayed` and is kept. A dead
//! letter of a saga that is `suspended` on it puts the saga back to `running`, so the
//! replayed command's answer moves it on. One of a saga that has ended (failed, aborted,
//! superseded) is not replayed: that would act for a saga no one is following.

use std::time::Duration;

use pvefleet_contracts::headers;
use pvefleet_core::bus::envelope::Properties;
use pvefleet_core::bus::{Outgoing, Publisher};
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

/// The dead letters a filter selects, newest first: the summary columns.
pub async fn list(client: &tokio_postgres::Client, f: &Filter, limit: i64) -> anyhow::Result<Vec<Value>> {
    let sql = format!(
        "SELECT coalesce(json_agg(x ORDER BY x.parked_at DESC), '[]'::json) FROM (
             SELECT id, message_id, message_type, correlation_id, origin_queue AS queue, fault_class,
                    left(fault_message, 200) AS fault_message, fingerprint AS \"group\", state, replay_count,
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
                        (array_agg(left(fault_message, 200) ORDER BY parked_at DESC))[1] AS fault_message
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

/// Writes an operator action to `audit_log`.
pub async fn audit(
    client: &tokio_postgres::Client,
    actor: &str,
    action: &str,
    target: &str,
    detail: Value,
) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
            &[&actor, &action, &target, &detail],
        )
        .await?;
    Ok(())
}

/// A dead letter to replay.
struct Row {
    id: Uuid,
    message_id: String,
    correlation_id: Option<Uuid>,
    properties: Value,
    body: Vec<u8>,
    exchange: String,
    routing_key: String,
    replay_count: i32,
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    /// Republished (or, dry, selected).
    pub replayed: Vec<Uuid>,
    /// Left alone, with the reason.
    pub skipped: Vec<(Uuid, String)>,
}

/// Replays the dead letters `f` selects, at most `rate` a second when given; `progress` is
/// called after each with (done, total).
pub async fn replay(
    client: &tokio_postgres::Client,
    publisher: &Publisher,
    f: &Filter,
    actor: &str,
    dry_run: bool,
    rate: Option<f64>,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Replayed> {
    let sql = format!(
        "SELECT d.id, d.message_id, d.correlation_id, d.properties, d.body, d.origin_exchange, d.origin_routing_key,
                d.replay_count, g.state
         FROM (SELECT * FROM dead_letters WHERE {WHERE}) d LEFT JOIN sagas g ON g.id = d.correlation_id
         ORDER BY d.parked_at"
    );
    let rows = client.query(&sql, &filter_params!(f)).await?;
    let mut out = Replayed::default();
    let mut todo = Vec::new();
    for r in rows {
        let saga_state: Option<String> = r.get(8);
        let id: Uuid = r.get(0);
        if let Some(state) = saga_state.filter(|s| matches!(s.as_str(), "failed" | "superseded" | "completed")) {
            out.skipped.push((
                id,
                format!("its saga is {state}; replaying would act for a saga that has ended"),
            ));
            continue;
        }
        todo.push(Row {
            id,
            message_id: r.get(1),
            correlation_id: r.get(2),
            properties: r.get(3),
            body: r.get(4),
            exchange: r.get(5),
            routing_key: r.get(6),
            replay_count: r.get(7),
        });
    }
    if dry_run {
        out.replayed = todo.iter().map(|r| r.id).collect();
        return Ok(out);
    }
    let total = todo.len();
    // Unpaced, dead letters go in chunks: one transaction and concurrent confirmed publishes
    // per chunk. Paced, one at a time.
    let (chunk, gap) = match rate.filter(|r| *r > 0.0) {
        Some(r) => (1, Some(Duration::from_secs_f64(1.0 / r))),
        None => (CHUNK, None),
    };
    let started = tokio::time::Instant::now();
    let mut done = 0usize;
    let mut rows = todo.into_iter().peekable();
    while rows.peek().is_some() {
        let batch: Vec<Row> = rows.by_ref().take(chunk).collect();
        if let Some(gap) = gap {
            tokio::time::sleep_until(started + gap * done as u32).await;
        }
        replay_chunk(client, publisher, actor, &batch).await?;
        done += batch.len();
        out.replayed.extend(batch.iter().map(|r| r.id));
        metrics::counter!("pvefleet_dead_letters_replayed_total").increment(batch.len() as u64);
        progress(done, total);
    }
    Ok(out)
}

/// Dead letters replayed in one transaction.
const CHUNK: usize = 250;

/// Republishes `batch` and records it, in one transaction: the rows become `replayed`, sagas
/// suspended on them run again, the history and the audit get their rows. The publishes go out
/// before the commit, so a failed one rolls the chunk back to parked (a replay may repeat; the
/// consumers' inbox and idempotent handlers absorb that, a lost one could not be).
async fn replay_chunk(
    client: &tokio_postgres::Client,
    publisher: &Publisher,
    actor: &str,
    batch: &[Row],
) -> anyhow::Result<()> {
    let mut messages = Vec::with_capacity(batch.len());
    for row in batch {
        // The copy is a new delivery: parked again, it is a new parking with a new park id.
        let props = Properties::from_stored(&row.properties)?
            .without_headers(&[headers::fault::PARK_ID])
            .with_header(headers::replay::OF, row.id.to_string())
            .with_header(headers::replay::COUNT, i64::from(row.replay_count + 1));
        messages.push(Outgoing {
            exchange: row.exchange.clone(),
            routing_key: row.routing_key.clone(),
            mandatory: true,
            properties: props,
            body: bytes::Bytes::from(row.body.clone()),
        });
    }
    let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
    let (sagas, saga_dls): (Vec<Uuid>, Vec<String>) = batch
        .iter()
        .filter_map(|r| r.correlation_id.map(|c| (c, r.id.to_string())))
        .unzip();
    client.batch_execute("BEGIN").await?;
    let work = async {
        // A saga suspended on this dead letter runs again: the replayed command's answer moves it on.
        client
            .execute(
                "UPDATE sagas g SET state = CASE g.state WHEN 'suspended' THEN 'running' ELSE 'compensating' END,
                     error = NULL, resends = 0, version = g.version + 1, updated_at = now(),
                     deadline = now() + interval '15 minutes'
                 FROM unnest($1::uuid[], $2::text[]) AS u(saga, dead_letter)
                 WHERE g.id = u.saga AND g.state IN ('suspended', 'compensation_failed')
                   AND g.error->>'dead_letter_id' = u.dead_letter",
                &[&sagas, &saga_dls],
            )
            .await?;
        client
            .execute(
                "UPDATE dead_letters SET state = 'replayed', replay_count = replay_count + 1, updated_at = now()
                 WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
        client
            .execute(
                "INSERT INTO dead_letter_replays (dead_letter_id, actor) SELECT unnest($1::uuid[]), $2",
                &[&ids, &actor],
            )
            .await?;
        let target = if ids.len() == 1 {
            ids[0].to_string()
        } else {
            format!("{} dead letters", ids.len())
        };
        let message_ids: Vec<&str> = batch.iter().map(|r| r.message_id.as_str()).collect();
        audit(
            client,
            actor,
            "dlq.replay",
            &target,
            json!({ "ids": ids, "message_ids": message_ids }),
        )
        .await?;
        let published = futures::future::join_all(messages.iter().map(|m| publisher.publish(m))).await;
        if let Some((row, Err(e))) = batch.iter().zip(published).find(|(_, r)| r.is_err()) {
            anyhow::bail!("cannot republish dead letter {}: {e}", row.id);
        }
        anyhow::Ok(())
    }
    .await;
    match work {
        Ok(()) => {
            client.batch_execute("COMMIT").await?;
            Ok(())
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Sets the dead letters `f` selects to `archived` (kept, out of the way) or deletes them
/// (`purge`); returns how many.
pub async fn retire(client: &tokio_postgres::Client, f: &Filter, actor: &str, purge: bool) -> anyhow::Result<u64> {
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

/// Why an edited body was refused.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The body does not match the message's schema (the errors, one per line).
    #[error("the edited body does not match {schema}:\n{errors}")]
    Invalid { schema: String, errors: String },
    /// Something else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Replays a copy of dead letter `id` with `body` instead of its own: checked against the
/// message type's schema first (a refused edit changes nothing), then published with a new
/// message id and the original's other properties and headers, plus `pvefleet-replay-of`
/// naming the original, which becomes `resolved`. Returns the copy's message id.
pub async fn edit(
    client: &tokio_postgres::Client,
    publisher: &Publisher,
    id: Uuid,
    body: &[u8],
    actor: &str,
) -> Result<String, EditError> {
    let row = client
        .query_opt(
            "SELECT message_type, properties, origin_exchange, origin_routing_key, state, replay_count
             FROM dead_letters WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(anyhow::Error::from)?
        .ok_or_else(|| anyhow::anyhow!("no dead letter {id}"))?;
    let (mtype, props, exchange, routing_key, state, replays): (Option<String>, Value, String, String, String, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
    if state != "parked" {
        return Err(anyhow::anyhow!("dead letter {id} is {state}, not parked").into());
    }
    let mtype = mtype.ok_or_else(|| anyhow::anyhow!("dead letter {id} has no type to check an edit against"))?;
    let info = pvefleet_contracts::registry::find_latest(&mtype)
        .ok_or_else(|| anyhow::anyhow!("'{mtype}' is not a message type of the contract"))?;
    let json: Value = serde_json::from_slice(body).map_err(|e| EditError::Invalid {
        schema: info.schema_file(),
        errors: format!("  not JSON: {e}"),
    })?;
    let validator = jsonschema::validator_for(&info.schema())
        .map_err(|e| anyhow::anyhow!("the schema of {mtype} does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| {
            let path = e.instance_path().to_string();
            format!("  {}: {e}", if path.is_empty() { "/".into() } else { path })
        })
        .collect();
    if !errors.is_empty() {
        return Err(EditError::Invalid {
            schema: info.schema_file(),
            errors: errors.join("\n"),
        });
    }
    let copy_id = Uuid::now_v7().to_string();
    let mut props = Properties::from_stored(&props)
        .map_err(anyhow::Error::from)?
        .without_headers(&[headers::fault::PARK_ID])
        .with_header(headers::replay::OF, id.to_string())
        .with_header(headers::replay::COUNT, i64::from(replays + 1));
    props.message_id = Some(copy_id.clone());
    let msg = Outgoing {
        exchange,
        routing_key,
        mandatory: true,
        properties: props,
        body: bytes::Bytes::copy_from_slice(body),
    };
    client.batch_execute("BEGIN").await.map_err(anyhow::Error::from)?;
    let work = async {
        client
            .execute(
                "UPDATE dead_letters SET state = 'resolved', replay_count = replay_count + 1, updated_at = now() WHERE id = $1",
                &[&id],
            )
            .await?;
        client
            .execute(
                "INSERT INTO dead_letter_replays (dead_letter_id, actor) VALUES ($1, $2)",
                &[&id, &actor],
            )
            .await?;
        audit(
            client,
            actor,
            "dlq.edit",
            &id.to_string(),
            json!({ "copy_message_id": copy_id }),
        )
        .await?;
        publisher
            .publish(&msg)
            .await
            .map_err(|e| anyhow::anyhow!("cannot publish the edited copy: {e}"))?;
        anyhow::Ok(())
    }
    .await;
    match work {
        Ok(()) => {
            client.batch_execute("COMMIT").await.map_err(anyhow::Error::from)?;
            Ok(copy_id)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e.into())
        }
    }
}

/// The dead letters `f` selects as NDJSON lines: every stored column, the body in base64.
pub async fn export(client: &tokio_postgres::Client, f: &Filter) -> anyhow::Result<Vec<String>> {
    use base64::Engine as _;
    let rows = client
        .query(
            &format!(
                "SELECT id, message_id, attempts, generation, message_type, correlation_id, properties, body,
                        origin_exchange, origin_routing_key, origin_queue, fault_class, fault_message,
                        first_failure, last_failure, x_death, fingerprint, state, replay_count, parked_at::text, park_id
                 FROM dead_letters WHERE {WHERE} ORDER BY parked_at"
            ),
            &filter_params!(f),
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, Uuid>(0), "message_id": r.get::<_, String>(1), "attempts": r.get::<_, i64>(2),
                "generation": r.get::<_, i64>(3), "message_type": r.get::<_, Option<String>>(4),
                "correlation_id": r.get::<_, Option<Uuid>>(5), "properties": r.get::<_, Value>(6),
                "body": base64::engine::general_purpose::STANDARD.encode(r.get::<_, Vec<u8>>(7)),
                "origin_exchange": r.get::<_, String>(8), "origin_routing_key": r.get::<_, String>(9),
                "origin_queue": r.get::<_, String>(10), "fault_class": r.get::<_, String>(11),
                "fault_message": r.get::<_, String>(12), "first_failure": r.get::<_, Option<String>>(13),
                "last_failure": r.get::<_, Option<String>>(14), "x_death": r.get::<_, Option<Value>>(15),
                "fingerprint": r.get::<_, String>(16), "state": r.get::<_, String>(17),
                "replay_count": r.get::<_, i32>(18), "parked_at": r.get::<_, String>(19),
                "park_id": r.get::<_, Uuid>(20),
            })
            .to_string()
        })
        .collect())
}

/// Stores exported NDJSON lines as parked dead letters here; one already stored (the same
/// park id) is skipped. Returns (imported, skipped).
pub async fn import(client: &tokio_postgres::Client, lines: &[String], actor: &str) -> anyhow::Result<(u64, u64)> {
    use base64::Engine as _;
    let (mut imported, mut skipped) = (0, 0);
    client.batch_execute("BEGIN").await?;
    let work = async {
        for (n, line) in lines.iter().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("line {}: not JSON: {e}", n + 1))?;
            let s = |k: &str| v[k].as_str().map(str::to_string);
            let body = base64::engine::general_purpose::STANDARD
                .decode(v["body"].as_str().unwrap_or_default())
                .map_err(|e| anyhow::anyhow!("line {}: body is not base64: {e}", n + 1))?;
            let message_id = s("message_id").ok_or_else(|| anyhow::anyhow!("line {}: no message_id", n + 1))?;
            let correlation: Option<Uuid> = s("correlation_id").and_then(|c| c.parse().ok());
            let attempts = v["attempts"].as_i64().unwrap_or(1);
            // An export of an older store has no park id: one is derived as the keeper would.
            let park_id = s("park_id").and_then(|p| p.parse::<Uuid>().ok()).unwrap_or_else(|| {
                let props = Properties::from_stored(&v["properties"]).unwrap_or_default();
                let queue = s("origin_queue").unwrap_or_default();
                pvefleet_core::bus::parked::park_id(&queue, &props, attempts, &body)
            });
            let done = client
                .execute(
                    "INSERT INTO dead_letters (id, message_id, attempts, generation, message_type, correlation_id,
                         properties, body, origin_exchange, origin_routing_key, origin_queue, fault_class,
                         fault_message, first_failure, last_failure, x_death, fingerprint, park_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
                     ON CONFLICT (park_id) DO NOTHING",
                    &[
                        &Uuid::now_v7(),
                        &message_id,
                        &attempts,
                        &v["generation"].as_i64().unwrap_or(0),
                        &s("message_type"),
                        &correlation,
                        &v["properties"],
                        &body,
                        &s("origin_exchange").unwrap_or_default(),
                        &s("origin_routing_key").unwrap_or_default(),
                        &s("origin_queue").unwrap_or_default(),
                        &s("fault_class").unwrap_or_else(|| "imported".into()),
                        &s("fault_message").unwrap_or_default(),
                        &s("first_failure"),
                        &s("last_failure"),
                        &v.get("x_death").filter(|x| !x.is_null()).cloned(),
                        &s("fingerprint").unwrap_or_else(|| "imported".into()),
                        &park_id,
                    ],
                )
                .await?;
            if done == 1 {
                imported += 1;
            } else {
                skipped += 1;
            }
        }
        audit(
            client,
            actor,
            "dlq.import",
            &format!("{imported} dead letters"),
            json!({ "imported": imported, "skipped": skipped }),
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    match work {
        Ok(()) => {
            client.batch_execute("COMMIT").await?;
            Ok((imported, skipped))
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}
