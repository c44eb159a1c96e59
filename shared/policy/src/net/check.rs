//! The checks intake makes before it accepts a network request: the request itself, then
//! what PVE says (the container, its interfaces, the node's bridges, the VNets). Only reads:
//! a refused request sends nothing to PVE.

use pvefleet_contracts::messages::NetInterface;
use pvefleet_core::config::NethotplugSettings;
use pvefleet_proxmox::client::{PveClient, PveError};
use serde_json::Value;

use super::spec::{self, Invalid};

/// Why a request is refused, by HTTP meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed (400).
    Invalid(Invalid),
    /// Well formed, but names something that is not there (422).
    Unknown(Invalid),
    /// The container or interface does not exist (404).
    NotFound(String),
    /// The interface exists already (409).
    Conflict(Invalid),
    /// PVE could not be asked (503).
    Unavailable(String),
}

impl Refusal {
    /// The refusal of a request whose interface sits under `at` (`interface` in a binding):
    /// the interface's fields are named `at.field`; the VNet and the vmid stay as they are.
    pub fn within(self, at: &str) -> Self {
        let nest = |mut i: Invalid| {
            if !matches!(i.field.as_str(), "vnet" | "vmid") {
                i.field = format!("{at}.{}", i.field);
            }
            i
        };
        match self {
            Refusal::Invalid(i) => Refusal::Invalid(nest(i)),
            Refusal::Unknown(i) => Refusal::Unknown(nest(i)),
            Refusal::Conflict(i) => Refusal::Conflict(nest(i)),
            other => other,
        }
    }
}

fn pve(e: PveError) -> Refusal {
    Refusal::Unavailable(format!("Proxmox VE could not be asked: {e}"))
}

/// The node of container `vmid`, and its config.
async fn container(pve_client: &PveClient, vmid: u32) -> Result<(String, serde_json::Map<String, Value>), Refusal> {
    let Some(node) = pve_client.lxc_node(vmid).await.map_err(pve)? else {
        return Err(Refusal::NotFound(format!("Container {vmid} does not exist.")));
    };
    let config = pve_client.lxc_config(&node, vmid, false).await.map_err(pve)?;
    Ok((node, config))
}

async fn check_bridge(pve_client: &PveClient, node: &str, bridge: &str) -> Result<(), Refusal> {
    if pve_client.has_bridge(node, bridge).await.map_err(pve)? {
        Ok(())
    } else {
        Err(Refusal::Unknown(Invalid::new(
            "bridge",
            format!("'{bridge}' does not exist on node {node}"),
        )))
    }
}

async fn check_vnet_exists(pve_client: &PveClient, vnet: &str) -> Result<(), Refusal> {
    let vnets = pve_client.vnets().await.map_err(pve)?;
    if vnets
        .iter()
        .any(|v| v.vnet == vnet && v.state.as_deref() != Some("deleted"))
    {
        Ok(())
    } else {
        Err(Refusal::Unknown(Invalid::new(
            "vnet",
            format!("'{vnet}' does not exist"),
        )))
    }
}

fn check_pool(s: &NethotplugSettings, iface: &NetInterface, bridge: Option<&str>) -> Result<(), Refusal> {
    if iface.ip.as_deref() == Some("pool") {
        let bridge = bridge.unwrap_or_default();
        if !s.pools.contains_key(bridge) {
            return Err(Refusal::Unknown(Invalid::new(
                "ip",
                format!("no address pool is configured for '{bridge}'"),
            )));
        }
    }
    Ok(())
}

