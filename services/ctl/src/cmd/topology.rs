//! `pvefleet topology declare|show`.

use std::process::ExitCode;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use pvefleet_core::Settings;
use pvefleet_core::bus::Topology;
use pvefleet_core::bus::connect;

use crate::cli::TopologyAction;

pub async fn run(settings: &Settings, action: TopologyAction) -> anyhow::Result<ExitCode> {
    let topology = Topology::fleet(&settings.bus);
    match action {
        TopologyAction::Declare => {
            let (conn, ch) = connect::open(&settings.bus, "pvefleet-ctl").await?;
            topology.declare(&ch).await?;
            let _ = conn.close(200, "done".into()).await;
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
            // Live counts through passive declares, each on its own channel: a missing queue
            // closes the channel it was asked on.
            let mut counts = Vec::new();
            let conn = connect::open(&settings.bus, "pvefleet-ctl").await.ok();
            for q in &plan {
                let mut count = None;
                if let Some((c, _)) = &conn
                    && let Ok(ch) = c.create_channel().await
                {
                    let opts = QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    };
                    if let Ok(info) = ch
                        .queue_declare(q.name.as_str().into(), opts, FieldTable::default())
                        .await
                    {
                        count = Some((info.message_count(), info.consumer_count()));
                    }
                    let _ = ch.close(200, "done".into()).await;
                }
                counts.push(count);
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
            if let Some((c, _)) = conn {
                let _ = c.close(200, "done".into()).await;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
