//! `pvefleet`: the operator CLI. Thin: parse, load config, init telemetry, dispatch.

mod bench;
mod bench_autoscaler;
mod bench_dlq;
mod bench_sagas;
mod cli;
mod cmd;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cmd::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
