//! Instrumentation as typed events: each outcome is one struct that emits one log line and
//! one counter, so logs and metrics can never disagree.

use std::time::Duration;

use metrics::{counter, histogram};

/// A message was handled (any outcome but park).
pub struct MessageHandled<'a> {
    /// The queue it came from.
    pub queue: &'a str,
    /// Its type.
    pub message_type: &'a str,
    /// `ok`, `fail`, `duplicate` or `redelivered`.
    pub outcome: &'static str,
    /// Handler time.
    pub elapsed: Duration,
}

impl MessageHandled<'_> {
    /// Logs and counts.
    pub fn emit(&self) {
        tracing::debug!(
            queue = self.queue,
            message_type = self.message_type,
            outcome = self.outcome,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "Message handled."
        );
        counter!("pvefleet_messages_handled_total", "queue" => self.queue.to_string(), "type" => self.message_type.to_string(), "outcome" => self.outcome).increment(1);
        histogram!("pvefleet_handler_seconds", "queue" => self.queue.to_string(), "type" => self.message_type.to_string()).record(self.elapsed.as_secs_f64());
    }
}

/// A message was sent to a wait tier for a delayed retry.
pub struct MessageRetried<'a> {
    /// The queue it came from and will return to.
    pub queue: &'a str,
    /// Its type.
    pub message_type: &'a str,
    /// The attempt that failed.
    pub attempt: u32,
    /// The wait before the next attempt.
    pub delay: Duration,
    /// Why it failed.
    pub error: &'a str,
}

impl MessageRetried<'_> {
    /// Logs and counts.
    pub fn emit(&self) {
        tracing::warn!(
            queue = self.queue,
            message_type = self.message_type,
            attempt = self.attempt,
            delay_ms = self.delay.as_millis() as u64,
            error = self.error,
            "Message failed transiently; it will be retried."
        );
        counter!("pvefleet_messages_retried_total", "queue" => self.queue.to_string(), "type" => self.message_type.to_string()).increment(1);
    }
}

/// A message was parked.
pub struct MessageParked<'a> {
    /// The queue it came from.
    pub queue: &'a str,
    /// Its type, as given (may be empty or unknown).
    pub message_type: &'a str,
    /// The fault class.
    pub class: &'a str,
    /// Why.
    pub reason: &'a str,
    /// Attempts made.
    pub attempts: u32,
}

impl MessageParked<'_> {
    /// Logs and counts. ERROR: an operator must look at the dead letter.
    pub fn emit(&self) {
        tracing::error!(
            queue = self.queue,
            message_type = self.message_type,
            class = self.class,
            reason = self.reason,
            attempts = self.attempts,
            "Message parked; an operator must inspect it."
        );
        counter!("pvefleet_messages_parked_total", "queue" => self.queue.to_string(), "class" => self.class.to_string()).increment(1);
    }
}

/// A publish failed (timeout, nack, unroutable or broker error).
pub struct PublishFailed<'a> {
    /// The exchange.
    pub exchange: &'a str,
    /// The routing key.
    pub routing_key: &'a str,
    /// `timeout`, `nack`, `unroutable`, `broker`.
    pub kind: &'static str,
    /// The error text.
    pub error: &'a str,
}

impl PublishFailed<'_> {
    /// Logs and counts.
    pub fn emit(&self) {
        tracing::warn!(
            exchange = self.exchange,
            routing_key = self.routing_key,
            kind = self.kind,
            error = self.error,
            "Publish failed."
        );
        counter!("pvefleet_publish_failed_total", "exchange" => self.exchange.to_string(), "kind" => self.kind)
            .increment(1);
    }
}

/// The bus connection was lost and re-established.
pub struct BusReconnected<'a> {
    /// `publisher` or `consumer`.
    pub role: &'a str,
    /// How long it was down.
    pub downtime: Duration,
}

impl BusReconnected<'_> {
    /// Logs and counts.
    pub fn emit(&self) {
        tracing::info!(
            role = self.role,
            downtime_ms = self.downtime.as_millis() as u64,
            "Reconnected to RabbitMQ."
        );
        counter!("pvefleet_bus_reconnects_total", "role" => self.role.to_string()).increment(1);
    }
}
