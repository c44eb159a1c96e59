//! `pvefleet-ha`: the ha service. Consumes `pvefleet.ha` (`ha.enable`, `ha.disable`), emits
//! `ha.*` events, and repairs HA drift every `ha.reconcile_interval`; serves `/metrics`,
//! `/healthz` and `/readyz` on `http.listen`.

use pvefleet_core::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    pvefleet_core::telemetry::init(&settings.telemetry);
    let shutdown = pvefleet_core::shutdown::on_signal();
    let readiness = pvefleet_core::http::Readiness::default();
    let ready = readiness.check("bus");
    let ops = pvefleet_core::http::ops_router(readiness);
    let http = tokio::spawn(pvefleet_core::http::serve(settings.http.listen, ops, shutdown.clone()));
    // The watchdog asks Postgres which containers a saga is working on.
    let db = pvefleet_core::db::connect(&settings.db).await?;
    let result = pvefleet_ha::run(&settings, Some(db), Some(ready), shutdown.clone()).await;
    shutdown.cancel();
    let _ = http.await;
    result
}
