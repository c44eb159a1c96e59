//! The deliveries in Postgres (`notifications`) and the owners' contacts (`owner_contacts`).
//!
//! A delivery is `pending` when made, `sending` while a notifier holds it, then `sent`,
//! `retrying` (with the error, waiting in a wait tier), `failed` (with the reason: permanent,
//! or the tries spent and the command parked), or `suppressed` (an alert already sent within
//! `alert_resend_interval`).

use pvefleet_core::db::Sql;
use serde_json::Value;
use uuid::Uuid;

use crate::notice::Notice;
use crate::route::{OwnerContacts, Target};

/// Every state a delivery can be in.
pub const STATES: &[&str] = &["pending", "sending", "retrying", "sent", "failed", "suppressed"];

/// One delivery row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Delivery {
    /// Its id, also the webhook id and the e-mail's Message-ID.
    pub id: Uuid,
    /// The event's message id.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// `info`, `warning`, `critical`.
    pub severity: String,
    /// `operator` or `owner`.
    pub audience: String,
    /// The owner it concerns.
    pub owner: Option<String>,
    /// `email`, `webhook`, `ntfy`, `alertmanager`.
    pub channel: String,
    /// Where.
    pub target: String,
    /// The rendered subject.
    pub subject: String,
    /// The notice's variables and alert labels.
    pub payload: Value,
    /// The state.
    pub state: String,
    /// Tries so far.
    pub attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
    /// When made, RFC 3339.
    pub created_at: String,
    /// When sent, RFC 3339.
    pub sent_at: Option<String>,
}

const COLUMNS: &str = "id, event_id, event_type, severity, audience, owner, channel, target, subject, payload, state, attempts, last_error,
    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
    to_char(sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

fn row(r: &tokio_postgres::Row) -> Delivery {
    Delivery {
        id: r.get(0),
        event_id: r.get(1),
        event_type: r.get(2),
        severity: r.get(3),
        audience: r.get(4),
        owner: r.get(5),
        channel: r.get(6),
        target: r.get(7),
        subject: r.get(8),
        payload: r.get(9),
        state: r.get(10),
        attempts: r.get(11),
        last_error: r.get(12),
        created_at: r.get(13),
        sent_at: r.get(14),
    }
}

/// Makes the deliveries of a notice (once per event, channel and target: a redelivered event
/// makes none again). A raised alert sent for the same key within `resend` is `suppressed`.
/// Answers the ids of the deliveries to send.
pub async fn record(
    db: &dyn Sql,
    event_id: &str,
    notice: &Notice,
    subject: &str,
    payload: &Value,
    targets: &[Target],
    resend: std::time::Duration,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for t in targets {
        let recent = match &notice.dedupe_key {
            Some(key) => db
                .opt(
                    "SELECT 1 FROM notifications WHERE dedupe_key = $1 AND channel = $2 AND target = $3
                       AND state IN ('pending', 'sending', 'retrying', 'sent')
                       AND created_at > now() - $4 * interval '1 second' LIMIT 1",
                    &[key, &t.channel, &t.target, &resend.as_secs_f64()],
                )
                .await?
                .is_some(),
            None => false,
        };
        let state = if recent { "suppressed" } else { "pending" };
        let id = Uuid::now_v7();
        let made = db
            .opt(
                "INSERT INTO notifications (id, event_id, event_type, severity, audience, owner, channel, target, subject, payload, dedupe_key, state)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (event_id, channel, target) DO NOTHING RETURNING id",
                &[
                    &id,
                    &event_id,
                    &notice.event_type,
                    &notice.severity.as_str(),
                    &t.audience,
                    &notice.owner,
                    &t.channel,
                    &t.target,
                    &subject,
                    payload,
                    &notice.dedupe_key,
                    &state,
                ],
            )
            .await?;
        if made.is_some() && !recent {
            out.push(id);
        }
    }
    Ok(out)
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// This notifier holds it now (`sending`, one more attempt).
    Held(Delivery),
    /// Already sent, failed for good or suppressed: nothing to do.
    Done(String),
    /// Left `sending` by a notifier that stopped mid-send: it may have gone out.
    InDoubt(Delivery),
    /// No such delivery.
    Missing,
}

/// Takes a delivery to send it: `pending` or `retrying` becomes `sending` with one more
/// attempt, committed at once, so a notifier killed mid-send leaves it `sending` (in doubt).
pub async fn claim(db: &tokio_postgres::Client, id: Uuid) -> Result<Claim, tokio_postgres::Error> {
    if let Some(r) = db
        .query_opt(
            &format!(
                "UPDATE notifications SET state = 'sending', attempts = attempts + 1, updated_at = now()
                 WHERE id = $1 AND state IN ('pending', 'retrying') RETURNING {COLUMNS}"
            ),
            &[&id],
        )
        .await?
    {
        return Ok(Claim::Held(row(&r)));
    }
    match get(db, id).await? {
        None => Ok(Claim::Missing),
        Some(d) if d.state == "sending" => Ok(Claim::InDoubt(d)),
        Some(d) => Ok(Claim::Done(d.state)),
    }
}

/// Records how a try ended.
pub async fn settle(
    db: &tokio_postgres::Client,
    id: Uuid,
    state: &str,
    error: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE notifications SET state = $2, last_error = COALESCE($3, last_error), updated_at = now(),
             sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END
         WHERE id = $1",
        &[&id, &state, &error],
    )
    .await?;
    Ok(())
}

