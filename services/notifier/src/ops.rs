//! What operators and owners do with deliveries, the same for `pvefleet notify` and intake's
//! `/v1/notifications`: queue a notice's deliveries, send a test notice, send a delivery again,
//! and set an owner's contacts. Each change is written to `audit_log` in its transaction.

use pvefleet_contracts::messages::NotifyDeliver;
use pvefleet_core::audit::{self, Actor, Entry};
use pvefleet_core::bus::outgoing::{Origin, Outgoing};
use pvefleet_core::config::NotifierSettings;
use pvefleet_core::config::Settings;
use pvefleet_core::db::Sql;
use serde_json::json;
use uuid::Uuid;

use crate::notice::Notice;
use crate::route::OwnerContacts;
use crate::{render, route, store};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The database.
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// The outbox would not take the command.
    #[error("queueing the delivery: {0}")]
    Queue(String),
    /// A template would not render.
    #[error("rendering the notice: {0}")]
    Render(String),
    /// A field is not what it must be; `field` names it.
    #[error("{field}: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Routes `notice`, records its deliveries and queues one `notify.deliver` each through the
/// outbox, on `db` (the caller's transaction). Answers the deliveries queued: none when no route
/// sends it anywhere, or when `event_id` was handled before.
pub async fn queue(
    db: &dyn Sql,
    s: &NotifierSettings,
    event_id: &str,
    notice: &Notice,
    origin: &Origin,
) -> Result<Vec<Uuid>, OpsError> {
    let contacts = match &notice.owner {
        Some(o) => store::contacts(db, o).await?,
        None => None,
    };
    let targets = route::targets(s, notice, contacts.as_ref());
    if targets.is_empty() {
        metrics::counter!("pvefleet_notifier_notices_total", "event" => notice.event_type.clone(), "routed" => "false")
            .increment(1);
        tracing::debug!(event = notice.event_type, "No route sends this notice anywhere.");
        return Ok(Vec::new());
    }
    let rendered = render::render(
        s.templates_dir.as_deref(),
        &notice.event_type,
        &notice.vars,
        &s.console_url,
    )
    .map_err(OpsError::Render)?;
    let payload = json!({
        "vars": notice.vars,
        "alert": notice.alert.as_ref().map(|a| json!({ "labels": a.labels, "resolved": a.resolved })),
        "owner_webhook_url": contacts.as_ref().and_then(|c| c.webhook_url.clone()),
    });
    let ids = store::record(
        db,
        event_id,
        notice,
        &rendered.subject,
        &payload,
        &targets,
        s.alert_resend_interval,
    )
    .await?;
    for id in &ids {
        deliver(db, *id, origin).await?;
    }
    if !ids.is_empty() {
        metrics::counter!("pvefleet_notifier_notices_total", "event" => notice.event_type.clone(), "routed" => "true")
            .increment(1);
    }
    Ok(ids)
}

async fn deliver(db: &dyn Sql, id: Uuid, origin: &Origin) -> Result<(), OpsError> {
    let out = Outgoing::message(&NotifyDeliver { notification_id: id }, origin)
        .map_err(|e| OpsError::Queue(format!("{e:#}")))?;
    pvefleet_core::db::outbox::enqueue(db, &out)
        .await
        .map_err(|e| OpsError::Queue(format!("{e:#}")))
}

fn origin(app: &str) -> Origin {
    Origin {
        correlation_id: Some(Uuid::now_v7()),
        app_id: Some(app.into()),
        ..Origin::default()
    }
}

/// The longest test message taken.
pub const TEST_MESSAGE_MAX: usize = 1000;

