//! `pvefleet dlq ...` with its filter, and `pvefleet audit ...`.

use clap::Subcommand;

/// Which dead letters a `dlq` command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqFilter {
    /// One dead letter.
    #[arg(long)]
    pub id: Option<uuid::Uuid>,
    /// A group (fingerprint), as `dlq groups` shows.
    #[arg(long)]
    pub group: Option<String>,
    /// The queue it was parked from.
    #[arg(long)]
    pub queue: Option<String>,
    /// Its message type.
    #[arg(long = "type")]
    pub message_type: Option<String>,
    /// Its correlation id (a saga).
    #[arg(long)]
    pub correlation_id: Option<uuid::Uuid>,
    /// Parked at or after (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Parked before (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Its state: parked (the default), replayed, archived.
    #[arg(long)]
    pub state: Option<String>,
}

/// `pvefleet dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Dead letters, newest first.
    List {
        /// Which.
        #[command(flatten)]
        filter: DlqFilter,
        /// At most this many.
        #[arg(long, default_value_t = 200)]
        limit: i64,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Counts per group (message type, fault class, normalised message), with the newest example.
    Groups {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: properties, headers, body, fault and replay history (JSON).
    Show {
        /// The dead letter.
        id: uuid::Uuid,
        /// JSON (the only form; accepted for symmetry).
        #[arg(long)]
        json: bool,
    },
    /// Republishes to the origin exchange and routing key, every header kept, plus the replay headers.
    Replay {
        /// Which (at least one of --id, --group, or another filter).
        #[command(flatten)]
        filter: DlqFilter,
        /// Show what would be replayed, and replay nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many a second.
        #[arg(long)]
        rate: Option<f64>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replays an edited copy (from `$EDITOR`, or `--body FILE`) with a new message id, after
    /// checking it against the message's schema; the original becomes `resolved`.
    Edit {
        /// The dead letter.
        id: uuid::Uuid,
        /// The new body, instead of opening an editor.
        #[arg(long)]
        body: Option<std::path::PathBuf>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Writes dead letters as NDJSON (every column, the body in base64).
    Export {
        /// Which.
        #[command(flatten)]
        filter: DlqFilter,
        /// The file; standard output when absent.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// With --out: a JSON summary instead of text (the export itself is always JSON lines).
        #[arg(long)]
        json: bool,
    },
    /// Stores dead letters from an NDJSON export, as parked; ones already here are skipped.
    Import {
        /// The file.
        file: std::path::PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Sets dead letters aside as `archived` (kept).
    Archive {
        /// Which.
        #[command(flatten)]
        filter: DlqFilter,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Deletes dead letters for good.
    Purge {
        /// Which.
        #[command(flatten)]
        filter: DlqFilter,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `pvefleet audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Changes, newest first: every state-changing call and command, by whom, for which owner.
    List {
        /// Only this actor's (`cli:alice`, or a token's id).
        #[arg(long)]
        actor: Option<String>,
        /// Only this owner's.
        #[arg(long)]
        owner: Option<String>,
        /// Only this action, or actions starting so (`site.`, `token.revoke`).
        #[arg(long)]
        action: Option<String>,
        /// Only this target, or targets starting so (`site/<id>`, `lxc/101`).
        #[arg(long)]
        target: Option<String>,
        /// From this time (RFC 3339, `2026-12-04 10:00`).
        #[arg(long)]
        since: Option<String>,
        /// Until this time.
        #[arg(long)]
        until: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}
