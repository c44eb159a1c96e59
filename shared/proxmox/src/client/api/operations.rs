//! Cluster, node, storage and task reads, and the container operations beyond create and
//! power: pending changes, snapshots, resize, migration and interfaces.

use serde::Deserialize;
use serde_json::Value;

use super::super::{Params, PveClient, PveError, Upid, enc, lenient};
use super::{LogLine, LxcStatus, Resource, ResourceType, TaskStatus};

/// `GET /nodes/{node}/status` (the parts the fleet reads).
#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus {
    /// CPU use, a fraction.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub cpu: Option<f64>,
    /// CPU facts.
    #[serde(default)]
    pub cpuinfo: Option<CpuInfo>,
    /// Memory.
    #[serde(default)]
    pub memory: Option<Memory>,
    /// `pve-manager/9.1.3/...`.
    #[serde(default)]
    pub pveversion: Option<String>,
    /// Seconds up.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub uptime: Option<u64>,
}

/// `cpuinfo` of a node.
#[derive(Debug, Clone, Deserialize)]
pub struct CpuInfo {
    /// Logical CPUs.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub cpus: Option<u64>,
    /// Cores.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub cores: Option<u64>,
    /// Model name.
    #[serde(default)]
    pub model: Option<String>,
}

/// `memory` of a node, bytes.
#[derive(Debug, Clone, Deserialize)]
pub struct Memory {
    /// Total.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub total: Option<u64>,
    /// Used.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub used: Option<u64>,
    /// Free.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub free: Option<u64>,
}

/// One volume of `GET /nodes/{node}/storage/{storage}/content`.
#[derive(Debug, Clone, Deserialize)]
pub struct StorageItem {
    /// `local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst`.
    pub volid: String,
    /// `vztmpl`, `rootdir`, `images`, `iso`, `backup`.
    #[serde(default)]
    pub content: Option<String>,
    /// `tzst`, `raw`, ...
    #[serde(default)]
    pub format: Option<String>,
    /// Bytes.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub size: Option<u64>,
    /// The owning guest.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub vmid: Option<u64>,
}

/// A login answer of `POST /access/ticket`.
#[derive(Debug, Clone, Deserialize)]
pub struct TicketAnswer {
    /// The ticket, sent as the `PVEAuthCookie` cookie.
    pub ticket: String,
    /// Sent as `CSRFPreventionToken` on writes.
    #[serde(rename = "CSRFPreventionToken")]
    pub csrf: String,
    /// `USER@REALM`.
    pub username: String,
}

/// Privileges by ACL path, from `GET /access/permissions`.
pub type Permissions = std::collections::BTreeMap<String, std::collections::BTreeMap<String, Value>>;

/// One entry of `GET /nodes/{node}/tasks`.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskEntry {
    /// The UPID.
    pub upid: String,
    /// The task type.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The object id (a vmid for guest tasks).
    #[serde(default)]
    pub id: Option<String>,
    /// The exit status, once ended.
    #[serde(default)]
    pub status: Option<String>,
}

/// `GET …/lxc/{vmid}/pending`: one key, its current and pending values.
#[derive(Debug, Clone, Deserialize)]
pub struct PendingEntry {
    /// The config key.
    pub key: String,
    /// The current value.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub value: Option<String>,
    /// The value waiting for a restart.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub pending: Option<String>,
    /// Deleted at the next restart.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub delete: Option<bool>,
}

/// One entry of `GET …/lxc/{vmid}/snapshot`, including the pseudo-entry `current`.
#[derive(Debug, Clone, Deserialize)]
pub struct Snapshot {
    /// The name (`current` is the live state).
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: Option<String>,
    /// The snapshot it was taken after.
    #[serde(default)]
    pub parent: Option<String>,
    /// When it was taken (epoch seconds).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub snaptime: Option<u64>,
}

