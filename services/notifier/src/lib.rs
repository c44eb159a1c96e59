//! The notifier: the events that need a person, delivered by e-mail, signed webhooks, ntfy and
//! Alertmanager.
//!
//! - `notice`: what each event tells, its severity and owner, and the alert it is;
//! - `route`: which channels and targets a notice goes to (configured routes, or built-in);
//! - `render`: subjects and bodies from templates the operator can override;
//! - `channels`: the four channels, and Standard Webhooks signing;
//! - `store`: the deliveries in Postgres and the owners' contacts.
//!
//! An event is handled once (the inbox): its notice is routed and each delivery recorded,
//! with a `notify.deliver` command per delivery through the outbox, in the event's
//! transaction. Each `notify.deliver` sends one delivery: a failure worth retrying goes
//! through the runtime's wait tiers, and once they are spent the command is parked (a dead
//! letter an operator can replay) and the delivery marked `failed` with the reason. A
//! delivery found `sending` was interrupted mid-send: an e-mail may have gone out, so it is
//! not sent again but marked `failed` (in doubt) for `pvefleet notify resend`; the other
//! channels are sent again (webhooks keep their `webhook-id`, Alertmanager merges copies).

pub mod channels;
pub mod notice;
pub mod ops;
pub mod render;
pub mod route;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use pvefleet_contracts::Message;
use pvefleet_contracts::messages::{
    BackupVerified, MessageParked, NotifyDeliver, ResourceAlert, SagaCompensationFailed, SagaSuspended,
    SiteDeprovisioned, SiteProvisionFailed, SiteProvisioned,
};
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError, Router};
use pvefleet_core::config::Settings;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::channels::{Channels, SendError};
use crate::notice::Notice;
use crate::store::Claim;

/// The queue the notifier consumes, where its own `notify.deliver` commands go too.
pub const QUEUE: &str = "pvefleet.notifier";

/// The notifier's handlers.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    channels: Channels,
    pool: deadpool_postgres::Pool,
}

fn db_error(e: tokio_postgres::Error) -> HandlerError {
    HandlerError::from(e)
}

