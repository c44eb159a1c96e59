//! `pvefleet token ...`.

use clap::Subcommand;

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
