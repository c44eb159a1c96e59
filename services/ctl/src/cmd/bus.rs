//! `pvefleet bus publish` (schema-checked) and `pvefleet bus tail` (live events).

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use pvefleet_contracts::registry::{find_latest, registry};
use pvefleet_contracts::routing::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE};
use pvefleet_contracts::{Kind, headers};
use pvefleet_core::Settings;
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::probe::Probe;
use pvefleet_core::bus::{Outgoing, Publisher, Topology};

use crate::cli::BusAction;

pub async fn run(settings: &Settings, action: BusAction) -> anyhow::Result<ExitCode> {
    match action {
        BusAction::Publish {
            message_type,
            json,
            correlation_id,
            dry_run,
        } => publish(settings, &message_type, &json, correlation_id, dry_run).await,
        BusAction::Tail {
            key,
            commands,
            count,
            json,
        } => tail(settings, &key, commands, count, json).await,
    }
}

async fn publish(
    settings: &Settings,
    mtype: &str,
    path: &std::path::Path,
    correlation: Option<uuid::Uuid>,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let Some(info) = find_latest(mtype) else {
        let known: Vec<&str> = registry().iter().map(|m| m.name).collect();
        eprintln!(
            "error: unknown message type '{mtype}'. Known types: {}",
            known.join(", ")
        );
        return Ok(ExitCode::from(2));
    };
    let inline = path
        .to_str()
        .map(str::trim_start)
        .filter(|t| t.starts_with('{') || t.starts_with('['));
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else if let Some(body) = inline {
        body.to_string()
    } else {
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
    };
    let body: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            let what = if inline.is_some() {
                "the body".to_string()
            } else {
                path.display().to_string()
            };
            eprintln!("error: {what} is not JSON: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let validator = jsonschema::validator_for(&info.schema())
        .map_err(|e| anyhow::anyhow!("schema for {mtype} does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("  {}: {e}", display_path(&e.instance_path().to_string())))
        .collect();
    if !errors.is_empty() {
        eprintln!(
            "error: the body does not match {}:\n{}",
            info.schema_file(),
            errors.join("\n")
        );
        return Ok(ExitCode::from(2));
    }
    if let Err(e) = info.round_trip(&body) {
        eprintln!("error: the body does not decode as {mtype}: {e}");
        return Ok(ExitCode::from(2));
    }
    let origin = Origin {
        correlation_id: Some(correlation.unwrap_or_else(uuid::Uuid::now_v7)),
        app_id: Some("pvefleet-ctl".into()),
        ..Origin::default()
    };
    let msg = Outgoing::from_json(info, &body, &origin)?;
    if dry_run {
        println!("valid {} v{}; not published (--dry-run)", info.name, info.version);
        return Ok(ExitCode::SUCCESS);
    }
    let publisher = Publisher::new(&settings.bus, "pvefleet-ctl", Some(Topology::fleet(&settings.bus)));
    publisher.publish(&msg).await?;
    publisher.close().await;
    println!(
        "published {} v{} to {} message_id={} correlation_id={}",
        info.name,
        info.version,
        msg.exchange,
        msg.message_id().unwrap_or_default(),
        origin.correlation_id.map(|c| c.to_string()).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

fn display_path(p: &str) -> &str {
    if p.is_empty() { "/" } else { p }
}

async fn tail(
    settings: &Settings,
    key: &str,
    commands: bool,
    count: Option<usize>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let probe = Probe::connect_with(&settings.bus).await?;
    probe.declare(&Topology::base(&settings.bus)).await?;
    // An exclusive queue: it disappears with this process.
    let qname = probe.temp_queue().await?;
    probe.bind(&qname, EVENTS_EXCHANGE, key).await?;
    if commands {
        for m in registry().iter().filter(|m| m.kind == Kind::Command) {
            probe.bind(&qname, COMMANDS_EXCHANGE, m.name).await?;
        }
    }
    let mut consumer = probe.consume(&qname, 100).await?;
    eprintln!(
        "Tailing {EVENTS_EXCHANGE} '{key}'{}; ctrl-c to stop.",
        if commands { " and every command" } else { "" }
    );
    let shutdown = pvefleet_core::shutdown::on_signal();
    let mut seen = 0usize;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = consumer.next(Duration::from_secs(24 * 3600)) => n,
        };
        let d = match next {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(_) => {
                eprintln!("The broker connection ended.");
                break;
            }
        };
        let _ = d.ack().await;
        let d = &d.received;
        let body: serde_json::Value = serde_json::from_slice(&d.body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&d.body).into_owned()));
        let p = &d.properties;
        let mtype = p.kind.clone().unwrap_or_else(|| "?".into());
        let corr = p.correlation_id.clone().unwrap_or_default();
        if json {
            let line = serde_json::json!({
                "exchange": d.exchange,
                "type": mtype,
                "message_id": p.message_id,
                "correlation_id": corr,
                "causation_id": p.header_str(headers::CAUSATION_ID),
                "timestamp": p.timestamp,
                "body": body,
            });
            println!("{line}");
        } else {
            let ts = p
                .timestamp
                .and_then(|t| chrono::DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
                .map(|t| t.format("%H:%M:%SZ").to_string())
                .unwrap_or_default();
            println!("{ts} {mtype:<28} corr={corr} {body}");
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    probe.close();
    Ok(ExitCode::SUCCESS)
}
