//! A publisher with confirms, a bounded window of in-flight confirms, a deadline on every
//! publish, and reconnection: a broken or stuck connection is dropped and a fresh one opened on
//! the next publish (lapin's own auto-recovery was seen to wedge; see notes/rabbitmq-lapin.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection};
use tokio::sync::{Mutex, Semaphore};

use super::connect::{self, ConnectError};
use super::outgoing::Outgoing;
use super::topology::Topology;
use crate::config::BusSettings;
use crate::http::ReadyFlag;
use crate::instrument::{BusReconnected, PublishFailed};

/// Why a publish did not succeed. Every variant except `Unroutable` and `Nacked` means the
/// outcome is unknown: the message may or may not have reached the broker, so republish and
/// accept a possible duplicate.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No route for a mandatory message (AMQP 312 NO_ROUTE): nobody would receive it.
    #[error("no queue is bound for routing key '{routing_key}' on exchange '{exchange}' ({reply_code} {reply_text})")]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// AMQP reply code.
        reply_code: u16,
        /// AMQP reply text.
        reply_text: String,
    },
    /// The broker refused the message (an internal error in a queue process, or a full queue
    /// with `x-overflow=reject-publish`).
    #[error("the broker nacked the message to '{exchange}' / '{routing_key}'")]
    Nacked {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// No confirm within the publish timeout (blocked, unreachable or overloaded broker).
    #[error("publish to '{exchange}' / '{routing_key}' was not confirmed within {timeout:?}")]
    Timeout {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The limit.
        timeout: Duration,
    },
    /// The connection could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The channel or connection failed during the publish.
    #[error("publish to '{exchange}' failed")]
    Broker {
        /// The exchange.
        exchange: String,
        /// The cause.
        #[source]
        source: lapin::Error,
    },
}

impl PublishError {
    /// Whether publishing again may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, PublishError::Unroutable { .. })
    }

    fn kind(&self) -> &'static str {
        match self {
            PublishError::Unroutable { .. } => "unroutable",
            PublishError::Nacked { .. } => "nack",
            PublishError::Timeout { .. } => "timeout",
            PublishError::Connect(_) => "connect",
            PublishError::Broker { .. } => "broker",
        }
    }
}

struct Live {
    generation: u64,
    conn: Option<Connection>,
    channel: Option<Channel>,
    down_since: Option<Instant>,
}

struct Inner {
    settings: BusSettings,
    name: String,
    topology: Option<Topology>,
    window: Semaphore,
    live: Mutex<Live>,
    /// The current channel, readable without waiting on `live` (which is held while
    /// reconnecting): every publish reads it, so it must not be a point of contention.
    current: std::sync::RwLock<Option<(u64, Channel)>>,
    ready: Option<ReadyFlag>,
}

