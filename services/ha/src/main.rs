//! `pvefleet-ha`: the ha service. Consumes `pvefleet.ha` (`ha.enable`, `ha.disable`), emits
//! `ha.*` events, and repairs HA drift every `ha.reconcile_interval`; serves `/metrics`,
//! `/healthz` and `/readyz` on `http.listen`.

use pvefleet_core::service::Service;

fn main() -> anyhow::Result<()> {
    Service::new("ha", "Consumes pvefleet.ha (ha.enable, ha.disable); emits ha.* events; repairs HA drift every ha.reconcile_interval.")
        .db()
        .pve()
        .main(|s| async move {
            // The watchdog asks Postgres which containers a saga is working on.
            pvefleet_ha::run(&s.settings, s.db.clone(), Some(s.bus_ready()), s.shutdown.clone()).await
        })
}
