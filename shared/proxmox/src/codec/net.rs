//! `net[n]`: a container network interface (pve-behaviour.md §6.1, PVE schema `pve-lxc-network`).

use serde::Serialize;

use super::config::Section;
use super::error::CodecError;
use super::{propstring, validate};

/// The most interfaces a container can have (`net0` to `net31`).
pub const MAX_NETS: u8 = 32;

/// One `net[n]` value. Every option of the PVE format; absent options are `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NetConfig {
    /// Interface name inside the container (required).
    pub name: String,
    /// Bridge or SDN VNet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Per-interface firewall.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall: Option<bool>,
    /// IPv4 gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// IPv6 gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw6: Option<String>,
    /// The host manages the interface (PVE 9).
    #[serde(skip_serializing_if = "Option::is_none", rename = "host-managed")]
    pub host_managed: Option<bool>,
    /// MAC address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hwaddr: Option<String>,
    /// `dhcp`, `manual` or IPv4/CIDR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// `auto`, `dhcp`, `manual` or IPv6/CIDR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    /// Cable unplugged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_down: Option<bool>,
    /// MTU, 64 to 65535.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Rate limit in Mbit/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// VLAN tag, 1 to 4094.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<u32>,
    /// VLAN trunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trunks: Option<Vec<u32>>,
    /// Always `veth`.
    #[serde(skip_serializing_if = "Option::is_none", rename = "type")]
    pub kind: Option<String>,
}

fn bit(b: bool) -> String {
    if b { "1".into() } else { "0".into() }
}

impl NetConfig {
    /// An interface with only its name set.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Self::default()
        }
    }

    /// Parses the value of config key `key` (such as `net0`), checking every option.
    pub fn parse(key: &str, value: &str) -> Result<Self, CodecError> {
        let mut n = Self::default();
        let mut has_name = false;
        for (opt, v) in propstring::parse(key, value, None)? {
            match opt.as_str() {
                "name" => {
                    validate::name(key, &opt, &v)?;
                    n.name = v;
                    has_name = true;
                }
                "bridge" => {
                    validate::name(key, &opt, &v)?;
                    n.bridge = Some(v);
                }
                "firewall" => n.firewall = Some(validate::boolean(key, &opt, &v)?),
                "gw" => {
                    validate::ipv4(key, &opt, &v)?;
                    n.gw = Some(v);
                }
                "gw6" => {
                    validate::ipv6(key, &opt, &v)?;
                    n.gw6 = Some(v);
                }
                "host-managed" => n.host_managed = Some(validate::boolean(key, &opt, &v)?),
                "hwaddr" => {
                    validate::mac(key, &opt, &v)?;
                    n.hwaddr = Some(v);
                }
                "ip" => {
                    validate::ipv4_config(key, &opt, &v)?;
                    n.ip = Some(v);
                }
                "ip6" => {
                    validate::ipv6_config(key, &opt, &v)?;
                    n.ip6 = Some(v);
                }
                "link_down" => n.link_down = Some(validate::boolean(key, &opt, &v)?),
                "mtu" => n.mtu = Some(validate::int_in(key, &opt, &v, 64, 65535)?),
                "rate" => {
                    validate::number(key, &opt, &v)?;
                    n.rate = Some(v);
                }
                "tag" => n.tag = Some(validate::int_in(key, &opt, &v, 1, 4094)?),
                "trunks" => {
                    let ids = v
                        .split(';')
                        .map(|t| validate::int_in(key, &opt, t, 1, 4094))
                        .collect::<Result<Vec<_>, _>>()?;
                    n.trunks = Some(ids);
                }
                "type" => {
                    if v != "veth" {
                        return Err(CodecError::option(key, &opt, format!("'{v}' is not veth")));
                    }
                    n.kind = Some(v);
                }
                other => return Err(CodecError::option(key, other, "unknown option")),
            }
        }
        if !has_name {
            return Err(CodecError::Missing {
                key: key.to_string(),
                option: "name".into(),
            });
        }
        if n.host_managed == Some(true) && n.ip6.as_deref() == Some("auto") {
            return Err(CodecError::option(
                key,
                "ip6",
                "'auto' cannot be used with host-managed=1",
            ));
        }
        Ok(n)
    }

    /// The property string, options sorted as PVE writes them.
    pub fn to_property_string(&self, key: &str) -> Result<String, CodecError> {
        let mut items: Vec<(&str, String)> = vec![("name", self.name.clone())];
        let opt = |items: &mut Vec<(&str, String)>, k: &'static str, v: &Option<String>| {
            if let Some(v) = v {
                items.push((k, v.clone()));
            }
        };
        opt(&mut items, "bridge", &self.bridge);
        opt(&mut items, "gw", &self.gw);
        opt(&mut items, "gw6", &self.gw6);
        opt(&mut items, "hwaddr", &self.hwaddr);
        opt(&mut items, "ip", &self.ip);
        opt(&mut items, "ip6", &self.ip6);
        opt(&mut items, "rate", &self.rate);
        opt(&mut items, "type", &self.kind);
        for (k, v) in [
            ("firewall", self.firewall),
            ("host-managed", self.host_managed),
            ("link_down", self.link_down),
        ] {
            if let Some(b) = v {
                items.push((k, bit(b)));
            }
        }
        if let Some(m) = self.mtu {
            items.push(("mtu", m.to_string()));
        }
        if let Some(t) = self.tag {
            items.push(("tag", t.to_string()));
        }
        if let Some(t) = &self.trunks {
            items.push(("trunks", t.iter().map(u32::to_string).collect::<Vec<_>>().join(";")));
        }
        propstring::write(key, items, None)
    }
}

