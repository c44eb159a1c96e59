//! `pvesim`: serves the simulated PVE API on an address (default 127.0.0.1:8006, plain HTTP).

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8006".into())
        .parse()?;
    let sim = pvefleet_pvesim::Sim::new(pvefleet_pvesim::SimConfig::default());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "pvesim listening.");
    axum::serve(listener, sim.router()).await?;
    Ok(())
}
