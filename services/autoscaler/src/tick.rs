//! One autoscaler tick: one `GET /cluster/resources` for guests and nodes together, the
//! windows updated, a decision per running container, the plan under the concurrency limit,
//! and the actions.
//!
//! Only one autoscaler acts at a time: a tick runs under a Postgres advisory lock, and a
//! replica that cannot take it skips the tick. Cooldowns live in Postgres, so they survive
//! restarts and are shared. An action is one config PUT with the `digest` just read: a
//! conflicting writer makes PVE refuse it, and the autoscaler reads again and retries, never
//! overwriting the other change (it writes only the key it scales). A locked container waits
//! for the next tick. The config is read back to verify, and the result is recorded in
//! `autoscale_actions` with its `container.scaled` event, through the outbox.

use std::collections::{BTreeMap, HashMap, HashSet};

use pvefleet_core::config::{AutoscalerSettings, Plan};
use pvefleet_policy::autoscale::Policies;
use pvefleet_proxmox::client::PveClient;
use pvefleet_proxmox::client::api::Resource;

use crate::decide::{Change, Cooldown, Node, Sold};
use crate::engine::{self, Engine, Observed, Verdict, World};
use crate::window::Sample;

mod act;
mod alerting;

pub use act::write;

use act::cpulimit;
use alerting::alerts;

/// The advisory lock class of the autoscaler's leadership.
const LEADER_CLASS: i32 = 0x7061_7300; // "pas\0"

/// What a tick did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// False when another replica held the lock: nothing was read or done.
    pub leader: bool,
    /// PVE reads made for the decisions (the resources read).
    pub cluster_reads: usize,
    /// Containers looked at.
    pub containers: usize,
    /// (vmid, resource, from, to, outcome) of each action taken or recorded.
    pub actions: Vec<(u32, &'static str, u64, u64, String)>,
    /// Containers that wanted to act but wait for a free slot.
    pub waiting: Vec<u32>,
    /// Time spent updating windows and deciding, after the read.
    pub decide_time: std::time::Duration,
    /// Alerts raised or cleared this tick.
    pub alerts: Vec<crate::alerts::Edge>,
    /// What was concluded for each container seen, by vmid.
    pub verdicts: Vec<(u32, Verdict)>,
}

/// The autoscaler's state between ticks: the sample windows, and the plans sites are sold by.
#[derive(Default)]
pub struct Scaler {
    engine: Engine,
    plans: BTreeMap<String, Plan>,
}