impl Notifier {
    /// The notifier over `settings` (`[notifier]`, and `[saga] domain` for site URLs): reads
    /// every secret file and checks the routes, naming what is wrong.
    pub fn new(settings: &Settings, pool: deadpool_postgres::Pool) -> anyhow::Result<Self> {
        route::check(&settings.notifier.routes).map_err(anyhow::Error::msg)?;
        let channels = Channels::new(&settings.notifier)?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                channels,
                pool,
            }),
        })
    }

    /// The router: every event it takes, and `notify.deliver`.
    pub fn router(&self) -> Router {
        Router::new()
            .route::<SiteProvisioned, _>(self.clone())
            .route::<SiteProvisionFailed, _>(self.clone())
            .route::<SiteDeprovisioned, _>(self.clone())
            .route::<SagaSuspended, _>(self.clone())
            .route::<SagaCompensationFailed, _>(self.clone())
            .route::<MessageParked, _>(self.clone())
            .route::<ResourceAlert, _>(self.clone())
            .route::<BackupVerified, _>(self.clone())
            .route::<NotifyDeliver, _>(self.clone())
    }

    /// Routes a notice, records its deliveries and queues one `notify.deliver` each, on `db`
    /// (the event's transaction). Answers the deliveries queued.
    pub async fn notify(
        &self,
        db: &dyn pvefleet_core::db::Sql,
        event_id: &str,
        notice: &Notice,
        origin: &Origin,
    ) -> Result<usize, HandlerError> {
        match ops::queue(db, &self.inner.settings.notifier, event_id, notice, origin).await {
            Ok(ids) => Ok(ids.len()),
            Err(ops::OpsError::Db(e)) => Err(db_error(e)),
            Err(e) => Err(HandlerError::transient(e.to_string())),
        }
    }

    async fn event(&self, ctx: &Context<'_>, notice: Notice) -> Handled {
        let Some(db) = ctx.db else {
            return Err(HandlerError::transient("the notifier runs with its inbox"));
        };
        self.notify(db, &ctx.message_id, &notice, &ctx.origin()).await.map(drop)
    }

    async fn site(&self, ctx: &Context<'_>, id: uuid::Uuid) -> Result<Option<notice::SiteInfo>, HandlerError> {
        let Some(db) = ctx.db else { return Ok(None) };
        notice::site(db, id).await.map_err(db_error)
    }

    /// Sends one delivery; see the module's documentation for what a failure does.
    async fn deliver(&self, ctx: &Context<'_>, id: uuid::Uuid) -> Handled {
        let client = self.inner.pool.get().await?;
        let d = match store::claim(&client, id).await.map_err(db_error)? {
            Claim::Held(d) => d,
            Claim::Done(state) => {
                tracing::debug!(%id, state, "A delivery already settled; nothing to do.");
                return Ok(());
            }
            Claim::Missing => return Err(HandlerError::rejected(format!("no delivery {id}"))),
            Claim::InDoubt(d) if d.channel == "email" => {
                let why = "interrupted while sending: the server may have it; not sent again (pvefleet notify resend to send it)";
                store::settle(&client, id, "failed", Some(why))
                    .await
                    .map_err(db_error)?;
                metrics::counter!("pvefleet_notifier_deliveries_total", "channel" => "email", "outcome" => "in_doubt")
                    .increment(1);
                tracing::warn!(%id, "A delivery was interrupted mid-send; marked failed, in doubt.");
                return Ok(());
            }
            Claim::InDoubt(_) => {
                // Safe to send again: take it back as retrying and claim it.
                store::settle(&client, id, "retrying", Some("interrupted while sending"))
                    .await
                    .map_err(db_error)?;
                match store::claim(&client, id).await.map_err(db_error)? {
                    Claim::Held(d) => d,
                    _ => return Ok(()),
                }
            }
        };
        let started = std::time::Instant::now();
        let result = self.send(&d).await;
        metrics::histogram!("pvefleet_notifier_delivery_seconds", "channel" => d.channel.clone())
            .record(started.elapsed().as_secs_f64());
        let max = self.inner.settings.bus.max_attempts;
        let (state, outcome) = match &result {
            Ok(()) => ("sent", "sent"),
            Err(SendError::Permanent(_)) => ("failed", "failed"),
            Err(SendError::Transient(_)) if ctx.attempt >= max => ("failed", "failed"),
            Err(SendError::Transient(_)) => ("retrying", "retried"),
        };
        let error = result.as_ref().err().map(|e| match e {
            SendError::Transient(m) if ctx.attempt >= max => format!("{m} (tries spent: the command is parked)"),
            other => other.to_string(),
        });
        store::settle(&client, id, state, error.as_deref())
            .await
            .map_err(db_error)?;
        metrics::counter!("pvefleet_notifier_deliveries_total", "channel" => d.channel.clone(), "outcome" => outcome)
            .increment(1);
        match result {
            Ok(()) => {
                tracing::info!(%id, channel = d.channel, event = d.event_type, "Delivered.");
                Ok(())
            }
            Err(SendError::Permanent(m)) => {
                tracing::warn!(%id, channel = d.channel, error = m, "A delivery failed for good.");
                Ok(())
            }
            Err(SendError::Transient(m)) => Err(HandlerError::transient(format!("{} to {}: {m}", d.channel, d.target))),
        }
    }

    async fn send(&self, d: &store::Delivery) -> Result<(), SendError> {
        let s = &self.inner.settings.notifier;
        let c = &self.inner.channels;
        let vars = d.payload["vars"].as_object().cloned().unwrap_or_default();
        let rendered = render::render(s.templates_dir.as_deref(), &d.event_type, &vars, &s.console_url)
            .map_err(SendError::Permanent)?;
        let id = d.id.to_string();
        match d.channel.as_str() {
            "email" => c.email(&id, &d.target, &rendered).await,
            "webhook" => {
                // An owner's webhook goes where its contacts say now (a resend follows a change).
                let current = match d.target.strip_prefix("owner:") {
                    Some(owner) => match self.inner.pool.get().await {
                        Ok(db) => store::contacts(&db, owner)
                            .await
                            .map_err(|e| SendError::Transient(format!("reading the owner's contacts: {e}")))?
                            .and_then(|c| c.webhook_url),
                        Err(e) => return Err(SendError::Transient(format!("reading the owner's contacts: {e}"))),
                    },
                    None => None,
                };
                let owner_url = current.as_deref().or(d.payload["owner_webhook_url"].as_str());
                let Some((url, secret)) = c.webhook_target(&d.target, owner_url) else {
                    return Err(SendError::Permanent(format!("no webhook endpoint '{}'", d.target)));
                };
                let body = json!({
                    "type": d.event_type,
                    "timestamp": d.created_at,
                    "data": {
                        "severity": d.severity,
                        "subject": rendered.subject,
                        "text": rendered.text,
                        "event": vars,
                    },
                });
                c.webhook(&id, &url, secret.as_deref(), &body).await
            }
            "ntfy" => c.ntfy(&d.target, &d.severity, &d.event_type, &rendered).await,
            "alertmanager" => {
                let labels = d.payload["alert"]["labels"].as_object().cloned().unwrap_or_default();
                let resolved = d.payload["alert"]["resolved"].as_bool().unwrap_or(false);
                c.alertmanager(&d.target, &labels, resolved, &rendered, &s.console_url)
                    .await
            }
            other => Err(SendError::Permanent(format!("unknown channel '{other}'"))),
        }
    }
}

