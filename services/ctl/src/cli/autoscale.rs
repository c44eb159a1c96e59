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
