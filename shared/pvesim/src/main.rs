//! `pvefleet-pvesim`: serves the simulated PVE API (plain HTTP) for demos, `pvefleet dev` and
//! benchmarks. Faults are injected through `/_sim/...` (see the library docs).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use pvefleet_pvesim::{Load, Sim, SimConfig};

/// A simulated Proxmox VE API.
#[derive(Debug, Parser)]
#[command(name = "pvefleet-pvesim", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", env = "PVESIM_BIND")]
    bind: IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 8006, env = "PVESIM_PORT")]
    port: u16,
    /// Number of nodes (`pve1`, `pve2`, ...).
    #[arg(long, default_value_t = 3, env = "PVESIM_NODES")]
    nodes: usize,
    /// The PVE version to claim: 9.x answers HA rules; 8.x answers HA groups and 501 for rules.
    #[arg(long, default_value = "9.1.3", env = "PVESIM_PVE_VERSION")]
    pve_version: String,
    /// The only API token accepted, `USER@REALM!ID=SECRET`; without it every request is accepted.
    #[arg(long, env = "PVESIM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How long each task runs, in milliseconds.
    #[arg(long, default_value_t = 500, env = "PVESIM_TASK_MS")]
    task_ms: u64,
    /// Start with this many running containers (vmid 1000 and up), for load tests.
    #[arg(long, default_value_t = 0, env = "PVESIM_POPULATE")]
    populate: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // JSON logs when the fleet's setting asks for them (the compose stack does).
    if std::env::var("PVEFLEET_TELEMETRY__FORMAT").is_ok_and(|f| f == "json") {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    if args.nodes == 0 || args.nodes > 64 {
        anyhow::bail!("--nodes must be between 1 and 64");
    }
    let token = match args.token.as_deref() {
        Some(t) => {
            let (id, secret) = t
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--token must be USER@REALM!ID=SECRET"))?;
            Some((id.to_string(), secret.to_string()))
        }
        None => None,
    };
    let sim = Sim::new(SimConfig {
        nodes: (1..=args.nodes).map(|i| format!("pve{i}")).collect(),
        version: args.pve_version.clone(),
        token,
        task_duration: Duration::from_millis(args.task_ms),
        ..SimConfig::default()
    });
    if args.populate > 0 {
        sim.populate(
            1000,
            args.populate.min(100_000),
            Load {
                cpu: 0.1,
                mem: 256 << 20,
                disk: 1 << 30,
                ..Load::default()
            },
        );
    }
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, nodes = args.nodes, version = %args.pve_version, "pvesim listening.");
    axum::serve(listener, sim.router())
        .with_graceful_shutdown(stop_signal())
        .await?;
    Ok(())
}

/// SIGTERM (what `docker stop` sends to PID 1, which has no default handler) or ctrl-c.
async fn stop_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("pvesim stopping.");
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}
