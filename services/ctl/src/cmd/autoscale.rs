//! `pvefleet autoscale policy|status|simulate|import`.

use pvefleet_core::audit::{self, Actor, Entry};
use std::process::ExitCode;

use pvefleet_autoscaler::policies::{self, Scope};
use serde_json::{Value, json};

use crate::cli::{AutoscaleAction, PolicyAction, PolicyScope};

fn scope(s: PolicyScope) -> Option<Scope> {
    match (s.vmid, s.tag, s.global) {
        (Some(v), None, false) => Some(Scope::Vmid(v)),
        (None, Some(t), false) => Some(Scope::Tag(t)),
        (None, None, true) => Some(Scope::Global),
        _ => None,
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(1)
}

/// A policy refused as given (an unknown key, a value out of range, a minimum above its
/// maximum): exit 2, like any other bad input, naming the key.
fn refuse(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// A policy file: a JSON object of the keys over the default.
fn read_policy(path: &std::path::Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))
}

/// What a policy write answers: refused as given (exit 2, naming the key), or failed.
fn write_outcome(e: anyhow::Error) -> ExitCode {
    match e.downcast_ref::<policies::WriteError>() {
        Some(policies::WriteError::Invalid(i)) => refuse(&i.to_string()),
        _ => fail(&format!("{e:#}")),
    }
}

const WHICH: &str = "say which: --vmid N, --tag T or --global";