fn sample_key(r: &Resource) -> u64 {
    // PVE refreshes a guest's figures together; the same counters are the same sample.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in [
        r.cpu.unwrap_or(0.0).to_bits(),
        r.mem.unwrap_or(0),
        r.netin.unwrap_or(0),
        r.netout.unwrap_or(0),
        r.uptime.unwrap_or(0),
    ] {
        h ^= v;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const MIB: u64 = 1024 * 1024;

/// What a site was sold, from its stored request: the sizes it asked for, else its plan's
/// (from `[saga.plans]`), each on its own.
pub fn sold(spec: &serde_json::Value, plans: &BTreeMap<String, Plan>) -> Option<Sold> {
    let plan_name = spec.get("plan").and_then(|p| p.as_str());
    let plan = plan_name.and_then(|n| plans.get(n));
    let asked = |k: &str| spec.get(k).and_then(|v| v.as_u64());
    let cores = asked("cores").or(plan.map(|p| u64::from(p.cores)))?;
    let memory_mb = asked("memory_mb").or(plan.map(|p| u64::from(p.memory_mb)))?;
    let from = match (plan_name, asked("cores").is_some() || asked("memory_mb").is_some()) {
        (Some(n), false) => format!("plan {n}"),
        (Some(n), true) => format!("plan {n} with requested sizes"),
        (None, _) => "requested sizes".to_string(),
    };
    Some(Sold {
        cores: u32::try_from(cores).unwrap_or(u32::MAX),
        memory_mb,
        from: from.into(),
    })
}

/// The sizes sold to every live site with a container, by vmid.
pub async fn sold_by_vmid(
    client: &tokio_postgres::Client,
    plans: &BTreeMap<String, Plan>,
) -> anyhow::Result<HashMap<u32, Sold>> {
    let mut sources: HashMap<std::sync::Arc<str>, std::sync::Arc<str>> = HashMap::new();
    Ok(client
        .query(
            "SELECT vmid, spec FROM sites WHERE vmid IS NOT NULL AND state NOT IN ('failed', 'rejected', 'deleted')",
            &[],
        )
        .await?
        .iter()
        .filter_map(|r| {
            let vmid = u32::try_from(r.get::<_, i32>(0)).ok()?;
            let mut s = sold(&r.get(1), plans)?;
            // Sites of one plan share its source text.
            s.from = sources.entry(s.from.clone()).or_insert_with(|| s.from.clone()).clone();
            Some((vmid, s))
        })
        .collect())
}

/// Online nodes from a cluster read, with the memory their guests are allowed.
pub fn nodes(rows: &[Resource]) -> HashMap<String, Node> {
    let mut allocated: HashMap<String, u64> = HashMap::new();
    for r in rows.iter().filter(|r| r.kind == "lxc" || r.kind == "qemu") {
        *allocated.entry(r.node.clone().unwrap_or_default()).or_default() += r.maxmem.unwrap_or(0) / MIB;
    }
    rows.iter()
        .filter(|r| r.kind == "node" && r.status.as_deref() == Some("online"))
        .filter_map(|r| {
            let name = r.node.clone()?;
            Some((
                name.clone(),
                Node {
                    cpus: r.maxcpu.unwrap_or(1.0) as u32,
                    cpu_pct: r.cpu.unwrap_or(0.0) * 100.0,
                    memory_mb: r.maxmem.unwrap_or(0) / MIB,
                    memory_used_mb: r.mem.unwrap_or(0) / MIB,
                    memory_allocated_mb: allocated.get(&name).copied().unwrap_or(0),
                },
            ))
        })
        .collect()
}

/// A container of a cluster read as the decision sees it (`cpulimit` unknown: the read does
/// not show it).
pub fn observed(r: &Resource, sold: Option<&Sold>) -> Option<Observed> {
    let vmid = r.vmid.and_then(|v| u32::try_from(v).ok())?;
    let maxcpu = r.maxcpu.unwrap_or(1.0);
    Some(Observed {
        vmid,
        node: r.node.clone()?,
        status: r.status.clone().unwrap_or_else(|| "unknown".into()),
        lock: r.lock.clone().filter(|l| !l.is_empty()),
        tags: r.tag_list().into_iter().map(str::to_string).collect(),
        cores: maxcpu.round() as u32,
        cpulimit: None,
        memory_mb: r.maxmem.unwrap_or(0) / MIB,
        sample: Sample {
            key: sample_key(r),
            cpu_cores: r.cpu.unwrap_or(0.0) * maxcpu,
            mem_mb: r.mem.unwrap_or(0) as f64 / MIB as f64,
        },
        sold: sold.cloned(),
    })
}

impl Scaler {
    /// A scaler that knows the plans sites are sold by (`[saga.plans]`): a site's plan is its
    /// floor.
    pub fn with_plans(plans: BTreeMap<String, Plan>) -> Self {
        Self {
            plans,
            ..Self::default()
        }
    }

    /// Runs one tick.
    pub async fn tick(
        &mut self,
        pve: &PveClient,
        pool: &deadpool_postgres::Pool,
        s: &AutoscalerSettings,
    ) -> anyhow::Result<Report> {
        let started = std::time::Instant::now();
        let lock = pool.get().await?;
        let leader: bool = lock
            .query_one("SELECT pg_try_advisory_lock($1, 0)", &[&LEADER_CLASS])
            .await?
            .get(0);
        if !leader {
            metrics::counter!("pvefleet_autoscaler_ticks_total", "outcome" => "follower").increment(1);
            return Ok(Report::default());
        }
        let result = self.lead(pve, pool, s).await;
        let _ = lock.execute("SELECT pg_advisory_unlock($1, 0)", &[&LEADER_CLASS]).await;
        metrics::counter!("pvefleet_autoscaler_ticks_total", "outcome" => if result.is_ok() { "ok" } else { "error" })
            .increment(1);
        metrics::histogram!("pvefleet_autoscaler_tick_duration_seconds").record(started.elapsed().as_secs_f64());
        if let Ok(report) = &result {
            record_metrics(report);
        }
        result
    }

    async fn lead(
        &mut self,
        pve: &PveClient,
        pool: &deadpool_postgres::Pool,
        s: &AutoscalerSettings,
    ) -> anyhow::Result<Report> {
        let mut report = Report {
            leader: true,
            cluster_reads: 1,
            ..Report::default()
        };
        let rows = pve.resources(None).await?;
        let nodes = nodes(&rows);
        let client = pool.get().await?;
        let mut cooldowns: HashMap<u32, Cooldown> = HashMap::new();
        for r in client
            .query(
                "SELECT vmid, resource, ceil(extract(epoch FROM until - now()))::bigint FROM autoscale_cooldowns WHERE until > now()",
                &[],
            )
            .await?
        {
            let (Ok(vmid), resource, secs) = (
                u32::try_from(r.get::<_, i32>(0)),
                r.get::<_, String>(1),
                u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
            ) else {
                continue;
            };
            let cd = cooldowns.entry(vmid).or_default();
            match resource.as_str() {
                "cpu" => cd.cpu_secs = secs,
                "memory" => cd.memory_secs = secs,
                _ => {}
            }
        }
        let policies = Policies::load(&client).await?;
        let sold = sold_by_vmid(&client, &self.plans).await?;
        let world = World::new(&nodes, &cooldowns, &policies, s);
        let deciding = std::time::Instant::now();
        let guests = rows.iter().filter(|r| r.kind == "lxc").count();
        let mut seen: Vec<Observed> = Vec::with_capacity(guests);
        let mut verdicts: Vec<(u32, Verdict)> = Vec::with_capacity(guests);
        for r in rows.iter().filter(|r| r.kind == "lxc") {
            let Some(o) = observed(r, r.vmid.and_then(|v| u32::try_from(v).ok()).and_then(|v| sold.get(&v))) else {
                continue;
            };
            let v = self.engine.evaluate(&o, &world);
            verdicts.push((o.vmid, v));
            seen.push(o);
        }
        report.decide_time = deciding.elapsed();
        // The cluster read does not show `cpulimit`: a container about to change cores has its
        // config read (the write needs its digest anyway) and is decided again with it.
        for (i, (vmid, v)) in verdicts.iter_mut().enumerate() {
            let Verdict::Decided { decision, .. } = v else { continue };
            if !decision.cores.scales() {
                continue;
            }
            let Some(o) = seen.get_mut(i) else { continue };
            if let Some(limit) = cpulimit(pve, &o.node, *vmid).await {
                o.cpulimit = Some(limit);
                *v = self.engine.evaluate(o, &world);
            }
        }
        let (go, wait) = engine::plan(&verdicts, s.safety.max_concurrent);
        report.alerts = alerts(&client, s, &rows).await?;
        report.waiting = wait;
        report.containers = verdicts
            .iter()
            .filter(|(_, v)| !matches!(v, Verdict::Skipped(_)))
            .count();
        for (vmid, v) in &verdicts {
            let Verdict::Decided { policy, decision, .. } = v else {
                continue;
            };
            if !go.contains(vmid) {
                continue;
            }
            let Some(o) = seen.iter().find(|o| o.vmid == *vmid) else {
                continue;
            };
            self.act(
                pve,
                pool,
                &client,
                &policy.policy,
                *vmid,
                &o.node,
                decision,
                &mut report,
            )
            .await?;
        }
        // Windows of containers no longer watched are dropped.
        let kept: HashSet<u32> = verdicts
            .iter()
            .filter(|(_, v)| !matches!(v, Verdict::Skipped(_)))
            .map(|(vmid, _)| *vmid)
            .collect();
        self.engine.retain(&kept);
        report.verdicts = verdicts;
        Ok(report)
    }
}

/// The tick's metrics: decisions by resource, kind and reason; containers watched and waiting;
/// alerts raised and cleared. Writes, conflicts and refusals are counted where they happen.
fn record_metrics(report: &Report) {
    metrics::gauge!("pvefleet_autoscaler_containers_watched").set(report.containers as f64);
    metrics::gauge!("pvefleet_autoscaler_containers_waiting").set(report.waiting.len() as f64);
    metrics::gauge!("pvefleet_autoscaler_last_tick_timestamp_seconds").set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    for (_, v) in &report.verdicts {
        match v {
            Verdict::Decided { decision, .. } => {
                for (resource, change) in [("cpu", &decision.cores), ("memory", &decision.memory)] {
                    let (kind, reason) = match change {
                        Change::Scale { up: true, .. } => ("scale_up", "threshold"),
                        Change::Scale { .. } => ("scale_down", "threshold"),
                        Change::Hold(why) => ("hold", *why),
                    };
                    metrics::counter!("pvefleet_autoscaler_decisions_total", "resource" => resource, "kind" => kind, "reason" => reason)
                        .increment(1);
                }
            }
            Verdict::Collecting => {
                metrics::counter!("pvefleet_autoscaler_decisions_total", "resource" => "all", "kind" => "collecting", "reason" => "window not full")
                    .increment(1);
            }
            Verdict::Skipped(why) => {
                // The reason's kind, not its text (which names locks and layers).
                let reason = why.split([' ', '(']).take(2).collect::<Vec<_>>().join(" ");
                metrics::counter!("pvefleet_autoscaler_decisions_total", "resource" => "all", "kind" => "skip", "reason" => reason.trim().to_string())
                    .increment(1);
            }
        }
    }
    for edge in &report.alerts {
        let (resource, edge) = match edge {
            crate::alerts::Edge::Raised { resource, .. } => (*resource, "raised"),
            crate::alerts::Edge::Cleared { resource, .. } => (*resource, "cleared"),
        };
        metrics::counter!("pvefleet_autoscaler_alerts_total", "resource" => resource, "edge" => edge).increment(1);
    }
}

/// Queues the autoscaler's event `event` in the outbox, in the caller's transaction.
async fn emit<M: pvefleet_contracts::Message>(client: &tokio_postgres::Client, event: &M) -> anyhow::Result<()> {
    let origin = pvefleet_core::bus::outgoing::Origin {
        app_id: Some("autoscaler".into()),
        ..Default::default()
    };
    let out = pvefleet_core::bus::Outgoing::message(event, &origin)?;
    pvefleet_core::db::outbox::enqueue(client, &out).await?;
    Ok(())
}
