//! The consumer runner: `run_worker(deps, router, spec, shutdown)`.
//!
//! It owns every broker detail: prefetch = concurrency; decode and schema check; a span per
//! message continuing the publisher's trace; dedupe through the inbox; the handler call; then
//! ack only after the effects and outgoing messages are durable. Handler outcomes map to broker
//! actions exactly as DESIGN.md §4 says (`deliver`); workers with an inbox handle messages in
//! per-batch transactions (`batch`). A broken connection is replaced, not waited on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::Router;
use super::publisher::Publisher;
use super::topology::Topology;
use super::{batch, connect, deliver};
use crate::config::{BusSettings, Settings};
use crate::http::ReadyFlag;
use crate::instrument::BusReconnected;

/// How one worker consumes.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// The consumer's name: the inbox key, `app_id` on what it sends, and the connection name.
    pub name: String,
    /// The queue to consume.
    pub queue: String,
    /// Messages handled at once; the prefetch equals it.
    pub concurrency: u16,
    /// How long shutdown waits for in-flight handlers.
    pub drain_timeout: Duration,
    /// Attempts before a retried message is parked.
    pub max_attempts: u32,
    /// Wait tiers; attempt n waits in tier n-1 (the last repeats).
    pub retry_tiers: Vec<Duration>,
    /// Bodies larger than this are parked unread.
    pub max_body_bytes: usize,
    /// Dedupe through the inbox, in the handler's transaction. Needs a database.
    pub inbox: bool,
    /// With the inbox on: database connections handling batches at once. Each batch is one
    /// transaction of up to `concurrency / inbox_connections` messages.
    pub inbox_connections: u16,
    /// With the inbox on: inbox rows older than this are deleted, at start and hourly.
    pub inbox_retention: Duration,
    /// With the inbox on: woken after each batch commits, so an outbox relay publishes what
    /// the handlers queued at once instead of at its next poll.
    pub after_commit: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl WorkerSpec {
    /// A spec from the process settings.
    pub fn from_settings(name: &str, queue: &str, settings: &Settings) -> Self {
        Self {
            name: name.to_string(),
            queue: queue.to_string(),
            concurrency: settings.worker.concurrency.max(1),
            drain_timeout: settings.worker.drain_timeout,
            max_attempts: settings.bus.max_attempts.max(1),
            retry_tiers: settings.bus.retry_tiers.clone(),
            max_body_bytes: 1024 * 1024,
            inbox: false,
            inbox_connections: u16::try_from(settings.db.pool_size / 2)
                .unwrap_or(u16::MAX)
                .clamp(1, settings.worker.concurrency.max(1)),
            inbox_retention: settings.db.inbox_retention,
            after_commit: None,
        }
    }

    /// The most messages one inbox transaction takes. At most 64: Postgres caches 64
    /// subtransaction ids per backend, and each message is one savepoint.
    pub fn inbox_batch(&self) -> usize {
        let slots = usize::from(self.inbox_connections.max(1));
        usize::from(self.concurrency.max(1)).div_ceil(slots).min(64)
    }

    /// The wait before attempt `attempt + 1`: the attempt's tier, or a longer one if the
    /// handler asked for at least `after`.
    pub fn tier_for(&self, attempt: u32, after: Option<Duration>) -> Option<Duration> {
        let idx = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        let by_attempt = self.retry_tiers.get(idx).or(self.retry_tiers.last()).copied()?;
        match after {
            Some(min) if min > by_attempt => self
                .retry_tiers
                .iter()
                .copied()
                .find(|t| *t >= min)
                .or(self.retry_tiers.last().copied()),
            _ => Some(by_attempt),
        }
    }
}

/// What a worker needs from its process.
#[derive(Clone)]
pub struct WorkerDeps {
    /// Broker settings (the consumer opens its own connection).
    pub bus: BusSettings,
    /// Declared on every (re)connect before consuming.
    pub topology: Topology,
    /// For retries, parking, failure events and handler output.
    pub publisher: Publisher,
    /// For the inbox and handlers' state.
    pub db: Option<deadpool_postgres::Pool>,
    /// Set while consuming.
    pub ready: Option<ReadyFlag>,
}

pub(super) struct Shared {
    pub deps: WorkerDeps,
    pub router: Router,
    pub spec: WorkerSpec,
}

