//! Typed, layered, fail-fast configuration: defaults < TOML file < `PVEFLEET_*` environment.
//!
//! Nesting in the environment uses `__`: `PVEFLEET_BUS__URL`. Any key may instead be given as a
//! file with a `_FILE` suffix (`PVEFLEET_DB__URL_FILE=/run/secrets/db`), for container secrets.
//! Unknown keys are errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The environment variable prefix.
pub const ENV_PREFIX: &str = "PVEFLEET_";
/// The environment variable naming the config file (default `pvefleet.toml` if it exists).
pub const CONFIG_FILE_ENV: &str = "PVEFLEET_CONFIG";

/// Every setting of a pvefleet process.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// RabbitMQ.
    pub bus: BusSettings,
    /// Postgres.
    pub db: DbSettings,
    /// Logs.
    pub telemetry: TelemetrySettings,
    /// The ops HTTP listener (`/metrics`, `/healthz`, `/readyz`).
    pub http: HttpSettings,
    /// The consumer runner.
    pub worker: WorkerSettings,
    /// The outbox relay.
    pub outbox: OutboxSettings,
    /// The Proxmox VE API.
    pub pve: PveSettings,
    /// The provisioner: how containers are built and torn down.
    pub provisioner: ProvisionerSettings,
    /// The ha service: how containers are made highly available.
    pub ha: HaSettings,
    /// The saga coordinator: sites, plans, leases and providers.
    pub saga: SagaSettings,
    /// The edge service: how the DNS and reverse-proxy providers are reached.
    pub edge: EdgeSettings,
    /// The installer: how apps get into containers.
    pub installer: InstallerSettings,
    /// The autoscaler.
    pub autoscaler: AutoscalerSettings,
    /// Network hotplug and SDN VNet binding.
    pub nethotplug: NethotplugSettings,
}

/// Network hotplug: MAC generation, IP pools, and how config writes meet other writers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NethotplugSettings {
    /// The first three octets of generated MACs (the cluster's `mac_prefix`; PVE's default
    /// is `BC:24:11`).
    pub mac_prefix: String,
    /// IPv4 pools per bridge or VNet, for interfaces asking `ip = "pool"`.
    pub pools: std::collections::BTreeMap<String, IpPool>,
    /// The bridges and VNets interfaces may be put on (the guardrail policy); empty allows
    /// every one the node has.
    pub allowed_bridges: Vec<String>,
    /// Config writes tried when another writer changes the config in between (digest
    /// mismatch).
    pub write_attempts: u32,
    /// How long to wait for the per-vmid lock the provisioner and autoscaler also take.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// How long to wait, after an SDN apply, for a zone still `pending` on a node (then the
    /// command is retried).
    #[serde(with = "humantime_serde")]
    pub sdn_wait: Duration,
}

impl Default for NethotplugSettings {
    fn default() -> Self {
        Self {
            mac_prefix: "BC:24:11".into(),
            pools: std::collections::BTreeMap::new(),
            allowed_bridges: Vec::new(),
            write_attempts: 5,
            lock_timeout: Duration::from_secs(30),
            sdn_wait: Duration::from_secs(30),
        }
    }
}

/// An IPv4 pool: addresses `first` to `last` of `cidr`, handed out with its prefix length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpPool {
    /// The subnet, such as `10.20.0.0/24`.
    pub cidr: String,
    /// The gateway given with each address.
    #[serde(default)]
    pub gateway: Option<String>,
    /// The first address handed out; the subnet's second when absent.
    #[serde(default)]
    pub first: Option<String>,
    /// The last address handed out; the subnet's last but one when absent.
    #[serde(default)]
    pub last: Option<String>,
}

/// The autoscaler: how often it looks, the default policy, and the cluster's safety limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalerSettings {
    /// Time between ticks (one `/cluster/resources` read each).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The policy of every container without one of its own.
    pub policy: AutoscalePolicy,
    /// Cluster-wide limits.
    pub safety: AutoscaleSafety,
    /// Containers with this tag are never scaled.
    pub opt_out_tag: String,
    /// `resource.alert` thresholds for containers and nodes.
    pub alerts: AlertThresholds,
}

