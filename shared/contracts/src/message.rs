//! The `Message` trait: every message type knows its wire name, version and kind.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Whether a message is a command (imperative, one consumer) or an event (past tense, any number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Published to `pvefleet.commands`, mandatory; exactly one queue consumes it.
    Command,
    /// Published to `pvefleet.events`; anyone may bind.
    Event,
}

/// A message type on the bus.
pub trait Message: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// The AMQP `type` property and routing key, such as `container.create`.
    const TYPE: &'static str;
    /// The schema version (the `schema-version` header). A breaking change is a new version.
    const VERSION: u32;
    /// Command or event.
    const KIND: Kind;
    /// One sentence for the AsyncAPI document.
    const DESCRIPTION: &'static str;

    /// A representative instance, used for the golden examples in `proto/examples/`.
    fn example() -> Self;

    /// The exchange this type is published to.
    fn exchange() -> &'static str {
        match Self::KIND {
            Kind::Command => crate::routing::COMMANDS_EXCHANGE,
            Kind::Event => crate::routing::EVENTS_EXCHANGE,
        }
    }
}

/// A command whose definitive business failure is reported by a `*_failed` event.
pub trait Command: Message {
    /// The event that reports a definitive failure of this command.
    type Failed: Event;
    /// Builds the failure event for this command.
    fn failed(&self, error: StepError) -> Self::Failed;
}

/// Marker for events.
pub trait Event: Message {}

/// Why a step failed, as carried in `*_failed` events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StepError {
    /// A stable, machine-readable class, such as `proxmox.permanent` or `quota`.
    pub code: String,
    /// A sentence for the operator. Never contains secrets.
    pub message: String,
}

impl StepError {
    /// Builds a step error.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}
