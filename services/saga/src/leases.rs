//! Leases of vmids and addresses from the configured pools, unique in Postgres (`leases`).
//!
//! A lease takes the lowest free value. Two transactions racing for the same value meet on the
//! primary key: the loser's insert does nothing and it takes the next.

use pvefleet_contracts::StepError;
use pvefleet_core::bus::Outcome;
use pvefleet_core::config::SagaSettings;
use uuid::Uuid;

const ATTEMPTS: usize = 32;

async fn lease(
    db: &tokio_postgres::Client,
    kind: &str,
    candidates: &[String],
    site: Uuid,
) -> Result<Option<String>, Outcome> {
    for _ in 0..ATTEMPTS {
        let row = db
            .query_opt(
                "WITH free AS (
                     SELECT c.value FROM unnest($2::text[]) WITH ORDINALITY AS c(value, n)
                     WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.kind = $1 AND l.value = c.value)
                     ORDER BY c.n LIMIT 1)
                 INSERT INTO leases (kind, value, site_id) SELECT $1, value, $3 FROM free
                 ON CONFLICT (kind, value) DO NOTHING RETURNING value",
                &[&kind, &candidates, &site],
            )
            .await
            .map_err(|e| Outcome::retry(format!("cannot lease a {kind}: {e}")))?;
        if let Some(row) = row {
            return Ok(Some(row.get(0)));
        }
        let free = db
            .query_one(
                "SELECT count(*) FROM unnest($2::text[]) AS c(value)
                 WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.kind = $1 AND l.value = c.value)",
                &[&kind, &candidates],
            )
            .await
            .map_err(|e| Outcome::retry(format!("cannot lease a {kind}: {e}")))?;
        if free.get::<_, i64>(0) == 0 {
            return Ok(None);
        }
    }
    Err(Outcome::retry(format!(
        "could not lease a {kind} after {ATTEMPTS} tries"
    )))
}

/// Leases the lowest free vmid of `saga.vmid_first..=saga.vmid_last`.
pub(crate) async fn lease_vmid(db: &tokio_postgres::Client, s: &SagaSettings, site: Uuid) -> Result<u32, Outcome> {
    let candidates: Vec<String> = (s.vmid_first..=s.vmid_last).map(|v| v.to_string()).collect();
    match lease(db, "vmid", &candidates, site).await? {
        Some(v) => v.parse().map_err(|_| Outcome::retry("a leased vmid is not a number")),
        None => Err(Outcome::Fail(StepError::new(
            "lease.vmid_exhausted",
            "no free vmid in saga.vmid_first..=saga.vmid_last",
        ))),
    }
}

/// Leases the lowest free address of the pool, in CIDR form (`10.10.0.100/24`).
pub(crate) async fn lease_ip(db: &tokio_postgres::Client, s: &SagaSettings, site: Uuid) -> Result<String, Outcome> {
    let Some((network, prefix)) = parse_cidr(&s.ip_cidr) else {
        return Err(Outcome::Fail(StepError::new(
            "config.ip_cidr",
            format!("saga.ip_cidr '{}' is not an IPv4 CIDR", s.ip_cidr),
        )));
    };
    let gateway: Option<u32> = s.gateway.parse::<std::net::Ipv4Addr>().ok().map(u32::from);
    let size = 1u64 << (32 - u32::from(prefix));
    let candidates: Vec<String> = (s.ip_first..=s.ip_last)
        .filter(|h| u64::from(*h) > 0 && u64::from(*h) < size - 1)
        .map(|h| network + h)
        .filter(|a| Some(*a) != gateway)
        .map(|a| std::net::Ipv4Addr::from(a).to_string())
        .collect();
    match lease(db, "ip", &candidates, site).await? {
        Some(a) => Ok(format!("{a}/{prefix}")),
        None => Err(Outcome::Fail(StepError::new(
            "lease.ip_exhausted",
            format!("no free address in {}", s.ip_cidr),
        ))),
    }
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
