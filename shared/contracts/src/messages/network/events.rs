//! The network events: an operation ended well (the interface as PVE now has it), a VNet
//! ensured or removed, and `net.operation_failed`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::example_operation;
use crate::ids::Vmid;
use crate::message::{Kind, Message, StepError};

/// A network operation ended well: the interface as PVE now has it.
macro_rules! net_event {
    ($ty:ident, $name:literal, $desc:literal) => {
        #[doc = $desc]
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
        pub struct $ty {
            /// The operation.
            pub operation_id: Uuid,
            /// The container.
            pub vmid: Vmid,
            /// Its node.
            pub node: String,
            /// The `netN` index.
            pub index: u8,
            /// The `netN` value written (absent on a detach).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub line: Option<String>,
            /// The VNet, for a binding.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub vnet: Option<String>,
            /// `live` (applied to the running container) or `pending_reboot`.
            pub status: String,
            /// The config keys left pending until a restart.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub pending: Vec<String>,
        }
        net_message!(
            $ty,
            $name,
            Event,
            $desc,
            $ty {
                operation_id: example_operation(),
                vmid: Vmid(123),
                node: "pve1".into(),
                index: 1,
                line: Some("name=eth1,bridge=vmbr0,hwaddr=BC:24:11:2A:7F:01,ip=10.20.0.5/24,tag=20,type=veth".into()),
                vnet: None,
                status: "live".into(),
                pending: Vec::new(),
            }
        );
        impl crate::message::Event for $ty {}
    };
}

net_event!(NetAttached, "net.attached", "An interface was attached to a container.");
net_event!(NetUpdated, "net.updated", "A container's interface was changed.");
net_event!(
    NetDetached,
    "net.detached",
    "An interface was detached from a container."
);
net_event!(
    VnetBound,
    "vnet.bound",
    "A container's interface was attached on an SDN VNet."
);
net_event!(
    VnetUnbound,
    "vnet.unbound",
    "A container's interface on an SDN VNet was detached."
);

/// A VNet exists and is applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VnetEnsured {
    /// The operation.
    pub operation_id: Uuid,
    /// The VNet.
    pub vnet: String,
    /// Whether this operation created it (and its compensation may delete it).
    pub created: bool,
}
net_message!(
    VnetEnsured,
    "vnet.ensured",
    Event,
    "An SDN VNet exists and is applied on every node.",
    VnetEnsured {
        operation_id: example_operation(),
        vnet: "web".into(),
        created: true,
    }
);
impl crate::message::Event for VnetEnsured {}

/// A VNet was deleted and SDN applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VnetRemoved {
    /// The operation.
    pub operation_id: Uuid,
    /// The VNet.
    pub vnet: String,
}
net_message!(
    VnetRemoved,
    "vnet.removed",
    Event,
    "An SDN VNet was deleted and SDN applied.",
    VnetRemoved {
        operation_id: example_operation(),
        vnet: "web".into(),
    }
);
impl crate::message::Event for VnetRemoved {}

/// A network operation failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NetOperationFailed {
    /// The operation.
    pub operation_id: Uuid,
    /// The command that failed, such as `net.attach`.
    pub kind: String,
    /// The container, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<Vmid>,
    /// The VNet, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnet: Option<String>,
    /// Nodes where an SDN apply failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// What went wrong.
    pub error: StepError,
}
net_message!(
    NetOperationFailed,
    "net.operation_failed",
    Event,
    "A network operation failed.",
    NetOperationFailed {
        operation_id: example_operation(),
        kind: "net.attach".into(),
        vmid: Some(Vmid(123)),
        vnet: None,
        nodes: Vec::new(),
        error: StepError::new(
            "proxmox.hotplug",
            "unable to hotplug net1: bridge 'vmbr9' does not exist"
        ),
    }
);
impl crate::message::Event for NetOperationFailed {}
