//! Moving dead letters between stores: exporting them as NDJSON and importing an export.

use crate::bus::envelope::Properties;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Filter, WHERE, audit};

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
pub async fn import(
    client: &tokio_postgres::Client,
    lines: &[String],
    actor: &super::Actor,
) -> anyhow::Result<(u64, u64)> {
    use base64::Engine as _;
    let (mut imported, mut skipped) = (0, 0);
    crate::db::in_tx(client, async {
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
                crate::bus::parked::park_id(&queue, &props, attempts, &body)
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
    })
    .await?;
    Ok((imported, skipped))
}