impl Default for AutoscalerSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            policy: AutoscalePolicy::default(),
            safety: AutoscaleSafety::default(),
            opt_out_tag: "pvefleet-noscale".into(),
            alerts: AlertThresholds::default(),
        }
    }
}

/// Alert thresholds, %.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertThresholds {
    /// CPU.
    pub cpu: f64,
    /// Memory.
    pub memory: f64,
    /// Disk.
    pub disk: f64,
    /// An alert clears when usage falls this many points below its threshold.
    pub hysteresis: f64,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self {
            cpu: 80.0,
            memory: 85.0,
            disk: 90.0,
            hysteresis: 5.0,
        }
    }
}

/// A scaling policy: the reference tool's settings, plus what its faults called for
/// (headroom, emergency, host reserve).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalePolicy {
    /// CPU % (of cores, or of `cpulimit`) at or above which cores are added.
    pub cpu_up: f64,
    /// CPU % at or below which cores are removed.
    pub cpu_down: f64,
    /// Memory % at or above which memory is added.
    pub mem_up: f64,
    /// Memory % at or below which memory is removed.
    pub mem_down: f64,
    /// Cores, at least.
    pub min_cores: u32,
    /// Cores, at most (and never above the host's CPU count).
    pub max_cores: u32,
    /// Memory, MiB, at least.
    pub min_memory_mb: u64,
    /// Memory, MiB, at most.
    pub max_memory_mb: u64,
    /// Cores added or removed per action.
    pub core_step: u32,
    /// Memory added or removed per action, MiB.
    pub memory_step_mb: u64,
    /// Seconds between two actions on the same resource of a container.
    pub cooldown_secs: u64,
    /// Samples averaged per decision.
    pub evaluation_periods: usize,
    /// A memory scale-down keeps this much above the window's peak usage, MiB.
    pub memory_headroom_mb: u64,
    /// Memory % at or above which memory scales up at once, past the cooldown.
    pub emergency_mem: f64,
    /// Decide and record (`would_scale`), but change nothing.
    pub dry_run: bool,
    /// Scale at all (`false` is an opt-out, like the `pvefleet-noscale` tag).
    pub enabled: bool,
}

impl Default for AutoscalePolicy {
    fn default() -> Self {
        Self {
            cpu_up: 80.0,
            cpu_down: 30.0,
            mem_up: 85.0,
            mem_down: 40.0,
            min_cores: 1,
            max_cores: 8,
            min_memory_mb: 512,
            max_memory_mb: 8192,
            core_step: 1,
            memory_step_mb: 512,
            cooldown_secs: 300,
            evaluation_periods: 3,
            memory_headroom_mb: 256,
            emergency_mem: 98.0,
            dry_run: false,
            enabled: true,
        }
    }
}

/// Cluster-wide safety limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscaleSafety {
    /// Actions at once across the cluster.
    pub max_concurrent: usize,
    /// A node at or above this CPU % takes no scale-ups.
    pub host_cpu_limit: f64,
    /// A node at or above this memory % (used) takes no scale-ups.
    pub host_memory_limit: f64,
    /// Memory a node keeps unallocated, MiB: allocations past total minus this are refused.
    pub host_reserve_mb: u64,
    /// Host protection on.
    pub host_protection: bool,
}

impl Default for AutoscaleSafety {
    fn default() -> Self {
        Self {
            max_concurrent: 3,
            host_cpu_limit: 95.0,
            host_memory_limit: 95.0,
            host_reserve_mb: 1024,
            host_protection: true,
        }
    }
}

/// An app the installer can put into a container, besides the built-in `wordpress`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// The setup script, run with `bash -s -- SITE_URL TITLE ADMIN_EMAIL ADMIN_USER` inside the
    /// container; its exit code is the verdict.
    pub script: PathBuf,
}

