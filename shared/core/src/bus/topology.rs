//! Topology (DESIGN.md §3), declared idempotently by `pvefleet topology declare` and by every
//! service at start and on reconnect.
//!
//! Work queue arguments are set as x-arguments, pinned and explicit, so RabbitMQ 3.10 and 4.x
//! behave the same. Changing one is a migration: the broker answers PRECONDITION_FAILED
//! ("inequivalent arg") until the queue is deleted and declared again.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use pvefleet_contracts::routing::{
    COMMANDS_EXCHANGE, EVENTS_EXCHANGE, PARKED_EXCHANGE, PARKED_QUEUE, fleet_bindings, wait_tier, work_queue,
};

use crate::config::BusSettings;

/// A declaration the broker refused.
#[derive(Debug, thiserror::Error)]
#[error("cannot declare {object}")]
pub struct TopologyError {
    /// What was being declared, such as `queue pvefleet.saga`.
    pub object: String,
    /// The broker's answer.
    #[source]
    pub source: lapin::Error,
}

/// A work queue and what it is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkQueue {
    /// The queue name, `pvefleet.<service>`.
    pub name: String,
    /// (exchange, routing key) pairs.
    pub bindings: Vec<(String, String)>,
}

/// The whole topology of one vhost.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Work queues.
    pub work_queues: Vec<WorkQueue>,
    /// `x-delivery-limit` for work queues.
    pub delivery_limit: u32,
    /// Wait tiers for delayed retries.
    pub retry_tiers: Vec<Duration>,
    /// `x-max-length` for work queues.
    pub queue_max_length: Option<u64>,
}

/// One queue's declared arguments, for `pvefleet topology show`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QueuePlan {
    /// Queue name.
    pub name: String,
    /// Arguments, as strings.
    pub arguments: Vec<(String, String)>,
    /// Bindings, as `exchange -> routing key`.
    pub bindings: Vec<String>,
}

impl Topology {
    /// Exchanges, the parked queue and the wait tiers, with no work queues.
    pub fn base(settings: &BusSettings) -> Self {
        Self {
            work_queues: Vec::new(),
            delivery_limit: settings.delivery_limit,
            retry_tiers: settings.retry_tiers.clone(),
            queue_max_length: settings.queue_max_length,
        }
    }

    /// The fleet's full plan: every service's work queue and bindings.
    pub fn fleet(settings: &BusSettings) -> Self {
        let mut t = Self::base(settings);
        for (service, bindings) in fleet_bindings() {
            t.work_queues.push(WorkQueue {
                name: work_queue(service),
                bindings: bindings
                    .into_iter()
                    .map(|(e, k)| (e.to_string(), k.to_string()))
                    .collect(),
            });
        }
        t
    }

    /// Adds a work queue.
    pub fn with_queue(mut self, name: impl Into<String>, bindings: &[(&str, &str)]) -> Self {
        self.work_queues.push(WorkQueue {
            name: name.into(),
            bindings: bindings.iter().map(|(e, k)| (e.to_string(), k.to_string())).collect(),
        });
        self
    }

    /// The arguments of a work queue.
    pub fn work_queue_args(&self) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("x-queue-type".into(), long_str("quorum"));
        t.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        t.insert("x-dead-letter-exchange".into(), long_str(PARKED_EXCHANGE));
        t.insert("x-dead-letter-strategy".into(), long_str("at-least-once"));
        t.insert("x-overflow".into(), long_str("reject-publish"));
        if let Some(max) = self.queue_max_length {
            t.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(i64::try_from(max).unwrap_or(i64::MAX)),
            );
        }
        t
    }

    /// The arguments of a wait-tier queue: fixed TTL, then dead-letter through the default
    /// exchange, whose routing key (the origin queue's name) delivers it back to its queue.
    pub fn wait_queue_args(delay: Duration) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("x-queue-type".into(), long_str("quorum"));
        t.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        );
        t.insert("x-dead-letter-exchange".into(), long_str(""));
        t.insert("x-dead-letter-strategy".into(), long_str("at-least-once"));
        t.insert("x-overflow".into(), long_str("reject-publish"));
        t
    }

    fn parked_queue_args() -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("x-queue-type".into(), long_str("quorum"));
        t
    }

    /// Declares everything. Idempotent: declaring the same topology again changes nothing.
    pub async fn declare(&self, ch: &Channel) -> Result<(), TopologyError> {
        exchange(ch, COMMANDS_EXCHANGE, ExchangeKind::Direct).await?;
        exchange(ch, EVENTS_EXCHANGE, ExchangeKind::Topic).await?;
        exchange(ch, PARKED_EXCHANGE, ExchangeKind::Fanout).await?;
        queue(ch, PARKED_QUEUE, Self::parked_queue_args()).await?;
        bind(ch, PARKED_QUEUE, PARKED_EXCHANGE, "").await?;
        for delay in &self.retry_tiers {
            let name = wait_tier(*delay);
            exchange(ch, &name, ExchangeKind::Fanout).await?;
            queue(ch, &name, Self::wait_queue_args(*delay)).await?;
            bind(ch, &name, &name, "").await?;
        }
        for wq in &self.work_queues {
            queue(ch, &wq.name, self.work_queue_args()).await?;
            for (ex, key) in &wq.bindings {
                bind(ch, &wq.name, ex, key).await?;
            }
            for (service, ex, key) in pvefleet_contracts::routing::retired_bindings() {
                if wq.name == work_queue(service) && !wq.bindings.iter().any(|(e, k)| e == ex && k == key) {
                    ch.queue_unbind(wq.name.as_str().into(), ex.into(), key.into(), FieldTable::default())
                        .await
                        .map_err(|source| TopologyError {
                            object: format!("retired binding {ex} -> {} ({key})", wq.name),
                            source,
                        })?;
                }
            }
        }
        Ok(())
    }

    /// The plan, for display.
    pub fn plan(&self) -> Vec<QueuePlan> {
        let mut out = vec![QueuePlan {
            name: PARKED_QUEUE.into(),
            arguments: describe(&Self::parked_queue_args()),
            bindings: vec![format!("{PARKED_EXCHANGE} (fanout)")],
        }];
        for delay in &self.retry_tiers {
            let name = wait_tier(*delay);
            out.push(QueuePlan {
                name: name.clone(),
                arguments: describe(&Self::wait_queue_args(*delay)),
                bindings: vec![format!("{name} (fanout)")],
            });
        }
        for wq in &self.work_queues {
            out.push(QueuePlan {
                name: wq.name.clone(),
                arguments: describe(&self.work_queue_args()),
                bindings: wq.bindings.iter().map(|(e, k)| format!("{e} -> {k}")).collect(),
            });
        }
        out
    }
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn describe(t: &FieldTable) -> Vec<(String, String)> {
    t.inner()
        .iter()
        .map(|(k, v)| {
            let shown = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::LongLongInt(i) => i.to_string(),
                other => format!("{other:?}"),
            };
            (k.as_str().to_string(), shown)
        })
        .collect()
}

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind) -> Result<(), TopologyError> {
    let opts = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(ShortString::from(name), kind, opts, FieldTable::default())
        .await
        .map_err(|source| TopologyError {
            object: format!("exchange {name}"),
            source,
        })
}

async fn queue(ch: &Channel, name: &str, args: FieldTable) -> Result<(), TopologyError> {
    let opts = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(ShortString::from(name), opts, args)
        .await
        .map(|_| ())
        .map_err(|source| TopologyError {
            object: format!("queue {name}"),
            source,
        })
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), TopologyError> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|source| TopologyError {
        object: format!("binding {exchange} -> {queue} ({key})"),
        source,
    })
}