/// A new interface: well formed, on an existing container, on a bridge of its node (or an
/// existing VNet), at a free index.
pub async fn attach(
    pve_client: &PveClient,
    s: &NethotplugSettings,
    vmid: u32,
    iface: &NetInterface,
    vnet_may_be_created: bool,
) -> Result<(), Refusal> {
    spec::check(iface).map_err(Refusal::Invalid)?;
    let Some(bridge) = spec::bridge_of(iface) else {
        return Err(Refusal::Invalid(Invalid::new("bridge", "give a bridge or a vnet")));
    };
    spec::check_allowed(&s.allowed_bridges, bridge).map_err(Refusal::Unknown)?;
    check_pool(s, iface, Some(bridge))?;
    let (node, config) = container(pve_client, vmid).await?;
    if let Some(i) = iface.index
        && config.contains_key(&format!("net{i}"))
    {
        return Err(Refusal::Conflict(Invalid::new(
            "index",
            format!("net{i} already exists on container {vmid}"),
        )));
    }
    match &iface.vnet {
        Some(vnet) if !vnet_may_be_created => check_vnet_exists(pve_client, vnet).await,
        Some(_) => Ok(()),
        None => check_bridge(pve_client, &node, bridge).await,
    }
}

/// Changes to an existing interface.
pub async fn update(
    pve_client: &PveClient,
    s: &NethotplugSettings,
    vmid: u32,
    index: u8,
    changes: &NetInterface,
) -> Result<(), Refusal> {
    let probe = NetInterface {
        index: Some(index),
        ..changes.clone()
    };
    spec::check(&probe).map_err(Refusal::Invalid)?;
    if let Some(b) = spec::bridge_of(changes) {
        spec::check_allowed(&s.allowed_bridges, b).map_err(Refusal::Unknown)?;
    }
    let (node, config) = container(pve_client, vmid).await?;
    let Some(old) = config.get(&format!("net{index}")).and_then(Value::as_str) else {
        return Err(Refusal::NotFound(format!("Container {vmid} has no net{index}.")));
    };
    let old_bridge = pvefleet_proxmox::codec::net::NetConfig::parse("net", old)
        .ok()
        .and_then(|n| n.bridge);
    check_pool(s, changes, spec::bridge_of(changes).or(old_bridge.as_deref()))?;
    match (&changes.vnet, &changes.bridge) {
        (Some(vnet), _) => check_vnet_exists(pve_client, vnet).await,
        (None, Some(bridge)) => check_bridge(pve_client, &node, bridge).await,
        (None, None) => Ok(()),
    }
}

/// An interface to remove.
pub async fn detach(pve_client: &PveClient, vmid: u32, index: u8) -> Result<(), Refusal> {
    let (_, config) = container(pve_client, vmid).await?;
    if config.contains_key(&format!("net{index}")) {
        Ok(())
    } else {
        Err(Refusal::NotFound(format!("Container {vmid} has no net{index}.")))
    }
}

/// An interface to unbind from `vnet`: it exists and is on that VNet.
pub async fn unbind(pve_client: &PveClient, vmid: u32, index: u8, vnet: &str) -> Result<(), Refusal> {
    let (_, config) = container(pve_client, vmid).await?;
    let key = format!("net{index}");
    let Some(line) = config.get(&key).and_then(Value::as_str) else {
        return Err(Refusal::NotFound(format!("Container {vmid} has no {key}.")));
    };
    let bridge = pvefleet_proxmox::codec::net::NetConfig::parse(&key, line)
        .ok()
        .and_then(|n| n.bridge);
    if bridge.as_deref() == Some(vnet) {
        Ok(())
    } else {
        Err(Refusal::Conflict(Invalid::new(
            "interface",
            format!(
                "{key} is on {}, not on vnet '{vnet}'",
                bridge.as_deref().unwrap_or("no bridge")
            ),
        )))
    }
}

/// `netN` (or a bare index) as an index.
pub fn parse_interface(name: &str) -> Result<u8, Refusal> {
    let digits = name.strip_prefix("net").unwrap_or(name);
    match digits.parse::<u8>() {
        Ok(i) if i < pvefleet_proxmox::codec::net::MAX_NETS => Ok(i),
        Ok(i) => Err(Refusal::Invalid(Invalid::new(
            "index",
            format!("{i} is out of range: a container has net0 to net31"),
        ))),
        Err(_) => Err(Refusal::Invalid(Invalid::new(
            "interface",
            format!("'{name}' is not an interface (net0 to net31)"),
        ))),
    }
}
