//! `pvefleet-autoscaler`: the autoscaler. Every `autoscaler.interval` it reads the cluster once, emits
//! `container.scaled` for what it changes; serves `/metrics`,
//! `/healthz` and `/readyz` on `http.listen`.

use pvefleet_core::service::Service;

fn main() -> anyhow::Result<()> {
    Service::new("autoscaler", "Every autoscaler.interval reads the cluster once and resizes containers within their policies; emits container.scaled.")
        .db()
        .pve()
        .main(|s| async move {
            pvefleet_autoscaler::run(&s.settings, s.pool()?, Some(s.bus_ready()), s.shutdown.clone()).await
        })
}
