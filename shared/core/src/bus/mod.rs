//! The bus: RabbitMQ through lapin. Topology, a confirming publisher, and the consumer runner.
//!
//! Publishers and consumers use separate connections, because RabbitMQ's flow control throttles
//! publishing connections and would otherwise delay consumer acks.

mod batch;
pub mod connect;
mod deliver;
pub mod envelope;
mod failure;
pub(crate) mod fields;
pub mod handler;
pub mod outgoing;
pub mod parked;
pub mod probe;
pub mod publisher;
pub mod raw;
pub mod runner;
pub mod topology;
pub mod worker;

pub use failure::{Handled, HandlerError};
pub use handler::{Context, Handler, JsonHandler, Router};
pub use outgoing::Outgoing;
pub use publisher::{PublishError, Publisher};
pub use runner::{WorkerSpec, run_worker};
pub use topology::{Topology, WorkQueue};
pub use worker::Worker;
