//! The outcome type the coordinator's handlers were written against, kept while they move onto
//! the saga engine: it converts into the runner's `Handled`.

use std::time::Duration;

use pvefleet_contracts::StepError;
use pvefleet_core::bus::{Handled, HandlerError};

/// What a handler decided.
#[derive(Debug)]
pub(crate) enum Outcome {
    Ok,
    Fail(StepError),
    Retry { after: Option<Duration>, error: String },
    Reject(String),
    Outage(String),
}

impl Outcome {
    pub(crate) fn retry(error: impl std::fmt::Display) -> Self {
        Outcome::Retry {
            after: None,
            error: error.to_string(),
        }
    }

    pub(crate) fn reject(error: impl std::fmt::Display) -> Self {
        Outcome::Reject(error.to_string())
    }
}

impl From<Outcome> for Handled {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Ok => Ok(()),
            Outcome::Fail(e) => Err(HandlerError::Fail(e)),
            Outcome::Retry { after, error } => Err(HandlerError::Retry {
                after,
                error: anyhow::anyhow!(error),
            }),
            Outcome::Reject(e) => Err(HandlerError::rejected(e)),
            Outcome::Outage(e) => Err(HandlerError::Outage(anyhow::anyhow!(e))),
        }
    }
}
