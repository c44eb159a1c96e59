//! Shared pieces of the integration and chaos tests: a scripted handler and the test topology.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use pvefleet_contracts::Message;
use pvefleet_contracts::messages::ContainerCreate;
use pvefleet_contracts::routing::COMMANDS_EXCHANGE;
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError, Topology};
use pvefleet_core::config::BusSettings;

/// The work queue the runtime tests consume.
pub const TEST_QUEUE: &str = "pvefleet.test";

/// The base topology plus the test queue, bound to `container.create` commands.
pub fn test_topology(bus: &BusSettings) -> Topology {
    Topology::base(bus).with_queue(TEST_QUEUE, &[(COMMANDS_EXCHANGE, ContainerCreate::TYPE)])
}

/// What a handler saw of one delivery.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Message id.
    pub message_id: String,
    /// Attempt header.
    pub attempt: u32,
    /// Broker redelivery flag.
    pub redelivered: bool,
    /// When it arrived.
    pub at: Instant,
    /// The hostname field, used by tests as a payload marker.
    pub hostname: String,
}

type Script = dyn Fn(&ContainerCreate, &Context<'_>) -> Handled + Send + Sync;

/// A handler for `container.create` that records each call and returns what a script says.
#[derive(Clone)]
pub struct Scripted {
    /// Every call, in order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Script>,
}

impl Scripted {
    /// A handler returning `script(msg, ctx)`.
    pub fn new(script: impl Fn(&ContainerCreate, &Context<'_>) -> Handled + Send + Sync + 'static) -> Self {
        Self {
            seen: Arc::new(Mutex::new(Vec::new())),
            script: Arc::new(script),
        }
    }

    /// A snapshot of the calls so far.
    pub fn calls(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Handler<ContainerCreate> for Scripted {
    async fn handle(&self, msg: ContainerCreate, ctx: &Context<'_>) -> Handled {
        if let Ok(mut s) = self.seen.lock() {
            s.push(Seen {
                message_id: ctx.message_id.clone(),
                attempt: ctx.attempt,
                redelivered: ctx.redelivered,
                at: Instant::now(),
                hostname: msg.hostname.clone(),
            });
        }
        (self.script)(&msg, ctx)
    }
}

/// A handler that records an effect row in the handler's transaction (inbox on).
pub struct RecordsEffect;

#[async_trait]
impl Handler<ContainerCreate> for RecordsEffect {
    async fn handle(&self, msg: ContainerCreate, ctx: &Context<'_>) -> Handled {
        let Some(db) = ctx.db else {
            return Err(HandlerError::rejected("RecordsEffect needs the inbox on"));
        };
        match db
            .exec(
                "INSERT INTO effects (message_id, hostname) VALUES ($1, $2)",
                &[&ctx.message_id, &msg.hostname],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(HandlerError::transient(e)),
        }
    }
}
