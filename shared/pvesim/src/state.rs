//! The simulator's in-memory state: nodes, containers (as real config text), tasks, HA, SDN,
//! load profiles and faults.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use pvefleet_proxmox::ConfigFile;
use serde_json::{Map, Value, json};

use crate::ApiError;
use crate::faults::Fault;
use crate::tasks::Task;

/// Every privilege pvesim knows; a simulator grants all of them unless told otherwise.
pub const ALL_PRIVILEGES: &[&str] = &[
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "SDN.Allocate",
    "SDN.Audit",
    "SDN.Use",
    "Sys.Audit",
    "Sys.Console",
    "Sys.Modify",
    "VM.Allocate",
    "VM.Audit",
    "VM.Backup",
    "VM.Config.CPU",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Console",
    "VM.Migrate",
    "VM.PowerMgmt",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
];

/// How a simulator starts.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Node names.
    pub nodes: Vec<String>,
    /// The PVE version it claims (`9.1.3` or `8.4.1`).
    pub version: String,
    /// The only API token accepted (`USER@REALM!ID`, secret); with neither this nor
    /// `password`, every request is accepted.
    pub token: Option<(String, String)>,
    /// A user (`USER@REALM`) and password that may log in for a ticket.
    pub password: Option<(String, String)>,
    /// The privileges the caller holds on `/`; calls needing another answer 403.
    pub privileges: Vec<String>,
    /// How long every task runs.
    pub task_duration: Duration,
    /// CPUs per node.
    pub node_cpus: u64,
    /// Memory per node, bytes.
    pub node_memory: u64,
    /// Templates in every node's `local` storage (`local:vztmpl/...`).
    pub templates: Vec<String>,
    /// Answer errors like PVE before libpve-http-server 5.2: the message only in the HTTP
    /// reason phrase, no JSON body.
    pub reason_phrase_errors: bool,
    /// Keep every API request for inspection (`Sim::requests`).
    pub record_requests: bool,
    /// The Linux bridges every node has.
    pub bridges: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: vec!["pve1".into(), "pve2".into()],
            version: "9.1.3".into(),
            token: None,
            password: None,
            privileges: ALL_PRIVILEGES.iter().map(|p| p.to_string()).collect(),
            task_duration: Duration::ZERO,
            node_cpus: 16,
            node_memory: 64 << 30,
            templates: vec![
                "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst".into(),
                "local:vztmpl/ubuntu-24.04-standard_24.04-2_amd64.tar.zst".into(),
            ],
            reason_phrase_errors: false,
            record_requests: false,
            bridges: vec!["vmbr0".into(), "vmbr1".into()],
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
    /// When it last started.
    pub started: Option<Instant>,
}

/// Measured load of a running container, as `/cluster/resources` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
pub struct Load {
    /// CPU use, a fraction of the container's `maxcpu`.
    #[serde(default)]
    pub cpu: f64,
    /// Memory used, bytes.
    #[serde(default)]
    pub mem: u64,
    /// Root disk used, bytes.
    #[serde(default)]
    pub disk: u64,
    /// Network bytes received.
    #[serde(default)]
    pub netin: u64,
    /// Network bytes sent.
    #[serde(default)]
    pub netout: u64,
}

/// An SDN object (vnet or subnet) with its applied and pending configuration.
#[derive(Debug, Clone, Default)]
pub struct SdnObject {
    /// Applied with `PUT /cluster/sdn`; `None` until the first apply.
    pub running: Option<Map<String, Value>>,
    /// Not yet applied; `None` when nothing is pending.
    pub pending: Option<Map<String, Value>>,
    /// Deleted, pending apply.
    pub deleted: bool,
}

impl SdnObject {
    /// `new`, `changed`, `deleted`, or none when applied as is.
    pub fn state(&self) -> Option<&'static str> {
        match (&self.running, &self.pending, self.deleted) {
            (_, _, true) => Some("deleted"),
            (None, Some(_), _) => Some("new"),
            (Some(_), Some(_), _) => Some("changed"),
            _ => None,
        }
    }

    /// The configuration as it will be after the next apply.
    pub fn current(&self) -> Option<&Map<String, Value>> {
        if self.deleted {
            return None;
        }
        self.pending.as_ref().or(self.running.as_ref())
    }
}

/// A recorded API request.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// The API path, without `/api2/json`, decoded.
    pub path: String,
    /// Query and form parameters.
    pub params: Vec<(String, String)>,
    /// The HTTP status answered (0 when a fault answered instead).
    pub status: u16,
    /// The `data` answered, on success.
    pub response: Option<Value>,
}

