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

use pvefleet_contracts::Vmid;
use pvefleet_contracts::messages::ContainerScaled;
use pvefleet_core::bus::Outgoing;
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::config::AutoscalerSettings;
use pvefleet_proxmox::client::api::Resource;
use pvefleet_proxmox::client::{Params, PveClient, Reason};

use crate::decide::{self, Change, Container, Cooldown, Decision, Node, Wanted};
use crate::window::{Sample, Window};

/// The advisory lock class of the autoscaler's leadership.
const LEADER_CLASS: i32 = 0x7061_7300; // "pas\0"
/// Writes tried per action when another writer changes the config in between.
const WRITE_ATTEMPTS: usize = 3;

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

    #[allow(clippy::too_many_arguments)]
    async fn act(
        &self,
        pve: &PveClient,
        pool: &deadpool_postgres::Pool,
        client: &tokio_postgres::Client,
        policy: &pvefleet_core::config::AutoscalePolicy,
        vmid: u32,
        node: &str,
        d: &Decision,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        for (resource, key, change) in [("cpu", "cores", &d.cores), ("memory", "memory", &d.memory)] {
            let Change::Scale {
                from, to, emergency, ..
            } = change
            else {
                continue;
            };
            let outcome = if policy.dry_run {
                "would_scale".to_string()
            } else {
                match write(pve, Some(pool), node, vmid, key, *to).await {
                    Ok(()) => "scaled".to_string(),
                    Err(e) => e,
                }
            };
            // The action, its cooldown and its `container.scaled` (through the outbox) commit together.
            client.batch_execute("BEGIN").await?;
            let recorded = async {
                client
                    .execute(
                        "INSERT INTO autoscale_actions (vmid, node, resource, from_value, to_value, outcome, emergency)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[&(vmid as i32), &node, &resource, &(*from as i64), &(*to as i64), &outcome, emergency],
                    )
                    .await?;
                if outcome == "scaled" || outcome == "would_scale" {
                    // The cooldown starts for a dry run too, or it would decide the same every tick.
                    client
                        .execute(
                            "INSERT INTO autoscale_cooldowns (vmid, resource, until) VALUES ($1, $2, now() + $3 * interval '1 second')
                             ON CONFLICT (vmid, resource) DO UPDATE SET until = excluded.until",
                            &[&(vmid as i32), &resource, &(policy.cooldown_secs as f64)],
                        )
                        .await?;
                    let event = ContainerScaled {
                        vmid: Vmid(vmid),
                        node: node.to_string(),
                        resource: resource.to_string(),
                        from: *from,
                        to: *to,
                        outcome: outcome.clone(),
                        emergency: *emergency,
                    };
                    let origin = Origin {
                        app_id: Some("autoscaler".into()),
                        ..Origin::default()
                    };
                    pvefleet_core::db::outbox::enqueue(client, &Outgoing::message(&event, &origin)?).await?;
                }
                anyhow::Ok(())
            }
            .await;
            match recorded {
                Ok(()) => client.batch_execute("COMMIT").await?,
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(e);
                }
            }
            if outcome == "scaled" || outcome == "would_scale" {
                tracing::info!(vmid, node, resource, from, to, outcome = %outcome, "Scaled.");
            } else {
                tracing::warn!(vmid, node, resource, from, to, outcome = %outcome, "Not scaled this tick.");
            }
            report.actions.push((vmid, resource, *from, *to, outcome));
        }
        Ok(())
    }
}

/// The container's `cpulimit`, when it has one (PVE's 0 is none).
async fn cpulimit(pve: &PveClient, node: &str, vmid: u32) -> Option<f64> {
    let config = pve.lxc_config(node, vmid, false).await.ok()?;
    let v = config.get("cpulimit")?;
    let limit = v.as_f64().or_else(|| v.as_str()?.parse().ok())?;
    (limit > 0.0).then_some(limit)
}

