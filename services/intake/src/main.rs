//! `pvefleet-intake`: the intake API on `http.listen` (with `/metrics`, `/healthz`, `/readyz`),
//! writing commands through the outbox.

use pvefleet_core::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    pvefleet_core::telemetry::init(&settings.telemetry);
    let shutdown = pvefleet_core::shutdown::on_signal();
    let pool = pvefleet_core::db::connect(&settings.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    let listener = tokio::net::TcpListener::bind(settings.http.listen).await?;
    let readiness = pvefleet_core::http::Readiness::default();
    pvefleet_intake::run(&settings, pool, listener, readiness, shutdown).await
}
