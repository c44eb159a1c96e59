//! Postgres settings (`[db]`) and the outbox relay's (`[outbox]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Postgres settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DbSettings {
    /// Connection URL, such as `postgres://pvefleet@db/pvefleet`.
    pub url: Secret,
    /// Maximum pooled connections.
    pub pool_size: usize,
    /// Create the database when it is missing (needs CREATEDB).
    pub create_database: bool,
    /// Limit on getting a connection from the pool (and on connecting).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Postgres `statement_timeout`; idle transactions are ended after twice this.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// How long inbox rows are kept; redeliveries older than this are not deduplicated.
    #[serde(with = "humantime_serde")]
    pub inbox_retention: Duration,
}

impl Default for DbSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/pvefleet"),
            pool_size: 16,
            create_database: true,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Outbox relay settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxSettings {
    /// Rows claimed and published per batch.
    pub batch_size: i64,
    /// Poll interval when idle (a local write pokes the relay sooner).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long sent rows are kept before they are deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll_interval: Duration::from_millis(500),
            retention: Duration::from_secs(24 * 3600),
        }
    }
}
