//! The coordinator: every saga kind's machine, and the router of the saga queue derived from
//! their tables. A step event finds its saga by correlation id and goes to that saga's
//! kind; the start commands (`site.provision`, `site.deprovision`, `vnet.provision`) start a
//! saga of theirs (`start`).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use pvefleet_contracts::Message;
use pvefleet_contracts::messages::{
    ContainerScaled, MessageParked, SiteDeprovision, SiteProvision, SiteRestore, VnetProvision,
};
use pvefleet_contracts::registry::find_latest;
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError, JsonHandler, Router};
use pvefleet_core::config::SagaSettings;
use serde_json::Value;

use crate::engine::{Driver, Exec, Kind, Machine, store};
use crate::kinds::deprovision::Deprovision;
use crate::kinds::provision::Provision;
use crate::kinds::restore::Restore;
use crate::kinds::vnet::VnetProvisioning;

/// The coordinator's handlers.
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub settings: SagaSettings,
    pub templates: Vec<String>,
    pub apps: Vec<String>,
    /// For the site policy's node check; without it a requested node is not checked here.
    pub pve: Option<pvefleet_proxmox::client::PveClient>,
    pub provision: Arc<Machine<Provision>>,
    pub deprovision: Arc<Machine<Deprovision>>,
    pub vnet: Arc<Machine<VnetProvisioning>>,
    pub restore: Arc<Machine<Restore>>,
    pub drivers: HashMap<Kind, Arc<dyn Driver>>,
}

impl Coordinator {
    /// A coordinator with the saga settings, the allowed templates and the installer's apps
    /// besides `wordpress` and `none`.
    pub fn new(settings: SagaSettings, templates: Vec<String>, apps: Vec<String>) -> Self {
        Self::checking_nodes(settings, templates, apps, None)
    }

    /// A coordinator that also checks a requested node against `pve` (the site policy's node
    /// rule: the node exists and is online).
    pub fn checking_nodes(
        settings: SagaSettings,
        templates: Vec<String>,
        apps: Vec<String>,
        pve: Option<pvefleet_proxmox::client::PveClient>,
    ) -> Self {
        let provision = Arc::new(Machine::new(Provision::new()));
        let deprovision = Arc::new(Machine::new(Deprovision::new()));
        let vnet = Arc::new(Machine::new(VnetProvisioning::new()));
        let restore = Arc::new(Machine::new(Restore::new()));
        let mut drivers: HashMap<Kind, Arc<dyn Driver>> = HashMap::new();
        drivers.insert(Kind::Provision, provision.clone());
        drivers.insert(Kind::Deprovision, deprovision.clone());
        drivers.insert(Kind::VnetProvision, vnet.clone());
        drivers.insert(Kind::Restore, restore.clone());
        Self {
            inner: Arc::new(Inner {
                settings,
                templates,
                apps,
                pve,
                provision,
                deprovision,
                vnet,
                restore,
                drivers,
            }),
        }
    }

    /// Why a kind's table cannot work, if one cannot (checked before the service consumes).
    pub fn validate(&self) -> Result<(), String> {
        let mut kinds: Vec<&Arc<dyn Driver>> = self.inner.drivers.values().collect();
        kinds.sort_by_key(|d| d.kind().as_str());
        for d in kinds {
            d.validate()?;
        }
        Ok(())
    }

