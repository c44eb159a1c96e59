//! Handlers and their outcomes (DESIGN.md §4), and the router that decodes, validates and
//! dispatches each message type to its handler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use pvefleet_contracts::registry::{MessageInfo, find, find_latest, info_of};
use pvefleet_contracts::{Command, Message, StepError, TraceContext};
use serde_json::Value;
use uuid::Uuid;

use super::failure::{Handled, HandlerError};
use super::outgoing::{Origin, Outgoing};
use super::publisher::{PublishError, Publisher};

/// What became of a message in a handler, as the runner acts on it: the handler's `Handled`
/// with its error flattened into the text the runner logs and stores.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Done: ack.
    Ok,
    /// A definitive business failure: the runner emits the command's `*_failed` event, then acks.
    Fail(StepError),
    /// Transient: the runner republishes to a wait tier with attempt+1 and acks; after the
    /// configured attempts, it parks the message.
    Retry {
        /// The least wait before the next attempt; the tier for the attempt may be longer.
        after: Option<Duration>,
        /// What went wrong, with its sources.
        error: String,
    },
    /// Undecodable, unknown or invalid: park at once.
    Reject(String),
    /// Our own infrastructure failed: retried through the wait tiers like `Retry`, but once
    /// the attempts are spent it keeps waiting in the longest tier instead of being parked.
    Outage(String),
}

impl Outcome {
    /// A transient failure with the default delay.
    pub(crate) fn retry(error: impl std::fmt::Display) -> Self {
        Outcome::Retry {
            after: None,
            error: error.to_string(),
        }
    }
}

impl From<Handled> for Outcome {
    fn from(h: Handled) -> Self {
        // `{:#}` writes the whole source chain on one line: that is what the log shows.
        match h {
            Ok(()) => Outcome::Ok,
            Err(HandlerError::Fail(e)) => Outcome::Fail(e),
            Err(HandlerError::Retry { after, error }) => Outcome::Retry {
                after,
                error: format!("{error:#}"),
            },
            Err(HandlerError::Outage(e)) => Outcome::Outage(format!("{e:#}")),
            Err(HandlerError::Reject(e)) => Outcome::Reject(format!("{e:#}")),
        }
    }
}

/// What a handler knows about the message it handles, and what it may use.
pub struct Context<'a> {
    /// The message id.
    pub message_id: String,
    /// The correlation id (saga or operation), if any.
    pub correlation_id: Option<Uuid>,
    /// This delivery's attempt, from 1.
    pub attempt: u32,
    /// Whether the broker redelivered it (a previous consumer died before acking).
    pub redelivered: bool,
    /// The trace this message continues.
    pub trace: TraceContext,
    /// The queue it came from.
    pub queue: &'a str,
    /// A publisher for messages that need no transaction.
    pub publisher: &'a Publisher,
    /// The database connection, inside the transaction that also holds the inbox row, when the
    /// worker runs with an inbox. Commit happens after the handler returns `Ok` or `Fail`.
    /// Its statements are prepared once per connection and cached.
    pub db: Option<&'a dyn crate::db::Sql>,
    /// The service name, used as `app_id` on outgoing messages.
    pub app_id: &'a str,
}

impl Context<'_> {
    /// The origin for messages caused by this one: same correlation and trace, causation = this.
    pub fn origin(&self) -> Origin {
        Origin {
            correlation_id: self.correlation_id,
            causation_id: Some(self.message_id.clone()),
            trace: Some(self.trace),
            app_id: Some(self.app_id.to_string()),
        }
    }

    /// Sends a message caused by this one: into the outbox in the handler's transaction when
    /// there is one (so it is sent only if the handler's work commits), else published directly.
    pub async fn send<M: Message>(&self, msg: &M) -> Result<(), SendError> {
        let out = Outgoing::message(msg, &self.origin()).map_err(SendError::Encode)?;
        match self.db {
            Some(db) => crate::db::outbox::enqueue(db, &out).await.map_err(SendError::Outbox),
            None => self.publisher.publish(&out).await.map_err(SendError::Publish),
        }
    }
}

impl Context<'_> {
    /// Sends the event that ends this command; if it cannot be sent (or queued), the command
    /// is retried rather than its event lost.
    pub async fn emit<M: Message>(&self, msg: &M) -> Handled {
        self.send(msg)
            .await
            .map_err(|e| HandlerError::from(e).context(format!("cannot send {}", M::TYPE)))
    }
}

