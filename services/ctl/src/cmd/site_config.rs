//! `pvefleet site config ID`: a site's configuration history through intake. The newest
//! recorded config (or `--version N`), `--history` (each version with what changed and what
//! made it), `--diff FROM [TO]`, and `--restore N [--wait]` (the backup service writes it
//! back with the digest-guarded config write; `--wait` follows the request to its end).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::site::{DEADLINE_EXIT, get_json, http, send_accepted};
use crate::cli::SiteTarget;

/// What to show or do.
pub(crate) enum Show {
    /// One version in full; `None`: the newest.
    Version(Option<u32>),
    /// Every version.
    History,
    /// From one version to another (`None`: the newest).
    Diff(u32, Option<u32>),
    /// Put a version back.
    Restore {
        version: u32,
        wait: bool,
        deadline: Duration,
    },
}

/// One change, as `-`/`+` lines (a key added has no `-`, one removed no `+`).
fn change_lines(c: &Value) -> Vec<String> {
    let key = c["key"].as_str().unwrap_or_default();
    let mut out = Vec::new();
    if let Some(f) = c["from"].as_str() {
        out.push(format!("- {key}: {f}"));
    }
    if let Some(t) = c["to"].as_str() {
        out.push(format!("+ {key}: {t}"));
    }
    out
}

fn print(v: &Value) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run(id: &str, what: Show, json: bool, target: &SiteTarget) -> anyhow::Result<ExitCode> {
    let base = format!("/v1/sites/{id}/config");
    match what {
        Show::Version(v) => {
            let path = match v {
                Some(v) => format!("{base}/versions/{v}"),
                None => {
                    let list = match get_json(target, &format!("{base}/versions")).await? {
                        Ok(l) => l,
                        Err(code) => return Ok(code),
                    };
                    let Some(newest) = list[0]["version"].as_u64() else {
                        eprintln!("error: no config of site {id} recorded yet");
                        return Ok(ExitCode::from(1));
                    };
                    format!("{base}/versions/{newest}")
                }
            };
            let row = match get_json(target, &path).await? {
                Ok(r) => r,
                Err(code) => return Ok(code),
            };
            if json {
                return print(&row);
            }
            println!(
                "version {} of site {id}: container {} on {}, recorded {} ({}), last seen {}",
                row["version"],
                row["vmid"],
                row["node"].as_str().unwrap_or_default(),
                row["recorded_at"].as_str().unwrap_or_default(),
                row["cause"].as_str().unwrap_or_default(),
                row["checked_at"].as_str().unwrap_or_default()
            );
            for (k, v) in row["config"].as_object().into_iter().flatten() {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                println!("{k}: {v}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Show::History => {
            let list = match get_json(target, &format!("{base}/versions")).await? {
                Ok(l) => l,
                Err(code) => return Ok(code),
            };
            if json {
                return print(&list);
            }
            for v in list.as_array().into_iter().flatten() {
                println!(
                    "version {:<4} {}  {:<16} container {} on {}",
                    v["version"],
                    v["recorded_at"].as_str().unwrap_or_default(),
                    v["cause"].as_str().unwrap_or_default(),
                    v["vmid"],
                    v["node"].as_str().unwrap_or_default()
                );
                for c in v["changes"].as_array().into_iter().flatten() {
                    for line in change_lines(c) {
                        println!("    {line}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Show::Diff(from, to) => {
            let mut path = format!("{base}/diff?from={from}");
            if let Some(to) = to {
                path.push_str(&format!("&to={to}"));
            }
            let d = match get_json(target, &path).await? {
                Ok(d) => d,
                Err(code) => return Ok(code),
            };
            if json {
                return print(&d);
            }
            println!("version {} -> version {}", d["from"], d["to"]);
            let changes = d["changes"].as_array().cloned().unwrap_or_default();
            if changes.is_empty() {
                println!("(the same)");
            }
            for c in &changes {
                for line in change_lines(c) {
                    println!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Show::Restore {
            version,
            wait,
            deadline,
        } => restore(id, &base, version, wait, deadline, json, target).await,
    }
}

async fn restore(
    id: &str,
    base: &str,
    version: u32,
    wait: bool,
    deadline: Duration,
    json: bool,
    target: &SiteTarget,
) -> anyhow::Result<ExitCode> {
    let c = http()?;
    let req = c
        .post(format!("{}{base}/restores", target.url()))
        .json(&json!({ "version": version }));
    let (accepted, _) = match send_accepted(req, target).await? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let rid = accepted["restore_id"].as_str().unwrap_or_default().to_string();
    if !wait {
        if json {
            return print(&accepted);
        }
        println!("config restore {rid} of site {id} to version {version} requested");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("config restore {rid} of site {id} to version {version} requested");
    let until = Instant::now() + deadline;
    loop {
        // A poll that fails (intake restarting) is tried again until the deadline.
        if let Ok(Ok(r)) = get_json(target, &format!("{base}/restores/{rid}")).await {
            match r["state"].as_str() {
                Some("done") => {
                    if json {
                        return print(&r);
                    }
                    let list = |k: &str| {
                        r[k].as_array()
                            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                            .unwrap_or_default()
                    };
                    println!(
                        "config of site {id} put back to version {version}, recorded as version {}",
                        r["result_version"]
                    );
                    let changed = list("changed");
                    println!(
                        "written: {}",
                        if changed.is_empty() {
                            "nothing (it was the same)".into()
                        } else {
                            changed
                        }
                    );
                    let pending = list("pending");
                    if !pending.is_empty() {
                        println!("pending until the container restarts: {pending}");
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                Some("failed") => {
                    eprintln!(
                        "error: config restore {rid} failed: {}",
                        r["error"].as_str().unwrap_or("no reason recorded")
                    );
                    return Ok(ExitCode::from(1));
                }
                _ => {}
            }
        }
        if Instant::now() >= until {
            eprintln!(
                "still waiting after {}; the restore goes on",
                humantime::format_duration(deadline)
            );
            return Ok(ExitCode::from(DEADLINE_EXIT));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
