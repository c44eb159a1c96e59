//! Subcommand implementations.

mod autoscale;
mod backup;
mod bus;
mod config;
mod dev;
mod dlq;
mod migrate;
mod net;
mod notify;
mod pve;
mod pve_check;
mod saga;
mod secrets;
mod sim;
mod site;
mod site_config;
mod token;
mod topology;

use std::process::ExitCode;

use pvefleet_core::Settings;

use crate::cli::{BenchWhat, Cli, Command};

/// Runs one command; the exit code says how it went.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // These two read no configuration: a healthcheck and the first step of a new stack.
    match &cli.command {
        Command::Health { url, timeout } => return secrets::health(url, *timeout).await,
        Command::InitSecrets { dir, demo } => return secrets::init(dir, *demo),
        _ => {}
    }
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: {}",
                anyhow::Error::from(e)
                    .chain()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(": ")
            );
            return Ok(ExitCode::from(2));
        }
    };
    // dev writes the profile; `config check` and `migrate` are about the configured
    // deployment, never dev's.
    if !matches!(
        cli.command,
        Command::Dev { .. } | Command::Config { .. } | Command::Migrate
    ) {
        let file = crate::profile::config_file(cli.config.as_deref());
        crate::profile::apply(&mut settings, crate::profile::load().as_ref(), file.as_ref());
    }
    let mut telemetry = settings.telemetry.clone();
    // The CLI's output is for a person; keep the logs to warnings unless asked.
    if std::env::var("RUST_LOG").is_err() && telemetry.filter == "info" {
        telemetry.filter = "warn".into();
    }
    pvefleet_core::telemetry::init(&telemetry);
    match cli.command {
        Command::Migrate => migrate::run(&settings).await,
        Command::Topology { action } => topology::run(&settings, action).await,
        Command::Config { action } => config::run(&settings, action),
        Command::Bus { action } => bus::run(&settings, action).await,
        Command::Pve { action } => pve::run(&settings, action).await,
        Command::Sim { action } => sim::run(&settings, action).await,
        Command::Health { .. } | Command::InitSecrets { .. } => unreachable!("answered above"),
        Command::Token { action } => token::run(&settings, action).await,
        Command::Saga { action } => saga::run(&settings, action).await,
        Command::Dlq { action } => dlq::run(&settings, action).await,
        Command::Audit { action } => dlq::audit(&settings, action).await,
        Command::Notify { action } => notify::run(&settings, action).await,
        Command::Backup { action } => backup::run(&settings, action).await,
        Command::Autoscale { action } => autoscale::run(&settings, action).await,
        Command::Dev {
            listen,
            pvesim_listen,
            task_ms,
            without,
        } => dev::run(&settings, listen, pvesim_listen, task_ms, &without).await,
        Command::Site { action } => site::run(action).await,
        Command::Net { action } => net::run_net(action).await,
        Command::Vnet { action } => net::run_vnet(action).await,
        Command::Bench {
            what:
                BenchWhat::Sagas {
                    count,
                    concurrency,
                    rate,
                    rate_secs,
                    separate,
                },
        } => crate::bench_sagas::run(&settings, count, concurrency, rate, rate_secs, separate).await,
        Command::Bench {
            what:
                BenchWhat::Bus {
                    messages,
                    window,
                    rounds,
                    inbox_connections,
                },
        } => crate::bench::bus(&settings, messages, window, rounds, inbox_connections).await,
        Command::Bench {
            what: BenchWhat::Dlq { count },
        } => crate::bench_dlq::run(&settings, count).await,
        Command::Bench {
            what: BenchWhat::Autoscaler { containers },
        } => crate::bench_autoscaler::run(&settings, containers).await,
    }
}
