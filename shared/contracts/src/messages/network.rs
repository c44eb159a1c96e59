//! Network hotplug and SDN VNet binding (`services/nethotplug`): every command is an
//! operation whose id is the message's correlation id and is carried in the body too, so a
//! redelivery finds the operation it belongs to.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::Vmid;
use crate::message::{Command, Kind, Message, StepError};

fn example_operation() -> Uuid {
    Uuid::from_u128(0x0193_0c5e_7a10_7000_8000_0000_0000_0a01)
}

/// A container network interface as asked for: `net[index]` in the PVE config. Every option
/// is optional; on `net.update` only the options given change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetInterface {
    /// The `netN` index, 0 to 31; the lowest free one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31))]
    pub index: Option<u8>,
    /// The interface name inside the container; `eth<index>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A Linux or OVS bridge on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// An SDN VNet (2 to 8 characters); used as the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnet: Option<String>,
    /// The MAC address; generated with the configured prefix when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hwaddr: Option<String>,
    /// IPv4: `a.b.c.d/nn`, `dhcp`, `manual`, or `pool` for the next free address of the
    /// bridge's or VNet's pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// IPv6: CIDR, `auto`, `dhcp` or `manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    /// IPv4 gateway (the pool's when the address comes from a pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// IPv6 gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw6: Option<String>,
    /// VLAN tag, 1 to 4094.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u32>,
    /// VLAN trunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunks: Option<Vec<u32>>,
    /// The per-interface firewall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<bool>,
    /// Cable unplugged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_down: Option<bool>,
    /// MTU, 64 to 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Rate limit, Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
}

fn example_iface() -> NetInterface {
    NetInterface {
        index: Some(1),
        bridge: Some("vmbr0".into()),
        ip: Some("pool".into()),
        tag: Some(20),
        ..NetInterface::default()
    }
}

macro_rules! net_message {
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

/// A network command: its failure is `net.operation_failed`.
macro_rules! net_command {
    ($ty:ident, $name:literal, $desc:literal, $example:expr) => {
        net_message!($ty, $name, Command, $desc, $example);
        impl Command for $ty {
            type Failed = NetOperationFailed;
            fn failed(&self, error: StepError) -> NetOperationFailed {
                NetOperationFailed {
                    operation_id: self.operation_id,
                    kind: $name.into(),
                    vmid: self.target_vmid(),
                    vnet: self.target_vnet(),
                    nodes: Vec::new(),
                    error,
                }
            }
        }
    };
}

trait Target {
    fn target_vmid(&self) -> Option<Vmid> {
        None
    }
    fn target_vnet(&self) -> Option<String> {
        None
    }
}

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
