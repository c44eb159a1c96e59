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
//! - The watchdog, in the same pass and from the same read: a fleet container (tag `pvefleet`)
//!   that is not HA-managed, not on hold (`pvefleet-hold`) and found stopped is started. At most
//!   `ha.watchdog_max_restarts` starts per container per hour; then it publishes a
//!   `resource.alert` of kind `restart_loop` and stops trying until it finds the container
//!   running again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pvefleet_contracts::StepError;
use pvefleet_contracts::messages::{HaDisable, HaDisabled, HaEnable, HaEnabled};
use pvefleet_core::bus::{Context, Handler, Outcome, Router};
use pvefleet_core::config::HaSettings;
use pvefleet_proxmox::client::api::ResourceType;
use pvefleet_proxmox::client::ha::{HaResourceSpec, HaRuleSpec};
use pvefleet_proxmox::client::{Params, PveClient, PveError, Reason};
use tokio_util::sync::CancellationToken;

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
    watchdog: std::sync::Mutex<Watchdog>,
}

/// The watchdog's memory: recent starts per container, and the ones it gave up on.
#[derive(Default)]
struct Watchdog {
    starts: std::collections::HashMap<u32, std::collections::VecDeque<std::time::Instant>>,
    gave_up: std::collections::HashSet<u32>,
}

/// The tag every fleet container carries.
const FLEET_TAG: &str = "pvefleet";

use pvefleet_core::pve::outcome as pve_outcome;

macro_rules! pve {
    ($step:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return pve_outcome($step, e),
        }
    };
}

fn sid(vmid: u32) -> String {
    format!("ct:{vmid}")
}

fn rule_name(vmid: u32) -> String {
    format!("pvefleet-{vmid}")
}

