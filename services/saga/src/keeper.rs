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
use pvefleet_contracts::headers;
use pvefleet_contracts::messages::MessageParked;
use pvefleet_contracts::routing::PARKED_QUEUE;
use pvefleet_core::bus::envelope::x_death;
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::parked;
use pvefleet_core::bus::raw::{RawHandler, Received};
use pvefleet_core::bus::{Context, Handled, Outgoing, Router, topology::Topology};
use pvefleet_core::config::BusSettings;
use serde_json::Value;
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

/// Reads what a parked delivery says about itself.
pub fn read(d: &Received) -> Parked {
    let p = &d.properties;
    let death = x_death(p);
    let first_death = death.as_ref().and_then(|v| v.get(0).cloned()).unwrap_or(Value::Null);
    let broker = p.header_str(headers::fault::CLASS).is_none();
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
            p.header_str(headers::fault::CLASS).unwrap_or_default(),
            p.header_str(headers::fault::MESSAGE).unwrap_or_default(),
            p.header_i64(headers::fault::ATTEMPTS).unwrap_or(1),
            p.header_str(headers::fault::ORIGIN_QUEUE)
                .unwrap_or_else(|| d.routing_key.clone()),
            p.header_str(headers::fault::ORIGIN_EXCHANGE).unwrap_or_default(),
            p.header_str(headers::fault::ORIGIN_ROUTING_KEY).unwrap_or_default(),
        )
    };
    // A copy the runner parked carries its park id. A broker dead letter (or a copy from an
    // older runner) does not: its id is derived the same way, so its redeliveries match.
    let park_id = parked::stamped_park_id(p).unwrap_or_else(|| parked::park_id(&queue, p, attempts, &d.body));
    Parked {
        park_id,
        message_id: p.message_id.clone().unwrap_or_default(),
        attempts,
        generation: p.header_i64(headers::replay::COUNT).unwrap_or(0),
        message_type: p.kind.clone(),
        correlation_id: p.correlation_id.as_deref().and_then(|c| c.parse().ok()),
        origin_exchange: exchange,
        origin_routing_key: routing_key,
        origin_queue: queue,
        fault_class: class,
        fault_message: message,
        first_failure: p.header_str(headers::fault::FIRST_FAILURE),
        last_failure: p.header_str(headers::fault::LAST_FAILURE),
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
pub async fn store(pool: &deadpool_postgres::Pool, d: &Received) -> anyhow::Result<Stored> {
    let parked = read(d);
    let properties = storable_json(d.properties.to_stored());
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
                &d.body.as_ref(),
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

/// The keeper's handler: every delivery of the parked queue, stored.
struct Keeper {
    pool: deadpool_postgres::Pool,
    relay: Option<Arc<Notify>>,
}

#[async_trait::async_trait]
impl RawHandler for Keeper {
    async fn handle(&self, d: Received, _ctx: &Context<'_>) -> Handled {
        // The delivery is acked only once it is stored (or found stored). A store that fails
        // is tried again with backoff while the delivery is held, so a database outage costs
        // no delivery attempts; past the budget it goes back to the queue, never dropped.
        let stored = (|| store(&self.pool, &d))
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(std::time::Duration::from_millis(200))
                    .with_max_delay(std::time::Duration::from_secs(10))
                    .with_max_times(STORE_ATTEMPTS),
            )
            .notify(|e, after| {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?after, "Cannot store a dead letter yet; trying again.");
            })
            .await;
        let outcome = match &stored {
            Ok(Stored::New(_)) => {
                if let Some(r) = &self.relay {
                    r.notify_one();
                }
                "stored"
            }
            Ok(Stored::Again) => {
                tracing::info!(message_id = ?d.properties.message_id, "A parked copy was delivered again; it is stored once.");
                "duplicate"
            }
            Err(_) => "store_failed",
        };
        metrics::counter!("pvefleet_dead_letters_received_total", "outcome" => outcome).increment(1);
        stored
            .map(drop)
            .map_err(|e| e.context("cannot store a dead letter").into())
    }
}

/// Tries of one store before its delivery goes back to the queue (about two minutes).
const STORE_ATTEMPTS: usize = 16;

