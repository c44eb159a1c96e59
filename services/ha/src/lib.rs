//! The ha service: `ha.enable` and `ha.disable` on Proxmox VE, and a reconciler that repairs
//! drift (pve-behaviour.md §5.12).
//!
//! - `ha.enable` makes `ct:<vmid>` an HA resource (state `started`, `max_restart` and
//!   `max_relocate` from config) and places it: on PVE 9 a node-affinity rule
//!   `pvefleet-<vmid>`, on PVE 8 a group (the command's, or one made from `ha.nodes`). The PVE
//!   version is read from `/version`. It also tags the container `pvefleet-ha`, which is how the
//!   reconciler knows the site wants HA.
//! - `ha.disable` removes the rule and the resource, and the tag; absence is success.
//! - The reconciler reads `/cluster/resources` and `/cluster/ha/resources` once per interval:
//!   a container tagged `pvefleet-ha` without an HA resource gets one; a resource whose
//!   requested state is not `started` is set back to `started`.
//! - The watchdog, in the same pass and from the same read: a stopped fleet container that
//!   nobody is working on is started, within a budget per hour (see `watchdog`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pvefleet_contracts::messages::{HaDisable, HaDisabled, HaEnable, HaEnabled};
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError, Router};
use pvefleet_core::config::HaSettings;
use pvefleet_proxmox::client::api::ResourceType;
use pvefleet_proxmox::client::ha::{HaResourceSpec, HaRuleSpec};
use pvefleet_proxmox::client::{Params, PveClient, PveError, Reason};
use tokio_util::sync::CancellationToken;

mod watchdog;

/// The tag on containers that should be HA resources.
pub const HA_TAG: &str = "pvefleet-ha";

/// The ha service's handlers and reconciler, sharing one PVE client.
#[derive(Clone)]
pub struct Ha {
    inner: Arc<Inner>,
}

struct Inner {
    pve: PveClient,
    settings: HaSettings,
    publisher: Option<pvefleet_core::bus::Publisher>,
    /// Where the watchdog learns which containers a saga or a worker is acting on.
    db: Option<deadpool_postgres::Pool>,
    watchdog: std::sync::Mutex<watchdog::Memory>,
}

/// The tag every fleet container carries.
const FLEET_TAG: &str = "pvefleet";

fn sid(vmid: u32) -> String {
    format!("ct:{vmid}")
}

fn rule_name(vmid: u32) -> String {
    format!("pvefleet-{vmid}")
}

impl Ha {
    /// The service over a PVE client, with no alerts published and no database (so the
    /// watchdog starts nothing).
    pub fn new(pve: PveClient, settings: HaSettings) -> Self {
        Self::build(pve, settings, None, None)
    }

    /// The service, publishing the watchdog's alerts through `publisher`, and with `db` telling
    /// the watchdog which containers are being worked on.
    pub fn build(
        pve: PveClient,
        settings: HaSettings,
        publisher: Option<pvefleet_core::bus::Publisher>,
        db: Option<deadpool_postgres::Pool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pve,
                settings,
                publisher,
                db,
                watchdog: Default::default(),
            }),
        }
    }

    /// The router for the ha queue.
    pub fn router(&self) -> Router {
        Router::new()
            .command::<HaEnable, _>(self.clone())
            .command::<HaDisable, _>(self.clone())
    }

    /// Repairs drift every `ha.reconcile_interval` until `shutdown`.
    pub async fn reconcile_loop(&self, shutdown: CancellationToken) {
        let every = self.inner.settings.reconcile_interval.max(Duration::from_secs(1));
        pvefleet_core::periodic::Periodic::new("ha_reconcile", every)
            .at_once()
            .run(shutdown, || async {
                let r = self.reconcile().await?;
                if r.added + r.restarted + r.started + r.restart_loops > 0 {
                    tracing::info!(
                        added = r.added,
                        restarted = r.restarted,
                        started = r.started,
                        restart_loops = r.restart_loops,
                        "HA drift repaired."
                    );
                }
                Ok::<(), PveError>(())
            })
            .await
    }

    /// One reconcile pass.
    pub async fn reconcile(&self) -> Result<Repaired, PveError> {
        let me = &self.inner;
        let rows = me.pve.resources(Some(ResourceType::Vm)).await?;
        let wanted: Vec<u32> = rows
            .iter()
            .filter(|r| r.kind == "lxc" && r.tag_list().contains(&HA_TAG))
            .filter_map(|r| r.vmid.and_then(|v| u32::try_from(v).ok()))
            .collect();
        let existing = me.pve.ha_resources().await?;
        let mut repaired = Repaired::default();
        for vmid in wanted {
            match existing.iter().find(|r| r.sid == sid(vmid)) {
                None => {
                    me.pve.ha_resource_add(&sid(vmid), &me.spec("started")).await?;
                    repaired.added += 1;
                }
                Some(r) if !matches!(r.state.as_deref(), Some("started") | Some("enabled") | None) => {
                    me.pve
                        .ha_resource_update(&sid(vmid), &me.spec("started"), r.digest.as_deref())
                        .await?;
                    repaired.restarted += 1;
                }
                Some(_) => {}
            }
        }
        if me.settings.watchdog {
            self.watch(&rows, &existing, &mut repaired).await;
        }
        Ok(repaired)
    }
}

