//! `pvefleet-notifier`: the notifier. Consumes `pvefleet.notifier` (`site.provisioned`,
//! `site.provision_failed`, `site.deprovisioned`, `saga.suspended`,
//! `saga.compensation_failed`, `message.parked`, `resource.alert`, and its own
//! `notify.deliver`) and delivers notices by e-mail, signed webhooks, ntfy and Alertmanager;
//! serves `/metrics`, `/healthz` and `/readyz` on `http.listen`.

use pvefleet_core::service::Service;

fn main() -> anyhow::Result<()> {
    Service::new(
        "notifier",
        "Consumes pvefleet.notifier (site, saga, parked and alert events); delivers notices by e-mail, signed webhooks, ntfy and Alertmanager.",
    )
    .db()
    .main(|s| async move { pvefleet_notifier::run(&s.settings, s.pool()?, Some(s.bus_ready()), s.shutdown.clone()).await })
}
