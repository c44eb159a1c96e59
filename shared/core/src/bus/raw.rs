//! Raw workers: a queue whose deliveries are not commands or events of the contract (the
//! parked queue, whose messages are whatever gave up) goes to one handler that sees each
//! delivery as it came, unchecked. The runner still owns the broker: it acks after `Ok`, and
//! on any error holds the delivery for the wait asked (a second by default) and hands it back
//! to the queue unchanged, never dropping it, since a raw queue has nowhere to park.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use lapin::message::Delivery;
use tracing::Instrument;

use super::deliver::{Meta, ack, nack_requeue, panic_message};
use super::envelope::Properties;
use super::failure::{Handled, HandlerError};
use super::handler::Context;
use super::runner::Shared;

/// A delivery as it came: properties, body, and where it was published.
#[derive(Clone, Debug)]
pub struct Received {
    /// The properties and headers.
    pub properties: Properties,
    /// The body, byte for byte.
    pub body: Bytes,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Whether the broker delivered it before (a consumer died before acking).
    pub redelivered: bool,
}

impl Received {
    /// The view of a delivery.
    pub(crate) fn of(d: &Delivery) -> Self {
        Self {
            properties: Properties::from(&d.properties),
            body: Bytes::copy_from_slice(&d.data),
            exchange: d.exchange.as_str().to_string(),
            routing_key: d.routing_key.as_str().to_string(),
            redelivered: d.redelivered,
        }
    }
}

/// Handles every delivery of a raw queue.
#[async_trait]
pub trait RawHandler: Send + Sync + 'static {
    /// Handles one delivery: `Ok` acks it; an error hands it back to the queue after a wait.
    async fn handle(&self, msg: Received, ctx: &Context<'_>) -> Handled;
}

/// One delivery of a raw worker, start to finish.
pub(super) async fn process(shared: &Shared, handler: &dyn RawHandler, d: Delivery) {
    let meta = Meta::of(shared, &d);
    let span = meta.span.clone();
    async {
        let ctx = meta.context(shared, &d, None);
        let handled = match AssertUnwindSafe(handler.handle(Received::of(&d), &ctx))
            .catch_unwind()
            .await
        {
            Ok(h) => h,
            Err(panic) => Err(HandlerError::transient(format!(
                "handler panicked: {}",
                panic_message(panic.as_ref())
            ))),
        };
        drop(ctx);
        match handled {
            Ok(()) => ack(&d).await,
            Err(e) => {
                let wait = match &e {
                    HandlerError::Retry { after: Some(a), .. } => *a,
                    _ => Duration::from_secs(1),
                };
                match &e {
                    HandlerError::Reject(_) | HandlerError::Fail(_) => {
                        tracing::error!(error = %e, "A raw message cannot be handled; it goes back to its queue.")
                    }
                    _ => tracing::warn!(error = %e, retry_in = ?wait, "A raw message was not handled; it goes back to its queue."),
                }
                // Held, then handed back: the queue keeps it, byte for byte.
                tokio::time::sleep(wait).await;
                nack_requeue(&d).await;
            }
        }
    }
    .instrument(span)
    .await;
}
