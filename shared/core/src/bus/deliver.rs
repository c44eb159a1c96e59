//! Handling one delivery: envelope and schema checks, the handler call, and what each outcome
//! means for the broker (ack, retry through a wait tier, park). Used directly for workers
//! without an inbox, and by `batch` for workers with one.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use lapin::message::Delivery;
use pvefleet_contracts::{TraceContext, headers};
use serde_json::Value;
use tracing::Instrument;

use super::fields::{header_i64, header_str, message_type};
use super::handler::{Context, Outcome, Route};
use super::runner::Shared;
use crate::instrument::MessageHandled;

mod check;
mod settle;

pub(super) use check::park_rejected;
pub(super) use settle::{ack, nack_requeue, park, retry, retry_outage};

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
            service = %shared.spec.name,
            queue = %shared.spec.queue,
            message_type = %mtype,
            message_id = %message_id,
            correlation_id = correlation_id.map(|c| c.to_string()).unwrap_or_default(),
            attempt,
            redelivered = d.redelivered,
            trace_id = %trace.trace_id_hex(),
            parent_span_id = parent.map(|p| format!("{:016x}", p.span_id)).unwrap_or_default(),
        );
        // Exported, the span is the sender's child and its own id is the parent of what the
        // handler sends.
        let trace = crate::telemetry::adopt(&span, parent).unwrap_or(trace);
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
