//! IPv4 pools per bridge or VNet: addresses are leased in Postgres (`net_ip_leases`), one per
//! interface, and released on detach. An address the saga leased to a site (`leases`) is
//! never handed out here, and the saga skips ours; a pool should still not overlap
//! `saga.ip_first..ip_last`.

use std::net::Ipv4Addr;

use pvefleet_core::config::IpPool;

/// A pool's range, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The prefix length given with each address.
    pub prefix: u8,
    /// The first address handed out.
    pub first: u32,
    /// The last address handed out.
    pub last: u32,
    /// The gateway, never handed out.
    pub gateway: Option<Ipv4Addr>,
}

/// Parses a pool from config; says what is wrong.
pub fn range(p: &IpPool) -> Result<Range, String> {
    let (net, len) = p
        .cidr
        .split_once('/')
        .ok_or_else(|| format!("'{}' is not a CIDR", p.cidr))?;
    let net: Ipv4Addr = net.parse().map_err(|_| format!("'{}' is not an IPv4 CIDR", p.cidr))?;
    let prefix: u8 = len
        .parse()
        .ok()
        .filter(|l| (8..=30).contains(l))
        .ok_or_else(|| format!("'{}': the prefix must be 8 to 30", p.cidr))?;
    let mask = u32::MAX << (32 - prefix);
    let base = u32::from(net) & mask;
    let broadcast = base | !mask;
    let addr = |s: &Option<String>, default: u32| -> Result<u32, String> {
        match s {
            None => Ok(default),
            Some(a) => {
                let v = u32::from(
                    a.parse::<Ipv4Addr>()
                        .map_err(|_| format!("'{a}' is not an IPv4 address"))?,
                );
                if v & mask == base && v != base && v != broadcast {
                    Ok(v)
                } else {
                    Err(format!("{a} is not a host address of {}", p.cidr))
                }
            }
        }
    };
    let first = addr(&p.first, base + 1)?;
    let last = addr(&p.last, broadcast - 1)?;
    if first > last {
        return Err(format!("{}: first is after last", p.cidr));
    }
    let gateway = match &p.gateway {
        None => None,
        Some(g) => Some(Ipv4Addr::from(addr(&Some(g.clone()), 0)?)),
    };
    Ok(Range {
        prefix,
        first,
        last,
        gateway,
    })
}

/// The addresses of a range in order, without the gateway.
pub fn candidates(r: &Range) -> impl Iterator<Item = Ipv4Addr> + '_ {
    (r.first..=r.last)
        .map(Ipv4Addr::from)
        .filter(move |a| Some(*a) != r.gateway)
}

/// Leases the next free address of `pool` to interface `index` of `vmid`, or returns the
/// one it already holds (a redelivery). `None` when the pool is exhausted.
pub async fn lease(
    client: &tokio_postgres::Client,
    pool: &str,
    cfg: &IpPool,
    vmid: u32,
    index: u8,
    operation: uuid::Uuid,
) -> anyhow::Result<Option<String>> {
    let r = range(cfg).map_err(|e| anyhow::anyhow!("pool {pool}: {e}"))?;
    let (vmid, index) = (vmid as i32, i32::from(index));
    if let Some(row) = client
        .query_opt(
            "SELECT ip FROM net_ip_leases WHERE pool = $1 AND vmid = $2 AND net_index = $3",
            &[&pool, &vmid, &index],
        )
        .await?
    {
        let ip: String = row.get(0);
        return Ok(Some(format!("{ip}/{}", r.prefix)));
    }
    let taken: std::collections::HashSet<String> = client
        .query(
            "SELECT ip FROM net_ip_leases WHERE pool = $1
             UNION SELECT split_part(value, '/', 1) FROM leases WHERE kind = 'ip'",
            &[&pool],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for addr in candidates(&r) {
        let ip = addr.to_string();
        if taken.contains(&ip) {
            continue;
        }
        let inserted = client
            .execute(
                "INSERT INTO net_ip_leases (pool, ip, vmid, net_index, operation_id) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
                &[&pool, &ip, &vmid, &index, &operation],
            )
            .await?;
        if inserted == 1 {
            // The saga may have leased it to a site meanwhile (it skips ours): give it back.
            let site_has_it = client
                .query_opt(
                    "SELECT 1 FROM leases WHERE kind = 'ip' AND split_part(value, '/', 1) = $1",
                    &[&ip],
                )
                .await?
                .is_some();
            if site_has_it {
                client
                    .execute("DELETE FROM net_ip_leases WHERE pool = $1 AND ip = $2", &[&pool, &ip])
                    .await?;
                continue;
            }
            return Ok(Some(format!("{ip}/{}", r.prefix)));
        }
    }
    Ok(None)
}

/// Releases every address interface `index` of `vmid` holds; returns them.
pub async fn release(client: &tokio_postgres::Client, vmid: u32, index: u8) -> anyhow::Result<Vec<String>> {
    Ok(client
        .query(
            "DELETE FROM net_ip_leases WHERE vmid = $1 AND net_index = $2 RETURNING ip",
            &[&(vmid as i32), &i32::from(index)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn pool(cidr: &str, gw: Option<&str>) -> IpPool {
        IpPool {
            cidr: cidr.into(),
            gateway: gw.map(str::to_string),
            first: None,
            last: None,
        }
    }

    #[test]
    fn ranges_skip_network_broadcast_and_gateway() {
        let r = range(&pool("10.20.0.0/29", Some("10.20.0.1"))).unwrap();
        let all: Vec<String> = candidates(&r).map(|a| a.to_string()).collect();
        assert_eq!(all, ["10.20.0.2", "10.20.0.3", "10.20.0.4", "10.20.0.5", "10.20.0.6"]);
        assert!(range(&pool("10.20.0.0", None)).is_err());
        assert!(range(&pool("10.20.0.0/31", None)).is_err());
        assert!(range(&pool("10.20.0.0/24", Some("10.30.0.1"))).is_err());
        let narrow = IpPool {
            first: Some("10.20.0.100".into()),
            last: Some("10.20.0.101".into()),
            ..pool("10.20.0.0/24", None)
        };
        assert_eq!(candidates(&range(&narrow).unwrap()).count(), 2);
    }
}
