//! `pvefleet-nethotplug`: network hotplug and SDN VNet binding. Consumes `pvefleet.nethotplug`
//! (`net.attach|update|detach`, `vnet.bind|unbind|ensure|remove`), emits `net.*` and `vnet.*`
//! events; serves `/metrics`, `/healthz` and `/readyz` on `http.listen`.

use pvefleet_core::service::Service;

fn main() -> anyhow::Result<()> {
    Service::new("nethotplug", "Consumes pvefleet.nethotplug (net.attach|update|detach, vnet.bind|unbind|ensure|remove); emits net.* and vnet.* events.")
        .db()
        .pve()
        .main(|s| async move {
            pvefleet_nethotplug::run(&s.settings, s.pool()?, Some(s.bus_ready()), s.shutdown.clone()).await
        })
}
