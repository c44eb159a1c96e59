//! `pvefleet-installer`: the installer. Consumes `pvefleet.installer` (`app.install`), emits
//! `app.installed` or `app.install_failed`; serves `/metrics`,
//! `/healthz` and `/readyz` on `http.listen`.

use pvefleet_core::service::Service;

fn main() -> anyhow::Result<()> {
    Service::new(
        "installer",
        "Consumes pvefleet.installer (app.install); emits app.installed or app.install_failed.",
    )
    .db()
    .pve()
    .main(|s| async move {
        pvefleet_installer::run(&s.settings, s.pool()?, Some(s.bus_ready()), s.shutdown.clone()).await
    })
}
