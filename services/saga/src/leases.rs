//! Leases of vmids and addresses from the configured pools, unique in Postgres (`leases`).
//!
//! A lease takes the lowest free value that no other transaction is taking at the same time.
//! Each candidate is claimed with a transaction-scoped advisory try-lock, so concurrent sagas
//! walk past each other's candidates instead of queueing on the primary key behind each
//! other's uncommitted inserts. The primary key still decides: an insert that meets a value
//! committed meanwhile does nothing, and the next value is taken.

use pvefleet_contracts::StepError;
use pvefleet_core::bus::Outcome;
use pvefleet_core::config::SagaSettings;
use uuid::Uuid;

/// The advisory lock classes of vmid and address candidates (first key of
/// `pg_try_advisory_xact_lock(int, int)`).
const VMID_CLASS: i32 = 0x706c_7600; // "plv\0"
const IP_CLASS: i32 = 0x706c_6900; // "pli\0"

const ATTEMPTS: usize = 32;

/// The lowest free value of the pool is found in SQL, scanning up from the first candidate
/// through the `leases` primary key: no candidate list crosses the wire. The CASE makes the
/// try-lock run only for values that are free, and the scan stops at the first one locked.
const LEASE_VMID: &str = "WITH free AS (
        SELECT n::text AS value FROM generate_series($2::bigint, $3::bigint) AS n
        WHERE CASE WHEN EXISTS (SELECT 1 FROM leases l WHERE l.kind = 'vmid' AND l.value = n::text) THEN false
                   ELSE pg_try_advisory_xact_lock($4::int, n::int) END
        LIMIT 1)
    INSERT INTO leases (kind, value, site_id) SELECT 'vmid', value, $1 FROM free
    ON CONFLICT (kind, value) DO NOTHING RETURNING value";

const LEASE_IP: &str = "WITH free AS (
        SELECT host($4::text::inet + n) AS value FROM generate_series($2::bigint, $3::bigint) AS n
        WHERE CASE WHEN host($4::text::inet + n) = $5
                     OR EXISTS (SELECT 1 FROM leases l WHERE l.kind = 'ip' AND l.value = host($4::text::inet + n)) THEN false
                   ELSE pg_try_advisory_xact_lock($6::int, n::int) END
        LIMIT 1)
    INSERT INTO leases (kind, value, site_id) SELECT 'ip', value, $1 FROM free
    ON CONFLICT (kind, value) DO NOTHING RETURNING value";

const FREE_LEFT: &str = "SELECT count(*) < ($3::bigint - $2::bigint + 1) FROM leases WHERE kind = $1";

async fn lease(
    db: &dyn pvefleet_core::db::Sql,
    kind: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    range: (i64, i64),
) -> Result<Option<String>, Outcome> {
    for _ in 0..ATTEMPTS {
        let row = db
            .opt(sql, params)
            .await
            .map_err(|e| Outcome::retry(format!("cannot lease a {kind}: {e}")))?;
        if let Some(row) = row {
            return Ok(Some(row.get(0)));
        }
        // Nothing inserted: the pool is full, or another transaction took the same value.
        let left: bool = db
            .one(FREE_LEFT, &[&kind, &range.0, &range.1])
            .await
            .map_err(|e| Outcome::retry(format!("cannot lease a {kind}: {e}")))?
            .get(0);
        if !left {
            return Ok(None);
        }
    }
    Err(Outcome::retry(format!(
        "could not lease a {kind} after {ATTEMPTS} tries"
    )))
}

/// Leases the lowest free vmid of `saga.vmid_first..=saga.vmid_last`.
pub(crate) async fn lease_vmid(db: &dyn pvefleet_core::db::Sql, s: &SagaSettings, site: Uuid) -> Result<u32, Outcome> {
    let (first, last) = (i64::from(s.vmid_first), i64::from(s.vmid_last));
    match lease(
        db,
        "vmid",
        LEASE_VMID,
        &[&site, &first, &last, &VMID_CLASS],
        (first, last),
    )
    .await?
    {
        Some(v) => v.parse().map_err(|_| Outcome::retry("a leased vmid is not a number")),
        None => Err(Outcome::Fail(StepError::new(
            "lease.vmid_exhausted",
            "no free vmid in saga.vmid_first..=saga.vmid_last",
        ))),
    }
}

