//! The pvefleet message contract: message types, envelope header names, routing names and typed ids.
//!
//! This crate does no I/O. The Rust types here are the source of truth; `proto/schemas/` is
//! generated from them and a test fails when the two drift.

pub mod asyncapi;
pub mod envelope;
pub mod ids;
pub mod message;
pub mod messages;
pub mod registry;
pub mod routing;
pub mod trace;

pub use envelope::headers;
pub use ids::{CorrelationId, MessageId, OperationId, SagaId, SiteId, Vmid};
pub use message::{Command, Event, Kind, Message, StepError};
pub use registry::{MessageInfo, registry};
pub use trace::TraceContext;
