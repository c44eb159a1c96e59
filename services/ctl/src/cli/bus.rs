//! `pvefleet bus ...`.

use std::path::PathBuf;

use clap::Subcommand;

/// `pvefleet bus ...`
#[derive(Debug, Subcommand)]
pub enum BusAction {
    /// Validate a JSON body against a message type's schema and publish it.
    Publish {
        /// The message type, such as `site.provision`.
        #[arg(long = "type")]
        message_type: String,
        /// The JSON body: inline (`'{"subdomain": "blog", ...}'`), a file, or `-` for standard input.
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
