//! The envelope: AMQP properties and the header names pvefleet puts on every message.
//!
//! Properties: `message_id` (UUIDv7), `correlation_id`, `type` (the message type, such as
//! `container.create`), `content_type`, `delivery_mode=2`, `timestamp`, `app_id`.

/// The only content type pvefleet publishes and accepts.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// AMQP delivery mode for persistent messages.
pub const DELIVERY_MODE_PERSISTENT: u8 = 2;

/// Header names. All are lower-case, dash-separated strings.
pub mod headers {
    /// The schema version of the body (an integer, as a string-free long).
    pub const SCHEMA_VERSION: &str = "schema-version";
    /// The message id of the message that caused this one.
    pub const CAUSATION_ID: &str = "causation-id";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// pvefleet's own delivery attempt counter, starting at 1. Never rely on `x-death` for counting.
    pub const ATTEMPT: &str = "pvefleet-attempt";
    /// The queue a retried message must return to.
    pub const RETRY_ORIGIN_QUEUE: &str = "pvefleet-origin-queue";
    /// Time of the first failure of this message (RFC 3339).
    pub const FIRST_FAILURE: &str = "pvefleet-first-failure";

    /// Fault headers, put on a message the runner parks.
    pub mod fault {
        /// `reject`, `retries-exhausted`, `decode`, `unknown-type`, `invalid`, `content-type`, `panic`.
        pub const CLASS: &str = "pvefleet-fault-class";
        /// A sentence saying what went wrong.
        pub const MESSAGE: &str = "pvefleet-fault-message";
        /// How many attempts were made.
        pub const ATTEMPTS: &str = "pvefleet-fault-attempts";
        /// The queue the message was consumed from.
        pub const ORIGIN_QUEUE: &str = "pvefleet-fault-origin-queue";
        /// The exchange the message was first published to.
        pub const ORIGIN_EXCHANGE: &str = "pvefleet-fault-origin-exchange";
        /// The routing key the message was first published with.
        pub const ORIGIN_ROUTING_KEY: &str = "pvefleet-fault-origin-routing-key";
        /// RFC 3339 time of the first failure.
        pub const FIRST_FAILURE: &str = "pvefleet-fault-first-failure";
        /// RFC 3339 time of the last failure (the one that parked it).
        pub const LAST_FAILURE: &str = "pvefleet-fault-last-failure";
        /// The consumer that parked it.
        pub const CONSUMER: &str = "pvefleet-fault-consumer";
        /// This parking's identity (a UUID): the dead-letter store keeps each park id once, so
        /// a copy delivered to the keeper twice is stored once, and two different messages
        /// (even with the same, an empty or no `message_id`) are never taken for one.
        pub const PARK_ID: &str = "pvefleet-park-id";
    }

    /// Replay headers, added by the dead-letter keeper on replay.
    pub mod replay {
        /// The dead letter id this message is a replay of.
        pub const OF: &str = "pvefleet-replay-of";
        /// How many times it was replayed.
        pub const COUNT: &str = "pvefleet-replay-count";
    }
}