/// Sets one config key with the digest just read, retrying when another writer got in
/// between; reads back to verify. With a pool, it holds the per-vmid lock the provisioner and
/// nethotplug take, so their read-modify-write cycles do not interleave with this one. An
/// error is the outcome to record.
pub async fn write(
    pve: &PveClient,
    locks: Option<&deadpool_postgres::Pool>,
    node: &str,
    vmid: u32,
    key: &str,
    to: u64,
) -> Result<(), String> {
    let _lock = match locks {
        Some(pool) => Some(
            pvefleet_core::db::VmidLock::acquire(pool, vmid, std::time::Duration::from_secs(30))
                .await
                .map_err(|e| format!("locked: cannot lock vmid {vmid}: {e:#}"))?,
        ),
        None => None,
    };
    for _ in 0..WRITE_ATTEMPTS {
        let config = pve
            .lxc_config(node, vmid, false)
            .await
            .map_err(|e| format!("failed: {e}"))?;
        if config.get("lock").is_some() {
            return Err("locked: retried next tick".into());
        }
        let digest = config.get("digest").and_then(|d| d.as_str()).map(str::to_string);
        match pve
            .lxc_set_config(node, vmid, Params::new().set(key, to), digest.as_deref())
            .await
        {
            Ok(()) => {
                let back = pve
                    .lxc_config(node, vmid, false)
                    .await
                    .map_err(|e| format!("failed: cannot read back: {e}"))?;
                let now = back
                    .get(key)
                    .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
                return if now == Some(to) {
                    Ok(())
                } else {
                    Err(format!("failed: {key} reads back as {now:?}, not {to}"))
                };
            }
            Err(e) if e.message.contains("file changed by other user") => continue,
            Err(e) if e.reason == Reason::Locked => return Err("locked: retried next tick".into()),
            Err(e) => return Err(format!("failed: {e}")),
        }
    }
    Err(format!(
        "failed: the config kept changing under {WRITE_ATTEMPTS} writes"
    ))
}

fn ratio(used: Option<u64>, total: Option<u64>) -> Option<f64> {
    let total = total.filter(|t| *t > 0)?;
    Some(used.unwrap_or(0) as f64 / total as f64 * 100.0)
}

/// Raises and clears `resource.alert`s for running containers and online nodes: once per
/// crossing, kept in `resource_alerts` so a restart or another replica does not raise again.
async fn alerts(
    client: &tokio_postgres::Client,
    s: &AutoscalerSettings,
    rows: &[Resource],
) -> anyhow::Result<Vec<crate::alerts::Edge>> {
    use crate::alerts::{Edge, check};
    let mut raised: std::collections::HashSet<crate::alerts::Key> = client
        .query("SELECT subject, resource FROM resource_alerts", &[])
        .await?
        .iter()
        .filter_map(|r| {
            let resource: String = r.get(1);
            let resource: &'static str = match resource.as_str() {
                "cpu" => "cpu",
                "memory" => "memory",
                "disk" => "disk",
                _ => return None,
            };
            Some((r.get::<_, String>(0), resource))
        })
        .collect();
    let mut edges = Vec::new();
    for r in rows {
        let watched = (r.kind == "lxc" && r.status.as_deref() == Some("running"))
            || (r.kind == "node" && r.status.as_deref() == Some("online"));
        if !watched {
            continue;
        }
        let readings = [
            ("cpu", r.cpu.map(|c| c * 100.0)),
            ("memory", ratio(r.mem, r.maxmem)),
            ("disk", ratio(r.disk, r.maxdisk)),
        ];
        for (resource, value) in readings {
            if let Some(v) = value
                && let Some(edge) = check(&s.alerts, &mut raised, &r.id, resource, v)
            {
                edges.push(edge);
            }
        }
    }
    for edge in &edges {
        let (subject, resource, value, threshold, state) = match edge {
            Edge::Raised {
                subject,
                resource,
                value,
                threshold,
            } => (subject, resource, value, threshold, "raised"),
            Edge::Cleared {
                subject,
                resource,
                value,
                threshold,
            } => (subject, resource, value, threshold, "cleared"),
        };
        client.batch_execute("BEGIN").await?;
        let done = async {
            if state == "raised" {
                client
                    .execute(
                        "INSERT INTO resource_alerts (subject, resource) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[subject, resource],
                    )
                    .await?;
            } else {
                client
                    .execute(
                        "DELETE FROM resource_alerts WHERE subject = $1 AND resource = $2",
                        &[subject, resource],
                    )
                    .await?;
            }
            let event = pvefleet_contracts::messages::ResourceAlert {
                subject: subject.clone(),
                kind: resource.to_string(),
                state: state.to_string(),
                value: (value * 10.0).round() / 10.0,
                threshold: *threshold,
            };
            let origin = Origin {
                app_id: Some("autoscaler".into()),
                ..Origin::default()
            };
            pvefleet_core::db::outbox::enqueue(client, &Outgoing::message(&event, &origin)?).await?;
            anyhow::Ok(())
        }
        .await;
        match done {
            Ok(()) => client.batch_execute("COMMIT").await?,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
        tracing::warn!(subject = %subject, resource, value, threshold, state, "Resource alert.");
    }
    Ok(edges)
}