pub async fn run(settings: &pvefleet_core::Settings, action: AutoscaleAction) -> anyhow::Result<ExitCode> {
    let default = &settings.autoscaler.policy;
    match action {
        AutoscaleAction::Simulate {
            policy,
            samples,
            stored,
        } => simulate(settings, policy.as_deref(), &samples, stored).await,
        AutoscaleAction::Import { file, dry_run, json } => import(settings, &file, dry_run, json).await,
        AutoscaleAction::Policy { action } => {
            let client = connect(settings).await?;
            match action {
                PolicyAction::Set { scope: s, json } => {
                    let Some(s) = scope(s) else {
                        return Ok(fail(WHICH));
                    };
                    let value: Value = match serde_json::from_str(&json) {
                        Ok(v) => v,
                        Err(e) => return Ok(refuse(&format!("--json is not JSON: {e}"))),
                    };
                    let stored = pvefleet_core::db::in_tx(&client, async {
                        let stored = policies::set(&client, default, &s, &value, policies::Write::Merge).await?;
                        let entry = Entry::new("autoscale.policy.set", format!("autoscale/{}", s.key()))
                            .detail(json!({ "keys": value }));
                        audit::record(&**client, &Actor::cli(), &entry).await?;
                        anyhow::Ok(stored)
                    })
                    .await;
                    match stored {
                        Ok(keys) => {
                            println!("stored {}: {}", s.key(), Value::Object(keys));
                            Ok(ExitCode::SUCCESS)
                        }
                        Err(e) => Ok(write_outcome(e)),
                    }
                }
                PolicyAction::Unset { scope: s, keys } => {
                    let Some(s) = scope(s) else {
                        return Ok(fail(WHICH));
                    };
                    let stored = pvefleet_core::db::in_tx(&client, async {
                        let stored = policies::unset(&client, default, &s, &keys).await?;
                        let entry = Entry::new("autoscale.policy.unset", format!("autoscale/{}", s.key()))
                            .detail(json!({ "keys": keys }));
                        audit::record(&**client, &Actor::cli(), &entry).await?;
                        anyhow::Ok(stored)
                    })
                    .await;
                    match stored {
                        Ok(left) if left.is_empty() => {
                            println!("{}: no keys left; the policy is removed", s.key());
                            Ok(ExitCode::SUCCESS)
                        }
                        Ok(left) => {
                            println!("stored {}: {}", s.key(), Value::Object(left));
                            Ok(ExitCode::SUCCESS)
                        }
                        Err(e) => Ok(write_outcome(e)),
                    }
                }
                PolicyAction::Get { scope: s, json } => {
                    let Some(s) = scope(s) else {
                        return Ok(fail(WHICH));
                    };
                    get(settings, &client, &s, json).await
                }
                PolicyAction::Delete { scope: s } => {
                    let Some(s) = scope(s) else {
                        return Ok(fail(WHICH));
                    };
                    let deleted = pvefleet_core::db::in_tx(&client, async {
                        let deleted = policies::delete(&client, &s).await?;
                        if deleted {
                            let entry = Entry::new("autoscale.policy.delete", format!("autoscale/{}", s.key()));
                            audit::record(&**client, &Actor::cli(), &entry).await?;
                        }
                        anyhow::Ok(deleted)
                    })
                    .await?;
                    if deleted {
                        println!("deleted {}", s.key());
                        Ok(ExitCode::SUCCESS)
                    } else {
                        Ok(fail(&format!("no policy for {}", s.key())))
                    }
                }
                PolicyAction::List { json } => {
                    let all = policies::list(&client).await?;
                    if json {
                        let v: Vec<Value> = all.iter().map(|(s, p)| json!({ "scope": s, "policy": p })).collect();
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        for (s, p) in &all {
                            println!("{s:<24}  {p}");
                        }
                        if all.is_empty() {
                            println!("(no policies: the configured default applies)");
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        AutoscaleAction::Status { json } => status(settings, json).await,
    }
}

/// The tags PVE shows on container `vmid`, or why they cannot be read.
async fn tags_of(settings: &pvefleet_core::Settings, vmid: u32) -> Result<Vec<String>, String> {
    let pve = pvefleet_core::pve::client(&settings.pve).map_err(|e| format!("{e:#}"))?;
    let rows = pve
        .resources(Some(pvefleet_proxmox::client::api::ResourceType::Vm))
        .await
        .map_err(|e| e.to_string())?;
    let r = rows
        .iter()
        .find(|r| r.kind == "lxc" && r.vmid == Some(u64::from(vmid)))
        .ok_or_else(|| format!("PVE shows no container {vmid}"))?;
    Ok(r.tag_list().into_iter().map(str::to_string).collect())
}

/// `policy get`: the stored keys and every key's effective value with its layer.
async fn get(
    settings: &pvefleet_core::Settings,
    client: &tokio_postgres::Client,
    s: &Scope,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let default = &settings.autoscaler.policy;
    let all = policies::Policies::load(client).await?;
    let stored = all.stored(s).cloned();
    let (tags, note) = match s {
        Scope::Vmid(v) => match tags_of(settings, *v).await {
            Ok(t) => (t, None),
            Err(e) => (
                Vec::new(),
                Some(format!("tags unknown ({e}): tag policies not applied")),
            ),
        },
        _ => (Vec::new(), None),
    };
    if stored.is_none() && !matches!(s, Scope::Vmid(_)) {
        return Ok(fail(&format!("no policy for {}", s.key())));
    }
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    let layers = match s {
        Scope::Vmid(v) => all.layers(*v, &tag_refs),
        other => all.scope_layers(other),
    };
    let effective = match policies::layered(default, &layers) {
        Ok(e) => e,
        Err(e) => return Ok(fail(&format!("the stored layers do not decode: {e}"))),
    };
    let refused = policies::check(&effective.policy).err().map(|i| {
        format!(
            "this policy does not work, the autoscaler skips it: {i} (from {})",
            effective.layer(&i.field)
        )
    });
    if json {
        let from: serde_json::Map<String, Value> = effective
            .from
            .iter()
            .map(|(k, l)| (k.clone(), json!(l.to_string())))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "scope": s.key(), "stored": stored, "tags": tags,
                "policy": effective.policy, "from": from, "note": note, "refused": refused,
            }))?
        );
    } else {
        println!(
            "{}: stored {}",
            s.key(),
            stored.map_or("nothing".into(), |k| Value::Object(k).to_string())
        );
        if matches!(s, Scope::Vmid(_)) {
            println!(
                "tags: {}",
                if tags.is_empty() {
                    "none".into()
                } else {
                    tags.join(", ")
                }
            );
        }
        println!("\n{:<20}  {:>8}  from", "key", "value");
        let values = serde_json::to_value(&effective.policy)?;
        for (k, l) in &effective.from {
            println!("{k:<20}  {:>8}  {l}", values[k].to_string());
        }
        for n in note.iter().chain(refused.iter()) {
            println!("\n{n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `import`: the file's policies (each scope it names replaced whole, all or none, one audit
/// row), the settings for the config file, what is not mapped and why, and the effective policy
/// of every container it names.
async fn import(
    settings: &pvefleet_core::Settings,
    file: &std::path::Path,
    dry_run: bool,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let default = &settings.autoscaler.policy;
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let got = match pvefleet_autoscaler::import::import(&text) {
        Ok(g) => g,
        Err(e) => return Ok(refuse(&format!("{}: {e}", file.display()))),
    };
    // Every policy on its own first, so a bad file names its key before anything is stored.
    for (s, p) in &got.policies {
        if let Err(i) = policies::check_keys(p) {
            return Ok(refuse(&format!("{}: {}: {i}", file.display(), s.key())));
        }
    }
    // The stored policies the file's go over: from the database, or none when a dry run
    // cannot reach it (said so).
    let mut note = None;
    let client = if dry_run {
        match connect(settings).await {
            Ok(c) => Some(c),
            Err(e) => {
                note = Some(format!(
                    "stored policies not read ({e:#}): effective over the config alone"
                ));
                None
            }
        }
    } else {
        Some(connect(settings).await?)
    };
    let mut layered = match &client {
        Some(c) => policies::Policies::load(c).await?,
        None => policies::Policies::default(),
    };
    for (s, p) in &got.policies {
        layered = layered.with(s, p.as_object().cloned());
    }
    let mut effective = Vec::new();
    for (s, _) in &got.policies {
        let Scope::Vmid(vmid) = s else { continue };
        match layered.resolve(*vmid, &[], default) {
            Ok(e) => effective.push((*vmid, e)),
            Err(i) => return Ok(refuse(&format!("{}: {}: {i}", file.display(), s.key()))),
        }
    }
    if !dry_run && let Some(client) = &client {
        let stored = pvefleet_core::db::in_tx(client, async {
            for (s, p) in &got.policies {
                policies::set(client, default, s, p, policies::Write::Replace).await?;
            }
            let scopes: Vec<String> = got.policies.iter().map(|(s, _)| s.key()).collect();
            let entry = Entry::new("autoscale.import", format!("autoscale/{}", file.display()))
                .detail(json!({ "scopes": scopes }));
            audit::record(&***client, &Actor::cli(), &entry).await?;
            anyhow::Ok(())
        })
        .await;
        if let Err(e) = stored {
            return Ok(write_outcome(e));
        }
    }
    if as_json {
        println!(
            "{}",
            json!({
                "dry_run": dry_run,
                "policies": got.policies.iter().map(|(s, p)| json!({ "scope": s.key(), "policy": p })).collect::<Vec<_>>(),
                "effective": effective.iter().map(|(v, e)| json!({ "vmid": v, "policy": e.to_json() })).collect::<Vec<_>>(),
                "settings": got.settings.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect::<Vec<_>>(),
                "unmapped": got.unmapped,
                "notes": got.notes,
                "note": note,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if dry_run { "would store" } else { "stored" };
    for (s, p) in &got.policies {
        println!("{verb} {}: {p}", s.key());
    }
    for (vmid, e) in &effective {
        println!("\ncontainer {vmid}, effective (tag policies apply too when it has tags):");
        let values = serde_json::to_value(&e.policy)?;
        for (k, l) in &e.from {
            println!("  {k:<20}  {:>8}  {l}", values[k].to_string());
        }
    }
    if !got.settings.is_empty() {
        println!("\nput these in pvefleet's config file:");
        for (k, v) in &got.settings {
            println!("  {k} = {v}");
        }
    }
    for (title, list) in [("kept in another form", &got.notes), ("not mapped", &got.unmapped)] {
        if !list.is_empty() {
            println!("\n{title}:");
            for u in list {
                println!("  {u}");
            }
        }
    }
    if let Some(n) = note {
        println!("\n{n}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect(settings: &pvefleet_core::Settings) -> anyhow::Result<deadpool_postgres::Object> {
    let pool = pvefleet_core::db::connect(&settings.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    Ok(pool.get().await?)
}

/// `simulate`: the replay, one JSON line per container per tick.
async fn simulate(
    settings: &pvefleet_core::Settings,
    policy: Option<&std::path::Path>,
    samples: &std::path::Path,
    stored: bool,
) -> anyhow::Result<ExitCode> {
    let mut layers = if stored {
        let client = connect(settings).await?;
        policies::Policies::load(&client).await?
    } else {
        policies::Policies::default()
    };
    if let Some(path) = policy {
        let keys = match read_policy(path) {
            Ok(v) => match policies::check_keys(&v) {
                Ok(k) => k,
                Err(i) => return Ok(refuse(&format!("{}: {i}", path.display()))),
            },
            Err(e) => return Ok(refuse(&format!("{e:#}"))),
        };
        layers = layers.on_top("--policy", keys);
    }
    let text =
        std::fs::read_to_string(samples).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", samples.display()))?;
    let mut replay = pvefleet_autoscaler::simulate::Replay::new(&settings.autoscaler, &settings.saga.plans, layers);
    match replay.run(&text) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(refuse(&format!("{}: {e}", samples.display()))),
    }
}

async fn status(settings: &pvefleet_core::Settings, json: bool) -> anyhow::Result<ExitCode> {
    use pvefleet_autoscaler::tick;
    let client = connect(settings).await?;
    let pve = pvefleet_core::pve::client(&settings.pve)?;
    let rows = pve.resources(None).await?;
    let nodes = tick::nodes(&rows);
    let all = policies::Policies::load(&client).await?;
    let sold = tick::sold_by_vmid(&client, &settings.saga.plans).await?;
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r.kind == "lxc") {
        let Some(vmid) = r.vmid.and_then(|v| u32::try_from(v).ok()) else {
            continue;
        };
        let tags = r.tag_list();
        let (effective, refused) = match all.resolve(vmid, &tags, &settings.autoscaler.policy) {
            Ok(e) => (Some(e), None),
            Err(i) => (
                policies::layered(&settings.autoscaler.policy, &all.layers(vmid, &tags)).ok(),
                Some(i.to_string()),
            ),
        };
        let Some(e) = effective else { continue };
        let node = r.node.as_deref().and_then(|n| nodes.get(n));
        // The cluster read does not show `cpulimit`: the config does.
        let cpulimit = match r.node.as_deref() {
            Some(n) => pve.lxc_config(n, vmid, false).await.ok().and_then(|c| {
                let v = c.get("cpulimit")?;
                v.as_f64().or_else(|| v.as_str()?.parse().ok()).filter(|l| *l > 0.0)
            }),
            None => None,
        };
        let bounds = node.map(|n| pvefleet_autoscaler::decide::bounds(&e, sold.get(&vmid), n, cpulimit));
        let last = client
            .query_opt(
                "SELECT resource, from_value, to_value, outcome, at::text FROM autoscale_actions WHERE vmid = $1 ORDER BY id DESC LIMIT 1",
                &[&(vmid as i32)],
            )
            .await?
            .map(|a| {
                format!(
                    "{} {}→{} {} at {}",
                    a.get::<_, String>(0),
                    a.get::<_, i64>(1),
                    a.get::<_, i64>(2),
                    a.get::<_, String>(3),
                    a.get::<_, String>(4)
                )
            });
        let cooldowns: Vec<String> = client
            .query(
                "SELECT resource, ceil(extract(epoch FROM until - now()))::bigint FROM autoscale_cooldowns WHERE vmid = $1 AND until > now()",
                &[&(vmid as i32)],
            )
            .await?
            .iter()
            .map(|c| format!("{} {}s", c.get::<_, String>(0), c.get::<_, i64>(1)))
            .collect();
        out.push(json!({
            "vmid": vmid, "node": r.node, "status": r.status,
            "cpu_pct": (r.cpu.unwrap_or(0.0) * 1000.0).round() / 10.0,
            "mem_pct": r.maxmem.filter(|m| *m > 0).map(|m| (r.mem.unwrap_or(0) as f64 / m as f64 * 1000.0).round() / 10.0),
            "cores": r.maxcpu, "memory_mb": r.maxmem.map(|m| m >> 20), "cpulimit": cpulimit,
            "bounds": bounds, "sold": sold.get(&vmid).map(|s| s.from.clone()),
            "enabled": e.policy.enabled, "dry_run": e.policy.dry_run,
            "dry_run_from": e.layer("dry_run").to_string(),
            "refused": refused,
            "last_action": last, "cooldown": cooldowns,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<8}  {:>6}  {:>6}  {:>5}  {:>9}  {:<9}  {:<13}  {:<18}  last action",
        "vmid", "node", "cpu%", "mem%", "cores", "memory", "cores", "memory MiB", "cooldown"
    );
    let range = |c: &Value, r: &str| {
        let b = &c["bounds"][r];
        if b.is_null() {
            "-".to_string()
        } else {
            format!("{}-{}", b["floor"]["value"], b["ceiling"]["value"])
        }
    };
    for c in &out {
        println!(
            "{:>6}  {:<8}  {:>6}  {:>6}  {:>5}  {:>9}  {:<9}  {:<13}  {:<18}  {}",
            // A JSON value ignores widths: each as a string first.
            c["vmid"].to_string(),
            c["node"].as_str().unwrap_or("-"),
            c["cpu_pct"].to_string(),
            c["mem_pct"].to_string(),
            c["cores"].to_string(),
            c["memory_mb"].to_string(),
            range(c, "cores"),
            range(c, "memory"),
            c["cooldown"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            c["last_action"].as_str().unwrap_or("-")
        );
        // Where each floor and ceiling comes from, and anything that stops scaling.
        let b = &c["bounds"];
        if !b.is_null() {
            println!(
                "{:>6}  cores floor {} ({}), ceiling {} ({}); memory floor {} ({}), ceiling {} ({})",
                "",
                b["cores"]["floor"]["value"],
                b["cores"]["floor"]["from"].as_str().unwrap_or("-"),
                b["cores"]["ceiling"]["value"],
                b["cores"]["ceiling"]["from"].as_str().unwrap_or("-"),
                b["memory"]["floor"]["value"],
                b["memory"]["floor"]["from"].as_str().unwrap_or("-"),
                b["memory"]["ceiling"]["value"],
                b["memory"]["ceiling"]["from"].as_str().unwrap_or("-"),
            );
        }
        if c["dry_run"] == true {
            println!("{:>6}  dry run ({})", "", c["dry_run_from"].as_str().unwrap_or("-"));
        }
        if let Some(r) = c["refused"].as_str() {
            println!("{:>6}  skipped: its policy does not work: {r}", "");
        }
    }
    Ok(ExitCode::SUCCESS)
}