/// How the installer reaches containers: `pct exec` on the node that hosts each one, over
/// ssh (or locally on a PVE node), with the setup script on stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstallerSettings {
    /// `ssh` (to the node that hosts the container) or `local` (the worker runs on the node).
    pub transport: String,
    /// The ssh user on the nodes (root, or one allowed `pct exec` through sudo).
    pub ssh_user: String,
    /// The ssh port of the nodes.
    pub ssh_port: u16,
    /// The private key; none: ssh's defaults and agent.
    pub ssh_key: Option<PathBuf>,
    /// The known_hosts file holding the nodes' host keys; none: ssh's default.
    pub known_hosts: Option<PathBuf>,
    /// Accept and remember an unknown host key (`accept-new`). Off: unknown keys are refused.
    pub accept_new_host_keys: bool,
    /// The address to ssh to per node name; a node not listed is reached by its name.
    pub node_addresses: std::collections::BTreeMap<String, String>,
    /// Limit on opening an ssh connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The `pct` command on the nodes (`sudo pct` for a non-root user).
    pub pct: String,
    /// Readiness probes (`pct exec VMID -- true`) before giving up for now.
    pub ready_attempts: u32,
    /// The first wait between readiness probes; it doubles, up to 30 s.
    #[serde(with = "humantime_serde")]
    pub ready_delay: Duration,
    /// Limit on one setup script run.
    #[serde(with = "humantime_serde")]
    pub script_timeout: Duration,
    /// The key that encrypts sites' credentials in Postgres: 32 bytes, base64.
    pub secrets_key: Option<Secret>,
    /// Apps besides `wordpress`, by name.
    pub apps: std::collections::BTreeMap<String, AppSettings>,
}

impl Default for InstallerSettings {
    fn default() -> Self {
        Self {
            transport: "ssh".into(),
            ssh_user: "root".into(),
            ssh_port: 22,
            ssh_key: None,
            known_hosts: None,
            accept_new_host_keys: false,
            node_addresses: Default::default(),
            connect_timeout: Duration::from_secs(10),
            pct: "pct".into(),
            ready_attempts: 10,
            ready_delay: Duration::from_secs(2),
            script_timeout: Duration::from_secs(30 * 60),
            secrets_key: None,
            apps: Default::default(),
        }
    }
}

/// The edge service's providers. Which provider runs is `saga.dns_provider` and
/// `saga.proxy_provider`, so the saga skips exactly the steps no provider serves.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeSettings {
    /// What a site's A record points at: `container` (its address) or `proxy` (`proxy_ip`).
    pub dns_target: String,
    /// The reverse proxy's public address, for `dns_target = "proxy"`.
    pub proxy_ip: String,
    /// TTL of the records written.
    pub ttl: u32,
    /// PowerDNS: the API base, `http://127.0.0.1:8081`.
    pub powerdns_url: String,
    /// PowerDNS: the API key (`X-API-Key`).
    pub powerdns_api_key: Option<Secret>,
    /// PowerDNS: the server id.
    pub powerdns_server: String,
    /// The DNS zone sites are written into; empty: `saga.domain`.
    pub zone: String,
    /// Cloudflare: the API base.
    pub cloudflare_api_url: String,
    /// Cloudflare: an API token with DNS write on the zone.
    pub cloudflare_api_token: Option<Secret>,
    /// Cloudflare: the zone id; empty: looked up by the zone's name.
    pub cloudflare_zone_id: String,
    /// Cloudflare: proxy the records through Cloudflare.
    pub cloudflare_proxied: bool,
    /// Caddy: the admin API, `http://127.0.0.1:2019`.
    pub caddy_admin_url: String,
    /// Caddy: the HTTP server (under `apps.http.servers`) that gets the routes.
    pub caddy_server: String,
    /// Nginx Proxy Manager: the API base, `http://npm:81`.
    pub npm_url: String,
    /// Nginx Proxy Manager: the login (an email).
    pub npm_identity: String,
    /// Nginx Proxy Manager: the password.
    pub npm_secret: Option<Secret>,
    /// Nginx Proxy Manager: the certificate every host gets (a pre-issued wildcard); 0: none.
    pub npm_certificate_id: i64,
    /// How long one provider call may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            dns_target: "container".into(),
            proxy_ip: String::new(),
            ttl: 300,
            powerdns_url: "http://127.0.0.1:8081".into(),
            powerdns_api_key: None,
            powerdns_server: "localhost".into(),
            zone: String::new(),
            cloudflare_api_url: "https://api.cloudflare.com/client/v4".into(),
            cloudflare_api_token: None,
            cloudflare_zone_id: String::new(),
            cloudflare_proxied: false,
            caddy_admin_url: "http://127.0.0.1:2019".into(),
            caddy_server: "edge".into(),
            npm_url: "http://127.0.0.1:81".into(),
            npm_identity: String::new(),
            npm_secret: None,
            npm_certificate_id: 0,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A size plan sites can name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// CPU cores.
    pub cores: u32,
    /// Memory, MiB.
    pub memory_mb: u32,
    /// Root disk, GiB.
    pub disk_gb: u32,
}

