//! `pvefleet pve ...` and `pvefleet pve config ...`.

use std::path::PathBuf;

use clap::Subcommand;

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