/// Sends a test notice (`notify.test`) wherever the routes send it (by default, every operator
/// channel). Answers the deliveries queued.
pub async fn test(
    client: &mut tokio_postgres::Client,
    s: &Settings,
    message: &str,
    actor: &Actor,
) -> Result<Vec<Uuid>, OpsError> {
    if message.chars().count() > TEST_MESSAGE_MAX || message.contains('\0') {
        return Err(OpsError::Invalid {
            field: "message",
            why: format!("at most {TEST_MESSAGE_MAX} characters, and no NUL"),
        });
    }
    let tx = client.transaction().await?;
    let event_id = format!("test-{}", Uuid::now_v7());
    let ids = queue(
        &tx,
        &s.notifier,
        &event_id,
        &crate::notice::test(message),
        &origin("pvefleet-cli"),
    )
    .await?;
    let entry = Entry::new("notify.test", format!("notify/{event_id}"))
        .detail(json!({ "deliveries": ids }))
        .outcome(if ids.is_empty() { "no-route" } else { "accepted" });
    audit::record(&tx, actor, &entry).await?;
    tx.commit().await?;
    Ok(ids)
}

/// What `resend` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resend {
    /// Made pending and queued again.
    Queued,
    /// Not settled yet (`pending`, `retrying` or `sending`: its command is queued, waiting or
    /// being sent), in this state; ask again once it settles.
    Unsettled(String),
    /// No such delivery (or not the caller's owner's).
    Missing,
}

/// Sends a settled delivery again (`sent`, `failed` or `suppressed`): it becomes `pending` and
/// a `notify.deliver` is queued. `owner`: only a delivery that went to this owner itself.
pub async fn resend(
    client: &mut tokio_postgres::Client,
    id: Uuid,
    owner: Option<&str>,
    actor: &Actor,
) -> Result<Resend, OpsError> {
    let tx = client.transaction().await?;
    let Some(d) = store::get(&tx, id).await? else {
        return Ok(Resend::Missing);
    };
    if owner.is_some_and(|o| d.owner.as_deref() != Some(o) || d.audience != "owner") {
        return Ok(Resend::Missing);
    }
    if !store::reset(&tx, id).await? {
        return Ok(Resend::Unsettled(d.state));
    }
    deliver(&tx, id, &origin("pvefleet-cli")).await?;
    let mut entry = Entry::new("notify.resend", format!("notification/{id}"))
        .outcome("accepted")
        .detail(json!({ "was": d.state, "channel": d.channel, "event_type": d.event_type }));
    entry.owner = d.owner.clone();
    audit::record(&tx, actor, &entry).await?;
    tx.commit().await?;
    Ok(Resend::Queued)
}

/// The longest e-mail address taken (RFC 5321's path limit).
const EMAIL_MAX: usize = 254;

/// An e-mail address as `lettre` takes it, or the reason it is not one.
pub fn check_email(email: &str) -> Result<(), String> {
    if email.len() > EMAIL_MAX {
        return Err(format!("longer than {EMAIL_MAX} characters"));
    }
    email
        .parse::<lettre::Address>()
        .map(drop)
        .map_err(|e| format!("'{email}' is not an e-mail address ({e})"))
}

/// An http or https URL with a host, or the reason it is not one.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("'{url}' is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{url}' is not an http or https URL with a host"));
    }
    if url.len() > 2048 {
        return Err("longer than 2048 characters".into());
    }
    Ok(())
}

/// Whether `url` points at this network rather than the internet: `localhost`, or an address
/// that is loopback, private, link-local, unique-local or unspecified. An owner may not send
/// the notifier's webhooks there (the notifier would be a way into the stack's own network);
/// an operator may.
pub fn internal_url(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    match parsed.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified() || ip.is_broadcast()
        }
        Some(url::Host::Ipv6(ip)) => {
            let unique_local = (ip.segments()[0] & 0xfe00) == 0xfc00;
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            let mapped_internal = ip
                .to_ipv4_mapped()
                .is_some_and(|v4| v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified());
            ip.is_loopback() || ip.is_unspecified() || unique_local || link_local || mapped_internal
        }
        None => false,
    }
}

/// An owner's contacts and, when a webhook is set and an owner webhook key is configured, the
/// secret its deliveries are signed with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Contacts {
    /// The owner.
    pub owner: String,
    /// Where its e-mail goes.
    pub email: Option<String>,
    /// Where its webhooks go.
    pub webhook_url: Option<String>,
    /// `whsec_...`: shown to the owner, to verify signatures; never logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