/// Why a handler could not send a message.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The message did not serialize.
    #[error("cannot encode message")]
    Encode(#[source] serde_json::Error),
    /// The outbox insert failed.
    #[error("cannot write to the outbox")]
    Outbox(#[source] crate::db::outbox::OutboxError),
    /// The publish failed.
    #[error("cannot publish")]
    Publish(#[source] PublishError),
}

/// Handles several message types by their JSON body, for routes made from data (a saga's
/// table) rather than from a type each. The body has passed the type's schema check.
#[async_trait]
pub trait JsonHandler: Send + Sync + 'static {
    /// Handles a schema-valid message of type `mtype`.
    async fn handle(&self, mtype: &'static str, body: Value, ctx: &Context<'_>) -> Handled;
}

/// Handles one message type.
#[async_trait]
pub trait Handler<M: Message>: Send + Sync + 'static {
    /// Handles a decoded, schema-valid message: `Ok` acks it; an error says what the runner
    /// does instead (see [`HandlerError`]).
    async fn handle(&self, msg: M, ctx: &Context<'_>) -> Handled;
}

type CallFn = dyn for<'a> Fn(Value, &'a Context<'a>) -> BoxFuture<'a, Handled> + Send + Sync;
type FailFn = dyn Fn(&Value, StepError, &Origin) -> Option<Result<Outgoing, serde_json::Error>> + Send + Sync;
/// Builds the notice published when a message of the route fails its schema check, or has a
/// body that cannot be read (then with `Value::Null`).
pub(crate) type InvalidFn = dyn Fn(&Value, &str, &Origin) -> Option<Outgoing> + Send + Sync;

pub(crate) struct Route {
    pub info: MessageInfo,
    pub validator: Option<jsonschema::Validator>,
    pub call: Arc<CallFn>,
    /// Builds the `*_failed` event for `Outcome::Fail`, for commands.
    pub fail: Option<Arc<FailFn>>,
    /// Builds an event published before a schema-invalid message of this type is parked.
    pub on_invalid: Option<Arc<InvalidFn>>,
}

/// Maps message types to handlers. Only registered types are accepted; anything else is parked.
#[derive(Default)]
pub struct Router {
    pub(crate) routes: HashMap<&'static str, Route>,
    /// A raw worker's one handler: every delivery goes to it unchecked.
    pub(crate) raw: Option<Arc<dyn super::raw::RawHandler>>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// A router that sends every delivery, unchecked and undecoded, to `handler` (see
    /// [`super::raw`]): for queues whose messages are not of the contract, such as the parked
    /// queue.
    pub fn raw(handler: impl super::raw::RawHandler) -> Self {
        Self {
            routes: HashMap::new(),
            raw: Some(Arc::new(handler)),
        }
    }

    /// Routes the contract's message type `info` to a handler of JSON bodies. For a command,
    /// `HandlerError::Fail` emits its `*_failed` event, as with [`Router::command`].
    pub fn route_json(mut self, info: &'static MessageInfo, handler: Arc<dyn JsonHandler>) -> Self {
        let validator = jsonschema::validator_for(&info.schema()).ok();
        let name = info.name;
        let call: Arc<CallFn> = Arc::new(coerce(move |body, ctx| {
            let handler = handler.clone();
            Box::pin(async move { handler.handle(name, body, ctx).await })
        }));
        self.routes.insert(
            name,
            Route {
                info: *info,
                validator,
                call,
                fail: info.failed_event.and_then(find_latest).map(|failed| {
                    let fail: Arc<FailFn> = Arc::new(move |body: &Value, err: StepError, origin: &Origin| {
                        let event = info.failure(body, err)?;
                        Some(event.and_then(|e| Outgoing::from_json(failed, &e, origin)))
                    });
                    fail
                }),
                on_invalid: None,
            },
        );
        self
    }

    /// Routes a message type to a handler.
    pub fn route<M: Message, H: Handler<M>>(mut self, handler: H) -> Self {
        let route = Self::make_route::<M, H>(handler, None);
        self.routes.insert(M::TYPE, route);
        self
    }

    /// Routes a command to a handler; `HandlerError::Fail` then emits the command's `*_failed`
    /// event.
    pub fn command<M: Command, H: Handler<M>>(mut self, handler: H) -> Self {
        let fail: Arc<FailFn> = Arc::new(|body: &Value, err: StepError, origin: &Origin| {
            let cmd: M = serde_json::from_value(body.clone()).ok()?;
            let failed = cmd.failed(err);
            Some(Outgoing::message(&failed, origin))
        });
        let route = Self::make_route::<M, H>(handler, Some(fail));
        self.routes.insert(M::TYPE, route);
        self
    }

    /// For a type already routed: when a message of it fails its schema check, or its body
    /// cannot be read at all (empty, not UTF-8, not JSON, too large: then the body given is
    /// `Value::Null`), `notice` may build an event (from the body, the reason and the
    /// message's origin) that is
    /// published before the message is parked, so the sender learns why. A notice that cannot
    /// be published sends the message back for a retry instead of parking it without one.
    pub fn on_invalid<M: Message>(
        mut self,
        notice: impl Fn(&Value, &str, &Origin) -> Option<Outgoing> + Send + Sync + 'static,
    ) -> Self {
        if let Some(route) = self.routes.get_mut(M::TYPE) {
            route.on_invalid = Some(Arc::new(notice));
        }
        self
    }

    fn make_route<M: Message, H: Handler<M>>(handler: H, fail: Option<Arc<FailFn>>) -> Route {
        // A type outside the registry (a test's own) is described the same way.
        let info = find(M::TYPE, M::VERSION).copied().unwrap_or_else(info_of::<M>);
        let schema = info.schema();
        // Schemas come from our own types, and the contract tests compile every one; should one
        // not compile, the decoder alone still guards the handler.
        let validator = jsonschema::validator_for(&schema).ok();
        let handler = Arc::new(handler);
        let call: Arc<CallFn> = Arc::new(coerce(move |body, ctx| {
            call_handler::<M, H>(handler.clone(), body, ctx)
        }));
        Route {
            info,
            validator,
            call,
            fail,
            on_invalid: None,
        }
    }

    /// The registered types.
    pub fn types(&self) -> Vec<&'static str> {
        let mut t: Vec<_> = self.routes.keys().copied().collect();
        t.sort_unstable();
        t
    }
}

fn coerce<F>(f: F) -> F
where
    F: for<'a> Fn(Value, &'a Context<'a>) -> BoxFuture<'a, Handled>,
{
    f
}

fn call_handler<'a, M: Message, H: Handler<M>>(
    handler: Arc<H>,
    body: Value,
    ctx: &'a Context<'a>,
) -> BoxFuture<'a, Handled> {
    Box::pin(async move {
        match serde_json::from_value::<M>(body) {
            Ok(msg) => handler.handle(msg, ctx).await,
            Err(e) => Err(HandlerError::reject(
                anyhow::Error::new(e).context(format!("body does not decode as {}", M::TYPE)),
            )),
        }
    })
}
