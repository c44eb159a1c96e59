//! Replaying dead letters: republished to their origin with the replay headers, in chunks
//! (or paced), each chunk one transaction with the sagas suspended on them.

use std::time::Duration;

use crate::bus::envelope::Properties;
use crate::bus::{Outgoing, Publisher};
use pvefleet_contracts::headers;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Filter, WHERE, audit};

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
    actor: &super::Actor,
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
    actor: &super::Actor,
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
    crate::db::in_tx(client, async {
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
                &[&ids, &actor.name],
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
    })
    .await
}
