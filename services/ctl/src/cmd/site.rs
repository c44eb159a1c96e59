//! `pvefleet site create|list|show|delete`: sites through the intake API. `create --wait`
//! follows the saga's Server-Sent Events with a live progress display and ends with a summary,
//! or with the failing step's error.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::{SiteAction, SiteTarget};

/// A limit on one request to intake; the event stream alone runs longer.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A limit on one progress poll while waiting.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// The exit status of a `--wait` that reached its deadline, as `timeout(1)` gives.
pub(crate) const DEADLINE_EXIT: u8 = 124;

pub(crate) fn token(t: &SiteTarget) -> anyhow::Result<String> {
    if let Some(tok) = t.token.clone().or_else(|| std::env::var("PVEFLEET_TOKEN").ok()) {
        return Ok(tok);
    }
    // dev's token goes to dev's intake only, never to another --api.
    if let Some(intake) = crate::profile::load().and_then(|p| p.intake)
        && t.api
            .as_deref()
            .is_none_or(|a| a.trim_end_matches('/') == intake.url.trim_end_matches('/'))
    {
        return Ok(intake.token);
    }
    anyhow::bail!("no API token: pass --token, set PVEFLEET_TOKEN, or run `pvefleet dev` (its profile holds one)")
}

/// Why intake could not be reached, with the likely cause when it is the dev profile's.
pub(crate) fn unreachable_intake(url: &str, e: &reqwest::Error) -> anyhow::Error {
    let hint = if e.is_connect() {
        " (is it running? `pvefleet dev` writes where it is to ~/.pvefleet/dev.toml; else pass --api)"
    } else {
        ""
    };
    anyhow::anyhow!("cannot reach intake at {url}: {e}{hint}")
}

pub(crate) fn http() -> anyhow::Result<reqwest::Client> {
    pvefleet_proxmox::client::tls::provider();
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()?)
}

/// Prints a problem+json answer and gives the exit code.
pub(crate) async fn problem(resp: reqwest::Response) -> ExitCode {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let detail = body["detail"].as_str().unwrap_or("no detail");
    match body["field"].as_str() {
        Some(f) => eprintln!("error: {status}: {f}: {detail}"),
        None => eprintln!("error: {status}: {detail}"),
    }
    ExitCode::from(2)
}

/// `GET PATH` on intake with the target's token: the JSON answer, or the exit code of the
/// problem it printed.
pub(crate) async fn get_json(target: &SiteTarget, path: &str) -> anyhow::Result<Result<Value, ExitCode>> {
    let token = token(target)?;
    let resp = http()?
        .get(format!("{}{path}", target.url()))
        .bearer_auth(&token)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable_intake(&target.url(), &e))?;
    if !resp.status().is_success() {
        return Ok(Err(problem(resp).await));
    }
    Ok(Ok(resp.json().await?))
}

