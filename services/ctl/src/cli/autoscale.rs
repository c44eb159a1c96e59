//! `pvefleet autoscale ...` and `pvefleet autoscale policy ...`.

use clap::Subcommand;

/// `pvefleet autoscale ...`
#[derive(Debug, Subcommand)]
pub enum AutoscaleAction {
    /// Policies: the global one, per tag, per container.
    Policy {
        /// What to do.
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Per container: usage, floors and ceilings (and where each comes from), the last action
    /// and the cooldown left.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replays ticks through the tick's own decision code: one JSON line per container per
    /// tick. The input format is in the README (autoscaler: the simulator).
    Simulate {
        /// Policy keys over every other layer for the whole replay (a JSON object file).
        #[arg(long)]
        policy: Option<std::path::PathBuf>,
        /// Input, JSON lines: `{"t": 0, "vmid": 101, "cores": 2, "memory_mb": 2048, "cpu_cores": 1.7, "mem_mb": 900}`
        /// and the node, status, lock, tags, plan, cooldown, config changes and policy changes.
        #[arg(long)]
        samples: std::path::PathBuf,
        /// Layer the stored policies from the configured database (global, tags, containers).
        #[arg(long)]
        stored: bool,
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
    /// Changes keys of a scope's policy: the keys given over those stored (`null` removes one).
    /// Refused, naming the key, when the policy it makes would not work.
    Set {
        /// Which.
        #[command(flatten)]
        scope: PolicyScope,
        /// The keys to change, as JSON: `{"max_cores": 4}`.
        #[arg(long)]
        json: String,
    },
    /// Removes keys from a scope's policy (the layers below give them again).
    Unset {
        /// Which.
        #[command(flatten)]
        scope: PolicyScope,
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// A scope's stored keys, and the effective value of every key with the layer it came from
    /// (for a container, with its tags as PVE shows them).
    Get {
        /// Which.
        #[command(flatten)]
        scope: PolicyScope,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
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
