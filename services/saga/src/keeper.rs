//! The dead-letter keeper (DESIGN.md §3): consumes `pvefleet.parked` and stores each message
//! in `dead_letters`, byte for byte: the full AMQP properties with every header, the body, the
//! origin exchange, routing key and queue, and the fault (pvefleet's fault headers, or the
//! broker's `x-death` for a broker dead letter), with a fingerprint to group by.
//!
//! The row and its `message.parked` event (through the outbox) commit in one transaction, and
//! the delivery is acked only after: a keeper killed at any point loses nothing, and the
//! redelivered message meets the unique (message id, attempt, replay generation) and is
//! stored once.

use std::sync::Arc;

use futures::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use pvefleet_contracts::headers;
use pvefleet_contracts::messages::MessageParked;
use pvefleet_contracts::routing::PARKED_QUEUE;
use pvefleet_core::bus::fields::{header_i64, header_str, message_type};
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::{Outgoing, topology::Topology};
use pvefleet_core::config::BusSettings;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What the keeper read from a parked message.
#[derive(Debug, Clone)]
pub struct Parked {
    pub message_id: String,
    pub attempts: i64,
    /// Replays this copy has been through.
    pub generation: i64,
    pub message_type: Option<String>,
    pub correlation_id: Option<Uuid>,
    pub origin_exchange: String,
    pub origin_routing_key: String,
    pub origin_queue: String,
    pub fault_class: String,
    pub fault_message: String,
    pub first_failure: Option<String>,
    pub last_failure: Option<String>,
    pub x_death: Option<Value>,
}

/// A message for grouping: lower case, numbers and ids folded, so the same fault on different
/// containers groups together.
pub fn normalise(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_number = false;
    for c in message.chars().take(300) {
        if c.is_ascii_hexdigit() && (c.is_ascii_digit() || in_number) {
            if !in_number {
                out.push('#');
                in_number = true;
            }
        } else {
            in_number = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// `type/class/hash of the normalised message`.
pub fn fingerprint(message_type: Option<&str>, class: &str, message: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, normalise(message).as_bytes());
    let hash: String = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}/{class}/{hash}", message_type.unwrap_or("untyped"))
}

fn x_death(props: &lapin::BasicProperties) -> Option<Value> {
    let table = props.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = table.inner().get("x-death")? else {
        return None;
    };
    let out: Vec<Value> = deaths
        .as_slice()
        .iter()
        .filter_map(|d| match d {
            AMQPValue::FieldTable(t) => Some(table_json(t)),
            _ => None,
        })
        .collect();
    Some(Value::Array(out))
}

fn table_json(t: &FieldTable) -> Value {
    let mut map = serde_json::Map::new();
    for (k, v) in t.inner() {
        map.insert(k.as_str().to_string(), value_json(v));
    }
    Value::Object(map)
}

fn value_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongLongInt(i) => json!(i),
        AMQPValue::LongInt(i) => json!(i),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => table_json(t),
        other => json!(format!("{other:?}")),
    }
}

/// Reads what a parked delivery says about itself.
pub fn read(d: &Delivery) -> Parked {
    let p = &d.properties;
    let death = x_death(p);
    let first_death = death.as_ref().and_then(|v| v.get(0).cloned()).unwrap_or(Value::Null);
    let broker = header_str(p, headers::fault::CLASS).is_none();
    let (class, message, attempts, queue, exchange, routing_key) = if broker {
        // A broker dead letter (delivery limit, expiry, rejection without requeue).
        let reason = first_death["reason"].as_str().unwrap_or("unknown").to_string();
        let queue = first_death["queue"].as_str().unwrap_or_default().to_string();
        let exchange = first_death["exchange"].as_str().unwrap_or_default().to_string();
        let key = first_death["routing-keys"][0].as_str().unwrap_or_default().to_string();
        let count = first_death["count"].as_i64().unwrap_or(1);
        (
            format!("broker-{reason}"),
            format!("the broker dead-lettered it from {queue}: {reason} (x-death count {count})"),
            count,
            queue,
            exchange,
            key,
        )
    } else {
        (
            header_str(p, headers::fault::CLASS).unwrap_or_default(),
            header_str(p, headers::fault::MESSAGE).unwrap_or_default(),
            header_i64(p, headers::fault::ATTEMPTS).unwrap_or(1),
            header_str(p, headers::fault::ORIGIN_QUEUE).unwrap_or_else(|| d.routing_key.as_str().to_string()),
            header_str(p, headers::fault::ORIGIN_EXCHANGE).unwrap_or_default(),
            header_str(p, headers::fault::ORIGIN_ROUTING_KEY).unwrap_or_default(),
        )
    };
    Parked {
        message_id: p
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_string())
            .unwrap_or_else(|| format!("no-id-{}", d.delivery_tag)),
        attempts,
        generation: header_i64(p, headers::replay::COUNT).unwrap_or(0),
        message_type: message_type(p),
        correlation_id: p.correlation_id().as_ref().and_then(|c| c.as_str().parse().ok()),
        origin_exchange: exchange,
        origin_routing_key: routing_key,
        origin_queue: queue,
        fault_class: class,
        fault_message: message,
        first_failure: header_str(p, headers::fault::FIRST_FAILURE),
        last_failure: header_str(p, headers::fault::LAST_FAILURE),
        x_death: death,
    }
}

