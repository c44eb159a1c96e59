//! A plain connection for tools and tests: publish anything (also what a service never would:
//! no id, the wrong content type), bind temporary queues, take what arrives, count and purge
//! queues. Services publish with the [`super::Publisher`] and consume with the runner; only
//! this and they touch the AMQP client.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

use super::envelope::Properties;
use super::raw::Received;
use super::topology::Topology;
use crate::config::BusSettings;

/// A connection and a confirming channel.
pub struct Probe {
    conn: Connection,
    ch: Channel,
    url: String,
}

/// A consumer of a probe's queue, acking by hand.
pub struct ProbeConsumer {
    consumer: lapin::Consumer,
    ch: Channel,
    tag: String,
}

/// A delivery taken by hand: ack it, or hand it back.
pub struct Incoming {
    /// What arrived.
    pub received: Received,
    acker: lapin::Acker,
}

impl Incoming {
    /// Acks it.
    pub async fn ack(&self) -> anyhow::Result<()> {
        self.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Rejects it: back to its queue with `requeue`, else dead-lettered (or dropped).
    pub async fn nack(&self, requeue: bool) -> anyhow::Result<()> {
        self.acker
            .nack(BasicNackOptions {
                requeue,
                ..BasicNackOptions::default()
            })
            .await?;
        Ok(())
    }
}

impl ProbeConsumer {
    /// Stops the consumer; what it holds unacked is still its to ack.
    pub async fn cancel(&self) {
        let _ = self
            .ch
            .basic_cancel(self.tag.as_str().into(), lapin::options::BasicCancelOptions::default())
            .await;
    }

    /// The next delivery, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Incoming>> {
        match tokio::time::timeout(timeout, self.consumer.next()).await {
            Err(_) | Ok(None) => Ok(None),
            Ok(Some(d)) => {
                let d = d?;
                Ok(Some(Incoming {
                    received: Received::of(&d),
                    acker: d.acker,
                }))
            }
        }
    }
}

