//! `pvefleet token create`: an intake API token, printed once.

use std::process::ExitCode;

use crate::cli::TokenAction;

pub async fn run(settings: &pvefleet_core::Settings, action: TokenAction) -> anyhow::Result<ExitCode> {
    match action {
        TokenAction::Create { name, scopes } => {
            let pool = pvefleet_core::db::connect(&settings.db).await?;
            pvefleet_core::db::migrate(&pool).await?;
            let client = pool.get().await?;
            let token = pvefleet_intake::create_token(&client, &name, &scopes).await?;
            eprintln!(
                "Token for '{name}' with scopes {}. It is shown once; keep it safe:",
                scopes.join(", ")
            );
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
