//! The network commands: attach, update and detach an interface; bind and unbind a VNet;
//! ensure and remove a VNet; and the `vnet.provision` saga.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{NetInterface, NetOperationFailed, Target, example_iface, example_operation};
use crate::ids::Vmid;
use crate::message::{Command, Kind, Message, StepError};

/// Attach a new interface to a container (hot-plugged when it runs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NetAttach {
    /// The operation.
    pub operation_id: Uuid,
    /// The container.
    pub vmid: Vmid,
    /// The interface.
    pub iface: NetInterface,
}
impl Target for NetAttach {
    fn target_vmid(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}

/// Change options of a container's interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NetUpdate {
    /// The operation.
    pub operation_id: Uuid,
    /// The container.
    pub vmid: Vmid,
    /// The `netN` index.
    #[schemars(range(min = 0, max = 31))]
    pub index: u8,
    /// The options to change; `index` is ignored.
    pub changes: NetInterface,
}
impl Target for NetUpdate {
    fn target_vmid(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}

/// Remove an interface from a container, releasing its pooled address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NetDetach {
    /// The operation.
    pub operation_id: Uuid,
    /// The container.
    pub vmid: Vmid,
    /// The `netN` index.
    #[schemars(range(min = 0, max = 31))]
    pub index: u8,
}
impl Target for NetDetach {
    fn target_vmid(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}

/// Attach an interface on an SDN VNet, applying the VNet first when it is pending, and record
/// the binding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VnetBind {
    /// The operation.
    pub operation_id: Uuid,
    /// The VNet.
    #[schemars(regex(pattern = r"^[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]$"), length(min = 2, max = 8))]
    pub vnet: String,
    /// The container.
    pub vmid: Vmid,
    /// The interface; its `bridge` and `vnet` are the VNet.
    #[serde(default)]
    pub iface: NetInterface,
}
impl Target for VnetBind {
    fn target_vmid(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
    fn target_vnet(&self) -> Option<String> {
        Some(self.vnet.clone())
    }
}

/// Detach a container's interface on a VNet and drop the binding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VnetUnbind {
    /// The operation.
    pub operation_id: Uuid,
    /// The VNet.
    pub vnet: String,
    /// The container.
    pub vmid: Vmid,
    /// The interface; the one bound to the VNet when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31))]
    pub index: Option<u8>,
}
impl Target for VnetUnbind {
    fn target_vmid(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
    fn target_vnet(&self) -> Option<String> {
        Some(self.vnet.clone())
    }
}

/// Create a VNet when it is missing, and apply SDN so every node has it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VnetEnsure {
    /// The operation (the saga).
    pub operation_id: Uuid,
    /// The VNet.
    #[schemars(regex(pattern = r"^[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]$"), length(min = 2, max = 8))]
    pub vnet: String,
    /// Its zone.
    pub zone: String,
    /// VLAN tag or VXLAN VNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u32>,
}
impl Target for VnetEnsure {
    fn target_vnet(&self) -> Option<String> {
        Some(self.vnet.clone())
    }
}

/// Delete a VNet and apply SDN: the compensation of a `vnet.ensure` that created it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VnetRemove {
    /// The operation (the saga).
    pub operation_id: Uuid,
    /// The VNet.
    pub vnet: String,
}
impl Target for VnetRemove {
    fn target_vnet(&self) -> Option<String> {
        Some(self.vnet.clone())
    }
}

net_command!(
    NetAttach,
    "net.attach",
    "Attach a network interface to a container.",
    NetAttach {
        operation_id: example_operation(),
        vmid: Vmid(123),
        iface: example_iface(),
    }
);
net_command!(
    NetUpdate,
    "net.update",
    "Change a container's network interface.",
    NetUpdate {
        operation_id: example_operation(),
        vmid: Vmid(123),
        index: 1,
        changes: NetInterface {
            rate: Some(100.0),
            ..NetInterface::default()
        },
    }
);
net_command!(
    NetDetach,
    "net.detach",
    "Detach a network interface from a container.",
    NetDetach {
        operation_id: example_operation(),
        vmid: Vmid(123),
        index: 1,
    }
);
net_command!(
    VnetBind,
    "vnet.bind",
    "Attach a container's interface on an SDN VNet, applying the VNet first when needed.",
    VnetBind {
        operation_id: example_operation(),
        vnet: "web".into(),
        vmid: Vmid(123),
        iface: NetInterface {
            ip: Some("pool".into()),
            ..NetInterface::default()
        },
    }
);
net_command!(
    VnetUnbind,
    "vnet.unbind",
    "Detach a container's interface from an SDN VNet.",
    VnetUnbind {
        operation_id: example_operation(),
        vnet: "web".into(),
        vmid: Vmid(123),
        index: None,
    }
);
net_command!(
    VnetEnsure,
    "vnet.ensure",
    "Create an SDN VNet when missing, then apply SDN.",
    VnetEnsure {
        operation_id: example_operation(),
        vnet: "web".into(),
        zone: "simple".into(),
        tag: None,
    }
);
net_command!(
    VnetRemove,
    "vnet.remove",
    "Delete an SDN VNet, then apply SDN.",
    VnetRemove {
        operation_id: example_operation(),
        vnet: "web".into(),
    }
);

/// Ensure a VNet, then bind a container to it, as one saga: the VNet is deleted again when
/// the saga created it and the binding fails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VnetProvision {
    /// The operation, and the saga's id.
    pub operation_id: Uuid,
    /// The VNet.
    #[schemars(regex(pattern = r"^[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]$"), length(min = 2, max = 8))]
    pub vnet: String,
    /// Its zone, when it has to be created.
    pub zone: String,
    /// VLAN tag or VXLAN VNI, when it has to be created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u32>,
    /// The container.
    pub vmid: Vmid,
    /// The interface.
    #[serde(default)]
    pub iface: NetInterface,
}
net_message!(
    VnetProvision,
    "vnet.provision",
    Command,
    "Ensure an SDN VNet, then bind a container's new interface to it, as a saga.",
    VnetProvision {
        operation_id: example_operation(),
        vnet: "web".into(),
        zone: "simple".into(),
        tag: None,
        vmid: Vmid(123),
        iface: NetInterface::default(),
    }
);
