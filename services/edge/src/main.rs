//! `pvefleet-edge`: the edge service. Consumes `pvefleet.edge` (`dns.*`, `proxy.*` commands), emits
//! `dns.*` and `proxy.*` events; serves `/metrics`,
//! `/healthz` and `/readyz` on `http.listen`.

use pvefleet_core::service::Service;

fn main() -> anyhow::Result<()> {
    Service::new(
        "edge",
        "Consumes pvefleet.edge (dns.*, proxy.* commands); emits dns.* and proxy.* events.",
    )
    .main(|s| async move { pvefleet_edge::run(&s.settings, Some(s.bus_ready()), s.shutdown.clone()).await })
}
