//! Leases of vmids and addresses from the configured pools, unique in Postgres (`leases`).
//!
//! A lease takes the next free value after the highest one in use, like a DHCP server, so a
//! freed vmid or address is not handed out again at once; when the top of the pool is reached
//! it takes the lowest free value. Finding the highest is one probe of the `(kind, num)`
//! index, and the search looks at a bounded window of candidates, so a lease costs the same
//! with ten sites or ten thousand.
//!
//! Each candidate is claimed with a transaction-scoped advisory try-lock, so concurrent sagas
//! walk past each other's candidates instead of queueing on the primary key behind each
//! other's uncommitted inserts. The primary key still decides: an insert that meets a value
//! committed meanwhile does nothing, and the next value is taken.

use pvefleet_core::bus::HandlerError;
use pvefleet_core::config::SagaSettings;
use pvefleet_core::db::Sql;
use uuid::Uuid;

/// The advisory lock classes of vmid and address candidates (first key of
/// `pg_try_advisory_xact_lock(int, int)`).
const VMID_CLASS: i32 = 0x706c_7600; // "plv\0"
const IP_CLASS: i32 = 0x706c_6900; // "pli\0"

const ATTEMPTS: usize = 32;

/// Candidates looked at past the highest value in use, per try.
const WINDOW: i64 = 256;

/// One lease, in SQL. Candidates are numbers `n` of `$2..=$3`; a candidate's `num` is
/// `$4 + n` (the network's address for IPs, 0 for vmids), its value the vmid or the address.
/// `$8` starts after the highest `num` in use, else at the first; `$9` bounds the candidates
/// looked at. An address nethotplug leased to an interface (`net_ip_leases`) is skipped. The CASE makes the try-lock run only for free values, and the scan stops at the
/// first one locked.
const LEASE: &str = "WITH start AS (
        SELECT CASE WHEN $8 THEN coalesce(max(num) - $4 + 1, $2) ELSE $2 END AS s
        FROM leases WHERE kind = $7 AND num BETWEEN $4 + $2 AND $4 + $3),
    free AS (
        SELECT n FROM start, generate_series(start.s, least(start.s + $9, $3)) AS n
        WHERE CASE WHEN $4 + n = $5 OR EXISTS (SELECT 1 FROM leases l WHERE l.kind = $7 AND l.num = $4 + n)
                        OR ($7 = 'ip' AND EXISTS (SELECT 1 FROM net_ip_leases x WHERE x.ip = host('0.0.0.0'::inet + ($4 + n)))) THEN false
                   ELSE pg_try_advisory_xact_lock($6, n::int) END
        LIMIT 1)
    INSERT INTO leases (kind, value, site_id, num)
    SELECT $7, CASE WHEN $7 = 'ip' THEN host('0.0.0.0'::inet + ($4 + n)) ELSE n::text END, $1, $4 + n FROM free
    ON CONFLICT (kind, value) DO NOTHING RETURNING value";

const FREE_LEFT: &str =
    "SELECT count(*) < ($3::bigint - $2::bigint + 1) FROM leases WHERE kind = $1 AND num BETWEEN $4 + $2 AND $4 + $3";

/// A pool to lease from.
struct Pool<'a> {
    kind: &'a str,
    class: i32,
    /// Candidates `first..=last`.
    first: i64,
    last: i64,
    /// Added to a candidate to get its `num`.
    base: i64,
    /// A `num` never leased (the gateway), or -1.
    excluded: i64,
}

async fn lease(db: &dyn Sql, pool: &Pool<'_>, site: Uuid) -> Result<Option<String>, HandlerError> {
    let err = |e: tokio_postgres::Error| HandlerError::from(e).context(format!("cannot lease a {}", pool.kind));
    let run = |from_top: bool| {
        let window = if from_top { WINDOW } else { pool.last - pool.first };
        async move {
            db.opt(
                LEASE,
                &[
                    &site,
                    &pool.first,
                    &pool.last,
                    &pool.base,
                    &pool.excluded,
                    &pool.class,
                    &pool.kind,
                    &from_top,
                    &window,
                ],
            )
            .await
        }
    };
    for _ in 0..ATTEMPTS {
        // Past the highest in use; then, at the top of the pool, the lowest free.
        let row = match run(true).await.map_err(err)? {
            Some(row) => Some(row),
            None => run(false).await.map_err(err)?,
        };
        if let Some(row) = row {
            return Ok(Some(row.get(0)));
        }
        // Nothing inserted: the pool is full, or other transactions hold every candidate.
        let left: bool = db
            .one(FREE_LEFT, &[&pool.kind, &pool.first, &pool.last, &pool.base])
            .await
            .map_err(err)?
            .get(0);
        if !left {
            return Ok(None);
        }
    }
    Err(HandlerError::transient(format!(
        "could not lease a {} after {ATTEMPTS} tries",
        pool.kind
    )))
}

