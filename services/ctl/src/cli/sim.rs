//! `pvefleet sim ...`: faults injected into pvesim.

use clap::Subcommand;

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
    /// Make the next simulated `pct exec` commands in containers fail (the installer's
    /// transport in `pvefleet dev`): they answer this exit code, stdout and stderr.
    ExecFail {
        /// Only commands whose first word in the container is this: `bash` (the setup
        /// script), `wp` (WordPress's check), `true` (the readiness probe), or `any`.
        #[arg(long, default_value = "bash")]
        command: String,
        /// The exit code.
        #[arg(long, default_value_t = 1)]
        code: i32,
        /// What it prints on stderr.
        #[arg(long, default_value = "")]
        stderr: String,
        /// What it prints on stdout.
        #[arg(long, default_value = "")]
        stdout: String,
        /// How many commands it answers.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// The commands run through the simulated `pct exec`, with the scripts sent (secret
    /// values masked), as JSON.
    Execs,
    /// Clear every queued fault, task error and exec failure.
    Clear,
}
