//! `pvefleet notify list|show|test|resend|owner`: deliveries for operators. Changes are
//! audited with the operator's name (`cli:$PVEFLEET_OPERATOR`, else `cli:$USER`).

use std::process::ExitCode;

use pvefleet_core::audit::Actor;
use pvefleet_notifier::ops::{self, OpsError, Resend};
use pvefleet_notifier::store;

use crate::cli::{NotifyAction, OwnerAction};

/// A bad argument: the message and exit code 2.
fn usage(what: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {what}");
    ExitCode::from(2)
}

pub async fn run(settings: &pvefleet_core::Settings, action: NotifyAction) -> anyhow::Result<ExitCode> {
    if let NotifyAction::List { state: Some(s), .. } = &action
        && !store::STATES.contains(&s.as_str())
    {
        return Ok(usage(format_args!("--state {s}: one of {}", store::STATES.join(", "))));
    }
    if let NotifyAction::Owner {
        action: OwnerAction::Set { owner, .. } | OwnerAction::Show { owner, .. },
    } = &action
        && let Err(e) = pvefleet_policy::site::owner(owner)
    {
        return Ok(usage(format_args!("owner: {e}")));
    }
    let pool = pvefleet_core::db::connect(&settings.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    let mut client = pool.get().await?;
    match action {
        NotifyAction::List {
            state,
            owner,
            event_type,
            limit,
            json,
        } => {
            let filter = store::Filter {
                state,
                owner,
                audience: None,
                event_type,
                before: None,
                limit,
            };
            let rows = store::list(&client, &filter).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<36}  {:<24}  {:<12}  {:<24}  {:<10}  {:>5}  error",
                "id", "event", "channel", "target", "state", "tries"
            );
            for d in &rows {
                println!(
                    "{:<36}  {:<24}  {:<12}  {:<24}  {:<10}  {:>5}  {}",
                    d.id,
                    d.event_type,
                    d.channel,
                    d.target,
                    d.state,
                    d.attempts,
                    d.last_error.as_deref().unwrap_or("")
                );
            }
            if rows.is_empty() {
                println!("(no deliveries)");
            }
            Ok(ExitCode::SUCCESS)
        }
        NotifyAction::Show { id } => match store::get(&client, id).await? {
            Some(d) => {
                println!("{}", serde_json::to_string_pretty(&d)?);
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("error: no delivery {id}");
                Ok(ExitCode::from(1))
            }
        },
        NotifyAction::Test { message } => match ops::test(&mut client, settings, &message, &Actor::cli()).await {
            Ok(ids) if ids.is_empty() => {
                eprintln!(
                    "error: no route sends notify.test anywhere: configure [notifier.operator] channels or a route for it"
                );
                Ok(ExitCode::from(1))
            }
            Ok(ids) => {
                for id in &ids {
                    println!("queued {id}");
                }
                println!("follow with: pvefleet notify list --event notify.test");
                Ok(ExitCode::SUCCESS)
            }
            Err(OpsError::Invalid { field, why }) => Ok(usage(format_args!("--{field}: {why}"))),
            Err(e) => Err(e.into()),
        },
        NotifyAction::Resend { id } => match ops::resend(&mut client, id, None, &Actor::cli()).await? {
            Resend::Queued => {
                println!("queued {id} again");
                Ok(ExitCode::SUCCESS)
            }
            Resend::Unsettled(state) => {
                eprintln!(
                    "error: {id} is {state}: it is on its way already; resend it once it settles (pvefleet notify show {id})"
                );
                Ok(ExitCode::from(1))
            }
            Resend::Missing => {
                eprintln!("error: no delivery {id}");
                Ok(ExitCode::from(1))
            }
        },
        NotifyAction::Owner {
            action: OwnerAction::Set { owner, email, webhook },
        } => {
            if email.is_none() && webhook.is_none() {
                return Ok(usage("say what to set: --email, --webhook (an empty value clears one)"));
            }
            let key = ops::owner_key(&settings.notifier)?;
            match ops::set_contacts(
                &mut client,
                &owner,
                email.as_deref(),
                webhook.as_deref(),
                key.as_deref(),
                &Actor::cli(),
            )
            .await
            {
                Ok(c) => {
                    print_contacts(&c, key.is_some());
                    Ok(ExitCode::SUCCESS)
                }
                Err(OpsError::Invalid { field, why }) => {
                    let flag = if field == "webhook_url" { "webhook" } else { field };
                    Ok(usage(format_args!("--{flag}: {why}")))
                }
                Err(e) => Err(e.into()),
            }
        }
        NotifyAction::Owner {
            action: OwnerAction::Show { owner, json },
        } => {
            let key = ops::owner_key(&settings.notifier)?;
            let c = ops::contacts(&client, &owner, key.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print_contacts(&c, key.is_some());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_contacts(c: &ops::Contacts, keyed: bool) {
    println!("owner        {}", c.owner);
    println!("email        {}", c.email.as_deref().unwrap_or("-"));
    println!("webhook      {}", c.webhook_url.as_deref().unwrap_or("-"));
    match (&c.webhook_secret, &c.webhook_url) {
        (Some(s), _) => println!("signing      {s}  (Standard Webhooks: give it to the receiver)"),
        (None, Some(_)) if !keyed => {
            println!("signing      none: set notifier.owner_webhook_key_file to sign owners' webhooks")
        }
        _ => {}
    }
}