/// Leases the lowest free address of the pool, in CIDR form (`10.10.0.100/24`).
pub(crate) async fn lease_ip(db: &dyn pvefleet_core::db::Sql, s: &SagaSettings, site: Uuid) -> Result<String, Outcome> {
    let Some((network, prefix)) = parse_cidr(&s.ip_cidr) else {
        return Err(Outcome::Fail(StepError::new(
            "config.ip_cidr",
            format!("saga.ip_cidr '{}' is not an IPv4 CIDR", s.ip_cidr),
        )));
    };
    let size = 1i64 << (32 - u32::from(prefix));
    let first = i64::from(s.ip_first).max(1);
    let last = i64::from(s.ip_last).min(size - 2);
    let net = std::net::Ipv4Addr::from(network).to_string();
    let gateway = s.gateway.clone();
    match lease(
        db,
        "ip",
        LEASE_IP,
        &[&site, &first, &last, &net, &gateway, &IP_CLASS],
        (first, last),
    )
    .await?
    {
        Some(a) => Ok(format!("{a}/{prefix}")),
        None => Err(Outcome::Fail(StepError::new(
            "lease.ip_exhausted",
            format!("no free address in {}", s.ip_cidr),
        ))),
    }
}

/// A guest PVE has at a vmid: the vmid and a line saying what it is.
pub struct Used {
    /// The vmid.
    pub vmid: u32,
    /// `lxc/123 'name' on pve1`.
    pub holder: String,
}

/// Brings the leases held outside the fleet in line with what PVE uses: every guest in the
/// vmid pool that no site leased is held, so no site is given its vmid; a held vmid PVE no
/// longer uses is freed. Returns (held now, freed).
pub async fn sync_foreign_vmids(
    db: &dyn pvefleet_core::db::Sql,
    s: &SagaSettings,
    used: &[Used],
) -> Result<(u64, u64), tokio_postgres::Error> {
    let (first, last) = (s.vmid_first, s.vmid_last);
    let (values, holders): (Vec<String>, Vec<String>) = used
        .iter()
        .filter(|u| (first..=last).contains(&u.vmid))
        .map(|u| (u.vmid.to_string(), u.holder.clone()))
        .unzip();
    let held = db
        .exec(
            "INSERT INTO leases (kind, value, site_id, holder)
             SELECT 'vmid', v, NULL, h FROM unnest($1::text[], $2::text[]) AS u(v, h)
             ON CONFLICT (kind, value) DO NOTHING",
            &[&values, &holders],
        )
        .await?;
    let freed = db
        .exec(
            "DELETE FROM leases WHERE kind = 'vmid' AND site_id IS NULL AND NOT (value = ANY($1::text[]))",
            &[&values],
        )
        .await?;
    Ok((held, freed))
}

/// Every `saga.lease_sync_interval`, reads the guests PVE has (one `/cluster/resources` read)
/// and syncs the leases held outside the fleet with them, until `shutdown`.
pub async fn run_sync(
    pool: deadpool_postgres::Pool,
    pve: pvefleet_proxmox::client::PveClient,
    settings: SagaSettings,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        match sync_once(&pool, &pve, &settings).await {
            Ok((0, 0)) => {}
            Ok((held, freed)) => {
                tracing::info!(
                    held,
                    freed,
                    "vmids used in PVE outside the fleet are held from leasing."
                );
            }
            Err(e) => tracing::warn!(error = ?e, "Cannot cross-check vmid leases with PVE; trying again later."),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(settings.lease_sync_interval) => {}
        }
    }
}

async fn sync_once(
    pool: &deadpool_postgres::Pool,
    pve: &pvefleet_proxmox::client::PveClient,
    settings: &SagaSettings,
) -> anyhow::Result<(u64, u64)> {
    use pvefleet_proxmox::client::api::ResourceType;
    let guests = pve.resources(Some(ResourceType::Vm)).await?;
    let used: Vec<Used> = guests
        .iter()
        .filter_map(|g| {
            let vmid = u32::try_from(g.vmid?).ok()?;
            Some(Used {
                vmid,
                holder: format!(
                    "{} '{}' on {}",
                    g.id,
                    g.name.as_deref().unwrap_or_default(),
                    g.node.as_deref().unwrap_or("?")
                ),
            })
        })
        .collect();
    let client = pool.get().await?;
    Ok(sync_foreign_vmids(&*client, settings, &used).await?)
}

fn parse_cidr(text: &str) -> Option<(u32, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| (8..=30).contains(p))?;
    let mask = u32::MAX << (32 - u32::from(prefix));
    Some((u32::from(addr) & mask, prefix))
}

#[cfg(test)]
mod tests {
    use super::parse_cidr;

    #[test]
    fn cidrs_parse_to_their_network() {
        assert_eq!(parse_cidr("10.10.0.7/24"), Some((0x0a0a_0000, 24)));
        assert_eq!(parse_cidr("10.10.0.0/33"), None);
        assert_eq!(parse_cidr("nonsense"), None);
    }
}
