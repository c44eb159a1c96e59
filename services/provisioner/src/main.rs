//! `pvefleet-provisioner`: the provisioner service. Consumes `pvefleet.provisioner`
//! (`container.create|start|snapshot|destroy`), emits `container.*` events; serves `/metrics`,
//! `/healthz` and `/readyz` on `http.listen`.

use pvefleet_core::service::Service;

fn main() -> anyhow::Result<()> {
    Service::new(
        "provisioner",
        "Consumes pvefleet.provisioner (container.create|start|snapshot|destroy); emits container.* events.",
    )
    .db()
    .pve()
    .main(|s| async move {
        pvefleet_provisioner::run(&s.settings, s.db.clone(), Some(s.bus_ready()), s.shutdown.clone()).await
    })
}