/// Consumes `spec.queue` until `shutdown` is cancelled, then drains in-flight handlers within
/// `spec.drain_timeout` and closes. Reconnects on its own after any broker failure.
pub async fn run_worker(
    deps: WorkerDeps,
    router: Router,
    spec: WorkerSpec,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if spec.inbox && deps.db.is_none() {
        anyhow::bail!("worker {} has the inbox on but no database", spec.name);
    }
    if spec.inbox && router.raw.is_some() {
        anyhow::bail!(
            "worker {} is raw: its messages have no ids an inbox could keep",
            spec.name
        );
    }
    let shared = Arc::new(Shared { deps, router, spec });
    let permits = Arc::new(Semaphore::new(usize::from(shared.spec.concurrency)));
    let tracker = TaskTracker::new();
    // With the inbox on, deliveries go to a few batch handlers, each holding one connection.
    let batches = if shared.spec.inbox {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<(Delivery, OwnedSemaphorePermit)>(usize::from(shared.spec.concurrency));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..shared.spec.inbox_connections.max(1) {
            tracker.spawn(batch_slot(shared.clone(), rx.clone()));
        }
        tracker.spawn(prune_inbox(shared.clone(), shutdown.clone()));
        Some(tx)
    } else {
        None
    };
    let mut failures: u32 = 0;
    let mut down_since: Option<Instant> = None;

    'connect: while !shutdown.is_cancelled() {
        let session = match open_session(&shared).await {
            Ok(s) => s,
            Err(e) => {
                failures = failures.saturating_add(1);
                down_since.get_or_insert_with(Instant::now);
                let delay =
                    Duration::from_millis(250u64.saturating_mul(1 << failures.min(5))).min(Duration::from_secs(5));
                tracing::warn!(queue = %shared.spec.queue, error = ?e, retry_in_ms = delay.as_millis() as u64, "Cannot consume; will reconnect.");
                tokio::select! {
                    _ = shutdown.cancelled() => break 'connect,
                    _ = tokio::time::sleep(delay) => continue 'connect,
                }
            }
        };
        if let Some(since) = down_since.take() {
            BusReconnected {
                role: "consumer",
                downtime: since.elapsed(),
            }
            .emit();
        }
        failures = 0;
        let Session {
            conn,
            channel,
            mut consumer,
            tag,
        } = session;
        if let Some(r) = &shared.deps.ready {
            r.set(true);
        }
        tracing::info!(queue = %shared.spec.queue, prefetch = shared.spec.concurrency, "Consuming.");
        let mut health = tokio::time::interval(Duration::from_secs(1));
        loop {
            // Wait for a free handler slot first, so prefetched messages are not pulled early.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => None,
                p = permits.clone().acquire_owned() => p.ok(),
            };
            let Some(permit) = permit else {
                // Stop intake: the broker stops delivering, unacked prefetched messages are
                // requeued when the channel closes after the drain.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
                )
                .await;
                drop(batches);
                drain(&tracker, shared.spec.drain_timeout).await;
                connect::close_cleanly(&channel, conn).await;
                return Ok(());
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => continue, // handled at the top of the loop
                _ = health.tick() => {
                    if conn.status().connected() && channel.status().connected() {
                        continue;
                    }
                    tracing::warn!(queue = %shared.spec.queue, "The consumer's connection is down; reconnecting.");
                    None
                }
                n = consumer.next() => n,
            };
            match next {
                Some(Ok(delivery)) => match &batches {
                    Some(tx) => {
                        // Capacity equals the permits, so this never waits.
                        if let Err(e) = tx.send((delivery, permit)).await {
                            tracing::error!(error = %e, "The batch handlers are gone; the message will be redelivered.");
                        }
                    }
                    None => {
                        let shared = shared.clone();
                        tracker.spawn(async move {
                            deliver::process(&shared, delivery).await;
                            drop(permit);
                        });
                    }
                },
                Some(Err(e)) => {
                    tracing::warn!(queue = %shared.spec.queue, error = %e, "The consumer failed; reconnecting.");
                    break;
                }
                None => {
                    tracing::warn!(queue = %shared.spec.queue, "The broker cancelled the consumer; reconnecting.");
                    break;
                }
            }
        }
        if let Some(r) = &shared.deps.ready {
            r.set(false);
        }
        down_since = Some(Instant::now());
        connect::close_in_background(conn);
    }
    drop(batches);
    drain(&tracker, shared.spec.drain_timeout).await;
    Ok(())
}

