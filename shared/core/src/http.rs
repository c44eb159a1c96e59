//! The ops endpoints every service mounts: `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

type Checks = Vec<(&'static str, Arc<AtomicBool>)>;

/// Readiness flags, set by the parts of a service that must be up before it takes work.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<std::sync::Mutex<Checks>>,
}

impl Readiness {
    /// Registers a named check, initially not ready, and returns its flag.
    pub fn check(&self, name: &'static str) -> ReadyFlag {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut c) = self.checks.lock() {
            c.push((name, flag.clone()));
        }
        ReadyFlag(flag)
    }

    /// The checks that are not ready.
    pub fn failing(&self) -> Vec<&'static str> {
        self.checks
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(_, f)| !f.load(Ordering::Relaxed))
                    .map(|(n, _)| *n)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One readiness flag.
#[derive(Clone, Debug, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
}

/// The ops router; merge it into a service's own router or serve it alone.
pub fn ops_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

async fn readyz(State(r): State<Readiness>) -> impl IntoResponse {
    let failing = r.failing();
    if failing.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", failing.join(", ")),
        )
    }
}

async fn metrics(State(r): State<Readiness>) -> impl IntoResponse {
    // A service that answers but is not ready (`up` is 1, `pvefleet_ready` 0) takes no work.
    metrics::gauge!("pvefleet_ready").set(if r.failing().is_empty() { 1.0 } else { 0.0 });
    let body = crate::telemetry::prometheus().map(|h| h.render()).unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Serves a router on `listen` until the token is cancelled.
pub async fn serve(listen: SocketAddr, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    serve_listener(listener, router, shutdown).await
}

/// Serves a router on a bound listener (port 0 in tests) until the token is cancelled.
pub async fn serve_listener(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "Serving HTTP.");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
