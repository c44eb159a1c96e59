//! RabbitMQ settings (`[bus]`): connection, publishing, retry tiers and queue limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// RabbitMQ connection, publishing and topology settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// AMQP URI, with the vhost as its path (`%2f` is `/`).
    pub url: Secret,
    /// Overall limit on one publish, from send to broker confirm.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Limit on opening a connection and its channel.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How many publishes may await their confirm at once per publisher.
    pub confirm_window: usize,
    /// AMQP heartbeat, so a dead peer is noticed.
    pub heartbeat_secs: u16,
    /// `x-delivery-limit` on work queues: the crash-loop fuse, counted by the broker.
    pub delivery_limit: u32,
    /// Delayed-retry wait tiers, in order. Attempt n waits in tier n (the last tier repeats).
    #[serde(with = "durations")]
    pub retry_tiers: Vec<Duration>,
    /// Attempts before a retried message is parked (the first delivery is attempt 1).
    pub max_attempts: u32,
    /// `x-max-length` on work queues (with `reject-publish`), so a flood pushes back on publishers.
    pub queue_max_length: Option<u64>,
    /// A test hook: every message is published twice with the same message id, as an
    /// at-least-once broker may deliver it, so tests can prove every handler idempotent.
    /// Never set it in production.
    pub duplicate_publishes: bool,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            publish_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            confirm_window: 256,
            heartbeat_secs: 10,
            delivery_limit: 10,
            retry_tiers: [1, 5, 30, 120, 600].into_iter().map(Duration::from_secs).collect(),
            max_attempts: 6,
            queue_max_length: None,
            duplicate_publishes: false,
        }
    }
}

/// (De)serializes a list of durations as humantime strings (`["1s", "5s", "2m"]`).
mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| humantime::format_duration(*d).to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| humantime::parse_duration(s).map_err(|e| serde::de::Error::custom(format!("'{s}': {e}"))))
            .collect()
    }
}
