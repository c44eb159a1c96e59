//! The dead-letter keeper (DESIGN.md §3): consumes `pvefleet.parked` and stores each message
//! in `dead_letters`, byte for byte: the full AMQP properties with every header, the body, the
//! origin exchange, routing key and queue, and the fault (pvefleet's fault headers, or the
//! broker's `x-death` for a broker dead letter), with a fingerprint to group by.
//!
//! The row and its `message.parked` event (through the outbox) commit in one transaction, and
//! the delivery is acked only after: a keeper killed at any point loses nothing, and the
//! redelivered copy meets its own park id (unique in `dead_letters`) and is stored once. Two
//! different messages never share a park id, whatever their `message_id` (or the lack of one).

use std::sync::Arc;

use backon::Retryable as _;
use futures::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use pvefleet_contracts::headers;
use pvefleet_contracts::messages::MessageParked;
use pvefleet_contracts::routing::PARKED_QUEUE;
use pvefleet_core::bus::fields::{header_i64, header_str, message_type};
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::parked;
use pvefleet_core::bus::{Outgoing, topology::Topology};
use pvefleet_core::config::BusSettings;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What the keeper read from a parked message.
#[derive(Debug, Clone)]
pub struct Parked {
    /// This parking's identity: the runner's stamp, or derived (see [`parked::park_id`]).
    pub park_id: Uuid,
    /// The message id, empty when the message had none.
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
    // A copy the runner parked carries its park id. A broker dead letter (or a copy from an
    // older runner) does not: its id is derived the same way, so its redeliveries match.
    let park_id = parked::stamped_park_id(p).unwrap_or_else(|| parked::park_id(&queue, p, attempts, &d.data));
    Parked {
        park_id,
        message_id: p
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default(),
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

/// Text Postgres can store: a NUL (which `text` and `jsonb` refuse) becomes U+FFFD, so a
/// message is never left unstorable by what its publisher put in it.
fn storable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// `storable` over every string (and key) of a JSON value.
fn storable_json(v: Value) -> Value {
    match v {
        Value::String(s) if s.contains('\0') => Value::String(storable(&s).into_owned()),
        Value::Array(a) => Value::Array(a.into_iter().map(storable_json).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (storable(&k).into_owned(), storable_json(v)))
                .collect(),
        ),
        other => other,
    }
}

/// What [`store`] did with a parked delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored as this new dead letter.
    New(Uuid),
    /// Stored before: the same parking, delivered again.
    Again,
}

/// Stores one parked delivery and queues its `message.parked`, in one transaction, keyed by
/// its park id: a redelivered copy is found stored and not stored again.
pub async fn store(pool: &deadpool_postgres::Pool, d: &Delivery) -> anyhow::Result<Stored> {
    let parked = read(d);
    let properties = storable_json(serde_json::to_value(&d.properties)?);
    let text = |s: &str| storable(s).into_owned();
    let opt = |s: &Option<String>| s.as_deref().map(text);
    let group = fingerprint(
        parked.message_type.as_deref(),
        &parked.fault_class,
        &parked.fault_message,
    );
    let message_type = opt(&parked.message_type);
    let origin_queue = text(&parked.origin_queue);
    let id = Uuid::now_v7();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let inserted = tx
        .query_opt(
            "INSERT INTO dead_letters (id, park_id, message_id, attempts, message_type, correlation_id, properties, body,
                 origin_exchange, origin_routing_key, origin_queue, fault_class, fault_message,
                 first_failure, last_failure, x_death, fingerprint, generation)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
             ON CONFLICT (park_id) DO NOTHING RETURNING id",
            &[
                &id,
                &parked.park_id,
                &text(&parked.message_id),
                &parked.attempts,
                &message_type,
                &parked.correlation_id,
                &properties,
                &d.data,
                &text(&parked.origin_exchange),
                &text(&parked.origin_routing_key),
                &origin_queue,
                &text(&parked.fault_class),
                &text(&parked.fault_message),
                &opt(&parked.first_failure),
                &opt(&parked.last_failure),
                &parked.x_death.clone().map(storable_json),
                &text(&group),
                &parked.generation,
            ],
        )
        .await?;
    if inserted.is_none() {
        tx.commit().await?;
        return Ok(Stored::Again);
    }
    let event = MessageParked {
        dead_letter_id: id,
        message_type: message_type.clone(),
        correlation_id: parked.correlation_id,
        queue: origin_queue.clone(),
        group,
        fault_class: parked.fault_class.clone(),
    };
    let origin = Origin {
        correlation_id: parked.correlation_id,
        causation_id: (!parked.message_id.is_empty()).then(|| parked.message_id.clone()),
        app_id: Some("dead-letter-keeper".into()),
        ..Origin::default()
    };
    let out = Outgoing::message(&event, &origin)?;
    pvefleet_core::db::outbox::enqueue(&tx, &out).await?;
    tx.commit().await?;
    metrics::counter!(
        "pvefleet_dead_letters_stored_total",
        "queue" => origin_queue,
        "type" => message_type.unwrap_or_default()
    )
    .increment(1);
    Ok(Stored::New(id))
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
        // The delivery is acked only once it is stored (or found stored). A store that fails
        // is tried again with backoff while the delivery is held, so a database outage costs
        // no delivery attempts; past the budget it goes back to the queue, never dropped.
        let stored = (|| store(pool, &d))
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(std::time::Duration::from_millis(200))
                    .with_max_delay(std::time::Duration::from_secs(10))
                    .with_max_times(STORE_ATTEMPTS),
            )
            .notify(|e, after| {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?after, "Cannot store a dead letter yet; trying again.");
            });
        // On shutdown the held delivery is dropped unacked: the broker requeues it.
        let stored = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            stored = stored => stored,
        };
        match stored {
            Ok(stored) => {
                let outcome = match stored {
                    Stored::New(_) => {
                        if let Some(r) = relay {
                            r.notify_one();
                        }
                        "stored"
                    }
                    Stored::Again => {
                        tracing::info!(message_id = ?d.properties.message_id(), "A parked copy was delivered again; it is stored once.");
                        "duplicate"
                    }
                };
                metrics::counter!("pvefleet_dead_letters_received_total", "outcome" => outcome).increment(1);
                d.ack(BasicAckOptions::default()).await?;
            }
            Err(e) => {
                metrics::counter!("pvefleet_dead_letters_received_total", "outcome" => "store_failed").increment(1);
                tracing::error!(
                    error = format!("{e:#}"),
                    "Cannot store a dead letter; it goes back to the parked queue."
                );
                d.nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await?;
            }
        }
    }
}

/// Tries of one store before its delivery goes back to the queue (about two minutes).
const STORE_ATTEMPTS: usize = 16;

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
