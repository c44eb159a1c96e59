//! What an outcome means for the broker: a retry through a wait tier, parking with fault
//! headers, ack and nack.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use pvefleet_contracts::headers;
use pvefleet_contracts::routing::{PARKED_EXCHANGE, wait_tier};

use super::truncate;
use crate::bus::envelope::{HeaderValue, Properties};
use crate::bus::fields::message_type;
use crate::bus::outgoing::Outgoing;
use crate::bus::runner::Shared;
use crate::instrument::{MessageParked, MessageRetried};

/// Sends the message to its wait tier with attempt+1, then acks; parks it once attempts run out.
pub(in crate::bus) async fn retry(
    shared: &Shared,
    d: &Delivery,
    mtype: &str,
    attempt: u32,
    after: Option<Duration>,
    error: &str,
) {
    schedule_retry(shared, d, mtype, attempt, after, error, true).await;
}

/// Like [`retry`], for failures of our own infrastructure (the database is down): the message
/// is not at fault, so once its attempts are spent it keeps waiting in the longest tier
/// instead of being parked.
pub(in crate::bus) async fn retry_outage(shared: &Shared, d: &Delivery, mtype: &str, attempt: u32, error: &str) {
    schedule_retry(shared, d, mtype, attempt, None, error, false).await;
}

async fn schedule_retry(
    shared: &Shared,
    d: &Delivery,
    mtype: &str,
    attempt: u32,
    after: Option<Duration>,
    error: &str,
    may_park: bool,
) {
    let spec = &shared.spec;
    let exhausted = attempt >= spec.max_attempts;
    if exhausted && may_park {
        let reason = format!("gave up after {attempt} attempts: {error}");
        return park(shared, d, "retries-exhausted", &reason, attempt).await;
    }
    let tier = if exhausted {
        spec.retry_tiers.last().copied()
    } else {
        spec.tier_for(attempt, after)
    };
    let Some(delay) = tier else {
        let reason = format!("no retry tiers are configured: {error}");
        return park(shared, d, "retries-exhausted", &reason, attempt).await;
    };
    let next_attempt = if exhausted { attempt } else { attempt + 1 };
    let now = chrono::Utc::now().to_rfc3339();
    let mut props = Properties::from(&d.properties);
    props.set_header(headers::ATTEMPT, i64::from(next_attempt));
    props.set_header(headers::RETRY_ORIGIN_QUEUE, spec.queue.as_str());
    if props.header_str(headers::FIRST_FAILURE).is_none() {
        props.set_header(headers::FIRST_FAILURE, now.as_str());
    }
    if props.header_str(headers::fault::ORIGIN_EXCHANGE).is_none() {
        props.set_header(headers::fault::ORIGIN_EXCHANGE, d.exchange.as_str());
        props.set_header(headers::fault::ORIGIN_ROUTING_KEY, d.routing_key.as_str());
    }
    let out = Outgoing {
        exchange: wait_tier(delay),
        // The wait queue dead-letters through the default exchange with this routing key, so
        // the message comes back to this queue only, not to every queue bound to its type.
        routing_key: spec.queue.clone(),
        mandatory: true,
        properties: props,
        body: bytes::Bytes::copy_from_slice(&d.data),
    };
    // Retried with backoff before giving the message back: a nack would bring it straight back
    // to a handler that just failed on it.
    match shared
        .deps
        .publisher
        .publish_reliably(&out, Duration::from_secs(30))
        .await
    {
        Ok(()) => {
            // Ack only after the copy is confirmed in the wait queue: nothing is lost.
            ack(d).await;
            MessageRetried {
                queue: &spec.queue,
                message_type: mtype,
                attempt,
                delay,
                error,
            }
            .emit();
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot schedule the retry; returning the message to the queue.");
            nack_requeue(d).await;
        }
    }
}

/// Publishes the message byte-identical to the parked exchange with fault headers, then acks.
pub(in crate::bus) async fn park(shared: &Shared, d: &Delivery, class: &'static str, reason: &str, attempt: u32) {
    let spec = &shared.spec;
    let mut out_props = Properties::from(&d.properties);
    let props = &d.properties;
    let now = chrono::Utc::now().to_rfc3339();
    let first = out_props
        .header_str(headers::FIRST_FAILURE)
        .unwrap_or_else(|| now.clone());
    let exchange = out_props
        .header_str(headers::fault::ORIGIN_EXCHANGE)
        .unwrap_or_else(|| d.exchange.as_str().to_string());
    let routing_key = out_props
        .header_str(headers::fault::ORIGIN_ROUTING_KEY)
        .unwrap_or_else(|| d.routing_key.as_str().to_string());
    let park_id = crate::bus::parked::park_id(&spec.queue, &out_props, i64::from(attempt), &d.data);
    for (name, value) in [
        (headers::fault::PARK_ID, HeaderValue::from(park_id.to_string())),
        (headers::fault::CLASS, class.into()),
        (headers::fault::MESSAGE, truncate(reason, 4000).into()),
        (headers::fault::ATTEMPTS, i64::from(attempt).into()),
        (headers::fault::ORIGIN_QUEUE, spec.queue.as_str().into()),
        (headers::fault::ORIGIN_EXCHANGE, exchange.into()),
        (headers::fault::ORIGIN_ROUTING_KEY, routing_key.into()),
        (headers::fault::FIRST_FAILURE, first.into()),
        (headers::fault::LAST_FAILURE, now.into()),
        (headers::fault::CONSUMER, spec.name.as_str().into()),
    ] {
        out_props.set_header(name, value);
    }
    let out = Outgoing {
        exchange: PARKED_EXCHANGE.to_string(),
        routing_key: spec.queue.clone(),
        mandatory: true,
        properties: out_props,
        body: bytes::Bytes::copy_from_slice(&d.data),
    };
    let mtype = message_type(props).unwrap_or_default();
    match shared
        .deps
        .publisher
        .publish_reliably(&out, Duration::from_secs(30))
        .await
    {
        Ok(()) => {
            ack(d).await;
            MessageParked {
                queue: &spec.queue,
                message_type: &mtype,
                class,
                reason,
                attempts: attempt,
            }
            .emit();
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot park the message; returning it to the queue.");
            nack_requeue(d).await;
        }
    }
}

pub(in crate::bus) async fn ack(d: &Delivery) {
    match d.acker.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        // The channel was replaced since this delivery: the broker has requeued it already.
        Ok(false) => tracing::warn!("Ack not sent: the delivery's channel is gone; the broker will redeliver it."),
        Err(e) => tracing::warn!(error = %e, "Ack failed; the broker will redeliver the message."),
    }
}

pub(in crate::bus) async fn nack_requeue(d: &Delivery) {
    let opts = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    match d.acker.nack(opts).await {
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "Nack failed; the broker will redeliver the message when the channel closes.")
        }
    }
}
