//! A binary behaves as a CLI: `--help` and `--version` answer on stdout with exit 0 and start
//! nothing. Every connection a started service would open (the broker, Postgres, PVE, its
//! ops port) is pointed at one listener held here; the check fails if anything connects to it.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

/// Runs `bin --help` and `bin --version` and checks both answer without side effects; the
/// `--help` text must name `name`. Returns a description of what went wrong, if anything.
pub fn answers_help_and_version(bin: &str, name: &str) -> Result<(), String> {
    let trap = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    trap.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = trap.local_addr().map_err(|e| e.to_string())?;
    for arg in ["--help", "--version"] {
        let out = Command::new(bin)
            .arg(arg)
            .env("PVEFLEET_BUS__URL", format!("amqp://guest:guest@{addr}/%2f"))
            .env("PVEFLEET_DB__URL", format!("postgres://postgres@{addr}/none"))
            .env("PVEFLEET_PVE__URL", format!("http://{addr}"))
            .env("PVEFLEET_HTTP__LISTEN", addr.to_string())
            .env("PVEFLEET_INTAKE_URL", format!("http://{addr}"))
            .env("PVESIM_PORT", addr.port().to_string())
            .output()
            .map_err(|e| format!("{bin} {arg}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "{bin} {arg} exited {:?}: {}{}",
                out.status.code(),
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if !stdout.contains(name) {
            return Err(format!("{bin} {arg} does not name {name}: {stdout}"));
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    trapped(&trap, bin)
}

/// Runs a service binary with an argument it does not take: a usage error (exit 2) that starts
/// nothing either.
pub fn refuses_arguments(bin: &str) -> Result<(), String> {
    let trap = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    trap.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = trap.local_addr().map_err(|e| e.to_string())?;
    let out = Command::new(bin)
        .arg("--bogus")
        .env("PVEFLEET_BUS__URL", format!("amqp://guest:guest@{addr}/%2f"))
        .env("PVEFLEET_DB__URL", format!("postgres://postgres@{addr}/none"))
        .env("PVEFLEET_HTTP__LISTEN", addr.to_string())
        .output()
        .map_err(|e| format!("{bin}: {e}"))?;
    if out.status.code() != Some(2) {
        return Err(format!("{bin} --bogus exited {:?}, not 2", out.status.code()));
    }
    trapped(&trap, bin)
}

fn trapped(trap: &TcpListener, bin: &str) -> Result<(), String> {
    match trap.accept() {
        Ok((_, peer)) => Err(format!("{bin} connected to the trap from {peer}: it started something")),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