/// Leases a free vmid of `saga.vmid_first..=saga.vmid_last`.
pub(crate) async fn lease_vmid(db: &dyn Sql, s: &SagaSettings, site: Uuid) -> Result<u32, HandlerError> {
    let pool = Pool {
        kind: "vmid",
        class: VMID_CLASS,
        first: i64::from(s.vmid_first),
        last: i64::from(s.vmid_last),
        base: 0,
        excluded: -1,
    };
    match lease(db, &pool, site).await? {
        Some(v) => v
            .parse()
            .map_err(|_| HandlerError::transient("a leased vmid is not a number")),
        None => Err(HandlerError::fail(
            "lease.vmid_exhausted",
            "no free vmid in saga.vmid_first..=saga.vmid_last",
        )),
    }
}

/// Leases a free address of the pool, in CIDR form (`10.10.0.100/24`).
pub(crate) async fn lease_ip(db: &dyn Sql, s: &SagaSettings, site: Uuid) -> Result<String, HandlerError> {
    let Some((network, prefix)) = parse_cidr(&s.ip_cidr) else {
        return Err(HandlerError::fail(
            "config.ip_cidr",
            format!("saga.ip_cidr '{}' is not an IPv4 CIDR", s.ip_cidr),
        ));
    };
    let size = 1i64 << (32 - u32::from(prefix));
    let gateway = s
        .gateway
        .parse::<std::net::Ipv4Addr>()
        .map_or(-1, |g| i64::from(u32::from(g)));
    let pool = Pool {
        kind: "ip",
        class: IP_CLASS,
        first: i64::from(s.ip_first).max(1),
        last: i64::from(s.ip_last).min(size - 2),
        base: i64::from(network),
        excluded: gateway,
    };
    match lease(db, &pool, site).await? {
        Some(a) => Ok(format!("{a}/{prefix}")),
        None => Err(HandlerError::fail(
            "lease.ip_exhausted",
            format!("no free address in {}", s.ip_cidr),
        )),
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
            "INSERT INTO leases (kind, value, site_id, holder, num)
             SELECT 'vmid', v, NULL, h, v::bigint FROM unnest($1::text[], $2::text[]) AS u(v, h)
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
    let (pool, pve, s) = (&pool, &pve, &settings);
    pvefleet_core::periodic::Periodic::new("lease_sync", settings.lease_sync_interval)
        .at_once()
        .run(shutdown, || async {
            let (held, freed) = sync_once(pool, pve, s).await?;
            if held + freed > 0 {
                tracing::info!(
                    held,
                    freed,
                    "vmids used in PVE outside the fleet are held from leasing."
                );
            }
            anyhow::Ok(())
        })
        .await
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
    use pvefleet_core::config::SagaSettings;

    #[test]
    fn cidrs_parse_to_their_network() {
        assert_eq!(parse_cidr("10.10.0.7/24"), Some((0x0a0a_0000, 24)));
        assert_eq!(parse_cidr("10.10.0.0/33"), None);
        assert_eq!(parse_cidr("nonsense"), None);
    }

    fn settings() -> SagaSettings {
        SagaSettings {
            vmid_first: 100,
            vmid_last: 103,
            ip_cidr: "10.9.0.0/24".into(),
            ip_first: 1,
            ip_last: 4,
            gateway: "10.9.0.1".into(),
            ..SagaSettings::default()
        }
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn leases_go_past_the_highest_in_use_then_wrap_to_the_lowest_free_then_run_out() {
        let db = pvefleet_testkit::TestDb::create().await.unwrap();
        let db_settings = pvefleet_core::config::DbSettings {
            url: pvefleet_core::Secret::new(db.url()),
            ..Default::default()
        };
        let pool = pvefleet_core::db::connect(&db_settings).await.unwrap();
        pvefleet_core::db::migrate(&pool).await.unwrap();
        let c = pool.get().await.unwrap();
        let s = settings();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(super::lease_vmid(&*c, &s, uuid::Uuid::now_v7()).await.unwrap());
        }
        assert_eq!(got, vec![100, 101, 102, 103]);
        assert!(
            super::lease_vmid(&*c, &s, uuid::Uuid::now_v7()).await.is_err(),
            "the pool is exhausted"
        );
        // A freed vmid below the top is reused only once the top is reached: now.
        c.execute("DELETE FROM leases WHERE kind = 'vmid' AND value = '101'", &[])
            .await
            .unwrap();
        assert_eq!(super::lease_vmid(&*c, &s, uuid::Uuid::now_v7()).await.unwrap(), 101);
        // Addresses skip the gateway.
        let mut ips = Vec::new();
        for _ in 0..3 {
            ips.push(super::lease_ip(&*c, &s, uuid::Uuid::now_v7()).await.unwrap());
        }
        assert_eq!(ips, vec!["10.9.0.2/24", "10.9.0.3/24", "10.9.0.4/24"]);
        assert!(super::lease_ip(&*c, &s, uuid::Uuid::now_v7()).await.is_err());
        // A value held outside the fleet is never leased.
        c.execute("DELETE FROM leases WHERE kind = 'vmid'", &[]).await.unwrap();
        c.execute(
            "INSERT INTO leases (kind, value, site_id, holder, num) VALUES ('vmid', '100', NULL, 'lxc/100', 100)",
            &[],
        )
        .await
        .unwrap();
        assert_eq!(super::lease_vmid(&*c, &s, uuid::Uuid::now_v7()).await.unwrap(), 101);
    }
}