    /// The router of the saga queue: the start commands, every event a step of a kind's table
    /// ends with, and `message.parked`.
    pub fn router(&self) -> Router {
        let c = self.clone();
        let events: Arc<dyn JsonHandler> = Arc::new(StepEvents(c.clone()));
        let mut router = Router::new()
            .route::<SiteProvision, _>(c.clone())
            .route::<SiteDeprovision, _>(c.clone())
            .route::<VnetProvision, _>(c.clone())
            .route::<SiteRestore, _>(c.clone())
            .route::<MessageParked, _>(c.clone())
            .route::<ContainerScaled, _>(c)
            .on_invalid::<SiteProvision>(crate::start::rejection_notice);
        let mut seen: Vec<&'static str> = Vec::new();
        let mut drivers: Vec<&Arc<dyn Driver>> = self.inner.drivers.values().collect();
        drivers.sort_by_key(|d| d.kind().as_str());
        for d in drivers {
            for e in d.events() {
                if seen.contains(&e) {
                    continue;
                }
                seen.push(e);
                if let Some(info) = find_latest(e) {
                    router = router.route_json(info, events.clone());
                }
            }
        }
        router
    }

    /// Every kind's machine.
    pub fn drivers(&self) -> Vec<Arc<dyn Driver>> {
        let mut d: Vec<Arc<dyn Driver>> = self.inner.drivers.values().cloned().collect();
        d.sort_by_key(|d| d.kind().as_str());
        d
    }
}

impl Inner {
    /// The execution context of a transition made while handling `ctx`'s message.
    pub fn exec<'a>(&'a self, ctx: &'a Context<'a>) -> Result<Exec<'a>, HandlerError> {
        let db = ctx
            .db
            .ok_or_else(|| HandlerError::rejected("the saga coordinator needs its inbox transaction"))?;
        Ok(Exec {
            db,
            origin: ctx.origin(),
            settings: &self.settings,
        })
    }

    /// The machine of a stored kind.
    pub fn driver(&self, kind: &str) -> Option<&Arc<dyn Driver>> {
        Kind::parse(kind).and_then(|k| self.drivers.get(&k))
    }
}

/// Every step event goes to the saga it belongs to.
struct StepEvents(Coordinator);

#[async_trait]
impl JsonHandler for StepEvents {
    async fn handle(&self, mtype: &'static str, body: Value, ctx: &Context<'_>) -> Handled {
        let me = &self.0.inner;
        let x = me.exec(ctx)?;
        let Some(correlation) = ctx.correlation_id else {
            tracing::warn!(event = mtype, "An event without a correlation id; no saga to advance.");
            return Ok(());
        };
        let Some(row) = store::lock_by_correlation(x.db, correlation).await? else {
            tracing::debug!(event = mtype, %correlation, "An event for no saga of ours; ignored.");
            return Ok(());
        };
        let Some(driver) = me.driver(&row.kind) else {
            return Err(HandlerError::rejected(format!(
                "saga {} is of an unknown kind '{}'",
                row.id, row.kind
            )));
        };
        driver.on_event(&x, row, mtype, &body, correlation).await
    }
}

/// A parked command of a saga stops the saga for an operator, naming the dead letter: a
/// forward step leaves it `suspended`, a compensation `compensation_failed`. A replay of the
/// dead letter puts it back (`dlq::replay`); `pvefleet saga abort` compensates it.
#[async_trait]
impl Handler<MessageParked> for Coordinator {
    async fn handle(&self, msg: MessageParked, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let x = me.exec(ctx)?;
        let (Some(saga), Some(mtype)) = (msg.correlation_id, msg.message_type.as_deref()) else {
            return Ok(());
        };
        let Some(row) = store::lock(x.db, saga).await? else {
            // A request parked before its saga started: its site must not wait for a saga that
            // will never run.
            if mtype == SiteProvision::TYPE {
                crate::start::end_parked_request(me, &x, saga, &msg).await?;
            }
            return Ok(());
        };
        let Some(driver) = me.driver(&row.kind) else {
            return Ok(());
        };
        driver
            .parked(&x, row, mtype, msg.dead_letter_id, &msg.fault_class)
            .await
    }
}

/// The autoscaler's `container.scaled` matches the saga queue's `container.*` binding; it is
/// no saga's step.
#[async_trait]
impl Handler<ContainerScaled> for Coordinator {
    async fn handle(&self, _msg: ContainerScaled, _ctx: &Context<'_>) -> Handled {
        Ok(())
    }
}