/// The saga coordinator's settings: where leases come from, what a site is made of, and which
/// optional steps run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SagaSettings {
    /// The first vmid leased to sites.
    pub vmid_first: u32,
    /// The last vmid leased to sites.
    pub vmid_last: u32,
    /// The sites' network, `10.10.0.0/24`; addresses are leased from it.
    pub ip_cidr: String,
    /// The first host number leased (`.100` of the network).
    pub ip_first: u32,
    /// The last host number leased.
    pub ip_last: u32,
    /// The sites' gateway.
    pub gateway: String,
    /// The bridge (or SDN vnet) of `net0`.
    pub bridge: String,
    /// The storage of root disks.
    pub storage: String,
    /// Swap for every container, MiB.
    pub swap_mb: u32,
    /// The domain sites live under: `<subdomain>.<domain>`.
    pub domain: String,
    /// `none` skips the DNS steps (a homelab without DNS automation).
    pub dns_provider: String,
    /// `none` skips the reverse-proxy steps.
    pub proxy_provider: String,
    /// Size plans by name.
    pub plans: std::collections::BTreeMap<String, Plan>,
    /// Re-sends of a failing compensation before the saga is `compensation_failed`.
    pub compensation_attempts: u32,
    /// Live sites one owner may have.
    pub max_sites_per_owner: u32,
    /// How long a step may go unanswered before its command is sent again. Longer than the
    /// worker's whole retry ladder, so a re-send is for a lost command, not a slow one.
    #[serde(with = "humantime_serde")]
    pub step_timeout: Duration,
    /// Per-command deadlines that differ from `step_timeout`, keyed by the command type with
    /// `_` for `.` (`app_install = "45m"`), so the keys stay plain in TOML.
    pub step_timeouts: std::collections::BTreeMap<String, humantime_serde::Serde<Duration>>,
    /// Re-sends of an unanswered step before the saga is `suspended` (forward) or
    /// `compensation_failed` (compensating) for an operator.
    pub step_resends: u32,
    /// How often the coordinator looks for steps past their deadline.
    #[serde(with = "humantime_serde")]
    pub deadline_scan_interval: Duration,
    /// How often the vmids PVE already uses are read and held from leasing (one
    /// `/cluster/resources` read); `0s` turns the cross-check off. A create that still meets a
    /// used vmid leases another.
    #[serde(with = "humantime_serde")]
    pub lease_sync_interval: Duration,
}

impl SagaSettings {
    /// The deadline of a step's command.
    pub fn timeout_of(&self, command: &str) -> Duration {
        self.step_timeouts
            .get(&command.replace('.', "_"))
            .map_or(self.step_timeout, |d| **d)
    }
}

