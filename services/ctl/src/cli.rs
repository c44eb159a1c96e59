//! The command line: every subcommand and flag, with help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod autoscale;
mod backup;
mod bench;
mod bus;
mod config;
mod dlq;
mod net;
mod notify;
mod pve;
mod saga;
mod sim;
mod site;
mod token;
mod topology;

pub use autoscale::*;
pub use backup::*;
pub use bench::*;
pub use bus::*;
pub use config::*;
pub use dlq::*;
pub use net::*;
pub use notify::*;
pub use pve::*;
pub use saga::*;
pub use sim::*;
pub use site::*;
pub use token::*;
pub use topology::*;

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
        /// Where pvesim, the simulated Proxmox, listens (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:8006")]
        pvesim_listen: std::net::SocketAddr,
        /// How long each simulated Proxmox task takes, in milliseconds.
        #[arg(long, default_value_t = 300)]
        task_ms: u64,
        /// Services not to run (comma-separated), to run your own build of one beside dev.
        #[arg(long, value_delimiter = ',', value_parser = ["saga", "provisioner", "ha", "edge", "installer", "autoscaler", "nethotplug", "notifier", "backup"])]
        without: Vec<String>,
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
    /// Backups: policies (each one PVE backup job), the policy a site follows, a sync now.
    Backup {
        /// What to do.
        #[command(subcommand)]
        action: BackupAction,
    },
    /// Notifications: deliveries by e-mail, webhooks, ntfy and Alertmanager; a test notice;
    /// owners' contacts.
    Notify {
        /// What to do.
        #[command(subcommand)]
        action: NotifyAction,
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
    /// Exit 0 when URL answers 2xx (a container healthcheck: `pvefleet health
    /// http://127.0.0.1:9000/readyz`), else 1 with the reason.
    Health {
        /// The URL, such as a service's `/readyz`.
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Write the secrets the compose stack reads into DIR, each one missing (mode 0600):
    /// the installer's key, a PowerDNS API key, and, with --demo, pvesim's token secret.
    InitSecrets {
        /// The directory (`./secrets`, the one docker-compose.yml reads by default).
        dir: std::path::PathBuf,
        /// Also make the PVE token secret (pvesim accepts any; a real PVE's comes from PVE).
        #[arg(long)]
        demo: bool,
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use clap::CommandFactory as _;

    fn readme() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap()
    }

    /// Every top-level command is in the README's CLI table, and every subcommand on a README
    /// line that names its command (`pvefleet site list\|show ID\|delete ID` names three).
    #[test]
    fn every_command_of_the_cli_is_in_the_readme() {
        let readme = readme();
        let start = readme
            .find("## The `pvefleet` CLI")
            .expect("the README has a CLI section");
        let section = &readme[start..];
        let table = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
        let cli = super::Cli::command();
        let mut missing = Vec::new();
        for top in cli.get_subcommands() {
            let name = top.get_name();
            if name == "help" {
                continue;
            }
            if !table.contains(&format!("| `pvefleet {name}")) {
                missing.push(format!("pvefleet {name} (not in the CLI table)"));
            }
            // Each `pvefleet NAME ...` span: its first word, and each first word after a `\|`.
            let spans: Vec<&str> = readme
                .split(&format!("`pvefleet {name} "))
                .skip(1)
                .map(|rest| rest.split('`').next().unwrap_or_default())
                .collect();
            for sub in top.get_subcommands() {
                let sub = sub.get_name();
                let named = spans
                    .iter()
                    .any(|span| span.split("\\|").any(|alt| alt.split_whitespace().next() == Some(sub)));
                if !named {
                    missing.push(format!("pvefleet {name} {sub}"));
                }
            }
        }
        assert!(missing.is_empty(), "missing from the README: {missing:#?}");
    }
}
