//! `pvefleet dlq list|groups|show|replay|archive|purge` and `pvefleet audit list`: dead letters
//! for operators. Every change is written to `audit_log` with the operator's name
//! (`$PVEFLEET_OPERATOR`, else `$USER`). Each command takes `--json`; a failure exits non-zero.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use pvefleet_core::dlq::{self, Filter};
use serde_json::{Value, json};

use crate::cli::{AuditAction, DlqAction, DlqFilter};

fn actor() -> pvefleet_core::audit::Actor {
    pvefleet_core::audit::Actor::cli()
}

fn filter(f: DlqFilter) -> Filter {
    Filter {
        id: f.id,
        group: f.group,
        queue: f.queue,
        message_type: f.message_type,
        correlation_id: f.correlation_id,
        since: f.since,
        until: f.until,
        state: f.state,
    }
}

fn is_empty(f: &Filter) -> bool {
    f.id.is_none()
        && f.group.is_none()
        && f.queue.is_none()
        && f.message_type.is_none()
        && f.correlation_id.is_none()
        && f.since.is_none()
        && f.until.is_none()
}

fn fail(json: bool, message: &str) -> ExitCode {
    if json {
        println!("{}", json!({ "error": message }));
    } else {
        eprintln!("error: {message}");
    }
    ExitCode::from(1)
}