/// Stores one parked delivery and queues its `message.parked`, in one transaction. Returns
/// the dead letter's id, or `None` when the same message and attempt was stored before.
pub async fn store(pool: &deadpool_postgres::Pool, d: &Delivery) -> anyhow::Result<Option<Uuid>> {
    let parked = read(d);
    let properties = serde_json::to_value(&d.properties)?;
    let group = fingerprint(
        parked.message_type.as_deref(),
        &parked.fault_class,
        &parked.fault_message,
    );
    let id = Uuid::now_v7();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let inserted = tx
        .query_opt(
            "INSERT INTO dead_letters (id, message_id, attempts, message_type, correlation_id, properties, body,
                 origin_exchange, origin_routing_key, origin_queue, fault_class, fault_message,
                 first_failure, last_failure, x_death, fingerprint, generation)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
             ON CONFLICT (message_id, attempts, generation) DO NOTHING RETURNING id",
            &[
                &id,
                &parked.message_id,
                &parked.attempts,
                &parked.message_type,
                &parked.correlation_id,
                &properties,
                &d.data,
                &parked.origin_exchange,
                &parked.origin_routing_key,
                &parked.origin_queue,
                &parked.fault_class,
                &parked.fault_message,
                &parked.first_failure,
                &parked.last_failure,
                &parked.x_death,
                &group,
                &parked.generation,
            ],
        )
        .await?;
    if inserted.is_none() {
        tx.commit().await?;
        return Ok(None);
    }
    let event = MessageParked {
        dead_letter_id: id,
        message_type: parked.message_type.clone(),
        correlation_id: parked.correlation_id,
        queue: parked.origin_queue.clone(),
        group,
        fault_class: parked.fault_class.clone(),
    };
    let origin = Origin {
        correlation_id: parked.correlation_id,
        causation_id: Some(parked.message_id.clone()),
        app_id: Some("dead-letter-keeper".into()),
        ..Origin::default()
    };
    let out = Outgoing::message(&event, &origin)?;
    pvefleet_core::db::outbox::enqueue(&tx, &out).await?;
    tx.commit().await?;
    metrics::counter!(
        "pvefleet_dead_letters_stored_total",
        "queue" => parked.origin_queue,
        "type" => parked.message_type.unwrap_or_default()
    )
    .increment(1);
    Ok(Some(id))
}

/// Consumes `pvefleet.parked` until `shutdown`, reconnecting when the broker goes away.
pub async fn run(
    bus: BusSettings,
    topology: Topology,
    pool: deadpool_postgres::Pool,
    relay: Option<Arc<Notify>>,
    shutdown: CancellationToken,
) {
    let gauge = tokio::spawn(parked_gauge(pool.clone(), shutdown.clone()));
    while !shutdown.is_cancelled() {
        if let Err(e) = consume(&bus, &topology, &pool, relay.as_deref(), &shutdown).await {
            tracing::warn!(error = %e, "The dead-letter keeper lost its consumer; reconnecting.");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }
    let _ = gauge.await;
}

/// Keeps `pvefleet_dead_letters_parked` at the number of parked dead letters, every 15 s.
async fn parked_gauge(pool: deadpool_postgres::Pool, shutdown: CancellationToken) {
    loop {
        if let Ok(client) = pool.get().await
            && let Ok(row) = client
                .query_one("SELECT count(*) FROM dead_letters WHERE state = 'parked'", &[])
                .await
        {
            metrics::gauge!("pvefleet_dead_letters_parked").set(row.get::<_, i64>(0) as f64);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => {}
        }
    }
}

async fn consume(
    bus: &BusSettings,
    topology: &Topology,
    pool: &deadpool_postgres::Pool,
    relay: Option<&Notify>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let (_conn, ch) = pvefleet_core::bus::connect::open(bus, "dead-letter-keeper").await?;
    topology.declare(&ch).await?;
    ch.basic_qos(32, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            PARKED_QUEUE.into(),
            "dead-letter-keeper".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = consumer.next() => next,
        };
        let Some(delivery) = next else {
            anyhow::bail!("the parked queue's consumer ended");
        };
        let d = delivery?;
        match store(pool, &d).await {
            Ok(stored) => {
                if stored.is_none() {
                    tracing::info!(message_id = ?d.properties.message_id(), "A dead letter parked again at the same attempt; stored once.");
                } else if let Some(r) = relay {
                    r.notify_one();
                }
                d.ack(BasicAckOptions::default()).await?;
            }
            Err(e) => {
                tracing::error!(error = ?e, "Cannot store a dead letter; it stays on the parked queue.");
                d.nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await?;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_fault_on_different_containers_groups_together() {
        let a = fingerprint(
            Some("container.create"),
            "retries-exhausted",
            "POST /nodes/pve1/lxc: 595 for vmid 10001",
        );
        let b = fingerprint(
            Some("container.create"),
            "retries-exhausted",
            "POST /nodes/pve1/lxc: 595 for vmid 10942",
        );
        let c = fingerprint(
            Some("container.create"),
            "rejected",
            "POST /nodes/pve1/lxc: 595 for vmid 10001",
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with("container.create/retries-exhausted/"));
    }
}
