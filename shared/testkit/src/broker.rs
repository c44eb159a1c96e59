//! A throwaway RabbitMQ vhost per test, and raw AMQP helpers for publishing and capturing.

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// The broker's host and port for tests (`PVEFLEET_TEST_AMQP_ADDR`, default 127.0.0.1:5672).
pub fn amqp_addr() -> String {
    std::env::var("PVEFLEET_TEST_AMQP_ADDR").unwrap_or_else(|_| "127.0.0.1:5672".into())
}

/// Runs `rabbitmqctl` and returns its stdout; fails the test on error.
pub fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rabbitmqctl").args(args).output()?;
    if !out.status.success() {
        anyhow::bail!("rabbitmqctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A vhost that exists for one test and is deleted when dropped.
pub struct TestVhost {
    name: String,
}

impl TestVhost {
    /// Creates a fresh vhost and grants `guest` full rights on it.
    pub fn new() -> anyhow::Result<Self> {
        let name = format!("pvefleet-test-{}", uuid::Uuid::new_v4().simple());
        rabbitmqctl(&["-q", "add_vhost", &name])?;
        rabbitmqctl(&["-q", "set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])?;
        Ok(Self { name })
    }

    /// The vhost name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An AMQP URL for it.
    pub fn url(&self) -> String {
        self.url_via(&amqp_addr())
    }

    /// An AMQP URL for it through another address (a proxy).
    pub fn url_via(&self, addr: &str) -> String {
        format!("amqp://guest:guest@{addr}/{}", self.name)
    }

    /// Opens a plain lapin connection and a confirming channel on it.
    pub async fn channel(&self) -> anyhow::Result<(Connection, Channel)> {
        let conn = Connection::connect(&self.url(), ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok((conn, ch))
    }

    /// `rabbitmqctl list_queues` for this vhost: (name, type, arguments) per line.
    pub fn list_queues(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let out = rabbitmqctl(&[
            "-q",
            "list_queues",
            "-p",
            &self.name,
            "--no-table-headers",
            "name",
            "type",
            "arguments",
        ])?;
        Ok(out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut parts = l.splitn(3, '\t');
                let name = parts.next().unwrap_or_default().to_string();
                let kind = parts.next().unwrap_or_default().to_string();
                let args = parts.next().unwrap_or_default().to_string();
                (name, kind, args)
            })
            .collect())
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        // Fire and forget: the test should not wait a second for cleanup.
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}

/// Publishes raw bytes with the given properties and waits for the confirm.
pub async fn publish_raw(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    props: BasicProperties,
    body: &[u8],
) -> anyhow::Result<()> {
    let confirm = ch
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

/// Declares a plain (classic, auto-delete) queue for capturing and returns its name.
pub async fn temp_queue(ch: &Channel) -> anyhow::Result<String> {
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.name().as_str().to_string())
}

/// Consumes up to `n` messages from `queue` (acking each) or until `timeout` passes.
pub async fn take(ch: &Channel, queue: &str, n: usize, timeout: Duration) -> anyhow::Result<Vec<Delivery>> {
    let tag = format!("take-{}", uuid::Uuid::new_v4().simple());
    // At most `n` unacked at once: a message delivered beyond them would stay unacked on this
    // channel after the consumer is cancelled, and the next `take` would never see it.
    ch.basic_qos(
        u16::try_from(n.max(1)).unwrap_or(u16::MAX),
        lapin::options::BasicQosOptions::default(),
    )
    .await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut out: Vec<Delivery> = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => out.push(d),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) | Err(_) => break,
        }
    }
    // Cancel before acking: with at most `n` unacked, the broker cannot push one more that
    // would then sit unacked on the cancelled consumer.
    let _ = ch.basic_cancel(tag.as_str().into(), Default::default()).await;
    for d in &out {
        d.acker.ack(BasicAckOptions::default()).await?;
    }
    Ok(out)
}

/// Declares an exclusive queue (not auto-delete, so it outlives each `take`) bound to the
/// events exchange with each pattern, for a test to read the events it causes.
pub async fn event_queue(ch: &Channel, patterns: &[&str]) -> anyhow::Result<String> {
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .name()
        .as_str()
        .to_string();
    for p in patterns {
        ch.queue_bind(
            q.as_str().into(),
            pvefleet_contracts::routing::EVENTS_EXCHANGE.into(),
            (*p).into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(q)
}

/// The next message of `queue`, as its type and JSON body; `None` after `timeout`.
pub async fn next_json(
    ch: &Channel,
    queue: &str,
    timeout: Duration,
) -> anyhow::Result<Option<(String, serde_json::Value)>> {
    let Some(d) = take(ch, queue, 1, timeout).await?.into_iter().next() else {
        return Ok(None);
    };
    let kind = d.properties.kind().as_ref().map(|k| k.to_string()).unwrap_or_default();
    Ok(Some((kind, serde_json::from_slice(&d.data)?)))
}

/// A publisher on `settings`' broker that declares the fleet's topology, connected.
pub async fn fleet_publisher(settings: &pvefleet_core::Settings) -> anyhow::Result<pvefleet_core::bus::Publisher> {
    let topology = pvefleet_core::bus::topology::Topology::fleet(&settings.bus);
    let publisher = pvefleet_core::bus::Publisher::new(&settings.bus, "test", Some(topology));
    publisher.connect().await?;
    Ok(publisher)
}

/// Publishes `msg` with a fresh correlation id, as an upstream system would; returns the id.
pub async fn send<M: pvefleet_contracts::Message>(
    publisher: &pvefleet_core::bus::Publisher,
    msg: &M,
) -> anyhow::Result<uuid::Uuid> {
    let id = uuid::Uuid::now_v7();
    let origin = pvefleet_core::bus::outgoing::Origin {
        correlation_id: Some(id),
        ..Default::default()
    };
    publisher
        .publish(&pvefleet_core::bus::Outgoing::message(msg, &origin)?)
        .await?;
    Ok(id)
}