impl Default for SagaSettings {
    fn default() -> Self {
        let plan = |cores, memory_mb, disk_gb| Plan {
            cores,
            memory_mb,
            disk_gb,
        };
        Self {
            vmid_first: 10_000,
            vmid_last: 19_999,
            ip_cidr: "10.10.0.0/24".into(),
            ip_first: 100,
            ip_last: 250,
            gateway: "10.10.0.1".into(),
            bridge: "vmbr0".into(),
            storage: "local-lvm".into(),
            swap_mb: 512,
            domain: "example.org".into(),
            dns_provider: "none".into(),
            proxy_provider: "none".into(),
            plans: [
                ("small".to_string(), plan(1, 1024, 8)),
                ("medium".to_string(), plan(2, 2048, 16)),
                ("large".to_string(), plan(4, 4096, 32)),
            ]
            .into_iter()
            .collect(),
            compensation_attempts: 5,
            max_sites_per_owner: 20,
            step_timeout: Duration::from_secs(15 * 60),
            step_timeouts: [(
                "app_install".to_string(),
                humantime_serde::Serde::from(Duration::from_secs(45 * 60)),
            )]
            .into_iter()
            .collect(),
            step_resends: 2,
            deadline_scan_interval: Duration::from_secs(5),
            lease_sync_interval: Duration::from_secs(60),
        }
    }
}

/// How the ha service makes containers HA (pve-behaviour.md §5.12).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaSettings {
    /// Restarts on the same node before the HA manager relocates.
    pub max_restart: u32,
    /// Relocations before it gives up.
    pub max_relocate: u32,
    /// Preferred nodes, `node[:priority]`; empty: no placement rule or group.
    pub nodes: Vec<String>,
    /// Restrict to those nodes rather than prefer them (PVE 9 `strict`, PVE 8 `restricted`).
    pub strict: bool,
    /// The PVE 8 group created for `nodes` when a command names none.
    pub group: String,
    /// How often the reconciler repairs drift (missing HA resources, wrong states).
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// The watchdog: a fleet container (tag `pvefleet`) that is not HA-managed and is found
    /// stopped is started again.
    pub watchdog: bool,
    /// Watchdog starts of one container per hour before it gives up with a `restart_loop`
    /// alert.
    pub watchdog_max_restarts: u32,
    /// Containers with this tag are left stopped (an operator's hold).
    pub watchdog_hold_tag: String,
}

impl Default for HaSettings {
    fn default() -> Self {
        Self {
            max_restart: 3,
            max_relocate: 2,
            nodes: Vec::new(),
            strict: false,
            group: "pvefleet".into(),
            reconcile_interval: Duration::from_secs(60),
            watchdog: true,
            watchdog_max_restarts: 3,
            watchdog_hold_tag: "pvefleet-hold".into(),
        }
    }
}

/// How the provisioner builds and tears down containers (the reference platform's
/// `build_container_config`, pve-behaviour.md §5).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionerSettings {
    /// `nameserver` in every container (space-separated), none when empty.
    pub nameserver: String,
    /// `searchdomain` in every container, none when empty.
    pub searchdomain: String,
    /// Turn on `features: nesting=1` (needed by systemd in recent templates).
    pub nesting: bool,
    /// Start the container when its node boots.
    pub onboot: bool,
    /// How long a clean shutdown may take before the container is stopped, on destroy.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long `container.start` waits for the status `running`.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// The node every container goes to when its request names none; empty: chosen.
    pub node: String,
    /// When neither the request nor `node` names one, containers spread by what each online
    /// node has allocated (its guests' configured memory and cores); between nodes allocated
    /// alike, the earlier of these wins, then the one with the most memory free.
    pub preferred_nodes: Vec<String>,
}