/// `GET …/lxc/{vmid}/migrate` (PVE 9): whether and where a container can move.
#[derive(Debug, Clone, Deserialize)]
pub struct MigrateCheck {
    /// Whether it runs now.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub running: Option<bool>,
    /// Nodes it may move to.
    #[serde(default, rename = "allowed-nodes")]
    pub allowed_nodes: Vec<String>,
}

/// An interface inside a running container (`GET …/lxc/{vmid}/interfaces`).
#[derive(Debug, Clone, Deserialize)]
pub struct Interface {
    /// `eth0`.
    pub name: String,
    /// MAC address.
    #[serde(default)]
    pub hwaddr: Option<String>,
    /// IPv4/CIDR.
    #[serde(default)]
    pub inet: Option<String>,
    /// IPv6/CIDR.
    #[serde(default)]
    pub inet6: Option<String>,
}

/// How `lxc_migrate` moves a container. LXC has no live migration: a running container
/// needs `restart` (stopped, moved, started again).
#[derive(Debug, Clone, Default)]
pub struct Migration {
    /// Restart a running container around the move.
    pub restart: bool,
    /// Shutdown timeout for the restart, seconds (PVE's default is 180).
    pub timeout: Option<u64>,
    /// Move the volumes to this storage on the target.
    pub target_storage: Option<String>,
}

fn invalid(method: &str, path: &str, message: String) -> PveError {
    PveError::from_response(method, path, 200, message, Default::default())
}

impl PveClient {
    /// `GET /nodes/{node}/status`.
    pub async fn node_status(&self, node: &str) -> Result<NodeStatus, PveError> {
        self.get(&format!("/nodes/{}/status", enc(node)), Params::new()).await
    }

    /// `GET /cluster/resources`: the whole cluster in one read (metrics about 10 s old).
    pub async fn resources(&self, kind: Option<ResourceType>) -> Result<Vec<Resource>, PveError> {
        self.get(
            "/cluster/resources",
            Params::new().opt("type", kind.map(ResourceType::as_str)),
        )
        .await
    }

    /// The node container `vmid` is on, from one cluster read (HA may have moved it); `None`
    /// when no container has that vmid.
    pub async fn lxc_node(&self, vmid: u32) -> Result<Option<String>, PveError> {
        Ok(self
            .resources(Some(ResourceType::Vm))
            .await?
            .into_iter()
            .find(|r| r.vmid == Some(u64::from(vmid)) && r.kind == "lxc")
            .and_then(|r| r.node))
    }

    /// `GET /nodes/{node}/storage/{storage}/content`, optionally of one content type.
    pub async fn storage_content(
        &self,
        node: &str,
        storage: &str,
        content: Option<&str>,
    ) -> Result<Vec<StorageItem>, PveError> {
        self.get(
            &format!("/nodes/{}/storage/{}/content", enc(node), enc(storage)),
            Params::new().opt("content", content),
        )
        .await
    }

    /// Whether a template volume (`local:vztmpl/...`) exists on a node.
    pub async fn template_exists(&self, node: &str, volid: &str) -> Result<bool, PveError> {
        let Some((storage, _)) = volid.split_once(':') else {
            return Ok(false);
        };
        let items = self.storage_content(node, storage, Some("vztmpl")).await?;
        Ok(items.iter().any(|i| i.volid == volid))
    }

    /// `GET /access/permissions`: the caller's privileges by path.
    pub async fn permissions(&self) -> Result<Permissions, PveError> {
        self.get("/access/permissions", Params::new()).await
    }

    /// `GET /nodes/{node}/tasks`: a node's recent tasks, optionally of one guest.
    pub async fn tasks(&self, node: &str, vmid: Option<u32>) -> Result<Vec<TaskEntry>, PveError> {
        self.get(&format!("/nodes/{}/tasks", enc(node)), Params::new().opt("vmid", vmid))
            .await
    }

