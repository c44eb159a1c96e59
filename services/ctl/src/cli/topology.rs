//! `pvefleet topology ...`.

use clap::Subcommand;

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
