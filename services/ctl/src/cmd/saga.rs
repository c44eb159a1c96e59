//! `pvefleet saga list|show|retry-step|resume|abort`: sagas for operators. Changes are audited
//! with the operator's name (`cli:$PVEFLEET_OPERATOR`, else `cli:$USER`), in `saga_audit`
//! and in `audit_log`.

use std::process::ExitCode;

use crate::cli::SagaAction;

/// `cli:$PVEFLEET_OPERATOR` (else `cli:$USER`), as in every audit row of the CLI.
fn actor() -> String {
    pvefleet_core::audit::Actor::cli().name
}

pub async fn run(settings: &pvefleet_core::Settings, action: SagaAction) -> anyhow::Result<ExitCode> {
    use pvefleet_saga::ops;
    let pool = pvefleet_core::db::connect(&settings.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    let client = pool.get().await?;
    let s = &settings.saga;
    match action {
        SagaAction::List { state, json } => {
            let sagas = ops::list(&client, state.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sagas)?);
            } else {
                println!(
                    "{:<36}  {:<11}  {:<20}  {:<19}  {:<18}  error",
                    "saga", "kind", "site", "state", "step"
                );
                for g in &sagas {
                    let text = |k: &str| g[k].as_str().unwrap_or("-").to_string();
                    let error = g["error"]["error"]["message"].as_str().unwrap_or("");
                    println!(
                        "{:<36}  {:<11}  {:<20}  {:<19}  {:<18}  {error}",
                        text("id"),
                        text("kind"),
                        text("subdomain"),
                        text("state"),
                        text("step")
                    );
                }
                if sagas.is_empty() {
                    println!("(no sagas)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SagaAction::Show { id } => match ops::show(&client, id).await? {
            Some(v) => {
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("error: no saga {id}");
                Ok(ExitCode::from(1))
            }
        },
        SagaAction::RetryStep { id } => {
            let step = ops::retry_step(&client, s, id, &actor()).await?;
            println!("re-sent {step} for saga {id}");
            Ok(ExitCode::SUCCESS)
        }
        SagaAction::Resume { id } => {
            let step = ops::resume(&client, s, id, &actor()).await?;
            println!("resumed saga {id}: re-sent {step}");
            Ok(ExitCode::SUCCESS)
        }
        SagaAction::Abort { id } => {
            let queued = ops::abort(&client, s, id, &actor()).await?;
            println!(
                "aborting saga {id}: compensations {}",
                if queued.is_empty() {
                    "none".to_string()
                } else {
                    queued.join(", ")
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
