//! `pvefleet token ...`.

use clap::Subcommand;

/// `pvefleet token ...`
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token and print it once (only its hash is stored). Audited.
    Create {
        /// Who it is for (a person, a system).
        #[arg(long)]
        name: String,
        /// The owner it acts for: it sees and changes only that owner's sites, their
        /// containers and sagas. Without it, an operator's token (the whole fleet).
        #[arg(long)]
        owner: Option<String>,
        /// A scope (repeat for several); `dlq:admin` and `admin` are for operators' tokens.
        #[arg(long = "scope", required = true, value_parser = clap::builder::PossibleValuesParser::new(pvefleet_policy::scopes::names()))]
        scopes: Vec<String>,
        /// It stops working after this long (`90d`, `12h`); without it, never.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// Tokens, newest first (never their secrets).
    List {
        /// Only this owner's.
        #[arg(long)]
        owner: Option<String>,
        /// Revoked ones too.
        #[arg(long)]
        all: bool,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: its next call gets 401 saying so. Audited.
    Revoke {
        /// The token's id (from `token list`).
        id: uuid::Uuid,
        /// Why, kept with it.
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
    /// Replace a token by a new one (same name, owner, scopes and expiry), printed once; the
    /// old one is revoked at once. Audited.
    Rotate {
        /// The token's id (from `token list`).
        id: uuid::Uuid,
    },
}
