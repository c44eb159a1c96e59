//! Handling one delivery: envelope and schema checks, the handler call, and what each outcome
//! means for the broker (ack, retry through a wait tier, park). Used directly for workers
//! without an inbox, and by `batch` for workers with one.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use pvefleet_contracts::envelope::CONTENT_TYPE_JSON;
use pvefleet_contracts::routing::{PARKED_EXCHANGE, wait_tier};
use pvefleet_contracts::{TraceContext, headers};
use serde_json::Value;
use tracing::Instrument;

use super::envelope::{HeaderValue, Properties};
use super::fields::{header_i64, header_str, message_type};
use super::handler::{Context, Outcome, Route};
use super::outgoing::Outgoing;
use super::runner::Shared;
use crate::instrument::{MessageHandled, MessageParked, MessageRetried};

/// What the runner reads from a delivery's envelope before anything else.
pub(super) struct Meta {
    pub attempt: u32,
    pub mtype: String,
    pub message_id: String,
    pub trace: TraceContext,
    pub correlation_id: Option<uuid::Uuid>,
    pub span: tracing::Span,
}

impl Meta {
    pub(super) fn of(shared: &Shared, d: &Delivery) -> Self {
        let props = &d.properties;
        let attempt = header_i64(props, headers::ATTEMPT)
            .and_then(|a| u32::try_from(a).ok())
            .filter(|a| *a >= 1)
            .unwrap_or(1);
        let mtype = message_type(props).unwrap_or_default();
        let message_id = props
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        let parent = header_str(props, headers::TRACEPARENT).and_then(|t| TraceContext::parse(&t));
        let trace = parent.map(|t| t.child()).unwrap_or_else(TraceContext::new_root);
        let correlation_id = props
            .correlation_id()
            .as_ref()
            .and_then(|c| uuid::Uuid::parse_str(c.as_str()).ok());
        let span = tracing::info_span!(
            "message",
            queue = %shared.spec.queue,
            message_type = %mtype,
            message_id = %message_id,
            correlation_id = correlation_id.map(|c| c.to_string()).unwrap_or_default(),
            attempt,
            redelivered = d.redelivered,
            trace_id = %trace.trace_id_hex(),
            parent_span_id = parent.map(|p| format!("{:016x}", p.span_id)).unwrap_or_default(),
        );
        Self {
            attempt,
            mtype,
            message_id,
            trace,
            correlation_id,
            span,
        }
    }

    /// The handler's context for this message.
    pub(super) fn context<'a>(
        &self,
        shared: &'a Shared,
        d: &Delivery,
        db: Option<&'a dyn crate::db::Sql>,
    ) -> Context<'a> {
        Context {
            message_id: self.message_id.clone(),
            correlation_id: self.correlation_id,
            attempt: self.attempt,
            redelivered: d.redelivered,
            trace: self.trace,
            queue: &shared.spec.queue,
            publisher: &shared.deps.publisher,
            db,
            app_id: &shared.spec.name,
        }
    }
}

/// Calls the handler; a panic becomes a retry instead of killing the worker.
pub(super) async fn call(route: &Route, body: Value, ctx: &Context<'_>) -> Outcome {
    match AssertUnwindSafe((route.call)(body, ctx)).catch_unwind().await {
        Ok(handled) => Outcome::from(handled),
        Err(panic) => Outcome::retry(format!("handler panicked: {}", panic_message(panic.as_ref()))),
    }
}

/// The text of a caught panic.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Why a message is parked without reaching a handler.
pub(super) struct Rejection {
    pub class: &'static str,
    pub reason: String,
    /// The route's notice for a schema-invalid body, with that body.
    pub notice: Option<(std::sync::Arc<super::handler::InvalidFn>, Value)>,
}

fn reject(class: &'static str, reason: String) -> Rejection {
    Rejection {
        class,
        reason,
        notice: None,
    }
}

/// Parks a rejected delivery; first publishes the route's notice for a schema-invalid body,
/// and if that publish fails, retries the message later instead of parking it silently.
pub(super) async fn park_rejected(shared: &Shared, d: &Delivery, meta: &Meta, r: Rejection) {
    if let Some((notice, body)) = &r.notice {
        let origin = super::outgoing::Origin {
            correlation_id: meta.correlation_id,
            causation_id: Some(meta.message_id.clone()),
            trace: Some(meta.trace),
            app_id: Some(shared.spec.name.clone()),
        };
        if let Some(out) = notice(body, &r.reason, &origin)
            && let Err(e) = shared.deps.publisher.publish(&out).await
        {
            let error = format!("cannot publish the rejection notice: {e}");
            return retry_outage(shared, d, &meta.mtype, meta.attempt, &error).await;
        }
    }
    park(shared, d, r.class, &r.reason, meta.attempt).await;
}