impl Default for ProvisionerSettings {
    fn default() -> Self {
        Self {
            nameserver: String::new(),
            searchdomain: String::new(),
            nesting: true,
            onboot: true,
            shutdown_timeout: Duration::from_secs(60),
            start_timeout: Duration::from_secs(60),
            node: String::new(),
            preferred_nodes: Vec::new(),
        }
    }
}

/// How TLS certificates of the PVE API are checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PveTls {
    /// The system's trust store (the default).
    #[default]
    Verified,
    /// Only certificates signed by the CA in `ca_file` (PVE's own cluster CA).
    CaFile,
    /// Only the certificate whose SHA-256 fingerprint is `fingerprint` (pinning).
    Fingerprint,
    /// No checks at all; logs a warning. Only for a lab.
    Insecure,
}

/// The Proxmox VE API: where, as whom, and how to trust it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PveSettings {
    /// `https://pve1.lan:8006`.
    pub url: String,
    /// An API token id, `USER@REALM!TOKENID` (preferred).
    pub token_id: Option<String>,
    /// The token's secret.
    pub token_secret: Option<Secret>,
    /// A user, `USER@REALM`, for ticket login when no token is set.
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<Secret>,
    /// Certificate checking.
    pub tls: PveTls,
    /// The CA file for `tls = "ca-file"`.
    pub ca_file: Option<PathBuf>,
    /// The SHA-256 fingerprint for `tls = "fingerprint"` (`AB:CD:...`).
    pub fingerprint: Option<String>,
    /// Limit on one API request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Limit on following a task (create, start, ...) to its end.
    #[serde(with = "humantime_serde")]
    pub task_timeout: Duration,
    /// Retries of a read (GET) that failed transiently, with backoff from 100 ms; writes are
    /// never retried by the client (the handlers are idempotent and decide).
    pub read_retries: usize,
    /// Container templates the fleet creates from (`local:vztmpl/...`).
    pub templates: Vec<String>,
}

impl Default for PveSettings {
    fn default() -> Self {
        Self {
            url: "https://127.0.0.1:8006".into(),
            token_id: None,
            token_secret: None,
            user: None,
            password: None,
            tls: PveTls::Verified,
            ca_file: None,
            fingerprint: None,
            request_timeout: Duration::from_secs(30),
            task_timeout: Duration::from_secs(600),
            read_retries: 2,
            templates: vec!["local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst".into()],
        }
    }
}

/// RabbitMQ connection, publishing and topology settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// AMQP URI, with the vhost as its path (`%2f` is `/`).
    pub url: Secret,
    /// Overall limit on one publish, from send to broker confirm.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Limit on opening a connection and its channel.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How many publishes may await their confirm at once per publisher.
    pub confirm_window: usize,
    /// AMQP heartbeat, so a dead peer is noticed.
    pub heartbeat_secs: u16,
    /// `x-delivery-limit` on work queues: the crash-loop fuse, counted by the broker.
    pub delivery_limit: u32,
    /// Delayed-retry wait tiers, in order. Attempt n waits in tier n (the last tier repeats).
    #[serde(with = "durations")]
    pub retry_tiers: Vec<Duration>,
    /// Attempts before a retried message is parked (the first delivery is attempt 1).
    pub max_attempts: u32,
    /// `x-max-length` on work queues (with `reject-publish`), so a flood pushes back on publishers.
    pub queue_max_length: Option<u64>,
    /// A test hook: every message is published twice with the same message id, as an
    /// at-least-once broker may deliver it, so tests can prove every handler idempotent.
    /// Never set it in production.
    pub duplicate_publishes: bool,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            publish_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            confirm_window: 256,
            heartbeat_secs: 10,
            delivery_limit: 10,
            retry_tiers: [1, 5, 30, 120, 600].into_iter().map(Duration::from_secs).collect(),
            max_attempts: 6,
            queue_max_length: None,
            duplicate_publishes: false,
        }
    }
}

