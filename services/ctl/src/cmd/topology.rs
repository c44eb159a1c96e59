//! `pvefleet topology declare|show`.

use std::process::ExitCode;

use pvefleet_core::Settings;
use pvefleet_core::bus::Topology;
use pvefleet_core::bus::probe::Probe;

use crate::cli::TopologyAction;

pub async fn run(settings: &Settings, action: TopologyAction) -> anyhow::Result<ExitCode> {
    let topology = Topology::fleet(&settings.bus);
    match action {
        TopologyAction::Declare => {
            let probe = Probe::connect_with(&settings.bus).await?;
            probe.declare(&topology).await?;
            probe.close();
            let plan = topology.plan();
            println!(
                "Declared 3 exchanges, {} wait tiers and {} queues on {}.",
                topology.retry_tiers.len(),
                plan.len(),
                settings.bus.url.redacted()
            );
            Ok(ExitCode::SUCCESS)
        }
        TopologyAction::Show { json } => {
            let plan = topology.plan();
            // Live counts, when the broker answers.
            let mut counts = Vec::new();
            let probe = Probe::connect_with(&settings.bus).await.ok();
            for q in &plan {
                let count = match &probe {
                    Some(p) => p.queue_info(&q.name).await.ok().flatten(),
                    None => None,
                };
                counts.push(count);
            }
            if let Some(p) = probe {
                p.close();
            }
            if json {
                let rows: Vec<_> = plan
                    .iter()
                    .zip(&counts)
                    .map(|(q, c)| {
                        serde_json::json!({
                            "queue": q.name,
                            "arguments": q.arguments.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                            "bindings": q.bindings,
                            "messages": c.map(|c| c.0),
                            "consumers": c.map(|c| c.1),
                            "declared": c.is_some(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "exchanges: pvefleet.commands (direct, mandatory publishes), pvefleet.events (topic), pvefleet.parked (fanout)"
            );
            for (q, c) in plan.iter().zip(&counts) {
                let live = match c {
                    Some((m, cons)) => format!("{m} messages, {cons} consumers"),
                    None => "not declared".into(),
                };
                println!("\n{}  [{live}]", q.name);
                let args: Vec<String> = q.arguments.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("  args: {}", args.join(" "));
                for b in &q.bindings {
                    println!("  bind: {b}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
