//! `pvefleet migrate`: create the database when missing, then apply embedded migrations.

use std::process::ExitCode;

use pvefleet_core::Settings;

pub async fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    let pool = pvefleet_core::db::connect(&settings.db).await?;
    let applied = pvefleet_core::db::migrate(&pool).await?;
    if applied.is_empty() {
        println!("Database {} is up to date.", settings.db.url.redacted());
    } else {
        for m in &applied {
            println!("applied {m}");
        }
        println!(
            "Applied {} migration(s) to {}.",
            applied.len(),
            settings.db.url.redacted()
        );
    }
    Ok(ExitCode::SUCCESS)
}
