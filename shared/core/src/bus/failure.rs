//! Why a handler did not finish its message, classified: the runner decides ack, retry or park
//! from the class alone (DESIGN.md §4). Handlers return `Result<(), HandlerError>`, so `?` works
//! on Postgres, the bus and Proxmox: each error converts by what it means (an outage of the
//! database waits without parking; a permanent PVE refusal fails the step; anything else
//! retries). A retried or rejected error keeps its whole source chain, and the runner logs it.

use std::time::Duration;

use pvefleet_contracts::StepError;

use super::handler::SendError;
use super::publisher::PublishError;
use crate::db::fault::{FaultKind, classify, classify_pg};

/// Why a handler did not finish.
#[derive(Debug)]
pub enum HandlerError {
    /// A definitive business failure: the command's `*_failed` event is emitted, then the
    /// message is acked.
    Fail(StepError),
    /// Transient: retried through the wait tiers with attempt + 1; parked once the configured
    /// attempts are spent.
    Retry {
        /// The least wait before the next attempt; the attempt's tier may be longer.
        after: Option<Duration>,
        /// What went wrong, with its sources.
        error: anyhow::Error,
    },
    /// Our own infrastructure failed (the database is down): retried like `Retry`, but never
    /// parked for it, since the message is not at fault.
    Outage(anyhow::Error),
    /// The message cannot be handled as it is: parked at once.
    Reject(anyhow::Error),
}

/// What a handler returns.
pub type Handled = Result<(), HandlerError>;

impl HandlerError {
    /// A definitive failure with a stable code and a sentence.
    pub fn fail(code: impl Into<String>, message: impl Into<String>) -> Self {
        HandlerError::Fail(StepError::new(code, message))
    }

    /// A transient failure, retried after the attempt's wait.
    pub fn retry(error: impl Into<anyhow::Error>) -> Self {
        HandlerError::Retry {
            after: None,
            error: error.into(),
        }
    }

    /// A transient failure, told in a sentence.
    pub fn transient(message: impl std::fmt::Display) -> Self {
        Self::retry(anyhow::anyhow!("{message}"))
    }

    /// A transient failure, retried no sooner than `after`.
    pub fn retry_after(after: Duration, error: impl Into<anyhow::Error>) -> Self {
        HandlerError::Retry {
            after: Some(after),
            error: error.into(),
        }
    }

    /// A message that cannot be handled: parked at once.
    pub fn reject(error: impl Into<anyhow::Error>) -> Self {
        HandlerError::Reject(error.into())
    }

    /// A rejection, told in a sentence.
    pub fn rejected(message: impl std::fmt::Display) -> Self {
        Self::reject(anyhow::anyhow!("{message}"))
    }

    /// The same failure with `context` in front of its error (a `Fail` keeps its code and gets
    /// the context in its message).
    pub fn context(self, context: impl std::fmt::Display + Send + Sync + 'static) -> Self {
        match self {
            HandlerError::Fail(e) => HandlerError::Fail(StepError::new(e.code, format!("{context}: {}", e.message))),
            HandlerError::Retry { after, error } => HandlerError::Retry {
                after,
                error: error.context(context),
            },
            HandlerError::Outage(e) => HandlerError::Outage(e.context(context)),
            HandlerError::Reject(e) => HandlerError::Reject(e.context(context)),
        }
    }

    /// The class, for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            HandlerError::Fail(_) => "fail",
            HandlerError::Retry { .. } => "retry",
            HandlerError::Outage(_) => "outage",
            HandlerError::Reject(_) => "reject",
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerError::Fail(e) => write!(f, "{}: {}", e.code, e.message),
            HandlerError::Retry { error, .. } | HandlerError::Outage(error) | HandlerError::Reject(error) => {
                write!(f, "{error:#}")
            }
        }
    }
}

/// An error of unknown kind: an outage when a database outage is in its chain, else a retry.
impl From<anyhow::Error> for HandlerError {
    fn from(e: anyhow::Error) -> Self {
        match crate::db::fault::classify_any(&e).map(|f| f.kind) {
            Some(FaultKind::Outage) => HandlerError::Outage(e),
            _ => HandlerError::retry(e),
        }
    }
}

impl From<tokio_postgres::Error> for HandlerError {
    fn from(e: tokio_postgres::Error) -> Self {
        let kind = classify_pg(&e).kind;
        let e = anyhow::Error::new(e).context("database");
        match kind {
            FaultKind::Outage => HandlerError::Outage(e),
            _ => HandlerError::retry(e),
        }
    }
}

impl From<deadpool_postgres::PoolError> for HandlerError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        let outage = classify(&e).is_none_or(|f| f.kind == FaultKind::Outage);
        let e = anyhow::Error::new(e).context("no database connection");
        if outage {
            HandlerError::Outage(e)
        } else {
            HandlerError::retry(e)
        }
    }
}

impl From<SendError> for HandlerError {
    fn from(e: SendError) -> Self {
        HandlerError::from(anyhow::Error::new(e))
    }
}

impl From<PublishError> for HandlerError {
    fn from(e: PublishError) -> Self {
        HandlerError::retry(e)
    }
}

impl From<crate::db::outbox::OutboxError> for HandlerError {
    fn from(e: crate::db::outbox::OutboxError) -> Self {
        HandlerError::from(anyhow::Error::new(e))
    }
}

/// A PVE failure by the client's classes: transient retries; permanent fails the step with a
/// `proxmox.*` code and PVE's message (with its per-parameter errors).
#[cfg(feature = "pve")]
impl From<pvefleet_proxmox::client::PveError> for HandlerError {
    fn from(e: pvefleet_proxmox::client::PveError) -> Self {
        use pvefleet_proxmox::client::{Class, Reason};
        if e.class == Class::Transient {
            return HandlerError::retry(e);
        }
        let code = match e.reason {
            Reason::NotFound => "proxmox.not_found",
            Reason::AlreadyExists => "proxmox.already_exists",
            Reason::Forbidden => "proxmox.forbidden",
            Reason::InvalidParameters => "proxmox.invalid_parameters",
            Reason::TaskFailed => "proxmox.task_failed",
            Reason::NotImplemented => "proxmox.not_implemented",
            Reason::Locked | Reason::Other => "proxmox.permanent",
        };
        let mut message = e.message.trim().to_string();
        if !e.errors.is_empty() {
            let fields: Vec<String> = e.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            message = format!("{message} ({})", fields.join("; "));
        }
        HandlerError::fail(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_keeps_its_whole_chain_and_context_goes_in_front() {
        let inner = std::io::Error::other("connection reset by peer");
        let e =
            HandlerError::retry(anyhow::Error::new(inner).context("cannot read the config")).context("container.start");
        assert_eq!(
            e.to_string(),
            "container.start: cannot read the config: connection reset by peer"
        );
        let failed = HandlerError::fail("vmid.taken", "vmid 100 is a VM").context("container.create");
        assert!(
            matches!(&failed, HandlerError::Fail(s) if s.code == "vmid.taken" && s.message.starts_with("container.create: "))
        );
    }

    #[test]
    fn a_pool_that_cannot_give_a_connection_is_an_outage() {
        let e = HandlerError::from(deadpool_postgres::PoolError::Timeout(
            deadpool_postgres::TimeoutType::Wait,
        ));
        assert_eq!(e.class(), "outage");
        assert_eq!(HandlerError::from(anyhow::anyhow!("plain")).class(), "retry");
    }
}
