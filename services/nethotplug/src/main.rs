//! `pvefleet-nethotplug`: network hotplug and SDN VNet binding. Consumes `pvefleet.nethotplug`
//! (`net.attach|update|detach`, `vnet.bind|unbind|ensure|remove`), emits `net.*` and `vnet.*`
//! events; serves `/metrics`, `/healthz` and `/readyz` on `http.listen`.

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
    let pool = pvefleet_core::db::connect(&settings.db).await?;
    let result = pvefleet_nethotplug::run(&settings, pool, Some(ready), shutdown.clone()).await;
    shutdown.cancel();
    let _ = http.await;
    result
}