impl Section {
    /// Every `net[n]` of the section, by index, each parsed and checked.
    pub fn nets(&self) -> Vec<(u8, Result<NetConfig, CodecError>)> {
        self.entries()
            .filter_map(|e| {
                let idx: u8 = e.key.strip_prefix("net")?.parse().ok()?;
                (idx < MAX_NETS).then(|| (idx, NetConfig::parse(&e.key, &e.value)))
            })
            .collect()
    }

    /// The lowest `net[n]` index not in use, if any is left.
    pub fn free_net_index(&self) -> Option<u8> {
        let used: Vec<u8> = self.nets().into_iter().map(|(i, _)| i).collect();
        (0..MAX_NETS).find(|i| !used.contains(i))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_option_parses_and_writes_back_in_pve_order() {
        let text = "bridge=vnet1,firewall=1,gw=10.0.0.1,gw6=fd00::1,host-managed=0,hwaddr=BC:24:11:00:00:01,ip=10.0.0.5/24,ip6=fd00::5/64,link_down=0,mtu=1450,name=eth0,rate=12.5,tag=20,trunks=20;30,type=veth";
        let n = NetConfig::parse("net0", text).unwrap();
        assert_eq!(n.name, "eth0");
        assert_eq!(n.tag, Some(20));
        assert_eq!(n.trunks, Some(vec![20, 30]));
        assert_eq!(n.firewall, Some(true));
        assert_eq!(n.to_property_string("net0").unwrap(), text);
    }

    #[test]
    fn a_builder_writes_what_pve_stores() {
        let mut n = NetConfig::new("eth0");
        n.bridge = Some("vmbr0".into());
        n.ip = Some("dhcp".into());
        n.kind = Some("veth".into());
        assert_eq!(
            n.to_property_string("net0").unwrap(),
            "bridge=vmbr0,ip=dhcp,name=eth0,type=veth"
        );
    }

    #[test]
    fn invalid_values_name_the_key_and_option() {
        for (text, option) in [
            ("bridge=vmbr0", "name"),
            ("name=eth0,tag=5000", "tag"),
            ("name=eth0,ip=10.0.0.5", "ip"),
            ("name=eth0,ip6=fd00::/129", "ip6"),
            ("name=eth0,hwaddr=01:00:00:00:00:01", "hwaddr"),
            ("name=eth0,mtu=20", "mtu"),
            ("name=eth0,firewall=maybe", "firewall"),
            ("name=eth0,gw=300.1.1.1", "gw"),
            ("name=eth0,speed=10", "speed"),
            ("name=eth0,type=macvlan", "type"),
            ("name=eth 0", "name"),
            ("name=eth0,host-managed=1,ip6=auto", "ip6"),
        ] {
            let err = NetConfig::parse("net3", text).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("net3: "), "{msg}");
            assert!(msg.contains(&format!("'{option}'")), "{text}: {msg}");
        }
    }
}
