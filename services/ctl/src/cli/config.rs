//! `pvefleet config ...`.

use clap::Subcommand;

/// `pvefleet config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Load and validate the configuration and print the effective values, secrets redacted.
    Check,
}