    /// `GET /nodes/{node}/tasks/{upid}/status`, on the node the UPID names.
    pub async fn task_status(&self, upid: &str) -> Result<TaskStatus, PveError> {
        let node = Upid::parse(upid)
            .map(|u| u.node)
            .ok_or_else(|| invalid("GET", "tasks", format!("'{upid}' is not a UPID")))?;
        self.get(
            &format!("/nodes/{}/tasks/{}/status", enc(&node), enc(upid)),
            Params::new(),
        )
        .await
    }

    /// `GET /nodes/{node}/tasks/{upid}/log`, one page: `limit` lines from line `start`.
    pub async fn task_log(&self, upid: &str, start: u64, limit: u64) -> Result<Vec<LogLine>, PveError> {
        let node = Upid::parse(upid)
            .map(|u| u.node)
            .ok_or_else(|| invalid("GET", "tasks", format!("'{upid}' is not a UPID")))?;
        self.get(
            &format!("/nodes/{}/tasks/{}/log", enc(&node), enc(upid)),
            Params::new().set("start", start).set("limit", limit),
        )
        .await
    }

    /// `GET /nodes/{node}/lxc`: the containers of a node.
    pub async fn lxc_list(&self, node: &str) -> Result<Vec<LxcStatus>, PveError> {
        self.get(&format!("/nodes/{}/lxc", enc(node)), Params::new()).await
    }

    /// `GET …/lxc/{vmid}/pending`: every key with its current and pending value.
    pub async fn lxc_pending(&self, node: &str, vmid: u32) -> Result<Vec<PendingEntry>, PveError> {
        self.get(&format!("/nodes/{}/lxc/{vmid}/pending", enc(node)), Params::new())
            .await
    }

    /// `PUT …/lxc/{vmid}/config` deleting keys (`delete`), guarded by `digest` when given.
    pub async fn lxc_delete_config(
        &self,
        node: &str,
        vmid: u32,
        keys: &[&str],
        digest: Option<&str>,
    ) -> Result<(), PveError> {
        self.lxc_set_config(node, vmid, Params::new().set("delete", keys.join(",")), digest)
            .await
    }

    /// Starts a container and waits for the task.
    pub async fn lxc_start(&self, node: &str, vmid: u32) -> Result<TaskStatus, PveError> {
        self.lxc_power(node, vmid, "start", Params::new()).await
    }

    /// Stops a container at once (no clean shutdown) and waits for the task.
    pub async fn lxc_stop(&self, node: &str, vmid: u32) -> Result<TaskStatus, PveError> {
        self.lxc_power(node, vmid, "stop", Params::new()).await
    }

    /// Shuts a container down cleanly within `timeout` seconds; with `force_stop`, PVE stops it
    /// after the timeout, else the task fails and the container keeps running.
    pub async fn lxc_shutdown(
        &self,
        node: &str,
        vmid: u32,
        timeout: Option<u64>,
        force_stop: bool,
    ) -> Result<TaskStatus, PveError> {
        let params = Params::new().opt("timeout", timeout);
        let params = if force_stop {
            params.flag("forceStop", true)
        } else {
            params
        };
        self.lxc_power(node, vmid, "shutdown", params).await
    }

    /// Reboots a running container (pending changes apply) and waits for the task.
    pub async fn lxc_reboot(&self, node: &str, vmid: u32, timeout: Option<u64>) -> Result<TaskStatus, PveError> {
        self.lxc_power(node, vmid, "reboot", Params::new().opt("timeout", timeout))
            .await
    }

    /// `GET …/lxc/{vmid}/snapshot`, including the pseudo-entry `current`.
    pub async fn lxc_snapshots(&self, node: &str, vmid: u32) -> Result<Vec<Snapshot>, PveError> {
        self.get(&format!("/nodes/{}/lxc/{vmid}/snapshot", enc(node)), Params::new())
            .await
    }

