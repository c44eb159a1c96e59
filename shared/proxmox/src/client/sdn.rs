//! SDN: zones, vnets and subnets, whose changes stay pending until `PUT /cluster/sdn` applies
//! them, and the per-node status that tells whether an apply reached every node
//! (pve-behaviour.md §5.13, §8).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::api::TaskStatus;
use super::{Params, PveClient, PveError, enc, lenient};

/// An SDN zone.
#[derive(Debug, Clone, Deserialize)]
pub struct Zone {
    /// The id.
    pub zone: String,
    /// `simple`, `vlan`, `vxlan`, `evpn`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Nodes it is restricted to.
    #[serde(default)]
    pub nodes: Option<String>,
}

/// A vnet, as listed with `pending=1`.
#[derive(Debug, Clone, Deserialize)]
pub struct Vnet {
    /// The id (2 to 8 characters).
    pub vnet: String,
    /// Its zone.
    #[serde(default)]
    pub zone: Option<String>,
    /// VLAN tag or VXLAN VNI.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub tag: Option<u64>,
    /// A description.
    #[serde(default)]
    pub alias: Option<String>,
    /// VLAN-aware.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub vlanaware: Option<bool>,
    /// `new`, `changed` or `deleted` while a change is pending; `None` when applied.
    #[serde(default)]
    pub state: Option<String>,
    /// The pending values.
    #[serde(default)]
    pub pending: Option<Map<String, Value>>,
    /// The config digest.
    #[serde(default)]
    pub digest: Option<String>,
}

/// A vnet to create.
#[derive(Debug, Clone, Default)]
pub struct VnetSpec {
    /// Its zone.
    pub zone: String,
    /// VLAN tag or VXLAN VNI.
    pub tag: Option<u32>,
    /// A description.
    pub alias: Option<String>,
    /// VLAN-aware.
    pub vlanaware: Option<bool>,
}

/// A subnet of a vnet.
#[derive(Debug, Clone, Deserialize)]
pub struct Subnet {
    /// `zone-10.0.0.0-24`.
    pub subnet: String,
    /// `10.0.0.0/24`.
    #[serde(default)]
    pub cidr: Option<String>,
    /// The gateway.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Pending state, as for vnets.
    #[serde(default)]
    pub state: Option<String>,
}

/// A zone's status on one node.
#[derive(Debug, Clone, Deserialize)]
pub struct ZoneStatus {
    /// The zone.
    pub zone: String,
    /// `available`, `pending` or `error`.
    pub status: String,
}

/// A vnet's status on one node.
#[derive(Debug, Clone, Deserialize)]
pub struct VnetStatus {
    /// The vnet.
    pub vnet: String,
    /// `available` or `error`.
    pub status: String,
    /// Why not available.
    #[serde(default)]
    pub statusmsg: Option<String>,
}

impl PveClient {
    /// `GET /cluster/sdn/zones`.
    pub async fn sdn_zones(&self) -> Result<Vec<Zone>, PveError> {
        self.get("/cluster/sdn/zones", Params::new()).await
    }

    /// `GET /cluster/sdn/vnets?pending=1`: every vnet with its pending state.
    pub async fn vnets(&self) -> Result<Vec<Vnet>, PveError> {
        self.get("/cluster/sdn/vnets", Params::new().flag("pending", true))
            .await
    }

    /// `POST /cluster/sdn/vnets`: pending until `sdn_apply`.
    pub async fn vnet_create(&self, vnet: &str, spec: &VnetSpec) -> Result<(), PveError> {
        let mut params = Params::new()
            .set("vnet", vnet)
            .set("zone", &spec.zone)
            .opt("tag", spec.tag)
            .opt("alias", spec.alias.as_deref());
        if let Some(v) = spec.vlanaware {
            params = params.flag("vlanaware", v);
        }
        let _: Value = self.post("/cluster/sdn/vnets", params).await?;
        Ok(())
    }

    /// `DELETE /cluster/sdn/vnets/{vnet}`: pending until `sdn_apply`; refused while it has
    /// subnets.
    pub async fn vnet_delete(&self, vnet: &str) -> Result<(), PveError> {
        let _: Value = self
            .delete(&format!("/cluster/sdn/vnets/{}", enc(vnet)), Params::new())
            .await?;
        Ok(())
    }

    /// `GET /cluster/sdn/vnets/{vnet}/subnets?pending=1`.
    pub async fn subnets(&self, vnet: &str) -> Result<Vec<Subnet>, PveError> {
        self.get(
            &format!("/cluster/sdn/vnets/{}/subnets", enc(vnet)),
            Params::new().flag("pending", true),
        )
        .await
    }

    /// `POST /cluster/sdn/vnets/{vnet}/subnets`: a `10.0.0.0/24` subnet, pending until applied.
    pub async fn subnet_create(
        &self,
        vnet: &str,
        cidr: &str,
        gateway: Option<&str>,
        snat: bool,
    ) -> Result<(), PveError> {
        let _: Value = self
            .post(
                &format!("/cluster/sdn/vnets/{}/subnets", enc(vnet)),
                Params::new()
                    .set("subnet", cidr)
                    .set("type", "subnet")
                    .opt("gateway", gateway)
                    .flag("snat", snat),
            )
            .await?;
        Ok(())
    }

    /// `PUT /cluster/sdn`: applies pending SDN changes and follows the task. The task ending
    /// `OK` does not mean every node applied them: check `node_sdn_zones`.
    pub async fn sdn_apply(&self) -> Result<TaskStatus, PveError> {
        let upid: String = self.put("/cluster/sdn", Params::new()).await?;
        self.wait_task(&upid).await
    }

    /// `GET /nodes/{node}/sdn/zones`: each zone's status on a node.
    pub async fn node_sdn_zones(&self, node: &str) -> Result<Vec<ZoneStatus>, PveError> {
        self.get(&format!("/nodes/{}/sdn/zones", enc(node)), Params::new())
            .await
    }

    /// `GET /nodes/{node}/sdn/zones/{zone}/content`: each vnet's status on a node.
    pub async fn node_sdn_vnets(&self, node: &str, zone: &str) -> Result<Vec<VnetStatus>, PveError> {
        self.get(
            &format!("/nodes/{}/sdn/zones/{}/content", enc(node), enc(zone)),
            Params::new(),
        )
        .await
    }
}

/// A network interface of a node.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeIface {
    /// Its name, such as `vmbr0`.
    pub iface: String,
    /// `bridge`, `OVSBridge`, `vnet`, `eth`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether it is up.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub active: Option<bool>,
}

impl PveClient {
    /// `GET /nodes/{node}/network?type=any_bridge`: the bridges a guest NIC can use on a node
    /// (Linux and OVS bridges; PVE 8.1+ lists applied SDN vnets there too).
    pub async fn node_bridges(&self, node: &str) -> Result<Vec<NodeIface>, PveError> {
        self.get(
            &format!("/nodes/{}/network", enc(node)),
            Params::new().set("type", "any_bridge"),
        )
        .await
    }

    /// Whether `node` has a bridge (or applied VNet) named `bridge`.
    pub async fn has_bridge(&self, node: &str, bridge: &str) -> Result<bool, PveError> {
        Ok(self.node_bridges(node).await?.iter().any(|b| b.iface == bridge))
    }
}
