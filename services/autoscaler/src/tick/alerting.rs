//! `resource.alert`s: raised and cleared once per crossing for running containers and online
//! nodes, kept in `resource_alerts`.

use pvefleet_core::config::AutoscalerSettings;
use pvefleet_proxmox::client::api::Resource;

fn ratio(used: Option<u64>, total: Option<u64>) -> Option<f64> {
    let total = total.filter(|t| *t > 0)?;
    Some(used.unwrap_or(0) as f64 / total as f64 * 100.0)
}

/// Raises and clears `resource.alert`s for running containers and online nodes: once per
/// crossing, kept in `resource_alerts` so a restart or another replica does not raise again.
pub(super) async fn alerts(
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
        pvefleet_core::db::in_tx(client, async {
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
                node: rows.iter().find(|r| r.id == *subject).and_then(|r| r.node.clone()),
            };
            super::emit(client, &event).await?;
            anyhow::Ok(())
        })
        .await?;
        tracing::warn!(subject = %subject, resource, value, threshold, state, "Resource alert.");
    }
    Ok(edges)
}