    /// `POST …/lxc/{vmid}/snapshot`, followed to its end.
    pub async fn lxc_snapshot_create(
        &self,
        node: &str,
        vmid: u32,
        name: &str,
        description: Option<&str>,
    ) -> Result<TaskStatus, PveError> {
        let upid: String = self
            .post(
                &format!("/nodes/{}/lxc/{vmid}/snapshot", enc(node)),
                Params::new().set("snapname", name).opt("description", description),
            )
            .await?;
        self.wait_task(&upid).await
    }

    /// `DELETE …/lxc/{vmid}/snapshot/{name}`, followed to its end.
    pub async fn lxc_snapshot_delete(
        &self,
        node: &str,
        vmid: u32,
        name: &str,
        force: bool,
    ) -> Result<TaskStatus, PveError> {
        let params = if force {
            Params::new().flag("force", true)
        } else {
            Params::new()
        };
        let upid: String = self
            .delete(
                &format!("/nodes/{}/lxc/{vmid}/snapshot/{}", enc(node), enc(name)),
                params,
            )
            .await?;
        self.wait_task(&upid).await
    }

    /// `POST …/snapshot/{name}/rollback` (a running container is force-stopped first), then
    /// started when `start`; followed to its end.
    pub async fn lxc_snapshot_rollback(
        &self,
        node: &str,
        vmid: u32,
        name: &str,
        start: bool,
    ) -> Result<TaskStatus, PveError> {
        let upid: String = self
            .post(
                &format!("/nodes/{}/lxc/{vmid}/snapshot/{}/rollback", enc(node), enc(name)),
                Params::new().flag("start", start),
            )
            .await?;
        self.wait_task(&upid).await
    }

    /// `PUT …/lxc/{vmid}/resize`: `size` is absolute (`10G`) or a growth (`+2G`). An absolute
    /// size equal to the current one succeeds without a call to PVE, which would refuse it
    /// ("disk is already at specified size"); `None` is returned then.
    pub async fn lxc_resize(
        &self,
        node: &str,
        vmid: u32,
        disk: &str,
        size: &str,
        digest: Option<&str>,
    ) -> Result<Option<TaskStatus>, PveError> {
        let path = format!("/nodes/{}/lxc/{vmid}/resize", enc(node));
        let upid: Result<String, PveError> = self
            .put(
                &path,
                Params::new().set("disk", disk).set("size", size).opt("digest", digest),
            )
            .await;
        match upid {
            Ok(upid) => self.wait_task(&upid).await.map(Some),
            Err(e) if !size.starts_with('+') && e.message.contains("disk is already at specified size") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET …/lxc/{vmid}/migrate` (PVE 9): whether and where it can move.
    pub async fn lxc_migrate_check(&self, node: &str, vmid: u32) -> Result<MigrateCheck, PveError> {
        self.get(&format!("/nodes/{}/lxc/{vmid}/migrate", enc(node)), Params::new())
            .await
    }

    /// `POST …/lxc/{vmid}/migrate` to `target`, followed to its end.
    pub async fn lxc_migrate(
        &self,
        node: &str,
        vmid: u32,
        target: &str,
        how: &Migration,
    ) -> Result<TaskStatus, PveError> {
        let mut params = Params::new().set("target", target);
        if how.restart {
            params = params.flag("restart", true).opt("timeout", how.timeout);
        }
        params = params.opt("target-storage", how.target_storage.as_deref());
        let upid: String = self
            .post(&format!("/nodes/{}/lxc/{vmid}/migrate", enc(node)), params)
            .await?;
        self.wait_task(&upid).await
    }

    /// `GET …/lxc/{vmid}/interfaces`: the interfaces inside a running container.
    pub async fn lxc_interfaces(&self, node: &str, vmid: u32) -> Result<Vec<Interface>, PveError> {
        self.get(&format!("/nodes/{}/lxc/{vmid}/interfaces", enc(node)), Params::new())
            .await
    }
}
