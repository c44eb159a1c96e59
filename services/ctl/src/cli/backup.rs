//! `pvefleet backup ...`.

use clap::Subcommand;

/// `pvefleet backup ...`
#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// Backup policies: each is one PVE backup job covering the sites that follow it.
    Policy {
        /// What to do.
        #[command(subcommand)]
        action: BackupPolicyAction,
    },
    /// Set the policy a site follows (`--default`: its plan's, else backup.default_policy).
    Site {
        /// The site id.
        id: uuid::Uuid,
        /// The policy.
        #[arg(long, conflicts_with = "default", required_unless_present = "default")]
        policy: Option<String>,
        /// Follow the plan's policy, else the default.
        #[arg(long)]
        default: bool,
    },
    /// Bring PVE's backup jobs in step with the policies and the records with the storages
    /// now (the backup service does this every backup.sync_interval).
    Sync {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a backup now (the backup service does this every backup.verify_interval): the
    /// latest backup of the site verified longest ago, or of --site, restored into the scratch
    /// container, started, probed and destroyed; the outcome recorded. Exit 1 when it failed.
    Verify {
        /// This site's latest backup.
        #[arg(long)]
        site: Option<uuid::Uuid>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `pvefleet backup policy ...`
#[derive(Debug, Subcommand)]
pub enum BackupPolicyAction {
    /// Every policy, and how many active sites follow it.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create or replace a policy.
    Set {
        /// Its name (a lowercase letter, then a-z, 0-9 and '-').
        name: String,
        /// A PVE calendar event: daily, hourly, weekly, HH:MM, *:MM, or days then a time.
        #[arg(long, default_value = "02:00")]
        schedule: String,
        /// The PVE storage its backups go to.
        #[arg(long, default_value = "local")]
        storage: String,
        /// snapshot, suspend or stop.
        #[arg(long, default_value = "snapshot")]
        mode: String,
        /// zstd, gzip, lzo or 0.
        #[arg(long, default_value = "zstd")]
        compress: String,
        /// Retention in PVE's prune-backups terms: keep-last=N, keep-daily=N, keep-weekly=N...
        #[arg(long, default_value = "keep-daily=7")]
        retention: String,
        /// Leave it without a PVE job (its sites are not backed up on schedule).
        #[arg(long)]
        disabled: bool,
    },
    /// Delete a policy; its sites follow their plan's policy, else the default.
    Delete {
        /// The policy.
        name: String,
    },
}
