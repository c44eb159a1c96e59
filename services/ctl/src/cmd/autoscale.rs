//! `pvefleet autoscale policy|status|simulate|import`.

use pvefleet_core::audit::{self, Actor, Entry};
use std::process::ExitCode;

use pvefleet_autoscaler::decide::{self, Change, Container, Cooldown, Node};
use pvefleet_autoscaler::policies::{self, Scope};
use pvefleet_autoscaler::window::{Sample, Window};
use pvefleet_core::config::AutoscalePolicy;
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

pub async fn run(settings: &pvefleet_core::Settings, action: AutoscaleAction) -> anyhow::Result<ExitCode> {
    let default = &settings.autoscaler.policy;
    match action {
        AutoscaleAction::Simulate { policy, samples } => simulate(default, &policy, &samples),
        AutoscaleAction::Import { file, dry_run, json } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let got = match pvefleet_autoscaler::import::import(&text) {
                Ok(g) => g,
                Err(e) => return Ok(fail(&format!("{}: {e}", file.display()))),
            };
            if !dry_run {
                // All of the file or none of it, with one audit row.
                let client = connect(settings).await?;
                let stored = pvefleet_core::db::in_tx(&client, async {
                    for (s, p) in &got.policies {
                        if let Err(e) = policies::set(&client, default, s, p).await {
                            anyhow::bail!("{}: {e}", s.key());
                        }
                    }
                    let scopes: Vec<String> = got.policies.iter().map(|(s, _)| s.key()).collect();
                    let entry = Entry::new("autoscale.import", format!("autoscale/{}", file.display()))
                        .detail(json!({ "scopes": scopes }));
                    audit::record(&**client, &Actor::cli(), &entry).await?;
                    anyhow::Ok(())
                })
                .await;
                if let Err(e) = stored {
                    return Ok(refuse(&format!("{e:#}")));
                }
            }
            if json {
                println!(
                    "{}",
                    json!({
                        "dry_run": dry_run,
                        "policies": got.policies.iter().map(|(s, p)| json!({ "scope": s.key(), "policy": p })).collect::<Vec<_>>(),
                        "settings": got.settings.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect::<Vec<_>>(),
                        "unmapped": got.unmapped,
                    })
                );
            } else {
                let verb = if dry_run { "would store" } else { "stored" };
                for (s, p) in &got.policies {
                    println!("{verb} {}: {p}", s.key());
                }
                if !got.settings.is_empty() {
                    println!("\nput these in pvefleet's config ([autoscaler]):");
                    for (k, v) in &got.settings {
                        println!("  {k} = {v}");
                    }
                }
                if !got.unmapped.is_empty() {
                    println!("\nnot mapped:");
                    for u in &got.unmapped {
                        println!("  {u}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AutoscaleAction::Policy { action } => {
            let client = connect(settings).await?;
            match action {
                PolicyAction::Set { scope: s, json } => {
                    let Some(s) = scope(s) else {
                        return Ok(fail("say which: --vmid N, --tag T or --global"));
                    };
                    let value: Value = match serde_json::from_str(&json) {
                        Ok(v) => v,
                        Err(e) => return Ok(fail(&format!("--json is not JSON: {e}"))),
                    };
                    let stored = pvefleet_core::db::in_tx(&client, async {
                        policies::set(&client, default, &s, &value)
                            .await
                            .map_err(anyhow::Error::msg)?;
                        let entry = Entry::new("autoscale.policy.set", format!("autoscale/{}", s.key()))
                            .detail(json!({ "keys": value }));
                        audit::record(&**client, &Actor::cli(), &entry).await?;
                        anyhow::Ok(())
                    })
                    .await;
                    match stored {
                        Ok(()) => {
                            println!("stored {}", s.key());
                            Ok(ExitCode::SUCCESS)
                        }
                        Err(e) => Ok(refuse(&format!("{e:#}"))),
                    }
                }
                PolicyAction::Get { scope: s } => {
                    let Some(s) = scope(s) else {
                        return Ok(fail("say which: --vmid N, --tag T or --global"));
                    };
                    let stored = policies::list(&client).await?.into_iter().find(|(k, _)| *k == s.key());
                    let Some((_, stored)) = stored else {
                        return Ok(fail(&format!("no policy for {}", s.key())));
                    };
                    let effective = policies::overlay(default, &stored).map_err(|e| anyhow::anyhow!(e))?;
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({ "scope": s.key(), "stored": stored, "policy": effective })
                        )?
                    );
                    Ok(ExitCode::SUCCESS)
                }
                PolicyAction::Delete { scope: s } => {
                    let Some(s) = scope(s) else {
                        return Ok(fail("say which: --vmid N, --tag T or --global"));
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

async fn connect(settings: &pvefleet_core::Settings) -> anyhow::Result<deadpool_postgres::Object> {
    let pool = pvefleet_core::db::connect(&settings.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    Ok(pool.get().await?)
}

/// One JSON line per sample: the decision, applied to the simulated container.
fn simulate(
    default: &AutoscalePolicy,
    policy: &std::path::Path,
    samples: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let p = match read_policy(policy).and_then(|v| policies::overlay(default, &v).map_err(|e| anyhow::anyhow!(e))) {
        Ok(p) => p,
        Err(e) => return Ok(fail(&format!("{e:#}"))),
    };
    let text =
        std::fs::read_to_string(samples).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", samples.display()))?;
    let safety = pvefleet_core::config::AutoscaleSafety::default();
    let node = Node {
        cpus: 64,
        cpu_pct: 10.0,
        memory_mb: 1 << 20,
        memory_used_mb: 0,
        memory_allocated_mb: 0,
    };
    let mut window = Window::new(p.evaluation_periods);
    let (mut cores, mut memory): (Option<u32>, Option<u64>) = (None, None);
    let (mut cpu_until, mut mem_until) = (0u64, 0u64);
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let s: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return Ok(fail(&format!("{}:{}: not JSON: {e}", samples.display(), n + 1))),
        };
        let t = s["t"].as_u64().unwrap_or(n as u64);
        let c = cores.get_or_insert(s["cores"].as_u64().unwrap_or(2) as u32);
        let m = memory.get_or_insert(s["memory_mb"].as_u64().unwrap_or(2048));
        window.push(Sample {
            key: t,
            cpu_cores: s["cpu_cores"].as_f64().unwrap_or(0.0),
            mem_mb: s["mem_mb"].as_f64().unwrap_or(0.0),
        });
        let Some(avg) = window.averages() else {
            println!("{}", json!({ "t": t, "decision": "collecting samples" }));
            continue;
        };
        let container = Container {
            cores: *c,
            cpulimit: s["cpulimit"].as_f64(),
            memory_mb: *m,
            cpu_cores: avg.cpu_cores,
            mem_mb: avg.mem_mb,
            mem_peak_mb: avg.mem_peak_mb,
        };
        let cd = Cooldown {
            cpu_secs: cpu_until.saturating_sub(t),
            memory_secs: mem_until.saturating_sub(t),
        };
        let d = decide::decide(&p, &safety, &container, &node, cd);
        let show = |ch: &Change| match ch {
            Change::Scale {
                from, to, emergency, ..
            } => json!({ "from": from, "to": to, "emergency": emergency }),
            Change::Hold(why) => json!({ "hold": why }),
        };
        println!(
            "{}",
            json!({ "t": t, "cores": show(&d.cores), "memory": show(&d.memory) })
        );
        if let Change::Scale { to, .. } = d.cores {
            *c = to as u32;
            cpu_until = t + p.cooldown_secs;
        }
        if let Change::Scale { to, .. } = d.memory {
            *m = to;
            mem_until = t + p.cooldown_secs;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(settings: &pvefleet_core::Settings, json: bool) -> anyhow::Result<ExitCode> {
    let client = connect(settings).await?;
    let pve = pvefleet_core::pve::client(&settings.pve)?;
    let rows = pve
        .resources(Some(pvefleet_proxmox::client::api::ResourceType::Vm))
        .await?;
    let all = policies::Policies::load(&client, &settings.autoscaler.policy).await?;
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r.kind == "lxc") {
        let Some(vmid) = r.vmid.and_then(|v| u32::try_from(v).ok()) else {
            continue;
        };
        let p = all.resolve(vmid, &r.tag_list(), &settings.autoscaler.policy);
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
            "cores": r.maxcpu, "memory_mb": r.maxmem.map(|m| m >> 20),
            "limits": { "cores": [p.min_cores, p.max_cores], "memory_mb": [p.min_memory_mb, p.max_memory_mb] },
            "enabled": p.enabled, "dry_run": p.dry_run,
            "last_action": last, "cooldown": cooldowns,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{:>6}  {:<8}  {:>6}  {:>6}  {:>5}  {:>9}  {:<14}  {:<18}  last action",
            "vmid", "node", "cpu%", "mem%", "cores", "memory", "cores min-max", "cooldown"
        );
        for c in &out {
            println!(
                "{:>6}  {:<8}  {:>6}  {:>6}  {:>5}  {:>9}  {:<14}  {:<18}  {}",
                // A JSON value ignores widths: each as a string first.
                c["vmid"].to_string(),
                c["node"].as_str().unwrap_or("-"),
                c["cpu_pct"].to_string(),
                c["mem_pct"].to_string(),
                c["cores"].to_string(),
                c["memory_mb"].to_string(),
                format!("{}-{}", c["limits"]["cores"][0], c["limits"]["cores"][1]),
                c["cooldown"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default(),
                c["last_action"].as_str().unwrap_or("-")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
