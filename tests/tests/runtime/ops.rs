//! The ops endpoints every service mounts: `/healthz`, `/readyz`, `/metrics`.

use std::time::Duration;

use pvefleet_core::http::{Readiness, ops_router, serve_listener};
use pvefleet_core::instrument::MessageHandled;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test]
async fn readyz_names_what_is_not_ready_and_metrics_shows_the_runtime_counters() -> anyhow::Result<()> {
    pvefleet_core::telemetry::init(&Default::default());
    let readiness = Readiness::default();
    let bus = readiness.check("bus");
    let db = readiness.check("db");
    db.set(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_listener(listener, ops_router(readiness), shutdown.clone()));

    assert_eq!(get(addr, "/healthz").await?.0, 200);
    let (status, body) = get(addr, "/readyz").await?;
    assert_eq!(status, 503);
    assert!(body.contains("bus") && !body.contains("db"), "{body}");
    bus.set(true);
    assert_eq!(get(addr, "/readyz").await?.0, 200);

    MessageHandled {
        queue: "pvefleet.ops-test",
        message_type: "container.create",
        outcome: "ok",
        elapsed: Duration::from_millis(3),
    }
    .emit();
    let (status, body) = get(addr, "/metrics").await?;
    assert_eq!(status, 200);
    assert!(body.contains("pvefleet_messages_handled_total{"), "{body}");
    assert!(body.contains("queue=\"pvefleet.ops-test\""), "{body}");

    shutdown.cancel();
    server.await??;
    Ok(())
}
