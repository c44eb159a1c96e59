//! The commands and events of the provisioning and deprovisioning sagas (DESIGN.md §6).

use uuid::Uuid;

use crate::ids::{SiteId, Vmid};

macro_rules! impl_message {
    ($ty:ident, $name:literal, $kind:ident, $desc:literal, $example:expr) => {
        impl Message for $ty {
            const TYPE: &'static str = $name;
            const VERSION: u32 = 1;
            const KIND: Kind = Kind::$kind;
            const DESCRIPTION: &'static str = $desc;
            fn example() -> Self {
                $example
            }
        }
    };
}

macro_rules! event {
    ($ty:ident, $name:literal, $desc:literal, $example:expr) => {
        impl_message!($ty, $name, Event, $desc, $example);
        impl Event for $ty {}
    };
}

/// A `*_failed` event: every step failure has the same shape.
macro_rules! failed_event {
    ($ty:ident, $name:literal, $desc:literal) => {
        #[doc = $desc]
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
        pub struct $ty {
            /// The site whose step failed.
            pub site_id: SiteId,
            /// The container, when the step concerns one.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub vmid: Option<Vmid>,
            /// What went wrong.
            pub error: StepError,
        }
        event!(
            $ty,
            $name,
            $desc,
            $ty {
                site_id: example_site(),
                vmid: Some(Vmid(123)),
                error: StepError::new("proxmox.permanent", "storage 'local-lvm' does not exist"),
            }
        );
    };
}

/// A command and its failure event.
macro_rules! command {
    ($ty:ident, $name:literal, $desc:literal, $failed:ident, $example:expr) => {
        impl_message!($ty, $name, Command, $desc, $example);
        impl Command for $ty {
            type Failed = $failed;
            fn failed(&self, error: StepError) -> $failed {
                $failed {
                    site_id: self.site_id,
                    vmid: self.vmid_opt(),
                    error,
                }
            }
        }
    };
}

fn example_site() -> SiteId {
    SiteId(Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_0001))
}

/// Something that may name a container.
trait MaybeVmid {
    fn vmid_opt(&self) -> Option<Vmid>;
}

// The message types, by area. The macros above are in scope in each of these modules.

mod app;
mod autoscale;
mod backup;
mod container;
mod dns;
mod ha;
mod notify;
mod parked;
mod site;

pub use app::*;
pub use autoscale::*;
pub use backup::*;
pub use container::*;
pub use dns::*;
pub use ha::*;
pub use notify::*;
pub use parked::*;
pub use site::*;

// ---------------------------------------------------------------------------------------------
// network hotplug and SDN

mod network;
pub use network::*;