/// Postgres settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DbSettings {
    /// Connection URL, such as `postgres://pvefleet@db/pvefleet`.
    pub url: Secret,
    /// Maximum pooled connections.
    pub pool_size: usize,
    /// Create the database when it is missing (needs CREATEDB).
    pub create_database: bool,
    /// Limit on getting a connection from the pool (and on connecting).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Postgres `statement_timeout`; idle transactions are ended after twice this.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// How long inbox rows are kept; redeliveries older than this are not deduplicated.
    #[serde(with = "humantime_serde")]
    pub inbox_retention: Duration,
}

impl Default for DbSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/pvefleet"),
            pool_size: 16,
            create_database: true,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for a log shipper.
    Json,
}

/// Log settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

/// The ops HTTP listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address for `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9000)),
        }
    }
}

/// Consumer runner settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Messages handled at once; the prefetch equals it.
    pub concurrency: u16,
    /// How long shutdown waits for in-flight handlers before closing.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Outbox relay settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxSettings {
    /// Rows claimed and published per batch.
    pub batch_size: i64,
    /// Poll interval when idle (a local write pokes the relay sooner).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long sent rows are kept before they are deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll_interval: Duration::from_millis(500),
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, the environment or a value was invalid.
    #[error("invalid configuration")]
    Invalid(#[source] Box<figment::Error>),
    /// A `*_FILE` variable named a file that cannot be read.
    #[error("cannot read {var}={path}")]
    SecretFile {
        /// The variable.
        var: String,
        /// The path it named.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Settings {
    /// Loads settings from defaults, then the file (`path`, else `$PVEFLEET_CONFIG`, else
    /// `./pvefleet.toml` when present), then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(path, std::env::vars())
    }

    /// Like [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Settings live in sections (`PVEFLEET_<SECTION>__<KEY>`); the CLI's own variables
        // without a section (`PVEFLEET_TOKEN`, `PVEFLEET_OPERATOR`) are not settings.
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && (k == CONFIG_FILE_ENV || k.contains("__")))
            .collect();
        let file = path.map(Path::to_path_buf).or_else(|| {
            env.iter()
                .find(|(k, _)| k == CONFIG_FILE_ENV)
                .map(|(_, v)| PathBuf::from(v))
        });
        // Defaults come from the types' serde defaults, not from serializing Settings::default():
        // secrets serialize redacted, so a serialized default would lose them.
        let mut fig = Figment::new();
        match file {
            Some(f) => fig = fig.merge(Toml::file_exact(f)),
            None => fig = fig.merge(Toml::file("pvefleet.toml")),
        }
        let plain: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k != CONFIG_FILE_ENV && !k.ends_with("_FILE"))
            .cloned()
            .collect();
        for (var, value) in plain {
            // Values parse like figment's own Env provider: numbers, booleans and arrays are typed.
            let parsed: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            fig = fig.merge(Serialized::global(&env_key(&var), parsed));
        }
        for (var, path) in env.iter().filter(|(k, _)| k.ends_with("_FILE") && k != CONFIG_FILE_ENV) {
            let content = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                var: var.clone(),
                path: PathBuf::from(path),
                source,
            })?;
            let key = env_key(var.trim_end_matches("_FILE"));
            fig = fig.merge(Serialized::global(&key, content.trim_end_matches(['\n', '\r'])));
        }
        fig.extract().map_err(|e| ConfigError::Invalid(Box::new(e)))
    }

    /// The effective settings as TOML, with every secret redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml_string(self)
    }
}

fn env_key(var: &str) -> String {
    var.trim_start_matches(ENV_PREFIX)
        .to_ascii_lowercase()
        .replace("__", ".")
}

fn toml_string(s: &Settings) -> String {
    match serde_json::to_value(s) {
        Ok(v) => {
            let mut out = String::new();
            write_toml(&v, "", &mut out);
            out
        }
        Err(e) => format!("# cannot render settings: {e}\n"),
    }
}

