//! Network hotplug and SDN VNet binding (`services/nethotplug`): every command is an
//! operation whose id is the message's correlation id and is carried in the body too, so a
//! redelivery finds the operation it belongs to.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::Vmid;

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

mod commands;
mod events;

pub use commands::*;
pub use events::*;
