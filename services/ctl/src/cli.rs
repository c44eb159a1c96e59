//! The command line: every subcommand and flag, with help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// pvefleet: an event-driven worker fleet that provisions and runs LXC containers on Proxmox VE.
#[derive(Debug, Parser)]
#[command(name = "pvefleet", version, about)]
pub struct Cli {
    /// Config file (TOML). Default: $PVEFLEET_CONFIG, else ./pvefleet.toml when present.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if missing and apply the embedded migrations.
    Migrate,
    /// Declare or show the RabbitMQ topology.
    Topology {
        /// What to do.
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Configuration.
    Config {
        /// What to do.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Publish to or watch the bus.
    Bus {
        /// What to do.
        #[command(subcommand)]
        action: BusAction,
    },
    /// Proxmox VE tools.
    Pve {
        /// What to do.
        #[command(subcommand)]
        action: PveAction,
    },
    /// Run the whole fleet in one process against pvesim, for a trial.
    Dev {
        /// Where intake listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// How long each simulated Proxmox task takes, in milliseconds.
        #[arg(long, default_value_t = 300)]
        task_ms: u64,
    },
    /// Container network interfaces, through the intake API.
    Net {
        /// What to do.
        #[command(subcommand)]
        action: NetAction,
    },
    /// SDN VNet bindings, through the intake API.
    Vnet {
        /// What to do.
        #[command(subcommand)]
        action: VnetAction,
    },
    /// Sites, through the intake API.
    Site {
        /// What to do.
        #[command(subcommand)]
        action: SiteAction,
    },
    /// Inspect and steer sagas (audited).
    Saga {
        /// What to do.
        #[command(subcommand)]
        action: SagaAction,
    },
    /// Dead letters: list, group, show, replay, archive, purge (audited).
    Dlq {
        /// What to do.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Autoscaling: policies, status, a decision replay, an lxc-autoscaler import.
    Autoscale {
        /// What to do.
        #[command(subcommand)]
        action: AutoscaleAction,
    },
    /// The audit log of operator actions.
    Audit {
        /// What to do.
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Intake API tokens.
    Token {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Inject faults into pvesim at `pve.url` (its `/_sim` control API).
    Sim {
        /// What to do.
        #[command(subcommand)]
        action: SimAction,
    },
    /// Benchmarks.
    Bench {
        /// What to measure.
        #[command(subcommand)]
        what: BenchWhat,
    },
}

/// Where the intake API is, and the token to use.
#[derive(Debug, Clone, clap::Args)]
pub struct SiteTarget {
    /// The intake API.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "PVEFLEET_API")]
    pub api: String,
    /// The API token (else `$PVEFLEET_TOKEN`, else the one `pvefleet dev` saved).
    #[arg(long)]
    pub token: Option<String>,
}

/// An interface's options; only those given are sent.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct IfaceArgs {
    /// The netN index (0 to 31); the lowest free one when absent.
    #[arg(long)]
    pub index: Option<u8>,
    /// The interface name inside the container (default eth<index>).
    #[arg(long)]
    pub name: Option<String>,
    /// A bridge on the container's node.
    #[arg(long)]
    pub bridge: Option<String>,
    /// An SDN VNet, as the bridge.
    #[arg(long)]
    pub vnet: Option<String>,
    /// The MAC address (generated with the cluster's prefix when absent).
    #[arg(long)]
    pub hwaddr: Option<String>,
    /// IPv4: a.b.c.d/nn, dhcp, manual, or pool.
    #[arg(long)]
    pub ip: Option<String>,
    /// IPv6: CIDR, auto, dhcp or manual.
    #[arg(long)]
    pub ip6: Option<String>,
    /// IPv4 gateway.
    #[arg(long)]
    pub gw: Option<String>,
    /// IPv6 gateway.
    #[arg(long)]
    pub gw6: Option<String>,
    /// VLAN tag (1 to 4094).
    #[arg(long)]
    pub tag: Option<u32>,
    /// VLAN trunks, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub trunks: Option<Vec<u32>>,
    /// The per-interface firewall (true or false).
    #[arg(long)]
    pub firewall: Option<bool>,
    /// Cable unplugged (true or false).
    #[arg(long)]
    pub link_down: Option<bool>,
    /// MTU (64 to 65535).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Rate limit, Mbit/s.
    #[arg(long)]
    pub rate: Option<f64>,
}

/// `pvefleet net ...`
#[derive(Debug, Subcommand)]
pub enum NetAction {
    /// Attach an interface to a container.
    Attach {
        /// The container.
        vmid: u32,
        /// The interface.
        #[command(flatten)]
        iface: IfaceArgs,
        /// Follow the operation to its end.
        #[arg(long)]
        wait: bool,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Change options of an interface.
    Update {
        /// The container.
        vmid: u32,
        /// The interface (net1, or 1).
        interface: String,
        /// The options to change.
        #[command(flatten)]
        iface: IfaceArgs,
        /// Follow the operation to its end.
        #[arg(long)]
        wait: bool,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Detach an interface, releasing its pooled address.
    Detach {
        /// The container.
        vmid: u32,
        /// The interface (net1, or 1).
        interface: String,
        /// Follow the operation to its end.
        #[arg(long)]
        wait: bool,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// A container's interfaces from PVE's config, with bindings, leases, drift and recent
    /// operations.
    List {
        /// The container.
        vmid: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// One operation; with --wait, follow it to its end.
    Operation {
        /// The operation id.
        id: String,
        /// Follow it to its end.
        #[arg(long)]
        wait: bool,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Executions and successes per event type.
    Stats {
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
}

/// `pvefleet vnet ...`
#[derive(Debug, Subcommand)]
pub enum VnetAction {
    /// Attach a container's new interface on a VNet (applying SDN first when needed).
    Bind {
        /// The VNet.
        #[arg(id = "vnet_name", value_name = "VNET")]
        vnet: String,
        /// The container.
        #[arg(long)]
        vmid: u32,
        /// Create the VNet in this zone when missing, as a saga that removes it again if the
        /// binding fails.
        #[arg(long)]
        ensure_zone: Option<String>,
        /// The VLAN tag or VXLAN VNI of a VNet created with --ensure-zone.
        #[arg(long)]
        ensure_tag: Option<u32>,
        /// The interface's options (its bridge is the VNet).
        #[command(flatten)]
        iface: Box<IfaceArgs>,
        /// Follow the operation to its end.
        #[arg(long)]
        wait: bool,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Detach a container's interface from a VNet.
    Unbind {
        /// The VNet.
        vnet: String,
        /// The container.
        #[arg(long)]
        vmid: u32,
        /// The interface (the one on the VNet when absent).
        #[arg(long)]
        interface: Option<String>,
        /// Follow the operation to its end.
        #[arg(long)]
        wait: bool,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// The containers on a VNet, from PVE's configs and the bindings, with drift.
    Containers {
        /// The VNet.
        vnet: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
}

/// `pvefleet site ...`
#[derive(Debug, Subcommand)]
pub enum SiteAction {
    /// Request a site; with --wait, follow its saga to the end.
    Create {
        /// The subdomain (an RFC 1123 label).
        name: String,
        /// The plan.
        #[arg(long, default_value = "small")]
        plan: String,
        /// `wordpress`, `none`, or an app configured on the installer (`installer.apps.<name>`).
        #[arg(long, default_value = "wordpress")]
        app: String,
        /// Make it HA.
        #[arg(long)]
        ha: bool,
        /// Follow the saga with a live progress display.
        #[arg(long)]
        wait: bool,
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Sites, newest first.
    List {
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// A site with its step timeline (JSON).
    Show {
        /// The site id.
        id: String,
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// The site's generated credentials (WordPress admin, database). Needs a token with the
    /// `admin` scope; every reveal is audited.
    Credentials {
        /// The site id.
        id: String,
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Deprovision a site.
    Delete {
        /// The site id.
        id: String,
        /// Follow the saga to the end.
        #[arg(long)]
        wait: bool,
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
}

/// Which dead letters a `dlq` command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqFilter {
    /// One dead letter.
    #[arg(long)]
    pub id: Option<uuid::Uuid>,
    /// A group (fingerprint), as `dlq groups` shows.
    #[arg(long)]
    pub group: Option<String>,
    /// The queue it was parked from.
    #[arg(long)]
    pub queue: Option<String>,
    /// Its message type.
    #[arg(long = "type")]
    pub message_type: Option<String>,
    /// Its correlation id (a saga).
    #[arg(long)]
    pub correlation_id: Option<uuid::Uuid>,
    /// Parked at or after (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Parked before (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Its state: parked (the default), replayed, archived.
    #[arg(long)]
    pub state: Option<String>,
}

/// `pvefleet dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Dead letters, newest first.
    List {
        /// Which.
        #[command(flatten)]
        filter: DlqFilter,
        /// At most this many.
        #[arg(long, default_value_t = 200)]
        limit: i64,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Counts per group (message type, fault class, normalised message), with the newest example.
    Groups {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: properties, headers, body, fault and replay history (JSON).
    Show {
        /// The dead letter.
        id: uuid::Uuid,
        /// JSON (the only form; accepted for symmetry).
        #[arg(long)]
        json: bool,
    },
    /// Republishes to the origin exchange and routing key, every header kept, plus the replay headers.
    Replay {
        /// Which (at least one of --id, --group, or another filter).
        #[command(flatten)]
        filter: DlqFilter,
        /// Show what would be replayed, and replay nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many a second.
        #[arg(long)]
        rate: Option<f64>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replays an edited copy (from `$EDITOR`, or `--body FILE`) with a new message id, after
    /// checking it against the message's schema; the original becomes `resolved`.
    Edit {
        /// The dead letter.
        id: uuid::Uuid,
        /// The new body, instead of opening an editor.
        #[arg(long)]
        body: Option<std::path::PathBuf>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Writes dead letters as NDJSON (every column, the body in base64).
    Export {
        /// Which.
        #[command(flatten)]
        filter: DlqFilter,
        /// The file; standard output when absent.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// With --out: a JSON summary instead of text (the export itself is always JSON lines).
        #[arg(long)]
        json: bool,
    },
    /// Stores dead letters from an NDJSON export, as parked; ones already here are skipped.
    Import {
        /// The file.
        file: std::path::PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Sets dead letters aside as `archived` (kept).
    Archive {
        /// Which.
        #[command(flatten)]
        filter: DlqFilter,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Deletes dead letters for good.
    Purge {
        /// Which.
        #[command(flatten)]
        filter: DlqFilter,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `pvefleet autoscale ...`
#[derive(Debug, Subcommand)]
pub enum AutoscaleAction {
    /// Policies: the global one, per tag, per container.
    Policy {
        /// What to do.
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Per container: usage, limits, the last action and the cooldown left.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replays the decision over recorded samples: one JSON line per tick.
    Simulate {
        /// The policy: a JSON object of the keys over the default.
        #[arg(long)]
        policy: std::path::PathBuf,
        /// Samples, JSON lines: `{"t": 0, "cores": 2, "memory_mb": 2048, "cpu_cores": 1.7, "mem_mb": 900}`.
        #[arg(long)]
        samples: std::path::PathBuf,
    },
    /// Creates policies from an lxc-autoscaler `config.yaml`, reporting what it cannot map.
    Import {
        /// The file.
        file: std::path::PathBuf,
        /// Show what would be stored, and store nothing.
        #[arg(long)]
        dry_run: bool,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Which policy.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyScope {
    /// One container.
    #[arg(long, conflicts_with_all = ["tag", "global"])]
    pub vmid: Option<u32>,
    /// Containers with this tag.
    #[arg(long, conflicts_with = "global")]
    pub tag: Option<String>,
    /// Every container.
    #[arg(long)]
    pub global: bool,
}

/// `pvefleet autoscale policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// Stores a policy (a JSON object of the keys to change, from a file or inline).
    Set {
        /// Which.
        #[command(flatten)]
        scope: PolicyScope,
        /// The keys, as JSON: `{"max_cores": 4}`.
        #[arg(long)]
        json: String,
    },
    /// A scope's stored keys, and the policy they make.
    Get {
        /// Which.
        #[command(flatten)]
        scope: PolicyScope,
    },
    /// Deletes a scope's policy.
    Delete {
        /// Which.
        #[command(flatten)]
        scope: PolicyScope,
    },
    /// Every stored policy.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `pvefleet audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Operator actions, newest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `pvefleet saga ...`
#[derive(Debug, Subcommand)]
pub enum SagaAction {
    /// Sagas, newest first.
    List {
        /// Only sagas in this state (running, compensating, completed, failed,
        /// compensation_failed, suspended).
        #[arg(long)]
        state: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One saga: its data, step timeline and audit trail (JSON).
    Show {
        /// The saga id.
        id: uuid::Uuid,
    },
    /// Re-send the step in flight (a compensation_failed compensation, a suspended step).
    RetryStep {
        /// The saga id.
        id: uuid::Uuid,
    },
    /// Resume a suspended saga.
    Resume {
        /// The saga id.
        id: uuid::Uuid,
    },
    /// Abort a running or suspended provisioning saga: compensate what it built.
    Abort {
        /// The saga id.
        id: uuid::Uuid,
    },
}

/// `pvefleet token ...`
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token and print it once (only its hash is stored).
    Create {
        /// Who it is for; also the default owner of the sites it creates.
        #[arg(long)]
        name: String,
        /// A scope: `sites:read`, `sites:write` or `admin`. Repeat for several.
        #[arg(long = "scope", required = true, value_parser = ["sites:read", "sites:write", "admin"])]
        scopes: Vec<String>,
    },
}

/// `pvefleet sim ...`
#[derive(Debug, Subcommand)]
pub enum SimAction {
    /// Make the next calls to an API path fail, be delayed, or lose their connection.
    Fault {
        /// API paths starting with this (without `/api2/json`), e.g. `/nodes/pve1/lxc`.
        #[arg(long)]
        path: String,
        /// Only this method.
        #[arg(long)]
        method: Option<String>,
        /// The status to answer (595, 596, 500, ...); 0 drops the connection.
        #[arg(long, default_value_t = 500)]
        status: u16,
        /// The message PVE would give.
        #[arg(long, default_value = "")]
        message: String,
        /// How many calls it hits.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Delay each hit call by this many milliseconds (then answer normally unless a status
        /// is also given with --fail).
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// With --latency-ms: also fail after the delay.
        #[arg(long)]
        fail: bool,
    },
    /// End the next task of a type (`vzcreate`, `vzstart`, ...) in error.
    TaskError {
        /// The task type.
        #[arg(long)]
        kind: String,
        /// The exit status PVE would give.
        #[arg(long)]
        message: String,
    },
    /// Take a node down (calls to it answer 595) or bring it back.
    Node {
        /// The node.
        node: String,
        /// `down` or `up`.
        #[arg(value_parser = ["down", "up"])]
        state: String,
    },
    /// Set a container's measured load, as /cluster/resources will report it.
    Load {
        /// The container.
        vmid: u32,
        /// CPU use, a fraction of its cores (0.0 to 1.0).
        #[arg(long, default_value_t = 0.0)]
        cpu: f64,
        /// Memory used, MiB.
        #[arg(long, default_value_t = 0)]
        mem_mib: u64,
    },
    /// Clear every queued fault and task error.
    Clear,
}

/// `pvefleet topology ...`
#[derive(Debug, Subcommand)]
pub enum TopologyAction {
    /// Declare every exchange and queue (idempotent; safe to run at every deploy).
    Declare,
    /// Print the topology this configuration declares, with live message counts.
    Show {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `pvefleet config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Load and validate the configuration and print the effective values, secrets redacted.
    Check,
}

/// `pvefleet bus ...`
#[derive(Debug, Subcommand)]
pub enum BusAction {
    /// Validate a JSON body against a message type's schema and publish it.
    Publish {
        /// The message type, such as `site.provision`.
        #[arg(long = "type")]
        message_type: String,
        /// The JSON body; `-` reads standard input.
        #[arg(long)]
        json: PathBuf,
        /// Correlation id (saga or operation); a new one when absent.
        #[arg(long)]
        correlation_id: Option<uuid::Uuid>,
        /// Validate only; do not publish.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print events live (a temporary queue bound to the events exchange).
    Tail {
        /// Topic pattern, such as `container.*` or `#` for everything.
        #[arg(long, default_value = "#")]
        key: String,
        /// Also tap every command type.
        #[arg(long)]
        commands: bool,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// Print each message as one JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// `pvefleet pve ...`
#[derive(Debug, Subcommand)]
pub enum PveAction {
    /// Connect with the configured credentials and check everything the fleet needs: the
    /// version, the nodes, the token's privileges and the templates. Exit 0 on pass, 1 on fail.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// LXC container config files (`/etc/pve/lxc/<vmid>.conf`).
    Config {
        /// What to do.
        #[command(subcommand)]
        action: PveConfigAction,
    },
}

/// `pvefleet pve config ...`
#[derive(Debug, Subcommand)]
pub enum PveConfigAction {
    /// Print a config file as JSON, with net, rootfs, mp and features parsed and checked.
    /// Exits 2 when a line or property string is invalid.
    Parse {
        /// The config file.
        file: PathBuf,
    },
    /// Print a config file in canonical form (`key: value`, `[section]`).
    Fmt {
        /// The config file.
        file: PathBuf,
        /// Rewrite the file in place instead of printing.
        #[arg(long)]
        write: bool,
    },
}

/// `pvefleet bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// One autoscaler tick over many containers in pvesim: API calls, time, window memory.
    Autoscaler {
        /// Containers, spread over 3 nodes.
        #[arg(long, default_value_t = 10_000)]
        containers: u32,
    },
    /// Batch replay of dead letters: stored rows republished to a queue, msgs/s.
    Dlq {
        /// Dead letters to store and replay.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
    },
    /// Provisioning sagas end to end against pvesim: sagas/s, latency at an offered rate, fleet
    /// vs raw broker messages/s, peak RSS.
    Sagas {
        /// Sagas in the throughput phase.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Sagas in flight in the throughput phase.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Offered sagas per second in the latency phase.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Seconds of the latency phase.
        #[arg(long, default_value_t = 10)]
        rate_secs: u64,
        /// Run saga, provisioner and ha as their own processes (binaries beside this one).
        #[arg(long)]
        separate: bool,
    },
    /// Raw lapin vs the runtime's publisher and consumer runner (inbox off and on).
    Bus {
        /// Messages per phase.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Confirm window and consumer prefetch.
        #[arg(long, default_value_t = 256)]
        window: u16,
        /// Rounds; each runs every phase once, interleaved, and the median of each is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// With the inbox on: database connections, each handling one batch transaction at a time.
        #[arg(long, default_value_t = 16)]
        inbox_connections: u16,
    },
}
