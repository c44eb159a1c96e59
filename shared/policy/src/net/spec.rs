//! An interface request checked and turned into a `netN` value through the codec, before
//! anything is sent to PVE. Every refusal names the field at fault.

use pvefleet_contracts::messages::NetInterface;
use pvefleet_proxmox::codec::error::CodecError;
use pvefleet_proxmox::codec::net::{MAX_NETS, NetConfig};

pub use crate::Invalid;
pub use crate::names::vnet as check_vnet;

/// A unicast MAC address `XX:XX:XX:XX:XX:XX`.
pub fn check_mac(mac: &str) -> Result<(), Invalid> {
    let octets: Vec<&str> = mac.split(':').collect();
    let well_formed = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
    if !well_formed {
        return Err(Invalid::new(
            "hwaddr",
            format!("'{mac}' is not a MAC address (XX:XX:XX:XX:XX:XX)"),
        ));
    }
    let first = u8::from_str_radix(octets[0], 16).unwrap_or(1);
    if first & 1 == 1 {
        return Err(Invalid::new(
            "hwaddr",
            format!("'{mac}' is a multicast address (the I/G bit of the first octet is set)"),
        ));
    }
    Ok(())
}

/// Checks what can be checked without PVE: the index, the tag, the MAC, the addresses and
/// every other option, through the codec's own checks.
pub fn check(iface: &NetInterface) -> Result<(), Invalid> {
    if let Some(i) = iface.index
        && i >= MAX_NETS
    {
        return Err(Invalid::new(
            "index",
            format!("{i} is out of range: a container has net0 to net{}", MAX_NETS - 1),
        ));
    }
    if let Some(tag) = iface.tag
        && !(1..=4094).contains(&tag)
    {
        return Err(Invalid::new("tag", format!("{tag} is not a VLAN tag (1 to 4094)")));
    }
    if let Some(mac) = &iface.hwaddr {
        check_mac(mac)?;
    }
    if let Some(vnet) = &iface.vnet {
        check_vnet(vnet)?;
        if iface.bridge.as_ref().is_some_and(|b| b != vnet) {
            return Err(Invalid::new("bridge", "give a bridge or a vnet, not both"));
        }
    }
    if let Some(rate) = iface.rate
        && !(rate.is_finite() && rate >= 0.0)
    {
        return Err(Invalid::new("rate", format!("{rate} is not a rate in Mbit/s")));
    }
    // Everything else through the codec: build the value and parse it back as PVE would.
    let mut probe = iface.clone();
    if probe.ip.as_deref() == Some("pool") {
        probe.ip = None;
    }
    let net = build(&probe, iface.index.unwrap_or(0), iface.hwaddr.as_deref(), None);
    let key = format!("net{}", iface.index.unwrap_or(0));
    let line = net.to_property_string(&key).map_err(codec_invalid)?;
    NetConfig::parse(&key, &line).map_err(codec_invalid)?;
    Ok(())
}

/// The field a codec error names.
pub fn codec_invalid(e: CodecError) -> Invalid {
    match &e {
        CodecError::Option { option, .. } | CodecError::Missing { option, .. } => Invalid::new(option, e.to_string()),
        _ => Invalid::new("iface", e.to_string()),
    }
}

/// Whether the guardrail policy allows `bridge` (a bridge or VNet): an empty list allows all.
pub fn check_allowed(allowed: &[String], bridge: &str) -> Result<(), Invalid> {
    if allowed.is_empty() || allowed.iter().any(|a| a == bridge) {
        Ok(())
    } else {
        Err(Invalid::new(
            "bridge",
            format!(
                "'{bridge}' is not allowed by policy (nethotplug.allowed_bridges: {})",
                allowed.join(", ")
            ),
        ))
    }
}

/// The bridge an interface plugs into: its VNet, else its bridge.
pub fn bridge_of(iface: &NetInterface) -> Option<&str> {
    iface.vnet.as_deref().or(iface.bridge.as_deref())
}

/// The `netN` value for a new interface. `ip` overrides the request's (a pooled address).
pub fn build(iface: &NetInterface, index: u8, hwaddr: Option<&str>, pooled: Option<(&str, Option<&str>)>) -> NetConfig {
    let mut n = NetConfig::new(iface.name.as_deref().unwrap_or(&format!("eth{index}")));
    n.bridge = bridge_of(iface).map(str::to_string);
    n.hwaddr = hwaddr.map(str::to_ascii_uppercase);
    match pooled {
        Some((ip, gw)) => {
            n.ip = Some(ip.to_string());
            n.gw = iface.gw.clone().or(gw.map(str::to_string));
        }
        None => {
            n.ip = iface.ip.clone();
            n.gw = iface.gw.clone();
        }
    }
    n.ip6 = iface.ip6.clone();
    n.gw6 = iface.gw6.clone();
    n.tag = iface.tag;
    n.trunks = iface.trunks.clone();
    n.firewall = iface.firewall;
    n.link_down = iface.link_down;
    n.mtu = iface.mtu;
    n.rate = iface.rate.map(format_rate);
    n.kind = Some("veth".into());
    n
}

fn format_rate(r: f64) -> String {
    if r.fract() == 0.0 {
        format!("{}", r as u64)
    } else {
        format!("{r}")
    }
}

