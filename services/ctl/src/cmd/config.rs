//! `pvefleet config check`: load, validate and print the effective configuration.

use std::process::ExitCode;

use pvefleet_core::Settings;

use crate::cli::ConfigAction;

pub fn run(settings: &Settings, action: ConfigAction) -> anyhow::Result<ExitCode> {
    match action {
        ConfigAction::Check => {
            println!("# Effective configuration (defaults < file < PVEFLEET_* environment). Secrets are redacted.");
            print!("{}", settings.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}