/// A rendered `/cluster/resources` answer, reused while the state is unchanged.
pub(crate) struct Cached {
    pub generation: u64,
    pub at: Instant,
    pub body: axum::body::Bytes,
    /// The body gzipped, made on the first request that accepts gzip.
    pub gzipped: Option<axum::body::Bytes>,
}

/// Everything the simulator knows.
pub struct SimState {
    /// Start-up settings.
    pub config: SimConfig,
    /// Containers by vmid.
    pub containers: BTreeMap<u32, Ct>,
    /// Load profiles by vmid.
    pub loads: HashMap<u32, Load>,
    /// Nodes taken down.
    pub down: BTreeSet<String>,
    /// Tasks by UPID.
    pub tasks: HashMap<String, Task>,
    /// UPIDs of tasks whose end has not been applied yet.
    pub(crate) running_tasks: Vec<String>,
    /// HA resources by sid (`ct:100`).
    pub ha_resources: BTreeMap<String, Map<String, Value>>,
    /// HA groups (PVE 8).
    pub ha_groups: BTreeMap<String, Map<String, Value>>,
    /// HA rules (PVE 9).
    pub ha_rules: BTreeMap<String, Map<String, Value>>,
    /// SDN zones (applied).
    pub sdn_zones: BTreeMap<String, Map<String, Value>>,
    /// SDN vnets.
    pub vnets: BTreeMap<String, SdnObject>,
    /// SDN subnets by vnet, then subnet id.
    pub subnets: BTreeMap<String, BTreeMap<String, SdnObject>>,
    /// Nodes where the next SDN applies fail (`/_sim/sdn/fail`).
    pub sdn_failing: BTreeSet<String>,
    /// Why the last SDN apply failed, per node: its zones then show `error`.
    pub sdn_errors: BTreeMap<String, String>,
    /// Pending faults.
    pub faults: Vec<Fault>,
    /// Task types whose next task ends in error, with the error.
    pub task_errors: Vec<(String, String)>,
    /// Recorded requests, when `record_requests` is set.
    pub requests: Vec<Recorded>,
    /// Commands run through the simulated `pct exec`.
    pub execs: Vec<crate::exec::ExecRecord>,
    /// Answers queued for simulated commands (`/_sim/exec/fail`).
    pub exec_faults: Vec<crate::exec::ExecFault>,
    /// Containers whose app a simulated setup script installed.
    pub installed: BTreeSet<u32>,
    /// Issued tickets and their CSRF tokens.
    pub(crate) tickets: HashMap<String, String>,
    pub(crate) started: Instant,
    /// The wall clock when it started, seconds since the epoch: the simulated clock's origin.
    pub(crate) epoch_base: u64,
    pub(crate) seq: u64,
    /// The fault dice's state.
    pub(crate) rng: u64,
    /// Bumped on every change, so cached reads know when to render again.
    pub(crate) generation: u64,
    pub(crate) resources_cache: HashMap<String, Cached>,
    /// Backup volumes in every storage.
    pub backups: Vec<crate::backup::BackupVolume>,
    /// Cluster backup jobs by id, their values as set.
    pub backup_jobs: BTreeMap<String, Map<String, Value>>,
    /// Storages whose writes fail for lack of space (`/_sim/storage/full`).
    pub full_storages: BTreeSet<String>,
    /// The storages' own `prune-backups` (PVE's default keeps everything).
    pub storage_prune: pvefleet_proxmox::codec::prune::PruneBackups,
    /// Seconds the simulated clock is ahead of the real one (`/_sim/clock`).
    pub clock_offset: u64,
}