/// One delivery.
pub async fn get(db: &dyn Sql, id: Uuid) -> Result<Option<Delivery>, tokio_postgres::Error> {
    Ok(db
        .opt(&format!("SELECT {COLUMNS} FROM notifications WHERE id = $1"), &[&id])
        .await?
        .as_ref()
        .map(row))
}

/// Filters for a listing.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// One state.
    pub state: Option<String>,
    /// One owner's.
    pub owner: Option<String>,
    /// One audience's (`owner`: what went to owners themselves; an owner's token sees only
    /// these, never the operators' copies of its owner's notices).
    pub audience: Option<String>,
    /// One event type.
    pub event_type: Option<String>,
    /// Older than this id (the page before), newest first.
    pub before: Option<Uuid>,
    /// At most this many.
    pub limit: i64,
}

/// Deliveries, newest first.
pub async fn list(db: &dyn Sql, f: &Filter) -> Result<Vec<Delivery>, tokio_postgres::Error> {
    Ok(db
        .rows(
            &format!(
                "SELECT {COLUMNS} FROM notifications
                 WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR owner = $2)
                   AND ($3::text IS NULL OR event_type = $3) AND ($4::uuid IS NULL OR id < $4)
                   AND ($6::text IS NULL OR audience = $6)
                 ORDER BY id DESC LIMIT $5"
            ),
            &[
                &f.state,
                &f.owner,
                &f.event_type,
                &f.before,
                &f.limit.clamp(1, 1000),
                &f.audience,
            ],
        )
        .await?
        .iter()
        .map(row)
        .collect())
}

/// The states a delivery can be sent again from: settled ones. A `pending` or `retrying` one
/// has its command queued or waiting already, and a `sending` one is in a notifier's hands.
pub const RESENDABLE: &[&str] = &["sent", "failed", "suppressed"];

/// Makes a settled delivery go again: it becomes `pending`. Answers whether it did.
pub async fn reset(db: &dyn Sql, id: Uuid) -> Result<bool, tokio_postgres::Error> {
    Ok(db
        .exec(
            "UPDATE notifications SET state = 'pending', last_error = NULL, updated_at = now()
             WHERE id = $1 AND state = ANY($2)",
            &[&id, &RESENDABLE],
        )
        .await?
        == 1)
}

/// An owner's contacts.
pub async fn contacts(db: &dyn Sql, owner: &str) -> Result<Option<OwnerContacts>, tokio_postgres::Error> {
    Ok(db
        .opt(
            "SELECT email, webhook_url FROM owner_contacts WHERE owner = $1",
            &[&owner],
        )
        .await?
        .map(|r| OwnerContacts {
            email: r.get(0),
            webhook_url: r.get(1),
        }))
}

/// Sets an owner's contacts (a `None` leaves that one as it is, an empty string clears it).
pub async fn set_contacts(
    db: &dyn Sql,
    owner: &str,
    email: Option<&str>,
    webhook_url: Option<&str>,
) -> Result<OwnerContacts, tokio_postgres::Error> {
    let r = db
        .one(
            "INSERT INTO owner_contacts (owner, email, webhook_url) VALUES ($1, NULLIF($2, ''), NULLIF($3, ''))
             ON CONFLICT (owner) DO UPDATE SET
                 email = CASE WHEN $2::text IS NULL THEN owner_contacts.email ELSE NULLIF($2, '') END,
                 webhook_url = CASE WHEN $3::text IS NULL THEN owner_contacts.webhook_url ELSE NULLIF($3, '') END,
                 updated_at = now()
             RETURNING email, webhook_url",
            &[&owner, &email, &webhook_url],
        )
        .await?;
    Ok(OwnerContacts {
        email: r.get(0),
        webhook_url: r.get(1),
    })
}
