//! The simulator's in-memory state: nodes, containers (as real config text), tasks, faults.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use pvefleet_proxmox::ConfigFile;
use serde_json::{Value, json};

use crate::ApiError;
use crate::faults::Fault;
use crate::tasks::Task;

/// How a simulator starts.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Node names.
    pub nodes: Vec<String>,
    /// The PVE version it claims (`9.1.3` or `8.4.1`).
    pub version: String,
    /// The only API token accepted (`USER@REALM!ID`, secret); `None` accepts any request.
    pub token: Option<(String, String)>,
    /// How long every task runs.
    pub task_duration: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: vec!["pve1".into(), "pve2".into()],
            version: "9.1.3".into(),
            token: None,
            task_duration: Duration::ZERO,
        }
    }
}

/// One container.
#[derive(Debug, Clone)]
pub struct Ct {
    /// Its node.
    pub node: String,
    /// Its config file.
    pub config: ConfigFile,
    /// Running or stopped.
    pub running: bool,
}

/// Everything the simulator knows.
pub struct SimState {
    /// Start-up settings.
    pub config: SimConfig,
    /// Containers by vmid.
    pub containers: BTreeMap<u32, Ct>,
    /// Tasks by UPID.
    pub tasks: HashMap<String, Task>,
    /// Pending faults.
    pub faults: Vec<Fault>,
    /// Task types whose next task ends in error, with the error.
    pub task_errors: Vec<(String, String)>,
    pub(crate) started: Instant,
    pub(crate) seq: u64,
}

impl SimState {
    /// A fresh state.
    pub fn new(config: SimConfig) -> Self {
        Self {
            config,
            containers: BTreeMap::new(),
            tasks: HashMap::new(),
            faults: Vec::new(),
            task_errors: Vec::new(),
            started: Instant::now(),
            seq: 0,
        }
    }

    pub(crate) fn version(&self) -> Value {
        let release = self
            .config
            .version
            .rsplitn(2, '.')
            .last()
            .unwrap_or_default()
            .to_string();
        json!({ "version": self.config.version, "release": release, "repoid": "pvesim" })
    }

    pub(crate) fn nodes(&self) -> Value {
        Value::Array(
            self.config
                .nodes
                .iter()
                .map(|n| json!({ "node": n, "status": "online", "cpu": 0.05, "maxcpu": 8, "mem": 4_294_967_296u64, "maxmem": 34_359_738_368u64, "type": "node" }))
                .collect(),
        )
    }

    pub(crate) fn has_node(&self, node: &str) -> bool {
        self.config.nodes.iter().any(|n| n == node)
    }

    /// `GET /cluster/nextid`: the lowest free vmid from 100, or a check of `vmid`. Reserves
    /// nothing, as on PVE.
    pub(crate) fn next_id(&self, params: &[(String, String)]) -> Result<Value, ApiError> {
        if let Some((_, v)) = params.iter().find(|(k, _)| k == "vmid") {
            let vmid: u32 = v.parse().map_err(|_| {
                ApiError::params(vec![(
                    "vmid".into(),
                    format!("type check ('integer') failed - got '{v}'"),
                )])
            })?;
            if self.containers.contains_key(&vmid) {
                return Err(ApiError::params(vec![(
                    "vmid".into(),
                    format!("VM {vmid} already exists"),
                )]));
            }
            return Ok(json!(vmid.to_string()));
        }
        let free = (100u32..).find(|id| !self.containers.contains_key(id)).unwrap_or(100);
        Ok(json!(free.to_string()))
    }
}
