//! A saga that stopped for an operator, and the notifier's own work: one delivery of one
//! notice on one channel.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::SiteId;
use crate::message::{Event, Kind, Message};

/// What a stopped saga tells: which, where it stopped and why.
macro_rules! saga_stopped {
    ($ty:ident, $name:literal, $desc:literal, $state:literal) => {
        #[doc = $desc]
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
        pub struct $ty {
            /// The saga.
            pub saga_id: Uuid,
            /// Its kind: `provision`, `deprovision`, `vnet.provision`.
            pub kind: String,
            /// The site it works on, when it works on one.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub site_id: Option<SiteId>,
            /// The command of the step that gave up.
            pub step: String,
            /// What went wrong.
            pub error: crate::StepError,
        }
        event!(
            $ty,
            $name,
            $desc,
            $ty {
                saga_id: Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_0002),
                kind: "provision".into(),
                site_id: Some(super::example_site()),
                step: "container.start".into(),
                error: crate::StepError::new("proxmox.permanent", "no such container"),
            }
        );
        impl $ty {
            /// The saga state it reports.
            pub const STATE: &'static str = $state;
        }
    };
}

saga_stopped!(
    SagaSuspended,
    "saga.suspended",
    "A saga stopped in a forward step after its re-sends: an operator must retry, resume or abort it.",
    "suspended"
);
saga_stopped!(
    SagaCompensationFailed,
    "saga.compensation_failed",
    "A saga's compensation gave up: something it built may be left behind, and an operator must look.",
    "compensation_failed"
);

/// Deliver one notice on one channel (the notifier's own queue): the delivery row says what
/// and where. Retried through the wait tiers and parked when they are spent, like any command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotifyDeliver {
    /// The delivery (`notifications.id`).
    pub notification_id: Uuid,
}
impl_message!(
    NotifyDeliver,
    "notify.deliver",
    Command,
    "Deliver one notice on one channel.",
    NotifyDeliver {
        notification_id: Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_00aa),
    }
);
