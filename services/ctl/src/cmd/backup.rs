//! `pvefleet backup policy|site|sync`: backup policies, the policy a site follows, and a sync
//! now. Changes are audited with the operator's name (`cli:$PVEFLEET_OPERATOR`, else
//! `cli:$USER`); the sync's own changes as `service:backup`.

use std::process::ExitCode;

use pvefleet_backup::ops::{self, OpsError};
use pvefleet_backup::policy::{self, Policy};
use pvefleet_core::audit::Actor;

use crate::cli::{BackupAction, BackupPolicyAction};

fn refused(e: OpsError) -> anyhow::Result<ExitCode> {
    match e {
        OpsError::Invalid(i) => {
            eprintln!("error: {}: {}", i.field, i.why);
            Ok(ExitCode::from(2))
        }
        OpsError::NotFound(m) | OpsError::Conflict(m) => {
            eprintln!("error: {m}");
            Ok(ExitCode::from(1))
        }
        other => Err(other.into()),
    }
}

pub async fn run(settings: &pvefleet_core::Settings, action: BackupAction) -> anyhow::Result<ExitCode> {
    let pool = pvefleet_core::db::connect(&settings.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    let mut client = pool.get().await?;
    let actor = Actor::cli();
    match action {
        BackupAction::Policy {
            action: BackupPolicyAction::List { json },
        } => {
            let policies = policy::all(&**client).await?;
            let sites = policy::covered_sites(&**client, &settings.saga, &settings.backup.default_policy).await?;
            let count = |name: &str| sites.iter().filter(|s| s.policy == name).count();
            if json {
                let rows: Vec<serde_json::Value> = policies
                    .values()
                    .map(|p| {
                        let mut v = serde_json::to_value(p).unwrap_or_default();
                        v["sites"] = count(&p.name).into();
                        v["default"] = (p.name == settings.backup.default_policy).into();
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<16}  {:<16}  {:<12}  {:<9}  {:<6}  {:<28}  {:>5}",
                "policy", "schedule", "storage", "mode", "state", "retention", "sites"
            );
            for p in policies.values() {
                let default = if p.name == settings.backup.default_policy {
                    " (default)"
                } else {
                    ""
                };
                println!(
                    "{:<16}  {:<16}  {:<12}  {:<9}  {:<6}  {:<28}  {:>5}{default}",
                    p.name,
                    p.schedule,
                    p.storage,
                    p.mode,
                    if p.enabled { "on" } else { "off" },
                    p.retention,
                    count(&p.name)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupAction::Policy {
            action:
                BackupPolicyAction::Set {
                    name,
                    schedule,
                    storage,
                    mode,
                    compress,
                    retention,
                    disabled,
                },
        } => {
            let p = Policy {
                name,
                schedule,
                storage,
                mode,
                compress,
                retention,
                enabled: !disabled,
            };
            match ops::set_policy(&mut client, &actor, &p).await {
                Ok(created) => {
                    println!(
                        "policy {} {} (PVE's job follows at the next sync: `pvefleet backup sync`)",
                        p.name,
                        if created { "created" } else { "updated" }
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => refused(e),
            }
        }
        BackupAction::Policy {
            action: BackupPolicyAction::Delete { name },
        } => match ops::delete_policy(
            &mut client,
            &actor,
            &name,
            &settings.backup.default_policy,
            &settings.saga,
        )
        .await
        {
            Ok(()) => {
                println!("policy {name} deleted");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => refused(e),
        },
        BackupAction::Site { id, policy, .. } => {
            match ops::set_site_policy(&mut client, &actor, id, policy.as_deref()).await {
                Ok(()) => {
                    println!(
                        "site {id} follows {}",
                        policy.as_deref().unwrap_or("its plan's policy, else the default")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => refused(e),
            }
        }
        BackupAction::Sync { json } => {
            let pve = pvefleet_backup::client(settings)?;
            let out = pvefleet_backup::sync_once(&pve, &pool, &settings.backup, &settings.saga).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(ExitCode::SUCCESS);
            }
            if !out.leader {
                println!("another backup service is syncing now; nothing done");
                return Ok(ExitCode::SUCCESS);
            }
            let j = &out.jobs;
            println!(
                "jobs: {} created, {} updated, {} removed, {} unchanged",
                j.created.len(),
                j.updated.len(),
                j.removed.len(),
                j.unchanged.len()
            );
            for (what, ids) in [
                ("created", &j.created),
                ("updated", &j.updated),
                ("removed", &j.removed),
            ] {
                for id in ids {
                    println!("  {what} {id}");
                }
            }
            let i = &out.inventory;
            println!(
                "backups: {} recorded, {} pruned, {} final backups expired",
                i.recorded, i.pruned, i.expired
            );
            Ok(ExitCode::SUCCESS)
        }
        BackupAction::Verify { site, json } => {
            let pve = pvefleet_backup::client(settings)?;
            let probe = pvefleet_backup::verify::Probe {
                runner: pvefleet_installer::runner(settings)?,
                installer: settings.installer.clone(),
            };
            let out = pvefleet_backup::verify::verify_once(&pve, &pool, &settings.backup, &probe, site).await?;
            let failed = out.outcome.as_deref() == Some("failed") || (out.leader && out.error.is_some());
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if !out.leader {
                println!("another backup service is verifying now; nothing done");
            } else if out.backup_id.is_none() {
                println!("no backup to verify");
            } else {
                let volid = out.volid.as_deref().unwrap_or("-");
                match (&out.outcome, &out.error) {
                    (Some(o), None) => println!("{volid}: {o}"),
                    (Some(o), Some(e)) => println!("{volid}: {o}: {e}"),
                    (None, Some(e)) => println!("{volid}: not verified: {e}"),
                    (None, None) => println!("{volid}: not verified"),
                }
                if !out.cleaned_up && out.outcome.is_some() {
                    eprintln!("warning: the scratch container could not be removed; the next run tries again");
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}
