//! Typed calls for the endpoints the fleet uses (`../shared/pve-api/subset.json`).

use serde::Deserialize;
use serde_json::Value;

use super::{Params, PveClient, PveError, enc, lenient};

/// `GET /version`.
#[derive(Debug, Clone, Deserialize)]
pub struct Version {
    /// `9.1.3`.
    pub version: String,
    /// `9.1`.
    #[serde(default)]
    pub release: String,
}

impl Version {
    /// The major version (8 or 9).
    pub fn major(&self) -> u32 {
        self.version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0)
    }
}

/// One entry of `GET /nodes`.
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    /// Node name.
    pub node: String,
    /// `online`, `offline` or `unknown`.
    #[serde(default)]
    pub status: String,
    /// CPU use, a fraction of `maxcpu`.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub cpu: Option<f64>,
    /// CPUs.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub maxcpu: Option<u64>,
    /// Memory used, bytes.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub mem: Option<u64>,
    /// Memory, bytes.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub maxmem: Option<u64>,
}

/// `GET …/tasks/{upid}/status`.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskStatus {
    /// `running` or `stopped`.
    pub status: String,
    /// `OK`, `WARNINGS: n`, or the error, once stopped.
    #[serde(default)]
    pub exitstatus: Option<String>,
    /// The task type.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The node.
    #[serde(default)]
    pub node: Option<String>,
}

/// One line of a task log.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LogLine {
    /// Line number.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub n: Option<u64>,
    /// Text.
    #[serde(default)]
    pub t: String,
}

/// `GET …/lxc/{vmid}/status/current`.
#[derive(Debug, Clone, Deserialize)]
pub struct LxcStatus {
    /// `running` or `stopped`.
    pub status: String,
    /// The vmid.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub vmid: Option<u64>,
    /// A lock, if any (`create`, `backup`, ...).
    #[serde(default)]
    pub lock: Option<String>,
    /// Tags, `;`-separated.
    #[serde(default)]
    pub tags: Option<String>,
}

impl PveClient {
    /// `GET /version`.
    pub async fn version(&self) -> Result<Version, PveError> {
        self.get("/version", Params::new()).await
    }

    /// `GET /nodes`.
    pub async fn nodes(&self) -> Result<Vec<Node>, PveError> {
        self.get("/nodes", Params::new()).await
    }

    /// `GET /cluster/nextid`: a free vmid now (PVE reserves nothing).
    pub async fn next_id(&self) -> Result<u64, PveError> {
        let v: Value = self.get("/cluster/nextid", Params::new()).await?;
        match &v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            PveError::from_response(
                "GET",
                "/cluster/nextid",
                200,
                format!("not a vmid: {v}"),
                Default::default(),
            )
        })
    }

    /// `POST /nodes/{node}/lxc`, then follows the create task to its end.
    pub async fn lxc_create(&self, node: &str, params: Params) -> Result<TaskStatus, PveError> {
        let upid: String = self.post(&format!("/nodes/{}/lxc", enc(node)), params).await?;
        self.wait_task(&upid).await
    }

    /// `GET …/lxc/{vmid}/config` (pending values merged in unless `current`).
    pub async fn lxc_config(
        &self,
        node: &str,
        vmid: u32,
        current: bool,
    ) -> Result<serde_json::Map<String, Value>, PveError> {
        let params = if current {
            Params::new().flag("current", true)
        } else {
            Params::new()
        };
        self.get(&format!("/nodes/{}/lxc/{vmid}/config", enc(node)), params)
            .await
    }

    /// `PUT …/lxc/{vmid}/config`, guarded by `digest` when given.
    pub async fn lxc_set_config(
        &self,
        node: &str,
        vmid: u32,
        params: Params,
        digest: Option<&str>,
    ) -> Result<(), PveError> {
        let _: Value = self
            .put(
                &format!("/nodes/{}/lxc/{vmid}/config", enc(node)),
                params.opt("digest", digest),
            )
            .await?;
        Ok(())
    }

    /// `GET …/lxc/{vmid}/status/current`.
    pub async fn lxc_status(&self, node: &str, vmid: u32) -> Result<LxcStatus, PveError> {
        self.get(
            &format!("/nodes/{}/lxc/{vmid}/status/current", enc(node)),
            Params::new(),
        )
        .await
    }

    /// `POST …/lxc/{vmid}/status/{action}` (start, stop, shutdown, reboot), followed to its end.
    pub async fn lxc_power(&self, node: &str, vmid: u32, action: &str, params: Params) -> Result<TaskStatus, PveError> {
        let upid: String = self
            .post(&format!("/nodes/{}/lxc/{vmid}/status/{action}", enc(node)), params)
            .await?;
        self.wait_task(&upid).await
    }

    /// `DELETE …/lxc/{vmid}` with `purge` and `force` in the query string, followed to its end.
    pub async fn lxc_destroy(&self, node: &str, vmid: u32, purge: bool, force: bool) -> Result<TaskStatus, PveError> {
        let upid: String = self
            .delete(
                &format!("/nodes/{}/lxc/{vmid}", enc(node)),
                Params::new().flag("purge", purge).flag("force", force),
            )
            .await?;
        self.wait_task(&upid).await
    }
}

