//! The one driver of every loop that runs on a period: reconcilers and scans (HA drift, the
//! autoscaler tick, saga deadlines, the vmid lease sync, the parked gauge, inbox pruning, the
//! outbox relay). Each task names itself, says how often it runs and whether something can
//! poke it early, and gives one pass; the driver runs the passes until shutdown and reports
//! each on `/metrics`:
//!
//! - `pvefleet_task_runs_total{task, outcome="ok"|"error"}`;
//! - `pvefleet_task_last_run_timestamp_seconds{task}` and
//!   `pvefleet_task_last_success_timestamp_seconds{task}` (a stuck task shows as an old one);
//! - `pvefleet_task_duration_seconds{task}`.
//!
//! A failed pass is logged with its whole error chain and the task runs again at its next
//! period: a reconciler that fails once must not stop reconciling.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the driver does after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait for the period (or a poke).
    Wait,
    /// Run again at once (a batch came back full).
    Now,
}

impl From<()> for Next {
    fn from(_: ()) -> Self {
        Next::Wait
    }
}

/// A task that runs on a period.
#[derive(Debug, Clone)]
pub struct Periodic {
    name: &'static str,
    every: Duration,
    first_at_once: bool,
    poke: Option<Arc<Notify>>,
}

impl Periodic {
    /// `name` (its label on `/metrics` and in logs) every `every`; the first pass waits one
    /// period unless `at_once`.
    pub fn new(name: &'static str, every: Duration) -> Self {
        Self {
            name,
            every,
            first_at_once: false,
            poke: None,
        }
    }

    /// The first pass runs at start.
    pub fn at_once(mut self) -> Self {
        self.first_at_once = true;
        self
    }

    /// A notify on `poke` starts the next pass before the period ends.
    pub fn poked_by(mut self, poke: Arc<Notify>) -> Self {
        self.poke = Some(poke);
        self
    }

    /// Runs `pass` until `shutdown`. A pass in progress finishes; none starts after shutdown.
    pub async fn run<F, Fut, T, E>(self, shutdown: CancellationToken, mut pass: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Into<Next>,
        E: std::fmt::Debug,
    {
        let task = self.name;
        let mut next = if self.first_at_once { Next::Now } else { Next::Wait };
        loop {
            if next == Next::Wait {
                let poked = async {
                    match &self.poke {
                        Some(p) => p.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.every) => {}
                    _ = poked => {}
                }
            } else if shutdown.is_cancelled() {
                return;
            }
            let started = std::time::Instant::now();
            let result = pass().await;
            metrics::histogram!("pvefleet_task_duration_seconds", "task" => task)
                .record(started.elapsed().as_secs_f64());
            metrics::gauge!("pvefleet_task_last_run_timestamp_seconds", "task" => task).set(now());
            next = match result {
                Ok(done) => {
                    metrics::counter!("pvefleet_task_runs_total", "task" => task, "outcome" => "ok").increment(1);
                    metrics::gauge!("pvefleet_task_last_success_timestamp_seconds", "task" => task).set(now());
                    done.into()
                }
                Err(e) => {
                    metrics::counter!("pvefleet_task_runs_total", "task" => task, "outcome" => "error").increment(1);
                    tracing::warn!(task, error = ?e, every_ms = self.every.as_millis() as u64, "A periodic task failed; it runs again next period.");
                    Next::Wait
                }
            };
        }
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn passes_run_on_the_period_again_after_a_failure_at_once_when_full_and_early_when_poked() {
        let runs = Arc::new(AtomicU32::new(0));
        let poke = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (runs, stop, poke) = (runs.clone(), stop.clone(), poke.clone());
            Periodic::new("test", Duration::from_secs(60))
                .at_once()
                .poked_by(poke)
                .run(stop, move || {
                    let n = runs.fetch_add(1, Ordering::SeqCst);
                    async move {
                        match n {
                            0 => Err("first pass fails"),
                            1 => Ok(Next::Now),
                            _ => Ok(Next::Wait),
                        }
                    }
                })
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "the first pass at once; its failure waits a period"
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "after the period, and at once again after a full batch"
        );
        poke.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4, "a poke runs it early");
        stop.cancel();
        task.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 4, "none after shutdown");
    }
}
