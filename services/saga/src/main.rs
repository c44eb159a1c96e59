//! `pvefleet-saga`: the saga coordinator. Consumes `pvefleet.saga` (`site.provision`,
//! `site.deprovision` and every step event) with the inbox, sends step commands through the
//! outbox; serves `/metrics`, `/healthz` and `/readyz` on `http.listen`.

use pvefleet_core::service::Service;

fn main() -> anyhow::Result<()> {
    Service::new("saga", "The saga coordinator: consumes pvefleet.saga (site.provision, site.deprovision, vnet.provision and every step event) with the inbox; sends step commands through the outbox.")
        .migrations()
        .main(|s| async move {
            pvefleet_saga::run(&s.settings, s.pool()?, Some(s.bus_ready()), s.shutdown.clone()).await
        })
}
