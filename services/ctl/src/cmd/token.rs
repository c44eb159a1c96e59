//! `pvefleet token create|list|revoke|rotate`: intake API tokens. A new token is printed once;
//! every change is audited as `cli:$PVEFLEET_OPERATOR`.

use std::process::ExitCode;

use pvefleet_core::audit::Actor;
use serde_json::Value;

use crate::cli::TokenAction;

pub async fn run(settings: &pvefleet_core::Settings, action: TokenAction) -> anyhow::Result<ExitCode> {
    let pool = pvefleet_core::db::connect(&settings.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    let mut client = pool.get().await?;
    match action {
        TokenAction::Create {
            name,
            owner,
            scopes,
            expires,
        } => {
            let new = pvefleet_intake::NewToken {
                name: name.clone(),
                owner: owner.clone(),
                scopes: scopes.clone(),
                expires_in: expires,
            };
            let minted = match pvefleet_intake::mint(&mut client, &new, &Actor::cli()).await {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            let whose = owner.map_or("an operator's token".to_string(), |o| format!("owner '{o}'"));
            let until = expires.map_or(String::new(), |d| {
                format!(", expiring in {}", humantime::format_duration(d))
            });
            eprintln!(
                "Token {} for '{name}' ({whose}) with scopes {}{until}. It is shown once; keep it safe:",
                minted.id,
                scopes.join(", ")
            );
            println!("{}", minted.token);
            Ok(ExitCode::SUCCESS)
        }
        TokenAction::List { owner, all, json } => {
            let list = pvefleet_intake::list_tokens(&client, owner.as_deref(), all).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<36}  {:<16}  {:<16}  {:<8}  {:<20}  scopes",
                "id", "name", "owner", "status", "expires"
            );
            let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("-").to_string();
            for t in list.as_array().cloned().unwrap_or_default() {
                let scopes: Vec<&str> = t["scopes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let expires = text(&t, "expires_at");
                println!(
                    "{:<36}  {:<16}  {:<16}  {:<8}  {:<20}  {}",
                    text(&t, "id"),
                    text(&t, "name"),
                    t["owner"].as_str().unwrap_or("(operator)"),
                    text(&t, "status"),
                    expires.split('.').next().unwrap_or("-"),
                    scopes.join(",")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenAction::Revoke { id, reason } => {
            if pvefleet_intake::revoke(&mut client, id, &reason, &Actor::cli()).await? {
                println!("revoked token {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: no active token {id}");
                Ok(ExitCode::from(1))
            }
        }
        TokenAction::Rotate { id } => match pvefleet_intake::rotate(&mut client, id, &Actor::cli()).await? {
            Some(m) => {
                eprintln!(
                    "Token {id} is revoked; its replacement {} is shown once; keep it safe:",
                    m.id
                );
                println!("{}", m.token);
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("error: no active token {id}");
                Ok(ExitCode::from(1))
            }
        },
    }
}
