//! The outbox and its relay. A service that changes Postgres and publishes writes the outgoing
//! message into `outbox` in the same transaction; the relay publishes with confirms and marks
//! rows sent. A crash between publish and mark republishes: duplicates are possible (the
//! consumer's inbox drops them), losses are not.

use std::sync::Arc;
use std::time::Duration;

use super::Sql;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::envelope::Properties;
use crate::bus::{Outgoing, Publisher};
use crate::config::OutboxSettings;

/// Why a message could not be written to the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Postgres refused the statement.
    #[error("outbox statement failed")]
    Postgres(#[source] tokio_postgres::Error),
    /// No pooled connection.
    #[error("no database connection")]
    Pool(#[source] deadpool_postgres::PoolError),
}

/// Writes a message into the outbox, on the caller's connection (inside its transaction).
pub async fn enqueue<C: Sql + ?Sized>(client: &C, msg: &Outgoing) -> Result<(), OutboxError> {
    // Stored in pvefleet's own envelope format, not the AMQP client's.
    let props = msg.properties.to_stored();
    let message_id = msg.message_id().unwrap_or_default().to_string();
    let mtype = msg.properties.kind.clone();
    let corr = msg.properties.correlation_id.clone();
    client
        .exec(
            "INSERT INTO outbox (message_id, exchange, routing_key, mandatory, message_type, correlation_id, properties, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&message_id, &msg.exchange, &msg.routing_key, &msg.mandatory, &mtype, &corr, &props, &msg.body.as_ref()],
        )
        .await
        .map_err(OutboxError::Postgres)?;
    Ok(())
}

type Hook = Arc<dyn Fn() + Send + Sync>;

/// Publishes pending outbox rows.
#[derive(Clone)]
pub struct OutboxRelay {
    pool: deadpool_postgres::Pool,
    publisher: Publisher,
    settings: OutboxSettings,
    poke: Arc<Notify>,
    after_publish: Option<Hook>,
}

impl OutboxRelay {
    /// A relay over `pool`, publishing through `publisher`.
    pub fn new(pool: deadpool_postgres::Pool, publisher: Publisher, settings: OutboxSettings) -> Self {
        Self {
            pool,
            publisher,
            settings,
            poke: Arc::new(Notify::new()),
            after_publish: None,
        }
    }

    /// A handle that wakes the relay at once (call after committing outbox rows).
    pub fn poker(&self) -> Arc<Notify> {
        self.poke.clone()
    }

    /// Runs `hook` after a batch is published and before it is marked sent. This is the
    /// crash-test seam: a hook that kills the process proves a crash there loses nothing.
    pub fn with_after_publish_hook(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.after_publish = Some(Arc::new(hook));
        self
    }

    /// Relays until `shutdown`, then finishes the current batch.
    pub async fn run(self, shutdown: CancellationToken) {
        let last_prune = std::sync::Mutex::new(tokio::time::Instant::now());
        let me = &self;
        // A full batch means more is waiting: the next pass starts at once. Otherwise the relay
        // waits for a commit's poke, or the poll interval for rows whose retry time came.
        crate::periodic::Periodic::new("outbox_relay", self.settings.poll_interval)
            .at_once()
            .poked_by(self.poke.clone())
            .run(shutdown, || async {
                let n = me.relay_once().await?;
                let due = last_prune
                    .lock()
                    .map(|mut at| {
                        let due = at.elapsed() > Duration::from_secs(60);
                        if due {
                            *at = tokio::time::Instant::now();
                        }
                        due
                    })
                    .unwrap_or(false);
                if due && let Err(e) = me.prune().await {
                    tracing::warn!(error = ?e, "Pruning sent outbox rows failed.");
                }
                Ok::<_, OutboxError>(if n as i64 >= me.settings.batch_size {
                    crate::periodic::Next::Now
                } else {
                    crate::periodic::Next::Wait
                })
            })
            .await
    }

    /// Claims one batch (`FOR UPDATE SKIP LOCKED`, so relays in several replicas share the
    /// work), publishes it with confirms, and marks what was confirmed. Returns the batch size.
    pub async fn relay_once(&self) -> Result<usize, OutboxError> {
        let mut client = self.pool.get().await.map_err(OutboxError::Pool)?;
        let tx = client.transaction().await.map_err(OutboxError::Postgres)?;
        let rows = tx
            .rows(
                "SELECT id, exchange, routing_key, mandatory, properties, body, attempts FROM outbox
                 WHERE sent_at IS NULL AND next_attempt_at <= now()
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&self.settings.batch_size],
            )
            .await
            .map_err(OutboxError::Postgres)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut batch = Vec::with_capacity(rows.len());
        let mut undecodable = Vec::new();
        for row in &rows {
            let id: i64 = row.get(0);
            let props: serde_json::Value = row.get(4);
            match Properties::from_stored(&props) {
                Ok(properties) => batch.push((
                    id,
                    row.get::<_, i32>(6),
                    Outgoing {
                        exchange: row.get(1),
                        routing_key: row.get(2),
                        mandatory: row.get(3),
                        properties,
                        body: Bytes::from(row.get::<_, Vec<u8>>(5)),
                    },
                )),
                Err(e) => {
                    tracing::error!(outbox_id = id, error = %e, "An outbox row's stored properties do not decode; it cannot be published.");
                    undecodable.push((
                        id,
                        row.get::<_, i32>(6),
                        format!("stored properties do not decode: {e}"),
                    ));
                }
            }
        }
        let results = futures::future::join_all(batch.iter().map(|(_, _, m)| self.publisher.publish(m))).await;
        if let Some(hook) = &self.after_publish {
            hook();
        }
        let mut sent = Vec::new();
        let mut failed = undecodable;
        for ((id, attempts, msg), res) in batch.iter().zip(results) {
            match res {
                Ok(()) => sent.push(*id),
                Err(e) if !e.is_transient() => {
                    // Unroutable: nothing is bound to receive it. Kept and retried with backoff,
                    // because declaring the missing queue fixes it; an operator must look.
                    tracing::error!(outbox_id = id, exchange = %msg.exchange, routing_key = %msg.routing_key, error = %e, "Outbox message cannot be routed; will retry with backoff.");
                    failed.push((*id, *attempts, e.to_string()));
                }
                Err(e) => {
                    tracing::warn!(outbox_id = id, routing_key = %msg.routing_key, error = %e, "Outbox message not published; will retry.");
                    failed.push((*id, *attempts, e.to_string()));
                }
            }
        }
        tx.exec(
            "UPDATE outbox SET sent_at = now(), attempts = attempts + 1 WHERE id = ANY($1)",
            &[&sent],
        )
        .await
        .map_err(OutboxError::Postgres)?;
        for (id, attempts, error) in &failed {
            // Exponential backoff per row, capped at five minutes, so one bad row never spins.
            let delay_ms = (1000_i64 << (*attempts).clamp(0, 8)).min(300_000);
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                     next_attempt_at = now() + make_interval(secs => $3::float8 / 1000.0)
                 WHERE id = $1",
                &[id, error, &(delay_ms as f64)],
            )
            .await
            .map_err(OutboxError::Postgres)?;
        }
        tx.commit().await.map_err(OutboxError::Postgres)?;
        Ok(rows.len())
    }

    async fn prune(&self) -> Result<u64, OutboxError> {
        let client = self.pool.get().await.map_err(OutboxError::Pool)?;
        let secs = self.settings.retention.as_secs_f64();
        client
            .execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)",
                &[&secs],
            )
            .await
            .map_err(OutboxError::Postgres)
    }
}