#[async_trait]
impl Handler<SiteProvisioned> for Notifier {
    async fn handle(&self, msg: SiteProvisioned, ctx: &Context<'_>) -> Handled {
        let site = self.site(ctx, msg.site_id.0).await?;
        let s = &self.inner.settings;
        let host = notice::host(msg.fqdn.as_deref(), site.as_ref(), &s.saga.domain);
        self.event(
            ctx,
            notice::provisioned(&s.notifier, &msg, site.as_ref(), host.as_deref()),
        )
        .await
    }
}

#[async_trait]
impl Handler<SiteProvisionFailed> for Notifier {
    async fn handle(&self, msg: SiteProvisionFailed, ctx: &Context<'_>) -> Handled {
        let site = self.site(ctx, msg.site_id.0).await?;
        let s = &self.inner.settings;
        let host = notice::host(None, site.as_ref(), &s.saga.domain);
        self.event(
            ctx,
            notice::provision_failed(&s.notifier, &msg, site.as_ref(), host.as_deref()),
        )
        .await
    }
}

#[async_trait]
impl Handler<SiteDeprovisioned> for Notifier {
    async fn handle(&self, msg: SiteDeprovisioned, ctx: &Context<'_>) -> Handled {
        let site = self.site(ctx, msg.site_id.0).await?;
        let s = &self.inner.settings;
        let host = notice::host(None, site.as_ref(), &s.saga.domain);
        self.event(
            ctx,
            notice::deprovisioned(&s.notifier, &msg, site.as_ref(), host.as_deref()),
        )
        .await
    }
}

fn vars<M: serde::Serialize>(m: &M) -> serde_json::Map<String, Value> {
    match serde_json::to_value(m) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

#[async_trait]
impl Handler<SagaSuspended> for Notifier {
    async fn handle(&self, msg: SagaSuspended, ctx: &Context<'_>) -> Handled {
        let site = match msg.site_id {
            Some(id) => self.site(ctx, id.0).await?,
            None => None,
        };
        self.event(
            ctx,
            notice::saga_stopped(SagaSuspended::TYPE, vars(&msg), site.as_ref()),
        )
        .await
    }
}

#[async_trait]
impl Handler<SagaCompensationFailed> for Notifier {
    async fn handle(&self, msg: SagaCompensationFailed, ctx: &Context<'_>) -> Handled {
        let site = match msg.site_id {
            Some(id) => self.site(ctx, id.0).await?,
            None => None,
        };
        self.event(
            ctx,
            notice::saga_stopped(SagaCompensationFailed::TYPE, vars(&msg), site.as_ref()),
        )
        .await
    }
}

#[async_trait]
impl Handler<MessageParked> for Notifier {
    async fn handle(&self, msg: MessageParked, ctx: &Context<'_>) -> Handled {
        // The notifier's own parked deliveries are already `failed` with their reason; telling
        // about them through the channel that failed would park again, for ever.
        if msg.queue == QUEUE {
            tracing::warn!(dead_letter = %msg.dead_letter_id, "A delivery of the notifier's own was parked; not notified again.");
            return Ok(());
        }
        self.event(ctx, notice::parked(&msg)).await
    }
}

#[async_trait]
impl Handler<ResourceAlert> for Notifier {
    async fn handle(&self, msg: ResourceAlert, ctx: &Context<'_>) -> Handled {
        self.event(ctx, notice::alert(&msg)).await
    }
}

#[async_trait]
impl Handler<BackupVerified> for Notifier {
    async fn handle(&self, msg: BackupVerified, ctx: &Context<'_>) -> Handled {
        let site = self.site(ctx, msg.site_id.as_uuid()).await?;
        self.event(ctx, notice::verified(&msg, site.as_ref())).await
    }
}

#[async_trait]
impl Handler<NotifyDeliver> for Notifier {
    async fn handle(&self, msg: NotifyDeliver, ctx: &Context<'_>) -> Handled {
        self.deliver(ctx, msg.notification_id).await
    }
}

/// Runs the notifier until `shutdown`: the worker on `pvefleet.notifier` with its inbox, and
/// the outbox relay that publishes its `notify.deliver` commands.
pub async fn run(
    settings: &Settings,
    pool: deadpool_postgres::Pool,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let notifier = Notifier::new(settings, pool.clone())?;
    // Every channel's outcomes exist from the start at 0, so the first failure is an increase
    // an alert sees.
    for channel in route::CHANNELS {
        for outcome in ["sent", "retried", "failed", "in_doubt"] {
            metrics::counter!("pvefleet_notifier_deliveries_total", "channel" => *channel, "outcome" => outcome)
                .increment(0);
        }
    }
    let worker = pvefleet_core::bus::Worker::fleet("notifier", settings).ready(ready);
    let relay =
        pvefleet_core::db::outbox::OutboxRelay::new(pool.clone(), worker.publisher().clone(), settings.outbox.clone());
    // Deliveries queued in an event's transaction are published as soon as it commits.
    let worker = worker.inbox(pool, Some(relay.poker()));
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let result = worker.run(notifier.router(), shutdown.clone()).await;
    shutdown.cancel();
    let _ = relay_task.await;
    result
}