impl Shared {
    /// Checks the envelope and body before any handler sees the message.
    pub(super) fn check<'r>(&'r self, d: &Delivery) -> Result<(&'r Route, Value), Rejection> {
        let props = &d.properties;
        match props.content_type().as_ref().map(|c| c.as_str()) {
            None => {
                return Err(reject(
                    "content-type",
                    format!("message has no content_type; expected {CONTENT_TYPE_JSON}"),
                ));
            }
            Some(ct) => {
                let base = ct.split(';').next().unwrap_or_default().trim();
                if !base.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
                    return Err(reject(
                        "content-type",
                        format!("content_type is '{ct}'; expected {CONTENT_TYPE_JSON}"),
                    ));
                }
            }
        }
        let Some(mtype) = message_type(props) else {
            return Err(reject("unknown-type", "message has no type property".into()));
        };
        let Some(route) = self.router.routes.get(mtype.as_str()) else {
            return Err(reject(
                "unknown-type",
                format!(
                    "type '{mtype}' is not handled on queue {} (it handles: {})",
                    self.spec.queue,
                    self.router.types().join(", ")
                ),
            ));
        };
        if let Some(v) = header_i64(props, headers::SCHEMA_VERSION)
            && v != i64::from(route.info.version)
        {
            return Err(reject(
                "unknown-type",
                format!(
                    "version {v} of '{mtype}' is not supported; this consumer reads v{}",
                    route.info.version
                ),
            ));
        }
        // From here the route is known: a body it cannot read gets its notice too, so an
        // upstream publisher learns why (with no fields to name).
        let refused = |class: &'static str, reason: String| Rejection {
            class,
            reason,
            notice: route.on_invalid.clone().map(|n| (n, Value::Null)),
        };
        if props.message_id().as_ref().is_none_or(|m| m.as_str().is_empty()) {
            return Err(refused("invalid-envelope", "message has no message_id".into()));
        }
        if d.data.is_empty() {
            return Err(refused("decode", "body is empty".into()));
        }
        if d.data.len() > self.spec.max_body_bytes {
            return Err(refused(
                "too-large",
                format!(
                    "body is {} bytes; the limit is {}",
                    d.data.len(),
                    self.spec.max_body_bytes
                ),
            ));
        }
        let text = std::str::from_utf8(&d.data).map_err(|e| {
            refused(
                "decode",
                format!("body is not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()),
            )
        })?;
        let body: Value =
            serde_json::from_str(text).map_err(|e| refused("decode", format!("body is not JSON: {e}")))?;
        if let Some(validator) = route.validator.as_ref().filter(|v| !v.is_valid(&body)) {
            let errors: Vec<String> = validator
                .iter_errors(&body)
                .take(5)
                .map(|e| {
                    let path = e.instance_path().to_string();
                    format!("{}: {e}", if path.is_empty() { "/".to_string() } else { path })
                })
                .collect();
            if !errors.is_empty() {
                let mut r = reject(
                    "invalid",
                    format!(
                        "body does not match {}: {}",
                        route.info.schema_file(),
                        errors.join("; ")
                    ),
                );
                r.notice = route.on_invalid.clone().map(|n| (n, body));
                return Err(r);
            }
        }
        Ok((route, body))
    }
}

/// Handles one delivery of a worker without an inbox, start to finish. Never panics and never
/// leaves it un-acked except to hand it back to the broker for redelivery.
pub(super) async fn process(shared: &Shared, d: Delivery) {
    if let Some(raw) = &shared.router.raw {
        return super::raw::process(shared, raw.as_ref(), d).await;
    }
    let meta = Meta::of(shared, &d);
    let span = meta.span.clone();
    async {
        let started = Instant::now();
        let (route, body) = match shared.check(&d) {
            Ok(ok) => ok,
            Err(r) => return park_rejected(shared, &d, &meta, r).await,
        };
        let ctx = meta.context(shared, &d, None);
        let outcome = call(route, body, &ctx).await;
        let origin = ctx.origin();
        drop(ctx);
        let elapsed = started.elapsed();
        let (queue, mtype, attempt) = (&shared.spec.queue, meta.mtype.as_str(), meta.attempt);
        match outcome {
            Outcome::Ok => {
                ack(&d).await;
                MessageHandled {
                    queue,
                    message_type: mtype,
                    outcome: "ok",
                    elapsed,
                }
                .emit();
            }
            Outcome::Fail(error) => {
                tracing::warn!(code = %error.code, error = %error.message, "Handler reported a definitive failure.");
                // The body was handed to the handler; failures are rare, so decode it again.
                let body: Value = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                let sent = match route.fail.as_ref().and_then(|f| f(&body, error, &origin)) {
                    Some(Ok(event)) => shared
                        .deps
                        .publisher
                        .publish_reliably(&event, Duration::from_secs(30))
                        .await
                        .map_err(|e| e.to_string()),
                    Some(Err(e)) => Err(format!("cannot encode the failure event: {e}")),
                    None => Ok(()),
                };
                match sent {
                    Ok(()) => {
                        ack(&d).await;
                        MessageHandled {
                            queue,
                            message_type: mtype,
                            outcome: "fail",
                            elapsed,
                        }
                        .emit();
                    }
                    Err(e) => {
                        retry(
                            shared,
                            &d,
                            mtype,
                            attempt,
                            None,
                            &format!("cannot send the failure event: {e}"),
                        )
                        .await
                    }
                }
            }
            Outcome::Retry { after, error } => retry(shared, &d, mtype, attempt, after, &error).await,
            Outcome::Reject(reason) => park(shared, &d, "rejected", &reason, attempt).await,
            Outcome::Outage(error) => retry_outage(shared, &d, mtype, attempt, &error).await,
        }
    }
    .instrument(span)
    .await;
}

/// Sends the message to its wait tier with attempt+1, then acks; parks it once attempts run out.
pub(super) async fn retry(
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
pub(super) async fn retry_outage(shared: &Shared, d: &Delivery, mtype: &str, attempt: u32, error: &str) {
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
pub(super) async fn park(shared: &Shared, d: &Delivery, class: &'static str, reason: &str, attempt: u32) {
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
    let park_id = super::parked::park_id(&spec.queue, &out_props, i64::from(attempt), &d.data);
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

pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub(super) async fn ack(d: &Delivery) {
    match d.acker.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        // The channel was replaced since this delivery: the broker has requeued it already.
        Ok(false) => tracing::warn!("Ack not sent: the delivery's channel is gone; the broker will redeliver it."),
        Err(e) => tracing::warn!(error = %e, "Ack failed; the broker will redeliver the message."),
    }
}

pub(super) async fn nack_requeue(d: &Delivery) {
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
