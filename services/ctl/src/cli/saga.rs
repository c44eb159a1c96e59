//! `pvefleet saga ...`.

use clap::Subcommand;

/// `pvefleet saga ...`
#[derive(Debug, Subcommand)]
pub enum SagaAction {
    /// Sagas, newest first.
    List {
        /// Only sagas in this state (running, compensating, completed, failed,
        /// compensation_failed, suspended).
        #[arg(long)]
        state: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One saga: its data, step timeline and audit trail (JSON).
    Show {
        /// The saga id.
        id: uuid::Uuid,
    },
    /// Re-send the step in flight (a compensation_failed compensation, a suspended step).
    RetryStep {
        /// The saga id.
        id: uuid::Uuid,
    },
    /// Resume a suspended saga.
    Resume {
        /// The saga id.
        id: uuid::Uuid,
    },
    /// Abort a running or suspended provisioning saga: compensate what it built.
    Abort {
        /// The saga id.
        id: uuid::Uuid,
    },
}
