//! `pvefleet bus publish` (schema-checked) and `pvefleet bus tail` (live events).

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use pvefleet_contracts::registry::{find_latest, registry};
use pvefleet_contracts::routing::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE};
use pvefleet_contracts::{Kind, headers};
use pvefleet_core::Settings;
use pvefleet_core::bus::fields::{header_str, message_type};
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::{Outgoing, Publisher, Topology, connect};

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
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
    };
    let body: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {} is not JSON: {e}", path.display());
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
    let (conn, ch) = connect::open(&settings.bus, "pvefleet-tail").await?;
    Topology::base(&settings.bus).declare(&ch).await?;
    // A server-named, exclusive, auto-delete queue: it disappears with this process.
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let qname = q.name().as_str().to_string();
    ch.queue_bind(
        qname.as_str().into(),
        EVENTS_EXCHANGE.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    if commands {
        for m in registry().iter().filter(|m| m.kind == Kind::Command) {
            ch.queue_bind(
                qname.as_str().into(),
                COMMANDS_EXCHANGE.into(),
                m.name.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
    }
    let mut consumer = ch
        .basic_consume(
            qname.as_str().into(),
            "pvefleet-tail".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!(
        "Tailing {EVENTS_EXCHANGE} '{key}'{}; ctrl-c to stop.",
        if commands { " and every command" } else { "" }
    );
    let shutdown = pvefleet_core::shutdown::on_signal();
    let mut seen = 0usize;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = consumer.next() => n,
        };
        let Some(Ok(d)) = next else {
            eprintln!("The broker connection ended.");
            break;
        };
        let _ = d.acker.ack(BasicAckOptions::default()).await;
        let body: serde_json::Value = serde_json::from_slice(&d.data)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&d.data).into_owned()));
        let mtype = message_type(&d.properties).unwrap_or_else(|| "?".into());
        let corr = d
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_default();
        if json {
            let line = serde_json::json!({
                "exchange": d.exchange.as_str(),
                "type": mtype,
                "message_id": d.properties.message_id().as_ref().map(|m| m.as_str()),
                "correlation_id": corr,
                "causation_id": header_str(&d.properties, headers::CAUSATION_ID),
                "timestamp": d.properties.timestamp(),
                "body": body,
            });
            println!("{line}");
        } else {
            let ts = d
                .properties
                .timestamp()
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
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "done".into())).await;
    Ok(ExitCode::SUCCESS)
}