pub async fn run(action: SiteAction) -> anyhow::Result<ExitCode> {
    match action {
        SiteAction::Create {
            name,
            plan,
            app,
            ha,
            wait,
            deadline,
            target,
        } => {
            let token = token(&target)?;
            let c = http()?;
            let body = json!({ "subdomain": name, "plan": plan, "app": app, "ha": ha });
            let resp = c
                .post(format!("{}/v1/sites", target.url()))
                .bearer_auth(&token)
                .json(&body)
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(|e| unreachable_intake(&target.url(), &e))?;
            if !resp.status().is_success() {
                return Ok(problem(resp).await);
            }
            let accepted: Value = resp.json().await?;
            let (id, saga) = (
                accepted["id"].as_str().unwrap_or_default().to_string(),
                accepted["saga_id"].as_str().unwrap_or_default().to_string(),
            );
            println!("site {id} requested (saga {saga})");
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            follow(&c, &target.url(), &token, &id, &saga, deadline).await
        }
        SiteAction::List { target } => {
            let sites = match get_json(&target, "/v1/sites").await? {
                Ok(v) => v,
                Err(code) => return Ok(code),
            };
            println!(
                "{:<36}  {:<20}  {:<14}  {:<6}  {:<16}  node",
                "site", "subdomain", "state", "vmid", "ip"
            );
            for s in sites.as_array().into_iter().flatten() {
                let t = |k: &str| s[k].as_str().map(str::to_string).unwrap_or_else(|| s[k].to_string());
                println!(
                    "{:<36}  {:<20}  {:<14}  {:<6}  {:<16}  {}",
                    t("id"),
                    t("subdomain"),
                    t("state"),
                    t("vmid"),
                    t("ip"),
                    t("node")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SiteAction::Show { id, target } => {
            let site = match get_json(&target, &format!("/v1/sites/{id}")).await? {
                Ok(v) => v,
                Err(code) => return Ok(code),
            };
            println!("{}", serde_json::to_string_pretty(&site)?);
            Ok(ExitCode::SUCCESS)
        }
        SiteAction::Credentials { id, target } => {
            let c = match get_json(&target, &format!("/v1/sites/{id}/credentials")).await? {
                Ok(v) => v,
                Err(code) => return Ok(code),
            };
            println!("site            {}", c["site_id"].as_str().unwrap_or_default());
            println!("admin user      {}", c["admin_user"].as_str().unwrap_or_default());
            println!("admin password  {}", c["admin_password"].as_str().unwrap_or_default());
            println!("db password     {}", c["db_password"].as_str().unwrap_or_default());
            eprintln!("(this reveal is recorded in the audit log)");
            Ok(ExitCode::SUCCESS)
        }
        SiteAction::Backup {
            id,
            wait,
            deadline,
            target,
        } => backup(&id, wait, deadline, &target).await,
        SiteAction::Restore {
            id,
            from,
            latest,
            clone,
            subdomain,
            wait,
            deadline,
            target,
        } => {
            // Without a volume, the latest (clap requires --from or --latest).
            debug_assert!(latest || from.is_some());
            let c = http()?;
            let mut body = serde_json::json!({ "volid": from });
            if clone {
                body["clone"] = json!(true);
                body["subdomain"] = json!(subdomain);
            }
            let req = c.post(format!("{}/v1/sites/{id}/restores", target.url())).json(&body);
            start_saga(&c, req, &target, &id, "restoring", wait, deadline).await
        }
        SiteAction::Config {
            id,
            history,
            version,
            diff,
            restore,
            wait,
            deadline,
            json,
            target,
        } => {
            let what = match (history, diff, restore) {
                (true, _, _) => super::site_config::Show::History,
                (_, Some(d), _) => super::site_config::Show::Diff(d[0], d.get(1).copied()),
                (_, _, Some(v)) => super::site_config::Show::Restore {
                    version: v,
                    wait,
                    deadline,
                },
                _ => super::site_config::Show::Version(version),
            };
            super::site_config::run(&id, what, json, &target).await
        }
        SiteAction::Backups { id, json, target } => {
            let rows = match get_json(&target, &format!("/v1/sites/{id}/backups")).await? {
                Ok(v) => v,
                Err(code) => return Ok(code),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<36}  {:<11}  {:<9}  {:<20}  {:>10}  {:<8}  volume",
                "backup", "kind", "state", "taken", "MiB", "verified"
            );
            for b in rows.as_array().into_iter().flatten() {
                let t = |k: &str| b[k].as_str().unwrap_or("-").to_string();
                let taken = b["taken_at"]
                    .as_str()
                    .map_or("-".to_string(), |t| t.chars().take(19).collect());
                let mib = b["size"].as_i64().map_or("-".to_string(), |s| (s >> 20).to_string());
                println!(
                    "{:<36}  {:<11}  {:<9}  {:<20}  {:>10}  {:<8}  {}",
                    t("id"),
                    t("kind"),
                    t("state"),
                    taken,
                    mib,
                    t("verify_state"),
                    t("volid")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SiteAction::Delete {
            id,
            wait,
            deadline,
            target,
        } => {
            let c = http()?;
            let req = c.delete(format!("{}/v1/sites/{id}", target.url()));
            start_saga(&c, req, &target, &id, "deprovisioning", wait, deadline).await
        }
    }
}

/// Sends `req` to intake with the token: its accepted answer and the token, or the exit code
/// of the problem it answered (printed).
pub(crate) async fn send_accepted(
    req: reqwest::RequestBuilder,
    target: &SiteTarget,
) -> anyhow::Result<Result<(Value, String), ExitCode>> {
    let token = token(target)?;
    let resp = req
        .bearer_auth(&token)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable_intake(&target.url(), &e))?;
    if !resp.status().is_success() {
        return Ok(Err(problem(resp).await));
    }
    Ok(Ok((resp.json().await?, token)))
}

/// Sends `req` (a request that starts a saga of site `id`) with the token; prints the saga,
/// and with `wait` follows it to its end.
async fn start_saga(
    c: &reqwest::Client,
    req: reqwest::RequestBuilder,
    target: &SiteTarget,
    id: &str,
    doing: &str,
    wait: bool,
    deadline: Duration,
) -> anyhow::Result<ExitCode> {
    let (accepted, token) = match send_accepted(req, target).await? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let saga = accepted["saga_id"].as_str().unwrap_or_default().to_string();
    // A clone is a new site: the one followed is the clone.
    let id = match accepted["clone_of"].as_str() {
        Some(from) => {
            let clone = accepted["site_id"].as_str().unwrap_or_default();
            println!("site {clone} (a clone of {from}) {doing} (saga {saga})");
            clone
        }
        None => {
            println!("site {id} {doing} (saga {saga})");
            id
        }
    };
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    follow(c, &target.url(), &token, id, &saga, deadline).await
}

/// `pvefleet site backup ID [--wait]`: asks intake for a backup; with --wait, polls the site's
/// backups until this one is written (exit 0, its volume printed) or failed (exit 1, why).
async fn backup(id: &str, wait: bool, deadline: Duration, target: &SiteTarget) -> anyhow::Result<ExitCode> {
    let c = http()?;
    let url = format!("{}/v1/sites/{id}/backups", target.url());
    let (accepted, token) = match send_accepted(c.post(&url), target).await? {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let backup = accepted["backup_id"].as_str().unwrap_or_default().to_string();
    println!("backup {backup} of site {id} requested");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let until = std::time::Instant::now() + deadline;
    let mut last = String::new();
    loop {
        let resp = c.get(&url).bearer_auth(&token).timeout(POLL_TIMEOUT).send().await;
        if let Ok(r) = resp
            && r.status().is_success()
            && let Ok(rows) = r.json::<Value>().await
            && let Some(b) = rows
                .as_array()
                .into_iter()
                .flatten()
                .find(|b| b["id"] == backup.as_str())
        {
            let state = b["state"].as_str().unwrap_or_default().to_string();
            if state != last {
                eprintln!("  {state}");
                last = state.clone();
            }
            match state.as_str() {
                "ok" => {
                    println!("backup {backup}: {}", b["volid"].as_str().unwrap_or_default());
                    return Ok(ExitCode::SUCCESS);
                }
                "failed" => {
                    eprintln!(
                        "error: backup {backup} failed: {}",
                        b["error"]["message"].as_str().unwrap_or("no reason recorded")
                    );
                    return Ok(ExitCode::from(1));
                }
                _ => {}
            }
        }
        if std::time::Instant::now() >= until {
            eprintln!(
                "still waiting after {}; the backup goes on",
                humantime::format_duration(deadline)
            );
            return Ok(ExitCode::from(DEADLINE_EXIT));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a saga's step in flight waits on, from `GET /v1/sagas/{id}`'s `in_flight`: the
/// step, its sends, how long, when the saga stops waiting, and whether any service consumes
/// its queue. `None` while nothing has been in flight for a few seconds.
fn waiting_on(saga: &Value) -> Option<(String, bool)> {
    let f = &saga["in_flight"];
    let step = f["step"].as_str()?;
    let seconds = f["seconds"].as_f64().unwrap_or(0.0);
    if seconds < 3.0 {
        return None;
    }
    let phase = if f["phase"] == "compensate" {
        " (compensating)"
    } else {
        ""
    };
    let sends = f["sends"].as_i64().unwrap_or(1);
    let attempt = if sends > 1 {
        format!(", sent {sends} times")
    } else {
        String::new()
    };
    let until = f["deadline"]
        .as_str()
        .map(|d| format!("; the saga resends or fails it at {}", d.split('.').next().unwrap_or(d)))
        .unwrap_or_default();
    let mut line = format!("waiting on {step}{phase} for {seconds:.0}s{attempt}{until}");
    let mut nobody = false;
    match (f["queue"].as_str(), f["consumers"].as_u64()) {
        (Some(q), Some(0)) => {
            line.push_str(&format!(": no service consumes {q}"));
            nobody = true;
        }
        (Some(q), Some(n)) => line.push_str(&format!(" ({q}: {n} consumer{})", if n == 1 { "" } else { "s" })),
        (Some(q), None) => line.push_str(&format!(
            " ({q}: {})",
            f["consumers_error"].as_str().unwrap_or("consumers unknown")
        )),
        _ => {}
    }
    Some((line, nobody))
}

/// Follows a saga's events until it ends, showing each step as it starts and ends; while a
/// step is in flight for more than a few seconds, says what it waits on. Gives up at
/// `deadline` with exit 124 (the saga goes on).
async fn follow(
    c: &reqwest::Client,
    api: &str,
    token: &str,
    site: &str,
    saga: &str,
    deadline: Duration,
) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message("waiting for the saga to start");
    // Without a terminal the bar is hidden; lines are printed plainly.
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    let give_up = tokio::time::Instant::now() + deadline;
    let events = c.get(format!("{api}/v1/sagas/{saga}/events")).bearer_auth(token).send();
    let mut resp = match tokio::time::timeout(REQUEST_TIMEOUT, events).await {
        Ok(r) => r.map_err(|e| unreachable_intake(api, &e))?,
        Err(_) => anyhow::bail!("intake at {api} did not answer within {REQUEST_TIMEOUT:?}"),
    };
    if !resp.status().is_success() {
        bar.finish_and_clear();
        return Ok(problem(resp).await);
    }
    let mut buffer = String::new();
    let mut end: Option<Value> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut last_event = tokio::time::Instant::now();
    let mut waiting = String::from("the saga coordinator has not started the saga (queue pvefleet.saga)");
    let mut said_nobody = String::new();
    while end.is_none() {
        let chunk = tokio::select! {
            chunk = resp.chunk() => chunk?,
            _ = tick.tick() => {
                if last_event.elapsed() < Duration::from_secs(3) {
                    continue;
                }
                // Bounded, so the deadline below is never starved by a poll that hangs.
                let poll = c.get(format!("{api}/v1/sagas/{saga}")).bearer_auth(token).timeout(POLL_TIMEOUT).send();
                let Ok(Ok(r)) = tokio::time::timeout(POLL_TIMEOUT, poll).await else {
                    continue;
                };
                if !r.status().is_success() {
                    continue;
                }
                let v: Value = tokio::time::timeout(POLL_TIMEOUT, r.json()).await.ok().and_then(Result::ok).unwrap_or(Value::Null);
                // Accepted, not started yet; intake says when no coordinator is running to start it.
                if v["state"] == "accepted" {
                    if let Some(why) = v["waiting"].as_str() {
                        let line = format!("waiting for the saga to start: {why}");
                        if said_nobody != "saga" {
                            say(format!("  ! {line}"));
                            said_nobody = "saga".into();
                        }
                        bar.set_message(line.clone());
                        waiting = line;
                    }
                    continue;
                }
                if let Some((line, nobody)) = waiting_on(&v) {
                    bar.set_message(line.clone());
                    // Said once per step, not every tick: no service is taking it.
                    let step = v["in_flight"]["step"].as_str().unwrap_or_default().to_string();
                    if nobody && said_nobody != step {
                        say(format!("  ! {line}"));
                        said_nobody = step;
                    }
                    waiting = line;
                }
                continue;
            }
            _ = tokio::time::sleep_until(give_up) => {
                bar.finish_and_clear();
                eprintln!(
                    "error: gave up after {}: {waiting}. The saga goes on; follow it with `pvefleet saga show {saga}`",
                    humantime::format_duration(deadline)
                );
                return Ok(ExitCode::from(DEADLINE_EXIT));
            }
        };
        let Some(chunk) = chunk else { break };
        last_event = tokio::time::Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(pos) = buffer.find("\n\n") {
            let block: String = buffer.drain(..pos + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = if e.trim() == "saga" {
                        "saga"
                    } else if e.trim() == "step" {
                        "step"
                    } else {
                        "other"
                    };
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            match event {
                "step" => {
                    let name = v["name"].as_str().unwrap_or("?");
                    let phase = if v["phase"] == "compensate" {
                        " (compensating)"
                    } else {
                        ""
                    };
                    match v["state"].as_str().unwrap_or("") {
                        "sent" => {
                            bar.set_message(format!("{name}{phase} …"));
                            waiting = format!("waiting on {name}{phase}");
                        }
                        "done" => say(format!("  ✓ {name}{phase}")),
                        // A many-line error (a script's stderr) indented under its step.
                        "failed" => say(format!(
                            "  ✗ {name}{phase}: {}",
                            v["error"]["message"]
                                .as_str()
                                .unwrap_or("failed")
                                .replace('\n', "\n      ")
                        )),
                        other => say(format!("  · {name}{phase}: {other}")),
                    }
                }
                "saga" => end = Some(v),
                _ => {}
            }
        }
    }
    bar.finish_and_clear();
    let Some(saga) = end else {
        eprintln!("error: the event stream ended before the saga did");
        return Ok(ExitCode::FAILURE);
    };
    let state = saga["state"].as_str().unwrap_or_default();
    let resp = c
        .get(format!("{api}/v1/sites/{site}"))
        .bearer_auth(token)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable_intake(api, &e))?;
    let s: Value = resp.json().await.unwrap_or(Value::Null);
    if state == "completed" {
        println!(
            "site {} is {}: vmid {}, ip {}, node {}",
            s["subdomain"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            s["vmid"],
            s["ip"].as_str().unwrap_or("-"),
            s["node"].as_str().unwrap_or("-"),
        );
        Ok(ExitCode::SUCCESS)
    } else {
        // The saga's own error first (a site may have moved on since), then the site's.
        let error = if saga["error"].is_object() {
            &saga["error"]
        } else {
            &s["error"]
        };
        let step = error["step"].as_str().unwrap_or("?");
        let message = error["error"]["message"].as_str().unwrap_or("no message");
        match error["error"]["code"].as_str() {
            Some(code) => eprintln!("error: the saga ended {state}: {step}: {message} ({code})"),
            None => eprintln!("error: the saga ended {state}: {step}: {message}"),
        }
        Ok(ExitCode::FAILURE)
    }
}
