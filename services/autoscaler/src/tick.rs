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

use std::collections::HashMap;

use pvefleet_core::config::AutoscalerSettings;
use pvefleet_proxmox::client::PveClient;
use pvefleet_proxmox::client::api::Resource;

use crate::decide::{self, Container, Cooldown, Node, Wanted};
use crate::window::{Sample, Window};

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
}

/// The autoscaler's state between ticks: the sample windows.
#[derive(Default)]
pub struct Scaler {
    windows: HashMap<u32, Window>,
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

impl Scaler {
    /// Runs one tick.
    pub async fn tick(
        &mut self,
        pve: &PveClient,
        pool: &deadpool_postgres::Pool,
        s: &AutoscalerSettings,
    ) -> anyhow::Result<Report> {
        let lock = pool.get().await?;
        let leader: bool = lock
            .query_one("SELECT pg_try_advisory_lock($1, 0)", &[&LEADER_CLASS])
            .await?
            .get(0);
        if !leader {
            return Ok(Report::default());
        }
        let result = self.lead(pve, pool, s).await;
        let _ = lock.execute("SELECT pg_advisory_unlock($1, 0)", &[&LEADER_CLASS]).await;
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
        // Nodes, with the memory their guests are allowed.
        let mut allocated: HashMap<String, u64> = HashMap::new();
        for r in rows.iter().filter(|r| r.kind == "lxc" || r.kind == "qemu") {
            *allocated.entry(r.node.clone().unwrap_or_default()).or_default() += r.maxmem.unwrap_or(0) / MIB;
        }
        let nodes: HashMap<String, Node> = rows
            .iter()
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
            .collect();
        let client = pool.get().await?;
        let cooldowns: HashMap<(i32, String), u64> = client
            .query(
                "SELECT vmid, resource, ceil(extract(epoch FROM until - now()))::bigint FROM autoscale_cooldowns WHERE until > now()",
                &[],
            )
            .await?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), u64::try_from(r.get::<_, i64>(2)).unwrap_or(0)))
            .collect();
        let policies = crate::policies::Policies::load(&client, &s.policy).await?;
        let deciding = std::time::Instant::now();
        let mut context: HashMap<u32, (Node, Cooldown)> = HashMap::new();
        // Every container sampled this tick, full window or not: their windows are kept.
        let mut observed = std::collections::HashSet::new();
        let mut wanted = Vec::new();
        let mut inputs: HashMap<u32, (String, Container, pvefleet_core::config::AutoscalePolicy)> = HashMap::new();
        for r in rows
            .iter()
            .filter(|r| r.kind == "lxc" && r.status.as_deref() == Some("running"))
        {
            let Some(vmid) = r.vmid.and_then(|v| u32::try_from(v).ok()) else {
                continue;
            };
            let tags = r.tags.as_deref().unwrap_or_default();
            if tags.split([';', ',', ' ']).any(|t| t == s.opt_out_tag) {
                continue;
            }
            let Some(node_name) = r.node.clone() else { continue };
            let Some(node) = nodes.get(&node_name) else { continue };
            let tag_list = r.tag_list();
            let p = policies.resolve(vmid, &tag_list, &s.policy);
            if !p.enabled {
                continue;
            }
            report.containers += 1;
            let maxcpu = r.maxcpu.unwrap_or(1.0);
            let w = self
                .windows
                .entry(vmid)
                .or_insert_with(|| Window::new(p.evaluation_periods));
            w.resize(p.evaluation_periods);
            w.push(Sample {
                key: sample_key(r),
                cpu_cores: r.cpu.unwrap_or(0.0) * maxcpu,
                mem_mb: r.mem.unwrap_or(0) as f64 / MIB as f64,
            });
            observed.insert(vmid);
            let Some(avg) = w.averages() else { continue };
            let c = Container {
                cores: maxcpu.round() as u32,
                cpulimit: None,
                memory_mb: r.maxmem.unwrap_or(0) / MIB,
                cpu_cores: avg.cpu_cores,
                mem_mb: avg.mem_mb,
                mem_peak_mb: avg.mem_peak_mb,
            };
            let vm = vmid as i32;
            let cd = Cooldown {
                cpu_secs: cooldowns.get(&(vm, "cpu".to_string())).copied().unwrap_or(0),
                memory_secs: cooldowns.get(&(vm, "memory".to_string())).copied().unwrap_or(0),
            };
            let decision = decide::decide(p, &s.safety, &c, node, cd);
            inputs.insert(vmid, (node_name.clone(), c, p.clone()));
            context.insert(vmid, (*node, cd));
            wanted.push(Wanted { vmid, decision });
        }
        let (go, wait) = decide::plan(&wanted, s.safety.max_concurrent, 0);
        report.decide_time = deciding.elapsed();
        report.alerts = alerts(&client, s, &rows).await?;
        report.waiting = wait;
        for w in wanted.iter().filter(|w| go.contains(&w.vmid)) {
            let Some((node, c, p)) = inputs.get(&w.vmid) else {
                continue;
            };
            let mut decision = w.decision.clone();
            // The cluster read does not show `cpulimit`; a container about to get cores has its
            // config read (the write needs its digest anyway), and with a limit the CPU is
            // decided again against it.
            if decision.cores.scales()
                && let Some((n, cd)) = context.get(&w.vmid)
                && let Some(limit) = cpulimit(pve, node, w.vmid).await
            {
                let limited = Container {
                    cpulimit: Some(limit),
                    ..*c
                };
                decision.cores = decide::decide(p, &s.safety, &limited, n, *cd).cores;
            }
            self.act(pve, pool, &client, p, w.vmid, node, &decision, &mut report)
                .await?;
        }
        // Windows of containers no longer seen are dropped.
        self.windows.retain(|vmid, _| observed.contains(vmid));
        Ok(report)
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
