//! The saga engine: one state machine for every saga kind, driven by the kind's declared
//! table (`table`). It advances one saga on one event (the next command, compensation in
//! reverse, completion), re-sends a step past its deadline, stops for an operator when a step
//! keeps failing or its command is parked, and resumes, retries or aborts on an operator's
//! word. Its SQL is in `store`. A kind adds its table and a few hooks (`SagaKind`): what
//! completion, failure and stopping mean for its own records.
//!
//! Every transition and the commands it sends commit in the handler's transaction, through
//! the outbox; the saga row is locked (`FOR UPDATE`) for it, and carries a version.

mod machine;
pub(crate) mod store;
pub mod table;

use async_trait::async_trait;
use pvefleet_contracts::{Message, StepError};
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::{Handled, HandlerError, Outgoing};
use pvefleet_core::config::SagaSettings;
use pvefleet_core::db::Sql;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use machine::{Driver, Machine, Overdue};
pub use table::{Recovery, StepDef, Table, Undo};

/// A saga kind, stored as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Provisioning a site.
    Provision,
    /// Removing a site.
    Deprovision,
    /// Creating (when missing) and binding an SDN VNet.
    VnetProvision,
    /// Restoring a site from a backup.
    Restore,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [Kind::Provision, Kind::Deprovision, Kind::VnetProvision, Kind::Restore];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Provision => "provision",
            Kind::Deprovision => "deprovision",
            Kind::VnetProvision => "vnet.provision",
            Kind::Restore => "restore",
        }
    }

    /// The kind of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A saga's state, stored as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Going forward.
    Running,
    /// Undoing, after a step failed (or an operator aborted).
    Compensating,
    /// Every step done.
    Completed,
    /// Ended in failure, compensated (or nothing to undo).
    Failed,
    /// A compensation kept failing: an operator must look.
    CompensationFailed,
    /// A forward step kept failing or its command was parked: an operator must look.
    Suspended,
    /// Replaced by a later saga of the same site (a delete during provisioning).
    Superseded,
}

impl State {
    /// Every state.
    pub const ALL: [State; 7] = [
        State::Running,
        State::Compensating,
        State::Completed,
        State::Failed,
        State::CompensationFailed,
        State::Suspended,
        State::Superseded,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Compensating => "compensating",
            State::Completed => "completed",
            State::Failed => "failed",
            State::CompensationFailed => "compensation_failed",
            State::Suspended => "suspended",
            State::Superseded => "superseded",
        }
    }

    /// The state of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A step's direction, stored as text in the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A forward step.
    Forward,
    /// A compensation.
    Compensate,
}

impl Phase {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Compensate => "compensate",
        }
    }
}

/// Where a saga stands, kept in `sagas.data` beside the kind's own fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The forward steps that apply, by key, in order.
    pub plan: Vec<String>,
    /// Forward steps completed, in order.
    #[serde(default)]
    pub done: Vec<String>,
    /// Compensations to run, in order.
    #[serde(default)]
    pub compensations: Vec<String>,
    /// The step that failed, and why.
    #[serde(default)]
    pub failure: Option<(String, StepError)>,
}

/// `sagas.data`: the progress and the kind's data in one object.
#[derive(Serialize, Deserialize)]
pub(crate) struct Stored<D> {
    #[serde(flatten)]
    pub progress: Progress,
    #[serde(flatten)]
    pub data: D,
}

/// One saga, loaded.
#[derive(Debug, Clone)]
pub struct Saga<D> {
    /// Its id (the correlation id of everything it sends).
    pub id: Uuid,
    /// Its state.
    pub state: State,
    /// The index of the step in flight, in its direction's list.
    pub step: usize,
    /// The site it acts for, if any.
    pub site_id: Option<Uuid>,
    /// Where it stands.
    pub progress: Progress,
    /// The kind's own data.
    pub data: D,
}

/// What a transition runs with: the handler's transaction, the origin of what it sends (the
/// saga's id as correlation id, the message being handled as the cause), and the settings.
pub struct Exec<'a> {
    /// The transaction.
    pub db: &'a dyn Sql,
    /// The origin of outgoing messages; its correlation id is set per saga.
    pub origin: Origin,
    /// The coordinator's settings.
    pub settings: &'a SagaSettings,
}

impl Exec<'_> {
    /// The origin of what saga `saga` sends.
    pub fn origin_of(&self, saga: Uuid) -> Origin {
        Origin {
            correlation_id: Some(saga),
            ..self.origin.clone()
        }
    }

    /// Queues `msg` for saga `saga` in the transaction.
    pub async fn send<M: Message>(&self, saga: Uuid, msg: &M) -> Handled {
        let out = Outgoing::message(msg, &self.origin_of(saga))
            .map_err(|e| HandlerError::retry(anyhow::Error::new(e).context(format!("cannot encode {}", M::TYPE))))?;
        self.enqueue(&out).await
    }

    /// Queues a built message in the transaction.
    pub async fn enqueue(&self, out: &Outgoing) -> Handled {
        pvefleet_core::db::outbox::enqueue(self.db, out).await?;
        Ok(())
    }
}

/// What a kind decides when one of its forward steps fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// Recover as the table says: compensate (backward) or re-send (forward).
    Recover,
    /// Send the same step again now, with the data the hook changed (another vmid).
    Resend,
    /// Go on to the next step: the failure means there was nothing to do (a final backup of a
    /// container that is already gone). The timeline keeps the step's failure.
    Skip,
}

/// A saga kind: its table and what its ends mean for its own records.
#[async_trait]
pub trait SagaKind: Send + Sync + 'static {
    /// The kind's own data, kept with the saga.
    type Data: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;

    /// Which kind it is.
    fn kind(&self) -> Kind;

    /// Its table.
    fn table(&self) -> &Table<Self::Data>;

    /// Every forward step is done.
    async fn completed(&self, x: &Exec<'_>, saga: &Saga<Self::Data>) -> Handled;

    /// It failed at `step` and what was done is undone (or there was nothing to undo).
    async fn failed(&self, x: &Exec<'_>, saga: &Saga<Self::Data>, step: &str, error: &StepError) -> Handled;

    /// It stopped for an operator (`suspended` or `compensation_failed`), with `detail`.
    async fn stopped(&self, _x: &Exec<'_>, _saga: &Saga<Self::Data>, _state: State, _detail: &Value) -> Handled {
        Ok(())
    }

    /// Whether what a completed saga built has since been taken down by another (the site
    /// deleted), so that work a late copy of one of its steps does again must be undone.
    async fn withdrawn(&self, _x: &Exec<'_>, _saga: &Saga<Self::Data>) -> Result<bool, HandlerError> {
        Ok(false)
    }

    /// A forward step failed (`event` is its failure event): what now (the default: as the
    /// table's recovery says).
    async fn step_failed(
        &self,
        _x: &Exec<'_>,
        _saga: &mut Saga<Self::Data>,
        _step: &str,
        _error: &StepError,
        _event: &Value,
    ) -> Result<OnFailure, HandlerError> {
        Ok(OnFailure::Recover)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::State;

    #[test]
    fn every_saga_state_is_in_the_readmes_table() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        for state in State::ALL {
            assert!(
                readme.contains(&format!("| `{}` |", state.as_str())),
                "saga state `{}` is missing from the README's table of saga states",
                state.as_str()
            );
        }
    }
}