/// A cloneable handle to one publishing connection.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl Publisher {
    /// A publisher that connects lazily on first use. When `topology` is given it is declared
    /// on every (re)connect, so a publisher never publishes into a missing exchange.
    pub fn new(settings: &BusSettings, name: &str, topology: Option<Topology>) -> Self {
        Self::build(settings, name, topology, None)
    }

    /// Like [`Publisher::new`], reporting connection state to a readiness flag.
    pub fn with_readiness(settings: &BusSettings, name: &str, topology: Option<Topology>, ready: ReadyFlag) -> Self {
        Self::build(settings, name, topology, Some(ready))
    }

    fn build(settings: &BusSettings, name: &str, topology: Option<Topology>, ready: Option<ReadyFlag>) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                name: name.to_string(),
                topology,
                window: Semaphore::new(settings.confirm_window.max(1)),
                live: Mutex::new(Live {
                    generation: 0,
                    conn: None,
                    channel: None,
                    down_since: None,
                }),
                current: std::sync::RwLock::new(None),
                ready,
            }),
        }
    }

    /// Connects now (instead of on first publish) and returns any error.
    pub async fn connect(&self) -> Result<(), PublishError> {
        self.channel().await.map(|_| ())
    }

    /// Publishes one message and waits for the broker's confirm, within the publish timeout.
    ///
    /// Many concurrent calls share one channel; at most `confirm_window` await confirms at once.
    /// Waiting for a window slot is bounded by the timeout too (slots free up as publishes in
    /// flight are confirmed or time out), so a publish takes at most twice the timeout.
    pub async fn publish(&self, msg: &Outgoing) -> Result<(), PublishError> {
        let mut result = self.publish_timed(msg).await;
        if result.is_ok() && self.inner.settings.duplicate_publishes {
            result = self.publish_timed(msg).await;
        }
        if let Err(e) = &result {
            PublishFailed {
                exchange: &msg.exchange,
                routing_key: &msg.routing_key,
                kind: e.kind(),
                error: &e.to_string(),
            }
            .emit();
        }
        result
    }

    async fn publish_timed(&self, msg: &Outgoing) -> Result<(), PublishError> {
        let timeout = self.inner.settings.publish_timeout;
        let timed_out = || PublishError::Timeout {
            exchange: msg.exchange.clone(),
            routing_key: msg.routing_key.clone(),
            timeout,
        };
        // The permit bounds the confirms in flight; it is held until this one is confirmed.
        let _permit = match tokio::time::timeout(timeout, self.inner.window.acquire()).await {
            Ok(Ok(p)) => p,
            _ => return Err(timed_out()),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let (generation, channel) = match tokio::time::timeout_at(deadline, self.channel()).await {
            Ok(r) => r?,
            Err(_) => return Err(timed_out()),
        };
        match tokio::time::timeout_at(deadline, self.send(&channel, msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if matches!(e, PublishError::Broker { .. }) {
                    self.invalidate(Some(generation)).await;
                }
                Err(e)
            }
            Err(_) => {
                // A confirm that never came leaves this channel in an unknown state: replace
                // it (only it: a newer connection opened by another task is left alone).
                self.invalidate(Some(generation)).await;
                Err(timed_out())
            }
        }
    }

    /// Publishes, retrying transient failures with exponential backoff until `deadline`.
    /// An unroutable message is not retried. May publish duplicates; never loses silently.
    pub async fn publish_reliably(&self, msg: &Outgoing, deadline: Duration) -> Result<(), PublishError> {
        let started = Instant::now();
        (|| self.publish(msg))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_jitter()
                    .without_max_times(),
            )
            .when(|e: &PublishError| e.is_transient() && started.elapsed() < deadline)
            .await
    }

    /// Sends on `channel` and waits for the confirm.
    async fn send(&self, channel: &Channel, msg: &Outgoing) -> Result<(), PublishError> {
        let opts = BasicPublishOptions {
            mandatory: msg.mandatory,
            ..BasicPublishOptions::default()
        };
        let sent = channel
            .basic_publish(
                msg.exchange.as_str().into(),
                msg.routing_key.as_str().into(),
                opts,
                &msg.body,
                lapin::BasicProperties::from(&msg.properties),
            )
            .await;
        let confirm = match sent {
            Ok(c) => c.await,
            Err(e) => Err(e),
        };
        match confirm {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
            // A mandatory unroutable message is returned, then acked: check the return first.
            Ok(Confirmation::Ack(Some(returned))) | Ok(Confirmation::Nack(Some(returned))) => {
                Err(PublishError::Unroutable {
                    exchange: msg.exchange.clone(),
                    routing_key: msg.routing_key.clone(),
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.as_str().to_string(),
                })
            }
            Ok(Confirmation::Nack(None)) => Err(PublishError::Nacked {
                exchange: msg.exchange.clone(),
                routing_key: msg.routing_key.clone(),
            }),
            Err(source) => Err(PublishError::Broker {
                exchange: msg.exchange.clone(),
                source,
            }),
        }
    }

    /// The live channel, opening a connection when there is none or the old one broke.
    async fn channel(&self) -> Result<(u64, Channel), PublishError> {
        if let Ok(current) = self.inner.current.read()
            && let Some((generation, ch)) = current.as_ref()
            && ch.status().connected()
        {
            return Ok((*generation, ch.clone()));
        }
        let mut live = self.inner.live.lock().await;
        if let (Some(conn), Some(ch)) = (&live.conn, &live.channel)
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok((live.generation, ch.clone()));
        }
        if let Some(old) = live.conn.take() {
            connect::close_in_background(old);
        }
        live.channel = None;
        live.down_since.get_or_insert_with(Instant::now);
        if let Some(r) = &self.inner.ready {
            r.set(false);
        }
        let (conn, ch) = connect::open(&self.inner.settings, &self.inner.name).await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|source| PublishError::Broker {
                exchange: String::new(),
                source,
            })?;
        if let Some(t) = &self.inner.topology {
            t.declare(&ch).await.map_err(|e| PublishError::Broker {
                exchange: e.object.clone(),
                source: e.source,
            })?;
        }
        live.generation += 1;
        if let Some(since) = live.down_since.take()
            && live.generation > 1
        {
            BusReconnected {
                role: "publisher",
                downtime: since.elapsed(),
            }
            .emit();
        }
        live.conn = Some(conn);
        live.channel = Some(ch.clone());
        self.set_current(Some((live.generation, ch.clone())));
        if let Some(r) = &self.inner.ready {
            r.set(true);
        }
        Ok((live.generation, ch))
    }

    /// Drops the connection so the next publish opens a fresh one. With a generation, only
    /// that connection is dropped: a publish that failed on an old connection must not tear
    /// down the new one another task just opened.
    async fn invalidate(&self, generation: Option<u64>) {
        let mut live = self.inner.live.lock().await;
        if generation.is_some_and(|g| g != live.generation) {
            return;
        }
        live.channel = None;
        self.set_current(None);
        if let Some(conn) = live.conn.take() {
            live.down_since = Some(Instant::now());
            connect::close_in_background(conn);
        }
    }

    fn set_current(&self, value: Option<(u64, Channel)>) {
        if let Ok(mut current) = self.inner.current.write() {
            *current = value;
        }
    }

    /// Closes the connection (graceful shutdown).
    pub async fn close(&self) {
        let mut live = self.inner.live.lock().await;
        self.set_current(None);
        // The channel is closed before its connection: closing a connection under an open
        // channel makes lapin log its own channel close as a connection error.
        if let Some(ch) = live.channel.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), ch.close(200, "pvefleet: shutdown".into())).await;
        }
        if let Some(conn) = live.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "pvefleet: shutdown".into())).await;
        }
    }
}