/// An interface with `changes` laid over it: only the options given change.
pub fn merge(old: &NetConfig, changes: &NetInterface) -> NetConfig {
    let mut n = old.clone();
    if let Some(name) = &changes.name {
        n.name = name.clone();
    }
    if let Some(b) = bridge_of(changes) {
        n.bridge = Some(b.to_string());
    }
    if let Some(mac) = &changes.hwaddr {
        n.hwaddr = Some(mac.to_ascii_uppercase());
    }
    macro_rules! over {
        ($($f:ident),*) => { $( if changes.$f.is_some() { n.$f = changes.$f.clone(); } )* };
    }
    over!(ip, ip6, gw, gw6, tag, trunks, firewall, link_down, mtu);
    if let Some(r) = changes.rate {
        n.rate = Some(format_rate(r));
    }
    n.kind = Some("veth".into());
    n
}

/// A random unicast MAC with `prefix` (three octets, such as PVE's `BC:24:11`).
pub fn random_mac(prefix: &str) -> String {
    let tail: [u8; 3] = rand::random();
    format!(
        "{}:{:02X}:{:02X}:{:02X}",
        prefix.to_ascii_uppercase(),
        tail[0],
        tail[1],
        tail[2]
    )
}

/// Checks a configured MAC prefix: three octets of a unicast address.
pub fn check_mac_prefix(prefix: &str) -> Result<(), Invalid> {
    check_mac(&format!("{prefix}:00:00:00")).map_err(|_| {
        Invalid::new(
            "nethotplug.mac_prefix",
            format!("'{prefix}' is not three octets of a unicast MAC, such as BC:24:11"),
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn iface() -> NetInterface {
        NetInterface {
            bridge: Some("vmbr0".into()),
            ip: Some("dhcp".into()),
            ..NetInterface::default()
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: Vec<(NetInterface, &str)> = vec![
            (
                NetInterface {
                    index: Some(32),
                    ..iface()
                },
                "index",
            ),
            (
                NetInterface {
                    tag: Some(0),
                    ..iface()
                },
                "tag",
            ),
            (
                NetInterface {
                    tag: Some(4095),
                    ..iface()
                },
                "tag",
            ),
            (
                NetInterface {
                    hwaddr: Some("BC:24:11:00:00".into()),
                    ..iface()
                },
                "hwaddr",
            ),
            (
                NetInterface {
                    hwaddr: Some("01:24:11:00:00:01".into()),
                    ..iface()
                },
                "hwaddr",
            ),
            (
                NetInterface {
                    ip: Some("10.0.0.5".into()),
                    ..iface()
                },
                "ip",
            ),
            (
                NetInterface {
                    ip: Some("10.0.0.5/33".into()),
                    ..iface()
                },
                "ip",
            ),
            (
                NetInterface {
                    ip6: Some("fd00::/200".into()),
                    ..iface()
                },
                "ip6",
            ),
            (
                NetInterface {
                    vnet: Some("toolongname".into()),
                    bridge: None,
                    ..iface()
                },
                "vnet",
            ),
            (
                NetInterface {
                    mtu: Some(10),
                    ..iface()
                },
                "mtu",
            ),
            (
                NetInterface {
                    name: Some("eth 1".into()),
                    ..iface()
                },
                "name",
            ),
        ];
        for (req, field) in cases {
            let err = check(&req).unwrap_err();
            assert_eq!(err.field, field, "{req:?}: {err}");
        }
        assert!(check(&iface()).is_ok());
        assert!(
            check(&NetInterface {
                ip: Some("pool".into()),
                ..iface()
            })
            .is_ok()
        );
    }

    #[test]
    fn built_values_are_what_pve_stores() {
        let req = NetInterface {
            tag: Some(20),
            ..iface()
        };
        let n = build(
            &req,
            1,
            Some("bc:24:11:aa:bb:cc"),
            Some(("10.20.0.5/24", Some("10.20.0.1"))),
        );
        assert_eq!(
            n.to_property_string("net1").unwrap(),
            "bridge=vmbr0,gw=10.20.0.1,hwaddr=BC:24:11:AA:BB:CC,ip=10.20.0.5/24,name=eth1,tag=20,type=veth"
        );
        let merged = merge(
            &n,
            &NetInterface {
                rate: Some(50.0),
                tag: Some(30),
                ..NetInterface::default()
            },
        );
        assert_eq!(
            merged.to_property_string("net1").unwrap(),
            "bridge=vmbr0,gw=10.20.0.1,hwaddr=BC:24:11:AA:BB:CC,ip=10.20.0.5/24,name=eth1,rate=50,tag=30,type=veth"
        );
    }

    #[test]
    fn the_policy_allows_listed_bridges_or_every_one_when_empty() {
        assert!(check_allowed(&[], "vmbr7").is_ok());
        let allowed = vec!["vmbr0".to_string(), "web".to_string()];
        assert!(check_allowed(&allowed, "web").is_ok());
        let err = check_allowed(&allowed, "vmbr1").unwrap_err();
        assert_eq!(err.field, "bridge");
        assert!(err.reason.contains("not allowed by policy"), "{err}");
    }

    #[test]
    fn generated_macs_carry_the_prefix_and_are_unicast() {
        for _ in 0..50 {
            let mac = random_mac("BC:24:11");
            assert!(mac.starts_with("BC:24:11:"), "{mac}");
            check_mac(&mac).unwrap();
        }
        assert!(check_mac_prefix("BC:24:11").is_ok());
        assert!(check_mac_prefix("01:24:11").is_err());
        assert!(check_mac_prefix("BC:24").is_err());
    }
}