impl Ha {
    /// The service over a PVE client.
    pub fn new(pve: PveClient, settings: HaSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                pve,
                settings,
                publisher: None,
                watchdog: Default::default(),
            }),
        }
    }

    /// The service, publishing the watchdog's alerts through `publisher`.
    pub fn with_publisher(pve: PveClient, settings: HaSettings, publisher: pvefleet_core::bus::Publisher) -> Self {
        Self {
            inner: Arc::new(Inner {
                pve,
                settings,
                publisher: Some(publisher),
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
        let mut every = tokio::time::interval(self.inner.settings.reconcile_interval.max(Duration::from_secs(1)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            match self.reconcile().await {
                Ok(r) if r.added + r.restarted + r.started + r.restart_loops > 0 => {
                    tracing::info!(
                        added = r.added,
                        restarted = r.restarted,
                        started = r.started,
                        restart_loops = r.restart_loops,
                        "HA drift repaired."
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "HA reconcile failed; trying again next interval."),
            }
        }
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

    /// The watchdog's part of a pass.
    async fn watch(
        &self,
        rows: &[pvefleet_proxmox::client::api::Resource],
        ha: &[pvefleet_proxmox::client::ha::HaResource],
        repaired: &mut Repaired,
    ) {
        let me = &self.inner;
        let hour = Duration::from_secs(3600);
        for r in rows.iter().filter(|r| r.kind == "lxc") {
            let Some(vmid) = r.vmid.and_then(|v| u32::try_from(v).ok()) else {
                continue;
            };
            let tags = r.tag_list();
            let managed = tags.contains(&FLEET_TAG) && !tags.contains(&me.settings.watchdog_hold_tag.as_str());
            // HA's own (or about to be, by its tag): the HA manager starts it, not the watchdog.
            let ha_managed = r.hastate.is_some() || tags.contains(&HA_TAG) || ha.iter().any(|h| h.sid == sid(vmid));
            if r.status.as_deref() == Some("running") {
                if let Ok(mut w) = me.watchdog.lock() {
                    w.gave_up.remove(&vmid);
                }
                continue;
            }
            if !managed || ha_managed || r.status.as_deref() != Some("stopped") {
                continue;
            }
            let Some(node) = r.node.clone() else { continue };
            // Within the budget of starts for the last hour, or giving up now.
            let verdict = {
                let Ok(mut w) = me.watchdog.lock() else { continue };
                if w.gave_up.contains(&vmid) {
                    None
                } else {
                    let now = std::time::Instant::now();
                    let starts = w.starts.entry(vmid).or_default();
                    while starts.front().is_some_and(|t| now.duration_since(*t) > hour) {
                        starts.pop_front();
                    }
                    if starts.len() < me.settings.watchdog_max_restarts as usize {
                        starts.push_back(now);
                        Some(true)
                    } else {
                        w.gave_up.insert(vmid);
                        Some(false)
                    }
                }
            };
            match verdict {
                None => {}
                Some(true) => match me.pve.lxc_start(&node, vmid).await {
                    Ok(_) => {
                        repaired.started += 1;
                        tracing::warn!(vmid, node, "The watchdog started a stopped fleet container.");
                    }
                    Err(e) => tracing::warn!(vmid, node, error = %e, "The watchdog could not start a container."),
                },
                Some(false) => {
                    repaired.restart_loops += 1;
                    tracing::error!(
                        vmid,
                        node,
                        max = me.settings.watchdog_max_restarts,
                        "A fleet container keeps stopping; the watchdog gives up on it."
                    );
                    if let Some(p) = &me.publisher {
                        let alert = pvefleet_contracts::messages::ResourceAlert {
                            subject: format!("lxc/{vmid}"),
                            kind: "restart_loop".into(),
                            state: "raised".into(),
                            value: f64::from(me.settings.watchdog_max_restarts),
                            threshold: f64::from(me.settings.watchdog_max_restarts),
                        };
                        let origin = pvefleet_core::bus::outgoing::Origin {
                            app_id: Some("ha".into()),
                            ..Default::default()
                        };
                        match pvefleet_core::bus::Outgoing::message(&alert, &origin) {
                            Ok(out) => {
                                if let Err(e) = p.publish(&out).await {
                                    tracing::error!(vmid, error = %e, "Cannot publish the restart_loop alert.");
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "Cannot encode the restart_loop alert."),
                        }
                    }
                }
            }
        }
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
    async fn handle(&self, cmd: HaEnable, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let pve8 = pve!("ha.enable", me.pve.version().await).major() < 9;
        // PVE 8: place through a group, made from the configured nodes when the command names none.
        let mut spec = me.spec("started");
        if pve8 {
            let group = cmd
                .group
                .clone()
                .or_else(|| (!me.settings.nodes.is_empty()).then(|| me.settings.group.clone()));
            if let Some(g) = &group {
                let groups = pve!("ha.enable", me.pve.ha_groups().await);
                if !groups.iter().any(|x| &x.group == g) {
                    if me.settings.nodes.is_empty() {
                        return Outcome::Fail(StepError::new(
                            "ha.group_missing",
                            format!("HA group '{g}' does not exist and ha.nodes is empty"),
                        ));
                    }
                    let nodes: Vec<&str> = me.settings.nodes.iter().map(String::as_str).collect();
                    match me.pve.ha_group_create(g, &nodes, me.settings.strict, false).await {
                        Ok(()) => {}
                        Err(e) if e.reason == Reason::AlreadyExists => {}
                        Err(e) => return pve_outcome("ha.enable", e),
                    }
                }
            }
            spec.group = group;
        }
        match me.pve.ha_resource_add(&sid(vmid), &spec).await {
            Ok(()) => {}
            Err(e) if e.reason == Reason::AlreadyExists => {
                let current = pve!("ha.enable", me.pve.ha_resource(&sid(vmid)).await);
                pve!(
                    "ha.enable",
                    me.pve
                        .ha_resource_update(&sid(vmid), &spec, current.digest.as_deref())
                        .await
                );
            }
            Err(e) => return pve_outcome("ha.enable", e),
        }
        // PVE 9: join the rule the command names, or place through a node-affinity rule of this
        // resource alone when nodes are configured.
        if !pve8 {
            let rules = pve!("ha.enable", me.pve.ha_rules().await);
            if let Some(name) = &cmd.group {
                let Some(rule) = rules.iter().find(|r| &r.rule == name) else {
                    return Outcome::Fail(StepError::new(
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
                    pve!("ha.enable", me.pve.put::<serde_json::Value>(&path, params).await);
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
                    Err(e) => return pve_outcome("ha.enable", e),
                }
            }
        }
        pve!("ha.enable", me.tag(vmid, true).await);
        ctx.emit(&HaEnabled {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
        })
        .await
    }
}

#[async_trait]
impl Handler<HaDisable> for Ha {
    async fn handle(&self, cmd: HaDisable, ctx: &Context<'_>) -> Outcome {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        // The tag first, so the reconciler does not put the resource back.
        pve!("ha.disable", me.tag(vmid, false).await);
        let pve9 = pve!("ha.disable", me.pve.version().await).major() >= 9;
        if pve9 {
            let rules = pve!("ha.disable", me.pve.ha_rules().await);
            if rules.iter().any(|r| r.rule == rule_name(vmid)) {
                match me.pve.ha_rule_delete(&rule_name(vmid)).await {
                    Ok(()) => {}
                    Err(e) if e.reason == Reason::NotFound => {}
                    Err(e) => return pve_outcome("ha.disable", e),
                }
            }
        }
        let resources = pve!("ha.disable", me.pve.ha_resources().await);
        if resources.iter().any(|r| r.sid == sid(vmid)) {
            match me.pve.ha_resource_delete(&sid(vmid), pve9.then_some(true)).await {
                Ok(()) => {}
                Err(e) if e.reason == Reason::NotFound || e.message.contains("not HA managed") => {}
                Err(e) => return pve_outcome("ha.disable", e),
            }
        }
        ctx.emit(&HaDisabled {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
        })
        .await
    }
}

/// Runs the ha service until `shutdown`: the `pvefleet.ha` consumer and the reconciler.
pub async fn run(
    settings: &pvefleet_core::Settings,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use pvefleet_core::bus::runner::{WorkerDeps, WorkerSpec, run_worker};
    let topology = pvefleet_core::bus::topology::Topology::fleet(&settings.bus);
    let publisher = pvefleet_core::bus::Publisher::new(&settings.bus, "ha", Some(topology.clone()));
    let ha = Ha::with_publisher(
        pvefleet_core::pve::client(&settings.pve)?,
        settings.ha.clone(),
        publisher.clone(),
    );
    let queue = pvefleet_contracts::routing::work_queue("ha");
    let spec = WorkerSpec::from_settings("ha", &queue, settings);
    let deps = WorkerDeps {
        bus: settings.bus.clone(),
        topology,
        publisher,
        db: None,
        ready,
    };
    let reconciler = tokio::spawn({
        let ha = ha.clone();
        let shutdown = shutdown.clone();
        async move { ha.reconcile_loop(shutdown).await }
    });
    let result = run_worker(deps, ha.router(), spec, shutdown).await;
    let _ = reconciler.await;
    result
}
