//! `pvefleet site ...`, and where the intake API is (shared by the commands that go through it).

use clap::Subcommand;

/// Where the intake API is, and the token to use.
#[derive(Debug, Clone, clap::Args)]
pub struct SiteTarget {
    /// The intake API.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "PVEFLEET_API")]
    pub api: String,
    /// The API token (else `$PVEFLEET_TOKEN`, else the one `pvefleet dev` saved).
    #[arg(long)]
    pub token: Option<String>,
}

/// `pvefleet site ...`
#[derive(Debug, Subcommand)]
pub enum SiteAction {
    /// Request a site; with --wait, follow its saga to the end.
    Create {
        /// The subdomain (an RFC 1123 label).
        name: String,
        /// The plan.
        #[arg(long, default_value = "small")]
        plan: String,
        /// `wordpress`, `none`, or an app configured on the installer (`installer.apps.<name>`).
        #[arg(long, default_value = "wordpress")]
        app: String,
        /// Make it HA.
        #[arg(long)]
        ha: bool,
        /// Follow the saga with a live progress display.
        #[arg(long)]
        wait: bool,
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Sites, newest first.
    List {
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// A site with its step timeline (JSON).
    Show {
        /// The site id.
        id: String,
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// The site's generated credentials (WordPress admin, database). Needs a token with the
    /// `admin` scope; every reveal is audited.
    Credentials {
        /// The site id.
        id: String,
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Deprovision a site.
    Delete {
        /// The site id.
        id: String,
        /// Follow the saga to the end.
        #[arg(long)]
        wait: bool,
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
}
