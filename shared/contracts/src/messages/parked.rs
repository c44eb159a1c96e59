//! `message.*`: a message given up on and stored as a dead letter.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::{Event, Kind, Message};

/// A message gave up and was stored as a dead letter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageParked {
    /// The dead letter's id in the store.
    pub dead_letter_id: Uuid,
    /// The parked message's type, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// The parked message's correlation id (saga or operation), when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The queue it was consumed from.
    pub queue: String,
    /// The grouping fingerprint: type + error class + normalised message.
    pub group: String,
    /// The fault class.
    pub fault_class: String,
}
event!(
    MessageParked,
    "message.parked",
    "A message was parked as a dead letter.",
    MessageParked {
        dead_letter_id: Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_00ff),
        message_type: Some("container.create".into()),
        correlation_id: Some(Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_0002)),
        queue: "pvefleet.provisioner".into(),
        group: "container.create/retries-exhausted/3f2a9c1d".into(),
        fault_class: "retries-exhausted".into(),
    }
);
