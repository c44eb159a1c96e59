//! What the saga tests share: backups and restores asked for as intake asks for them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pvefleet_contracts::ids::SiteId;
use pvefleet_core::audit::Actor;
use pvefleet_testkit::TestDb;

/// Takes an on-demand backup of `site` through the backup service, as `POST
/// /v1/sites/{id}/backups` does, and waits until it is written: its volume.
pub async fn backed_up(db: &TestDb, site: SiteId, wait: Duration) -> String {
    let mut c = db.client().await.unwrap();
    let id = pvefleet_backup::ops::request(
        &mut c,
        &Actor::cli(),
        site.as_uuid(),
        pvefleet_contracts::messages::BackupKind::OnDemand,
    )
    .await
    .unwrap();
    pvefleet_testkit::eventually(wait, || async {
        let r = c
            .query_one("SELECT state, volid FROM backups WHERE id = $1", &[&id])
            .await
            .unwrap();
        (r.get::<_, String>(0) == "ok")
            .then(|| r.get::<_, Option<String>>(1))
            .flatten()
    })
    .await
    .expect("the backup is written")
}

/// Asks for a restore of `site` from `volid` (none: the latest) as intake does: the saga's id.
pub async fn restore(db: &TestDb, site: SiteId, volid: Option<&str>) -> uuid::Uuid {
    let mut c = db.client().await.unwrap();
    pvefleet_backup::ops::restore(&mut c, &Actor::cli(), site.as_uuid(), volid)
        .await
        .unwrap()
}