/// One batch handler: takes what is waiting (at least one delivery, at most a batch) and
/// handles it in one transaction.
async fn batch_slot(
    shared: Arc<Shared>,
    rx: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<(Delivery, OwnedSemaphorePermit)>>>,
) {
    let max = shared.spec.inbox_batch();
    loop {
        let mut taken = Vec::with_capacity(max);
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(first) => taken.push(first),
                None => return,
            }
            while taken.len() < max {
                match rx.try_recv() {
                    Ok(next) => taken.push(next),
                    Err(_) => break,
                }
            }
        }
        let (deliveries, permits): (Vec<Delivery>, Vec<OwnedSemaphorePermit>) = taken.into_iter().unzip();
        // Handler panics are caught inside; this keeps the slot alive through any other bug.
        // The batch's deliveries are then redelivered when the channel closes.
        if let Err(panic) = AssertUnwindSafe(batch::process_batch(&shared, deliveries))
            .catch_unwind()
            .await
        {
            let what = deliver::panic_message(panic.as_ref());
            tracing::error!(panic = %what, "A batch failed unexpectedly; its messages will be redelivered.");
        }
        drop(permits);
    }
}

/// Keeps the inbox bounded: deletes rows past the retention, at start and then hourly.
async fn prune_inbox(shared: Arc<Shared>, shutdown: CancellationToken) {
    let Some(pool) = shared.deps.db.clone() else { return };
    let (pool, retention) = (&pool, shared.spec.inbox_retention);
    crate::periodic::Periodic::new("inbox_prune", Duration::from_secs(3600))
        .at_once()
        .run(shutdown, || async move {
            let c = pool.get().await?;
            let n = crate::db::inbox::prune(&c, retention).await?;
            if n > 0 {
                tracing::info!(rows = n, "Pruned old inbox rows.");
            }
            anyhow::Ok(())
        })
        .await
}

async fn drain(tracker: &TaskTracker, deadline: Duration) {
    tracker.close();
    if tokio::time::timeout(deadline, tracker.wait()).await.is_err() {
        tracing::warn!(
            still_running = tracker.len(),
            "Drain deadline passed; closing anyway. Unacked messages will be redelivered."
        );
    }
}

struct Session {
    conn: lapin::Connection,
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    tag: String,
}

async fn open_session(shared: &Shared) -> anyhow::Result<Session> {
    let spec = &shared.spec;
    let (conn, channel) = connect::open(&shared.deps.bus, &format!("{}-consumer", spec.name)).await?;
    let setup = async {
        shared.deps.topology.declare(&channel).await?;
        channel.basic_qos(spec.concurrency, BasicQosOptions::default()).await?;
        let tag = format!("{}-{}", spec.name, uuid::Uuid::new_v4());
        let consumer = channel
            .basic_consume(
                spec.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, anyhow::Error>((consumer, tag))
    };
    match tokio::time::timeout(shared.deps.bus.connect_timeout, setup).await {
        Ok(Ok((consumer, tag))) => Ok(Session {
            conn,
            channel,
            consumer,
            tag,
        }),
        Ok(Err(e)) => {
            connect::close_in_background(conn);
            Err(e)
        }
        Err(_) => {
            connect::close_in_background(conn);
            anyhow::bail!("setting up the consumer timed out")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn spec(tiers: &[u64], max: u32) -> WorkerSpec {
        WorkerSpec {
            name: "t".into(),
            queue: "q".into(),
            concurrency: 1,
            drain_timeout: Duration::from_secs(1),
            max_attempts: max,
            retry_tiers: tiers.iter().map(|s| Duration::from_secs(*s)).collect(),
            max_body_bytes: 10,
            inbox: false,
            inbox_connections: 1,
            inbox_retention: Duration::from_secs(3600),
            after_commit: None,
        }
    }

    #[test]
    fn each_attempt_waits_in_the_next_tier_and_the_last_tier_repeats() {
        let s = spec(&[1, 5, 30], 10);
        let waits: Vec<_> = (1..=5).map(|a| s.tier_for(a, None).unwrap().as_secs()).collect();
        assert_eq!(waits, vec![1, 5, 30, 30, 30]);
    }

    #[test]
    fn a_requested_delay_picks_a_long_enough_tier() {
        let s = spec(&[1, 5, 30], 10);
        assert_eq!(
            s.tier_for(1, Some(Duration::from_secs(4))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            s.tier_for(1, Some(Duration::from_secs(400))),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            s.tier_for(3, Some(Duration::from_secs(2))),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn no_tiers_means_no_retry() {
        assert_eq!(spec(&[], 10).tier_for(1, None), None);
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(deliver::truncate("héllo", 2), "h");
        assert_eq!(deliver::truncate("abc", 10), "abc");
    }

    #[test]
    fn inbox_batches_split_the_concurrency_over_the_connections() {
        let mut s = spec(&[1], 3);
        s.concurrency = 256;
        s.inbox_connections = 16;
        assert_eq!(s.inbox_batch(), 16);
        s.inbox_connections = 3;
        assert_eq!(s.inbox_batch(), 64, "capped by the subtransaction cache");
        s.concurrency = 1;
        assert_eq!(s.inbox_batch(), 1);
    }
}
