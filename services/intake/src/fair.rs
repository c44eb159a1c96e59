//! Fair use: a per-token request rate (a token bucket per token, in this replica's memory) and
//! a cap on one owner's sagas in flight (counted in Postgres, so across replicas). Over either,
//! the answer is 429 with `Retry-After`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use uuid::Uuid;

use crate::{Problem, db_problem};

/// Token buckets, one per token: `burst` requests at once, refilled at `rate` a second.
pub(crate) struct RateLimits {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<Uuid, (f64, Instant)>>,
}

/// Buckets untouched this long are dropped (they would be full again anyway).
const IDLE: Duration = Duration::from_secs(600);

impl RateLimits {
    pub(crate) fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `token`'s bucket; `Err(wait)` when it is empty.
    pub(crate) fn take(&self, token: Uuid) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 10_000 {
            buckets.retain(|_, (_, at)| now.duration_since(*at) < IDLE);
        }
        let (level, at) = buckets.entry(token).or_insert((self.burst, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *level) / self.rate))
        }
    }
}

/// A 429 with `Retry-After` (whole seconds, at least 1).
pub(crate) fn too_many(detail: String, wait: Duration) -> Problem {
    let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", detail);
    p.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
    p
}

/// Refuses a new saga for `owner` when it has `max` in flight already (0: no cap): accepted
/// and not started (for a quarter of an hour at most: a request the coordinator refused never
/// starts), running or compensating.
pub(crate) async fn in_flight(tx: &deadpool_postgres::Transaction<'_>, owner: &str, max: u32) -> Result<(), Problem> {
    if max == 0 {
        return Ok(());
    }
    let n: i64 = tx
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM accepted_sagas a LEFT JOIN sagas g ON g.id = a.saga_id
              WHERE a.owner = $1
                AND ((g.id IS NULL AND a.accepted_at > now() - interval '15 minutes')
                     OR g.state IN ('running', 'compensating'))
              LIMIT $2) f",
            &[&owner, &i64::from(max)],
        )
        .await
        .map_err(db_problem)?
        .get(0);
    if n >= i64::from(max) {
        return Err(too_many(
            format!("Owner '{owner}' has {max} sagas in flight, the limit; try again when some have ended."),
            Duration::from_secs(5),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let limits = RateLimits::new(10.0, 3);
        let t = Uuid::now_v7();
        assert!(limits.take(t).is_ok() && limits.take(t).is_ok() && limits.take(t).is_ok());
        let wait = limits.take(t).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        // Another token has its own bucket.
        assert!(limits.take(Uuid::now_v7()).is_ok());
        std::thread::sleep(Duration::from_millis(120));
        assert!(limits.take(t).is_ok());
        assert!(RateLimits::new(0.0, 1).take(t).is_ok() && RateLimits::new(0.0, 1).take(t).is_ok());
    }
}
