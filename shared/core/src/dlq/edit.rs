//! Replaying an edited copy of a dead letter, checked against its message's schema first.

use crate::bus::envelope::Properties;
use crate::bus::{Outgoing, Publisher};
use pvefleet_contracts::headers;
use serde_json::{Value, json};
use uuid::Uuid;

use super::audit;

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
    actor: &super::Actor,
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
    crate::db::in_tx(client, async {
        client
            .execute(
                "UPDATE dead_letters SET state = 'resolved', replay_count = replay_count + 1, updated_at = now() WHERE id = $1",
                &[&id],
            )
            .await?;
        client
            .execute(
                "INSERT INTO dead_letter_replays (dead_letter_id, actor) VALUES ($1, $2)",
                &[&id, &actor.name],
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
    })
    .await?;
    Ok(copy_id)
}