fn write_toml(v: &serde_json::Value, prefix: &str, out: &mut String) {
    let Some(map) = v.as_object() else { return };
    for (k, val) in map.iter().filter(|(_, v)| !v.is_object()) {
        if !val.is_null() {
            out.push_str(&format!("{k} = {val}\n"));
        }
    }
    for (k, val) in map.iter().filter(|(_, v)| v.is_object()) {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        out.push_str(&format!("\n[{name}]\n"));
        write_toml(val, &name, out);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_load_without_file_or_environment() {
        let s = Settings::load_from(Some(Path::new("/nonexistent/none.toml")), env(&[])).err();
        assert!(s.is_some(), "an explicit missing file is an error");
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.bus.confirm_window, 256);
        assert_eq!(
            s.bus.url.expose(),
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "default secrets survive loading"
        );
    }

    #[test]
    fn variables_without_a_section_are_the_clis_own_not_settings() {
        let s = Settings::load_from(
            None,
            env(&[
                ("PVEFLEET_TOKEN", "t"),
                ("PVEFLEET_OPERATOR", "me"),
                ("PVEFLEET_WORKER__CONCURRENCY", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.concurrency, 3);
    }

    #[test]
    fn the_example_config_loads_with_every_section() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pvefleet.example.toml");
        let s = Settings::load_from(Some(&example), env(&[])).unwrap();
        assert_eq!(s.saga.dns_provider, "powerdns");
        assert_eq!(s.saga.timeout_of("app.install"), Duration::from_secs(45 * 60));
        assert_eq!(s.saga.timeout_of("container.create"), Duration::from_secs(15 * 60));
        assert_eq!(s.provisioner.preferred_nodes, vec!["pve1", "pve2"]);
        assert_eq!(s.edge.caddy_server, "edge");
        let plans: Vec<&String> = s.saga.plans.keys().collect();
        assert_eq!(plans, ["medium", "small"], "the file's plans replace the defaults");
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("pvefleet-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "[bus]\nconfirm_window = 64\ndelivery_limit = 3\n[worker]\ndrain_timeout = \"2s\"\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&file),
            env(&[
                ("PVEFLEET_BUS__CONFIRM_WINDOW", "32"),
                ("PVEFLEET_WORKER__CONCURRENCY", "4"),
            ]),
        )
        .unwrap();
        assert_eq!(s.bus.confirm_window, 32);
        assert_eq!(s.bus.delivery_limit, 3);
        assert_eq!(s.worker.concurrency, 4);
        assert_eq!(s.worker.drain_timeout, Duration::from_secs(2));
    }

    #[test]
    fn unknown_keys_are_rejected_from_file_and_environment() {
        let dir = std::env::temp_dir().join(format!("pvefleet-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[bus]\nconfirm_windw = 64\n").unwrap();
        let err = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        let chain = format!("{:?}", err);
        assert!(chain.contains("confirm_windw"), "{chain}");
        let err = Settings::load_from(None, env(&[("PVEFLEET_BUS__NOPE", "1")])).unwrap_err();
        assert!(format!("{err:?}").contains("nope"));
    }

    #[test]
    fn file_variants_supply_secrets_and_they_never_print() {
        let dir = std::env::temp_dir().join(format!("pvefleet-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("db");
        std::fs::write(&secret, "postgres://app:s3cr3t@db:5432/pvefleet\n").unwrap();
        let s = Settings::load_from(None, env(&[("PVEFLEET_DB__URL_FILE", secret.to_str().unwrap())])).unwrap();
        assert_eq!(s.db.url.expose(), "postgres://app:s3cr3t@db:5432/pvefleet");
        let shown = s.to_redacted_toml();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("[db]"), "{shown}");
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }
}

/// (De)serializes a list of durations as humantime strings (`["1s", "5s", "2m"]`).
mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| humantime::format_duration(*d).to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| humantime::parse_duration(s).map_err(|e| serde::de::Error::custom(format!("'{s}': {e}"))))
            .collect()
    }
}