/// Opens the dead letter's body, pretty, in `$EDITOR` (else `vi`); returns what was saved.
async fn edit_in_editor(client: &tokio_postgres::Client, id: uuid::Uuid) -> anyhow::Result<Vec<u8>> {
    let shown = dlq::show(client, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no dead letter {id}"))?;
    let path = std::env::temp_dir().join(format!("pvefleet-dlq-{id}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&shown["body"])? + "\n")?;
    let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()?;
    let body = std::fs::read(&path)?;
    let _ = std::fs::remove_file(&path);
    anyhow::ensure!(
        status.success(),
        "the editor exited with {status}; nothing was replayed"
    );
    Ok(body)
}

fn confirm(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
}

fn text(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub async fn run(settings: &pvefleet_core::Settings, action: DlqAction) -> anyhow::Result<ExitCode> {
    let pool = pvefleet_core::db::connect(&settings.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    let client = pool.get().await?;
    match action {
        DlqAction::List { filter: f, limit, json } => {
            let rows = dlq::list(&client, &filter(f), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<36}  {:<20}  {:<22}  {:<18}  {:<8}  fault",
                    "id", "type", "queue", "class", "state"
                );
                for r in &rows {
                    println!(
                        "{:<36}  {:<20}  {:<22}  {:<18}  {:<8}  {}",
                        text(r, "id"),
                        text(r, "message_type"),
                        text(r, "queue"),
                        text(r, "fault_class"),
                        text(r, "state"),
                        text(r, "fault_message").lines().next().unwrap_or_default()
                    );
                }
                if rows.is_empty() {
                    println!("(no dead letters)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Groups { json } => {
            let groups = dlq::groups(&client).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&groups)?);
            } else {
                println!("{:>6}  {:<58}  newest example", "count", "group");
                for g in &groups {
                    println!(
                        "{:>6}  {:<58}  {}",
                        text(g, "count"),
                        text(g, "group"),
                        text(g, "example")
                    );
                }
                if groups.is_empty() {
                    println!("(no parked dead letters)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Show { id, json } => match dlq::show(&client, id).await? {
            Some(v) => {
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(ExitCode::SUCCESS)
            }
            None => Ok(fail(json, &format!("no dead letter {id}"))),
        },
        DlqAction::Replay {
            filter: f,
            dry_run,
            rate,
            json,
        } => {
            let f = filter(f);
            if is_empty(&f) {
                return Ok(fail(
                    json,
                    "say which dead letters: --id, --group, --queue, --type, ...",
                ));
            }
            let topology = pvefleet_core::bus::topology::Topology::fleet(&settings.bus);
            let publisher = pvefleet_core::bus::Publisher::new(&settings.bus, "pvefleet-cli", Some(topology));
            publisher.connect().await?;
            let bar = (!json && !dry_run && std::io::stderr().is_terminal()).then(|| {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} replayed, {per_sec}, eta {eta}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar
            });
            let done = dlq::replay(&client, &publisher, &f, &actor(), dry_run, rate, |n, total| {
                if let Some(b) = &bar {
                    b.set_length(total as u64);
                    b.set_position(n as u64);
                }
            })
            .await;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let done = match done {
                Ok(d) => d,
                Err(e) => return Ok(fail(json, &format!("{e:#}"))),
            };
            if json {
                println!(
                    "{}",
                    json!({
                        "dry_run": dry_run,
                        "replayed": done.replayed,
                        "skipped": done.skipped.iter().map(|(id, why)| json!({ "id": id, "reason": why })).collect::<Vec<_>>(),
                    })
                );
            } else {
                let verb = if dry_run { "would replay" } else { "replayed" };
                println!("{verb} {} dead letters", done.replayed.len());
                if dry_run {
                    for id in &done.replayed {
                        println!("  {id}");
                    }
                }
                for (id, why) in &done.skipped {
                    println!("skipped {id}: {why}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Edit { id, body, json } => {
            let body = match body {
                Some(path) => {
                    std::fs::read(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
                }
                None => match edit_in_editor(&client, id).await {
                    Ok(b) => b,
                    Err(e) => return Ok(fail(json, &format!("{e:#}"))),
                },
            };
            let topology = pvefleet_core::bus::topology::Topology::fleet(&settings.bus);
            let publisher = pvefleet_core::bus::Publisher::new(&settings.bus, "pvefleet-cli", Some(topology));
            publisher.connect().await?;
            match dlq::edit(&client, &publisher, id, &body, &actor()).await {
                Ok(copy) => {
                    if json {
                        println!("{}", json!({ "resolved": id, "message_id": copy }));
                    } else {
                        println!("replayed an edited copy of {id} as message {copy}; the original is resolved");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(fail(json, &format!("{e}; the dead letter stays parked"))),
            }
        }
        DlqAction::Export { filter: f, out, json } => {
            let lines = dlq::export(&client, &filter(f)).await?;
            let text = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
            match out {
                Some(path) => {
                    std::fs::write(&path, text)?;
                    if json {
                        println!("{}", json!({ "exported": lines.len(), "file": path }));
                    } else {
                        eprintln!("exported {} dead letters to {}", lines.len(), path.display());
                    }
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Import { file, json } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            match dlq::import(&client, &lines, &actor()).await {
                Ok((imported, skipped)) => {
                    if json {
                        println!("{}", json!({ "imported": imported, "skipped": skipped }));
                    } else {
                        println!("imported {imported} dead letters ({skipped} already here)");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(fail(json, &format!("{e:#}; nothing was imported"))),
            }
        }
        DlqAction::Archive { filter: f, yes, json } => retire(&client, &filter(f), yes, json, false).await,
        DlqAction::Purge { filter: f, yes, json } => retire(&client, &filter(f), yes, json, true).await,
    }
}

async fn retire(
    client: &tokio_postgres::Client,
    f: &Filter,
    yes: bool,
    json: bool,
    purge: bool,
) -> anyhow::Result<ExitCode> {
    let verb = if purge { "purge" } else { "archive" };
    if is_empty(f) {
        return Ok(fail(
            json,
            &format!("say which dead letters to {verb}: --id, --group, --queue, ..."),
        ));
    }
    let selected = dlq::list(client, f, i64::MAX / 2).await?.len();
    if !yes && !confirm(&format!("{verb} {selected} dead letters?")) {
        return Ok(fail(
            json,
            &format!("not confirmed; nothing done (use --yes to {verb} without asking)"),
        ));
    }
    let n = dlq::retire(client, f, &actor(), purge).await?;
    if json {
        println!("{}", json!({ "action": verb, "count": n }));
    } else {
        println!("{verb}d {n} dead letters");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(settings: &pvefleet_core::Settings, action: AuditAction) -> anyhow::Result<ExitCode> {
    let pool = pvefleet_core::db::connect(&settings.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    let client = pool.get().await?;
    let AuditAction::List {
        actor,
        owner,
        action,
        target,
        since,
        until,
        limit,
        json,
    } = action;
    let f = pvefleet_core::audit::Filter {
        actor,
        owner,
        action,
        target,
        since,
        until,
    };
    let rows = match pvefleet_core::audit::list(&**client, &f, limit).await {
        Ok(rows) => rows,
        Err(e) if e.code().is_some() => {
            eprintln!(
                "error: {}",
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_string())
            );
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<32}  {:<30}  {:<12}  {:<24}  {:<9}  target",
            "at", "actor", "owner", "action", "outcome"
        );
        for r in rows.as_array().cloned().unwrap_or_default() {
            println!(
                "{:<32}  {:<30}  {:<12}  {:<24}  {:<9}  {}",
                text(&r, "at"),
                text(&r, "actor"),
                text(&r, "owner"),
                text(&r, "action"),
                text(&r, "outcome"),
                text(&r, "target")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
