//! Acting on a decision: one config write with the digest just read (retried when another
//! writer got in between, verified by reading back), recorded with its cooldown and its
//! `container.scaled` event in one transaction.

use pvefleet_contracts::Vmid;
use pvefleet_contracts::messages::ContainerScaled;
use pvefleet_proxmox::client::{Params, PveClient, Reason};

use crate::decide::{Change, Decision};

use super::{Report, Scaler};

/// Writes tried per action when another writer changes the config in between.
const WRITE_ATTEMPTS: usize = 3;

impl Scaler {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn act(
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
            pvefleet_core::db::in_tx(client, async {
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
                    super::emit(client, &event).await?;
                }
                anyhow::Ok(())
            })
            .await?;
            if outcome == "scaled" || outcome == "would_scale" {
                tracing::info!(vmid, node, resource, from, to, outcome = %outcome, "Scaled.");
            } else {
                tracing::warn!(vmid, node, resource, from, to, outcome = %outcome, "Not scaled this tick.");
            }
            let label = outcome.split(':').next().unwrap_or("failed").to_string();
            metrics::counter!("pvefleet_autoscaler_writes_total", "resource" => resource, "outcome" => label.clone())
                .increment(1);
            if label != "scaled" && label != "would_scale" {
                metrics::counter!("pvefleet_autoscaler_refusals_total", "resource" => resource, "reason" => label)
                    .increment(1);
            }
            report.actions.push((vmid, resource, *from, *to, outcome));
        }
        Ok(())
    }
}

/// The container's `cpulimit`, when it has one (PVE's 0 is none).
pub(super) async fn cpulimit(pve: &PveClient, node: &str, vmid: u32) -> Option<f64> {
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
            Err(e) if e.message.contains("file changed by other user") => {
                metrics::counter!("pvefleet_autoscaler_write_conflicts_total", "key" => key.to_string()).increment(1);
                continue;
            }
            Err(e) if e.reason == Reason::Locked => return Err("locked: retried next tick".into()),
            Err(e) => return Err(format!("failed: {e}")),
        }
    }
    Err(format!(
        "failed: the config kept changing under {WRITE_ATTEMPTS} writes"
    ))
}
