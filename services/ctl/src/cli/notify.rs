//! `pvefleet notify ...`.

use clap::Subcommand;

/// `pvefleet notify ...`
#[derive(Debug, Subcommand)]
pub enum NotifyAction {
    /// Deliveries, newest first.
    List {
        /// Only in this state (pending, sending, retrying, sent, failed, suppressed).
        #[arg(long)]
        state: Option<String>,
        /// Only this owner's.
        #[arg(long)]
        owner: Option<String>,
        /// Only of this event type (site.provisioned, resource.alert, message.parked...).
        #[arg(long = "event")]
        event_type: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One delivery (JSON): its target, subject, state, tries and last error.
    Show {
        /// The delivery id.
        id: uuid::Uuid,
    },
    /// Send a test notice wherever the routes send `notify.test` (every operator channel by
    /// default), to check SMTP, webhooks, ntfy and Alertmanager end to end.
    Test {
        /// The text of the notice.
        #[arg(long, default_value = "the channels work")]
        message: String,
    },
    /// Send a delivery again (a failed one, one in doubt after a crash, or one already sent).
    Resend {
        /// The delivery id.
        id: uuid::Uuid,
    },
    /// An owner's contacts, where its own notices go.
    Owner {
        /// What to do.
        #[command(subcommand)]
        action: OwnerAction,
    },
}

/// `pvefleet notify owner ...`
#[derive(Debug, Subcommand)]
pub enum OwnerAction {
    /// Set an owner's e-mail address and webhook URL (an empty value clears one); prints the
    /// webhook's signing secret when an owner webhook key is configured.
    Set {
        /// The owner.
        owner: String,
        /// Its e-mail address.
        #[arg(long)]
        email: Option<String>,
        /// Its webhook URL.
        #[arg(long)]
        webhook: Option<String>,
    },
    /// Show an owner's contacts and its webhook signing secret.
    Show {
        /// The owner.
        owner: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}