impl SimState {
    /// A fresh state.
    pub fn new(config: SimConfig) -> Self {
        let mut sdn_zones = BTreeMap::new();
        let mut zone = Map::new();
        zone.insert("zone".into(), json!("fleet"));
        zone.insert("type".into(), json!("simple"));
        zone.insert("ipam".into(), json!("pve"));
        sdn_zones.insert("fleet".to_string(), zone);
        Self {
            config,
            containers: BTreeMap::new(),
            loads: HashMap::new(),
            down: BTreeSet::new(),
            tasks: HashMap::new(),
            running_tasks: Vec::new(),
            ha_resources: BTreeMap::new(),
            ha_groups: BTreeMap::new(),
            ha_rules: BTreeMap::new(),
            sdn_zones,
            vnets: BTreeMap::new(),
            subnets: BTreeMap::new(),
            sdn_failing: BTreeSet::new(),
            sdn_errors: BTreeMap::new(),
            faults: Vec::new(),
            task_errors: Vec::new(),
            requests: Vec::new(),
            execs: Vec::new(),
            exec_faults: Vec::new(),
            installed: BTreeSet::new(),
            tickets: HashMap::new(),
            started: Instant::now(),
            epoch_base: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1_700_000_000, |d| d.as_secs()),
            seq: 0,
            rng: 0x5eed,
            generation: 0,
            resources_cache: HashMap::new(),
            backups: Vec::new(),
            backup_jobs: BTreeMap::new(),
            full_storages: BTreeSet::new(),
            storage_prune: pvefleet_proxmox::codec::prune::PruneBackups {
                keep_all: Some(true),
                ..Default::default()
            },
            clock_offset: 0,
        }
    }

    /// Whether the simulator claims PVE 8.
    pub fn pve8(&self) -> bool {
        self.config.version.starts_with("8.")
    }

    /// Marks the state changed.
    pub(crate) fn touch(&mut self) {
        self.generation += 1;
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

    pub(crate) fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs() + 86_400
    }

    /// Memory the running containers of a node use.
    pub(crate) fn node_mem_used(&self, node: &str) -> u64 {
        let guests: u64 = self
            .containers
            .iter()
            .filter(|(_, c)| c.node == node && c.running)
            .map(|(id, _)| self.loads.get(id).map_or(0, |l| l.mem))
            .sum();
        (2 << 30) + guests
    }

    /// CPU use of a node, a fraction of its CPUs.
    pub(crate) fn node_cpu(&self, node: &str) -> f64 {
        let used: f64 = self
            .containers
            .iter()
            .filter(|(_, c)| c.node == node && c.running)
            .map(|(id, c)| self.loads.get(id).map_or(0.0, |l| l.cpu) * c.maxcpu(self.config.node_cpus) as f64)
            .sum();
        (0.02 + used / self.config.node_cpus as f64).min(1.0)
    }

    pub(crate) fn nodes(&self) -> Value {
        Value::Array(
            self.config
                .nodes
                .iter()
                .map(|n| {
                    if self.down.contains(n) {
                        return json!({ "node": n, "status": "offline", "level": "" });
                    }
                    json!({
                        "node": n, "status": "online", "level": "",
                        "cpu": self.node_cpu(n), "maxcpu": self.config.node_cpus,
                        "mem": self.node_mem_used(n), "maxmem": self.config.node_memory,
                        "uptime": self.uptime(),
                        "ssl_fingerprint": "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
                    })
                })
                .collect(),
        )
    }

    pub(crate) fn has_node(&self, node: &str) -> bool {
        self.config.nodes.iter().any(|n| n == node)
    }

    /// A node that exists and is up, or PVE's answer for it.
    pub(crate) fn reachable(&self, node: &str) -> Result<(), ApiError> {
        if !self.has_node(node) {
            return Err(ApiError::new(
                500,
                format!(
                    "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
                ),
            ));
        }
        if self.down.contains(node) {
            return Err(ApiError::new(595, "Connection refused"));
        }
        Ok(())
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

impl Ct {
    /// CPUs it may use: `cores`, or all the node's.
    pub fn maxcpu(&self, node_cpus: u64) -> u64 {
        self.config
            .main()
            .get("cores")
            .and_then(|c| c.parse().ok())
            .unwrap_or(node_cpus)
    }

    /// Memory limit, bytes (`memory` MiB, default 512).
    pub fn maxmem(&self) -> u64 {
        self.config
            .main()
            .get("memory")
            .and_then(|m| m.parse::<u64>().ok())
            .unwrap_or(512)
            << 20
    }

    /// Root disk size, bytes, from `rootfs`'s `size`.
    pub fn maxdisk(&self) -> u64 {
        self.config
            .main()
            .get("rootfs")
            .and_then(|r| r.split(',').find_map(|o| o.strip_prefix("size=")))
            .and_then(parse_size)
            .unwrap_or(0)
    }
}

/// `8G`, `512M`, `1.5T`, `1024` (bytes) → bytes.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let n: f64 = number.parse().ok()?;
    let factor: f64 = match unit {
        'B' => 1.0,
        'K' => 1024.0,
        'M' => 1024.0 * 1024.0,
        'G' => 1024.0 * 1024.0 * 1024.0,
        'T' => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    (n >= 0.0).then_some((n * factor) as u64)
}

/// Bytes as PVE writes sizes in configs: whole `G` or `M`, else `K`.
pub(crate) fn format_size(bytes: u64) -> String {
    const G: u64 = 1 << 30;
    const M: u64 = 1 << 20;
    if bytes.is_multiple_of(G) {
        format!("{}G", bytes / G)
    } else if bytes.is_multiple_of(M) {
        format!("{}M", bytes / M)
    } else {
        format!("{}K", bytes.div_ceil(1024))
    }
}
