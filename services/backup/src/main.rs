//! `pvefleet-backup`: the backup service. Consumes `pvefleet.backup` (`backup.create`),
//! emits `backup.created` / `backup.create_failed`; every `backup.sync_interval` keeps PVE's
//! backup jobs in step with the policies and the fleet's records with the storages; serves
//! `/metrics`, `/healthz` and `/readyz` on `http.listen`.

use pvefleet_core::service::Service;

fn main() -> anyhow::Result<()> {
    Service::new(
        "backup",
        "Consumes pvefleet.backup (backup.create); keeps PVE's backup jobs in step with the backup policies and records every backup.",
    )
    .db()
    .pve()
    .main(|s| async move { pvefleet_backup::run(&s.settings, s.pool()?, Some(s.bus_ready()), s.shutdown.clone()).await })
}
