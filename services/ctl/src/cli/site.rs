//! `pvefleet site ...`, and where the intake API is (shared by the commands that go through it).

use clap::Subcommand;

/// Where the intake API is, and the token to use.
#[derive(Debug, Clone, clap::Args)]
pub struct SiteTarget {
    /// The intake API (else `$PVEFLEET_API`, else the running `pvefleet dev`'s from its
    /// profile, else http://127.0.0.1:8080).
    #[arg(long, env = "PVEFLEET_API")]
    pub api: Option<String>,
    /// The API token (else `$PVEFLEET_TOKEN`, else the one in `pvefleet dev`'s profile).
    #[arg(long)]
    pub token: Option<String>,
}

impl SiteTarget {
    /// The intake URL this command uses.
    pub fn url(&self) -> String {
        let url = self
            .api
            .clone()
            .or_else(|| crate::profile::load()?.intake.map(|i| i.url));
        url.unwrap_or_else(|| "http://127.0.0.1:8080".into())
            .trim_end_matches('/')
            .to_string()
    }
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
        /// With --wait: give up waiting after this long, with exit 124 (the work goes on).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
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
    /// Back a site up now (to its backup policy's storage); with --wait, until the backup is
    /// written or has failed.
    Backup {
        /// The site id.
        id: String,
        /// Wait for the backup's end.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long, with exit 124 (the work goes on).
        #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Restore a site from one of its backups, as a saga: an active site is backed up first,
    /// stopped, restored in place, started and checked (put back as it was if a step fails);
    /// a deleted site comes back in a new container with its address, DNS record and route;
    /// with --clone, the backup becomes a new site beside this one.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["from", "latest"])))]
    Restore {
        /// The site id.
        id: String,
        /// The backup volume to restore (as `site backups` lists it).
        #[arg(long)]
        from: Option<String>,
        /// The site's latest kept backup.
        #[arg(long)]
        latest: bool,
        /// Restore into a new site beside this one (its own container, address, DNS record
        /// and route); this site is not touched.
        #[arg(long)]
        clone: bool,
        /// The clone's subdomain (without: `<subdomain>-clone`).
        #[arg(long, requires = "clone")]
        subdomain: Option<String>,
        /// Follow the saga to its end.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long, with exit 124 (the work goes on).
        #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// A site's configuration history: its container's PVE config as last recorded (or one
    /// version), every version with what changed from the one before, the difference between
    /// two, or a version put back through the digest-guarded config write.
    Config {
        /// The site id.
        id: String,
        /// Every recorded version, newest first, each with what changed and what made it.
        #[arg(long, conflicts_with_all = ["diff", "restore", "version"])]
        history: bool,
        /// Show this version in full (without: the newest).
        #[arg(long)]
        version: Option<u32>,
        /// What differs from version FROM to version TO (without TO: the newest).
        #[arg(long, num_args = 1..=2, value_names = ["FROM", "TO"], conflicts_with_all = ["restore", "version"])]
        diff: Option<Vec<u32>>,
        /// Put this version back (disks, mount points and `unprivileged` are left as they are).
        #[arg(long, conflicts_with = "version")]
        restore: Option<u32>,
        /// With --restore: wait until it is done and print what was written.
        #[arg(long, requires = "restore")]
        wait: bool,
        /// With --wait: give up waiting after this long, with exit 124 (the work goes on).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// A site's backups, newest first: kind, state, volume, size, when taken, verification.
    Backups {
        /// The site id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
        /// With --wait: give up waiting after this long, with exit 124 (the work goes on).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// The API.
        #[command(flatten)]
        target: SiteTarget,
    },
}