/// What a reconcile pass repaired.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Repaired {
    /// HA resources added for tagged containers.
    pub added: u32,
    /// Resources set back to `started`.
    pub restarted: u32,
    /// Stopped fleet containers the watchdog started.
    pub started: u32,
    /// Containers the watchdog gave up on (`restart_loop` alerts).
    pub restart_loops: u32,
}

impl Inner {
    fn spec(&self, state: &str) -> HaResourceSpec {
        HaResourceSpec {
            state: Some(state.into()),
            max_restart: Some(self.settings.max_restart),
            max_relocate: Some(self.settings.max_relocate),
            group: None,
            comment: Some("pvefleet".into()),
        }
    }

    /// Adds or removes the HA tag on the container, wherever it runs now.
    async fn tag(&self, vmid: u32, on: bool) -> Result<(), PveError> {
        let rows = self.pve.resources(Some(ResourceType::Vm)).await?;
        let Some(row) = rows.iter().find(|r| r.vmid == Some(u64::from(vmid))) else {
            return Ok(());
        };
        let node = row.node.clone().unwrap_or_default();
        let mut tags: Vec<String> = row
            .tag_list()
            .into_iter()
            .filter(|t| *t != HA_TAG)
            .map(str::to_string)
            .collect();
        if on {
            tags.push(HA_TAG.into());
        }
        if tags.iter().map(String::as_str).eq(row.tag_list()) {
            return Ok(());
        }
        let params = if tags.is_empty() {
            Params::new().set("delete", "tags")
        } else {
            Params::new().set("tags", tags.join(";"))
        };
        self.pve.lxc_set_config(&node, vmid, params, None).await
    }
}