/// The `type` filter of `GET /cluster/resources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    /// Guests (`lxc` and `qemu` rows).
    Vm,
    /// Nodes.
    Node,
    /// Storages.
    Storage,
    /// SDN zones.
    Sdn,
}

impl ResourceType {
    fn as_str(self) -> &'static str {
        match self {
            ResourceType::Vm => "vm",
            ResourceType::Node => "node",
            ResourceType::Storage => "storage",
            ResourceType::Sdn => "sdn",
        }
    }
}

/// One row of `GET /cluster/resources` (pve-behaviour.md §5.11). Guests, nodes, storages and
/// SDN zones share the shape; fields that do not apply are `None`.
#[derive(Debug, Clone, Deserialize)]
pub struct Resource {
    /// `lxc/101`, `node/pve1`, `storage/pve1/local`, `sdn/pve1/zone`.
    pub id: String,
    /// `lxc`, `qemu`, `node`, `storage`, `sdn`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The node.
    #[serde(default)]
    pub node: Option<String>,
    /// Guests: the vmid.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub vmid: Option<u64>,
    /// Guests: the name.
    #[serde(default)]
    pub name: Option<String>,
    /// `running`, `stopped`, `unknown` (no data yet, or the node is down), `online`, ...
    #[serde(default)]
    pub status: Option<String>,
    /// CPU use, a fraction of `maxcpu`.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub cpu: Option<f64>,
    /// CPUs.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub maxcpu: Option<f64>,
    /// Memory used, bytes.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub mem: Option<u64>,
    /// Memory limit, bytes.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub maxmem: Option<u64>,
    /// Disk used, bytes.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub disk: Option<u64>,
    /// Disk size, bytes.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub maxdisk: Option<u64>,
    /// Seconds up.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub uptime: Option<u64>,
    /// Network bytes in.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub netin: Option<u64>,
    /// Network bytes out.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub netout: Option<u64>,
    /// `;`-separated tags.
    #[serde(default)]
    pub tags: Option<String>,
    /// The config lock.
    #[serde(default)]
    pub lock: Option<String>,
    /// HA state, for HA-managed guests.
    #[serde(default)]
    pub hastate: Option<String>,
    /// A template.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub template: Option<bool>,
    /// Storages: the storage id.
    #[serde(default)]
    pub storage: Option<String>,
    /// SDN: the zone.
    #[serde(default)]
    pub sdn: Option<String>,
}

impl Resource {
    /// Tags as a list.
    pub fn tag_list(&self) -> Vec<&str> {
        self.tags
            .as_deref()
            .unwrap_or_default()
            .split([';', ',', ' '])
            .filter(|t| !t.is_empty())
            .collect()
    }
}

mod operations;

pub use operations::*;
