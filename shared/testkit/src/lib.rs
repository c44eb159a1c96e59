//! Test helpers: an isolated RabbitMQ vhost and Postgres database per test, raw publishing and
//! capture, and a pausable TCP proxy to black-hole the broker for one test only.
//!
//! Everything talks to the real services on loopback; nothing here mocks them.

pub mod broker;
pub mod cli;
pub mod db;
pub mod edge;
pub mod proxy;
pub mod ssh;

pub use broker::{TestVhost, rabbitmqctl};
pub use db::TestDb;
pub use proxy::PausableProxy;

use std::time::Duration;

use pvefleet_core::Settings;

/// Installs a test log subscriber once (respects `RUST_LOG`; quiet by default).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Settings for a test: its own vhost, optionally its own database, and fast retry tiers.
pub fn settings(vhost: &TestVhost, db: Option<&TestDb>) -> Settings {
    let mut s = Settings::default();
    s.bus.url = pvefleet_core::Secret::new(vhost.url());
    s.bus.retry_tiers = vec![
        Duration::from_millis(300),
        Duration::from_millis(600),
        Duration::from_millis(900),
    ];
    s.bus.max_attempts = 4;
    s.bus.delivery_limit = 3;
    s.bus.publish_timeout = Duration::from_secs(5);
    s.bus.connect_timeout = Duration::from_secs(5);
    s.worker.concurrency = 8;
    s.worker.drain_timeout = Duration::from_secs(5);
    s.outbox.poll_interval = Duration::from_millis(100);
    if let Some(db) = db {
        s.db.url = pvefleet_core::Secret::new(db.url());
        s.db.pool_size = 8;
    }
    s
}

/// Points `s.pve` at a pvesim listening on `addr` that accepts the token `id` = `secret`.
pub fn use_pvesim(s: &mut Settings, addr: std::net::SocketAddr, id: &str, secret: &str) {
    s.pve.url = format!("http://{addr}");
    s.pve.token_id = Some(id.to_string());
    s.pve.token_secret = Some(pvefleet_core::Secret::new(secret));
}

/// Polls `f` every 50 ms until it returns `Some`, or `None` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
