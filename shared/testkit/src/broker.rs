//! A throwaway RabbitMQ vhost per test, and raw AMQP helpers for publishing and capturing.

use std::process::Command;
use std::time::Duration;

use pvefleet_core::bus::envelope::Properties;
use pvefleet_core::bus::probe::Probe;
use pvefleet_core::bus::raw::Received;

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

    /// A probe on it: a plain connection for publishing raw and capturing.
    pub async fn probe(&self) -> anyhow::Result<Probe> {
        Probe::connect(&self.url()).await
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
    probe: &Probe,
    exchange: &str,
    routing_key: &str,
    props: Properties,
    body: &[u8],
) -> anyhow::Result<()> {
    probe.publish(exchange, routing_key, &props, body).await
}

/// Declares an exclusive queue for capturing and returns its name.
pub async fn temp_queue(probe: &Probe) -> anyhow::Result<String> {
    probe.temp_queue().await
}

/// Consumes up to `n` messages from `queue` (acking each) or until `timeout` passes.
pub async fn take(probe: &Probe, queue: &str, n: usize, timeout: Duration) -> anyhow::Result<Vec<Received>> {
    probe.take(queue, n, timeout).await
}

/// Declares an exclusive queue (it outlives each `take`) bound to the events exchange with
/// each pattern, for a test to read the events it causes.
pub async fn event_queue(probe: &Probe, patterns: &[&str]) -> anyhow::Result<String> {
    probe.event_queue(patterns).await
}

/// The next message of `queue`, as its type and JSON body; `None` after `timeout`.
pub async fn next_json(
    probe: &Probe,
    queue: &str,
    timeout: Duration,
) -> anyhow::Result<Option<(String, serde_json::Value)>> {
    probe.next_json(queue, timeout).await
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