#[async_trait]
impl Handler<HaEnable> for Ha {
    async fn handle(&self, cmd: HaEnable, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let pve8 = me.pve.version().await?.major() < 9;
        // PVE 8: place through a group, made from the configured nodes when the command names none.
        let mut spec = me.spec("started");
        if pve8 {
            let group = cmd
                .group
                .clone()
                .or_else(|| (!me.settings.nodes.is_empty()).then(|| me.settings.group.clone()));
            if let Some(g) = &group {
                let groups = me.pve.ha_groups().await?;
                if !groups.iter().any(|x| &x.group == g) {
                    if me.settings.nodes.is_empty() {
                        return Err(HandlerError::fail(
                            "ha.group_missing",
                            format!("HA group '{g}' does not exist and ha.nodes is empty"),
                        ));
                    }
                    let nodes: Vec<&str> = me.settings.nodes.iter().map(String::as_str).collect();
                    match me.pve.ha_group_create(g, &nodes, me.settings.strict, false).await {
                        Ok(()) => {}
                        Err(e) if e.reason == Reason::AlreadyExists => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            spec.group = group;
        }
        match me.pve.ha_resource_add(&sid(vmid), &spec).await {
            Ok(()) => {}
            Err(e) if e.reason == Reason::AlreadyExists => {
                let current = me.pve.ha_resource(&sid(vmid)).await?;
                (me.pve
                    .ha_resource_update(&sid(vmid), &spec, current.digest.as_deref())
                    .await)?;
            }
            Err(e) => return Err(e.into()),
        }
        // PVE 9: join the rule the command names, or place through a node-affinity rule of this
        // resource alone when nodes are configured.
        if !pve8 {
            let rules = me.pve.ha_rules().await?;
            if let Some(name) = &cmd.group {
                let Some(rule) = rules.iter().find(|r| &r.rule == name) else {
                    return Err(HandlerError::fail(
                        "ha.rule_missing",
                        format!("HA rule '{name}' does not exist"),
                    ));
                };
                let mut members: Vec<String> = rule
                    .resources
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(str::to_string)
                    .collect();
                if !members.contains(&sid(vmid)) {
                    members.push(sid(vmid));
                    let path = format!("/cluster/ha/rules/{}", pvefleet_proxmox::client::enc(name));
                    let params = Params::new()
                        .set("type", &rule.kind)
                        .set("resources", members.join(","))
                        .opt("digest", rule.digest.as_deref());
                    me.pve.put::<serde_json::Value>(&path, params).await?;
                }
            } else if !me.settings.nodes.is_empty() && !rules.iter().any(|r| r.rule == rule_name(vmid)) {
                let rule = HaRuleSpec::NodeAffinity {
                    resources: vec![sid(vmid)],
                    nodes: me.settings.nodes.clone(),
                    strict: me.settings.strict,
                };
                match me.pve.ha_rule_create(&rule_name(vmid), &rule).await {
                    Ok(()) => {}
                    Err(e) if e.reason == Reason::AlreadyExists => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        me.tag(vmid, true).await?;
        ctx.emit(&HaEnabled {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
        })
        .await
    }
}

#[async_trait]
impl Handler<HaDisable> for Ha {
    async fn handle(&self, cmd: HaDisable, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        // The tag first, so the reconciler does not put the resource back.
        me.tag(vmid, false).await?;
        let pve9 = me.pve.version().await?.major() >= 9;
        if pve9 {
            let rules = me.pve.ha_rules().await?;
            if rules.iter().any(|r| r.rule == rule_name(vmid)) {
                match me.pve.ha_rule_delete(&rule_name(vmid)).await {
                    Ok(()) => {}
                    Err(e) if e.reason == Reason::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let resources = me.pve.ha_resources().await?;
        if resources.iter().any(|r| r.sid == sid(vmid)) {
            match me.pve.ha_resource_delete(&sid(vmid), pve9.then_some(true)).await {
                Ok(()) => {}
                Err(e) if e.reason == Reason::NotFound || e.message.contains("not HA managed") => {}
                Err(e) => return Err(e.into()),
            }
        }
        ctx.emit(&HaDisabled {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
        })
        .await
    }
}

/// Runs the ha service until `shutdown`: the `pvefleet.ha` consumer and the reconciler; `db`
/// lets the watchdog see sagas and vmid locks.
pub async fn run(
    settings: &pvefleet_core::Settings,
    db: Option<deadpool_postgres::Pool>,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let worker = pvefleet_core::bus::Worker::fleet("ha", settings).ready(ready);
    if settings.ha.watchdog && db.is_none() {
        tracing::warn!(
            "The watchdog has no database, so it cannot tell which containers a saga is working on: it starts nothing."
        );
    }
    let ha = Ha::build(
        pvefleet_core::pve::client(&settings.pve)?,
        settings.ha.clone(),
        Some(worker.publisher().clone()),
        db,
    );
    let reconciler = tokio::spawn({
        let ha = ha.clone();
        let shutdown = shutdown.clone();
        async move { ha.reconcile_loop(shutdown).await }
    });
    let result = worker.run(ha.router(), shutdown).await;
    let _ = reconciler.await;
    result
}
