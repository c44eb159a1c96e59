//! `pvefleet`: the operator CLI. Thin: parse, load config, init telemetry, dispatch.

mod bench;
mod bench_autoscaler;
mod bench_dlq;
mod bench_sagas;
mod cli;
mod cmd;
mod profile;

use clap::Parser;

/// The exit status of a command whose reader went away (`pvefleet saga list | head -1`): what
/// a shell reports for a process ended by SIGPIPE (128 + 13).
const CLOSED_STDOUT: u8 = 141;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    quiet_on_closed_stdout();
    let cli = cli::Cli::parse();
    let result = cmd::run(cli).await;
    // The spans of the command (of `pvefleet dev`, its services'), exported before it ends.
    tokio::task::block_in_place(pvefleet_core::telemetry::shutdown);
    match result {
        Ok(code) => code,
        Err(e) if closed_stdout(&e) => std::process::ExitCode::from(CLOSED_STDOUT),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `e` is a write to a stdout whose reader closed it.
fn closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` panics when its reader has gone; a command piped into `head` must end quietly
/// instead, as other Unix tools do, and without a panic message.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(i32::from(CLOSED_STDOUT));
        }
        default(info);
    }));
}