impl Probe {
    /// Connects to `url` (an AMQP URL with its vhost).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let conn = Connection::connect(
            url,
            ConnectionProperties::default().with_connection_name("pvefleet-probe".into()),
        )
        .await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self {
            conn,
            ch,
            url: url.to_string(),
        })
    }

    /// Connects with a process's bus settings.
    pub async fn connect_with(settings: &BusSettings) -> anyhow::Result<Self> {
        Self::connect(settings.url.expose()).await
    }

    /// Declares `topology` (exchanges, queues, bindings).
    pub async fn declare(&self, topology: &Topology) -> anyhow::Result<()> {
        topology.declare(&self.ch).await?;
        Ok(())
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        props: &Properties,
        body: &[u8],
    ) -> anyhow::Result<()> {
        self.publish_amqp(exchange, routing_key, BasicProperties::from(props), body)
            .await
    }

    async fn publish_amqp(
        &self,
        exchange: &str,
        routing_key: &str,
        props: BasicProperties,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let confirm = self
            .ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?
            .await?;
        anyhow::ensure!(confirm.is_ack(), "publish was not acked");
        Ok(())
    }

    /// An exclusive queue of this connection, deleted with it (not when a consumer of it goes,
    /// so it outlives each `take`).
    pub async fn temp_queue(&self) -> anyhow::Result<String> {
        let q = self
            .ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(q.name().as_str().to_string())
    }

    /// Declares a durable classic queue named `name` (for tools that need a queue of their
    /// own beside the fleet's).
    pub async fn declare_queue(&self, name: &str) -> anyhow::Result<()> {
        self.ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Binds `queue` to `exchange` with `key`.
    pub async fn bind(&self, queue: &str, exchange: &str, key: &str) -> anyhow::Result<()> {
        self.ch
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Unbinds `queue` from `exchange` for `key`.
    pub async fn unbind(&self, queue: &str, exchange: &str, key: &str) -> anyhow::Result<()> {
        self.ch
            .queue_unbind(queue.into(), exchange.into(), key.into(), FieldTable::default())
            .await?;
        Ok(())
    }

    /// A temporary queue bound to the events exchange for each pattern (`site.*`).
    pub async fn event_queue(&self, patterns: &[&str]) -> anyhow::Result<String> {
        let q = self.temp_queue().await?;
        for p in patterns {
            self.bind(&q, pvefleet_contracts::routing::EVENTS_EXCHANGE, p).await?;
        }
        Ok(q)
    }

    /// Consumes `queue`, acking by hand, with up to `prefetch` deliveries unacked.
    pub async fn consume(&self, queue: &str, prefetch: u16) -> anyhow::Result<ProbeConsumer> {
        self.ch
            .basic_qos(prefetch, lapin::options::BasicQosOptions::default())
            .await?;
        let tag = format!("probe-{}", uuid::Uuid::new_v4().simple());
        let consumer = self
            .ch
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(ProbeConsumer {
            consumer,
            ch: self.ch.clone(),
            tag,
        })
    }

    /// Takes up to `n` deliveries from `queue`, waiting at most `timeout` in all, and acks them.
    pub async fn take(&self, queue: &str, n: usize, timeout: Duration) -> anyhow::Result<Vec<Received>> {
        // At most `n` unacked at once, and the consumer cancelled before the acks: otherwise
        // the broker could push one more, which would sit unacked on this channel for good.
        let mut consumer = self.consume(queue, u16::try_from(n.max(1)).unwrap_or(u16::MAX)).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut taken = Vec::with_capacity(n);
        while taken.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(d) = consumer.next(left).await? else { break };
            taken.push(d);
        }
        consumer.cancel().await;
        let mut out = Vec::with_capacity(taken.len());
        for d in taken {
            d.ack().await?;
            out.push(d.received);
        }
        Ok(out)
    }

    /// The next delivery on `queue` as (type, JSON body), or `None` after `timeout`.
    pub async fn next_json(&self, queue: &str, timeout: Duration) -> anyhow::Result<Option<(String, Value)>> {
        let Some(d) = self.take(queue, 1, timeout).await?.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some((
            d.properties.kind.clone().unwrap_or_default(),
            serde_json::from_slice(&d.body)?,
        )))
    }

    /// How many messages `queue` holds; `None` when it does not exist.
    pub async fn queue_len(&self, queue: &str) -> anyhow::Result<Option<u32>> {
        Ok(self.queue_info(queue).await?.map(|(messages, _)| messages))
    }

    /// How many messages `queue` holds and how many consumers it has, read on a channel of its
    /// own (a passive declare of a queue that does not exist closes its channel); `None` when
    /// it does not exist.
    pub async fn queue_info(&self, queue: &str) -> anyhow::Result<Option<(u32, u32)>> {
        let ch = self.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let info = match q {
            Ok(q) => Some((q.message_count(), q.consumer_count())),
            // The broker's answer for a queue that does not exist; any other failure is one.
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read queue {queue}"))),
        };
        let _ = ch.close(200, "probe done".into()).await;
        Ok(info)
    }

    /// Empties `queue`; returns how many it held.
    pub async fn purge(&self, queue: &str) -> anyhow::Result<u32> {
        Ok(self.ch.queue_purge(queue.into(), QueuePurgeOptions::default()).await?)
    }

    /// Deletes `queue`.
    pub async fn delete_queue(&self, queue: &str) -> anyhow::Result<()> {
        self.ch
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
        Ok(())
    }

    /// The URL it connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes the connection in the background.
    pub fn close(self) {
        super::connect::close_in_background(self.conn);
    }
}

/// Whether the broker refused with 404 NOT_FOUND (a passive declare of a missing queue).
fn is_not_found(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            matches!(
                amqp.kind(),
                lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)
            )
        }
        _ => false,
    }
}