/// Consumes `pvefleet.parked` until `shutdown` on the shared runner (a raw worker: whatever
/// was parked is stored as it came), and keeps the parked gauge.
pub async fn run(
    bus: BusSettings,
    topology: Topology,
    pool: deadpool_postgres::Pool,
    relay: Option<Arc<Notify>>,
    shutdown: CancellationToken,
) {
    use pvefleet_core::bus::runner::{WorkerDeps, WorkerSpec, run_worker};
    let gauge = tokio::spawn(fleet_gauges(
        pool.clone(),
        bus.clone(),
        Topology::fleet(&bus),
        shutdown.clone(),
    ));
    let publisher = pvefleet_core::bus::Publisher::new(&bus, "dead-letter-keeper", Some(topology.clone()));
    let spec = WorkerSpec {
        name: "dead-letter-keeper".into(),
        queue: PARKED_QUEUE.into(),
        concurrency: 32,
        drain_timeout: std::time::Duration::from_secs(10),
        max_attempts: 1,
        retry_tiers: Vec::new(),
        max_body_bytes: usize::MAX,
        inbox: false,
        inbox_connections: 1,
        inbox_retention: std::time::Duration::from_secs(3600),
        after_commit: None,
    };
    let deps = WorkerDeps {
        bus,
        topology,
        publisher,
        db: None,
        ready: None,
    };
    if let Err(e) = run_worker(deps, Router::raw(Keeper { pool, relay }), spec, shutdown).await {
        tracing::error!(error = format!("{e:#}"), "The dead-letter keeper stopped.");
    }
    let _ = gauge.await;
}

/// The non-terminal saga states an operator watches.
const WATCHED_STATES: &[&str] = &["running", "compensating", "suspended", "compensation_failed"];

/// Every 15 s, the fleet's gauges for alerting: `pvefleet_dead_letters_parked` (parked dead
/// letters), `pvefleet_sagas{kind, state}` (sagas in each non-terminal state, 0 when none) and,
/// per work queue, `pvefleet_queue_messages{queue}` and `pvefleet_queue_consumers{queue}` (a
/// work queue with no consumer is work nobody takes). One replica of the saga coordinator
/// suffices; several set the same values.
async fn fleet_gauges(
    pool: deadpool_postgres::Pool,
    bus: BusSettings,
    topology: Topology,
    shutdown: CancellationToken,
) {
    let (pool, bus, topology) = (&pool, &bus, &topology);
    let probe: tokio::sync::Mutex<Option<pvefleet_core::bus::probe::Probe>> = tokio::sync::Mutex::new(None);
    let probe = &probe;
    pvefleet_core::periodic::Periodic::new("fleet_gauges", std::time::Duration::from_secs(15))
        .at_once()
        .run(shutdown, || async move {
            let client = pool.get().await?;
            let row = client
                .query_one("SELECT count(*) FROM dead_letters WHERE state = 'parked'", &[])
                .await?;
            metrics::gauge!("pvefleet_dead_letters_parked").set(row.get::<_, i64>(0) as f64);
            let mut counts: std::collections::BTreeMap<(String, String), i64> = std::collections::BTreeMap::new();
            for kind in crate::engine::Kind::ALL {
                for state in WATCHED_STATES {
                    counts.insert((kind.as_str().to_string(), (*state).to_string()), 0);
                }
            }
            for r in client
                .query(
                    "SELECT kind, state, count(*) FROM sagas WHERE state = ANY($1) GROUP BY kind, state",
                    &[&WATCHED_STATES],
                )
                .await?
            {
                counts.insert((r.get(0), r.get(1)), r.get(2));
            }
            for ((kind, state), n) in counts {
                metrics::gauge!("pvefleet_sagas", "kind" => kind, "state" => state).set(n as f64);
            }
            let mut held = probe.lock().await;
            if held.is_none() {
                *held = Some(pvefleet_core::bus::probe::Probe::connect_with(bus).await?);
            }
            let Some(p) = held.as_ref() else { return anyhow::Ok(()) };
            for q in &topology.work_queues {
                match p.queue_info(&q.name).await {
                    Ok(Some((messages, consumers))) => {
                        metrics::gauge!("pvefleet_queue_messages", "queue" => q.name.clone()).set(f64::from(messages));
                        metrics::gauge!("pvefleet_queue_consumers", "queue" => q.name.clone())
                            .set(f64::from(consumers));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // The connection may be gone: a new one next time.
                        *held = None;
                        return Err(e);
                    }
                }
            }
            anyhow::Ok(())
        })
        .await
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