/// The owner webhook key, read from `owner_webhook_key_file`, when one is configured.
pub fn owner_key(s: &NotifierSettings) -> anyhow::Result<Option<String>> {
    s.owner_webhook_key_file
        .as_deref()
        .map(|p| crate::channels::read_secret(p, "the owner webhook key"))
        .transpose()
}

fn with_secret(owner: &str, c: OwnerContacts, key: Option<&str>) -> Contacts {
    let webhook_secret = match (&c.webhook_url, key) {
        (Some(_), Some(k)) => Some(crate::channels::owner_secret(k, owner)),
        _ => None,
    };
    Contacts {
        owner: owner.to_string(),
        email: c.email,
        webhook_url: c.webhook_url,
        webhook_secret,
    }
}

/// An owner's contacts (none stored: both empty), with its webhook secret when `key` is given.
pub async fn contacts(db: &dyn Sql, owner: &str, key: Option<&str>) -> Result<Contacts, OpsError> {
    let c = store::contacts(db, owner).await?.unwrap_or(OwnerContacts {
        email: None,
        webhook_url: None,
    });
    Ok(with_secret(owner, c, key))
}

/// Sets an owner's contacts: `None` leaves one as it is, an empty string clears it. Each is
/// checked first (`field` names the bad one). Audited with the owner.
pub async fn set_contacts(
    client: &mut tokio_postgres::Client,
    owner: &str,
    email: Option<&str>,
    webhook_url: Option<&str>,
    key: Option<&str>,
    actor: &Actor,
) -> Result<Contacts, OpsError> {
    if let Some(e) = email.filter(|e| !e.is_empty()) {
        check_email(e).map_err(|why| OpsError::Invalid { field: "email", why })?;
    }
    if let Some(u) = webhook_url.filter(|u| !u.is_empty()) {
        check_url(u).map_err(|why| OpsError::Invalid {
            field: "webhook_url",
            why,
        })?;
    }
    let tx = client.transaction().await?;
    let c = store::set_contacts(&tx, owner, email, webhook_url).await?;
    let changed: Vec<&str> = [("email", email), ("webhook_url", webhook_url)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|_| k))
        .collect();
    let entry = Entry::new("notify.contacts", format!("owner/{owner}"))
        .owner(owner)
        .detail(json!({ "changed": changed }));
    audit::record(&tx, actor, &entry).await?;
    tx.commit().await?;
    Ok(with_secret(owner, c, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_are_checked_naming_what_is_wrong() {
        assert!(check_email("alice@example.org").is_ok());
        assert!(check_email("alice").is_err());
        assert!(check_email("a b@example.org").is_err());
        assert!(check_url("https://hooks.example.org/x").is_ok());
        assert!(check_url("http://127.0.0.1:9/x").is_ok());
        assert!(check_url("ftp://example.org/").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_url("file:///etc/passwd").is_err());
        for inside in [
            "http://127.0.0.1:5672/",
            "http://localhost/x",
            "http://10.1.2.3/",
            "http://192.168.1.10/",
            "http://169.254.169.254/latest",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://0.0.0.0/",
        ] {
            assert!(internal_url(inside), "{inside}");
        }
        for outside in [
            "https://hooks.example.org/x",
            "http://93.184.216.34/",
            "http://[2606:4700::1111]/",
        ] {
            assert!(!internal_url(outside), "{outside}");
        }
    }

    #[test]
    fn a_webhook_secret_is_shown_only_with_a_webhook_and_a_key() {
        let c = |url: Option<&str>| OwnerContacts {
            email: Some("a@example.org".into()),
            webhook_url: url.map(str::to_string),
        };
        assert_eq!(with_secret("alice", c(None), Some("k")).webhook_secret, None);
        assert_eq!(
            with_secret("alice", c(Some("https://x.example/")), None).webhook_secret,
            None
        );
        let s = with_secret("alice", c(Some("https://x.example/")), Some("k")).webhook_secret;
        assert_eq!(s, Some(crate::channels::owner_secret("k", "alice")));
        assert_ne!(s, Some(crate::channels::owner_secret("k", "bob")));
    }
}
