//! Property tests of the property-string writer: whatever a caller puts in a value, what the
//! codec writes parses back as exactly the options it was given, never as more.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use pvefleet_proxmox::codec::mount::MountPoint;
use pvefleet_proxmox::codec::net::NetConfig;
use pvefleet_proxmox::codec::propstring;

/// Values with the characters that matter to the structure mixed into ordinary ones, rare
/// enough that many values are written and checked, common enough that many are refused.
fn value() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            20 => proptest::char::range('a', 'z'),
            5 => proptest::char::range('0', '9'),
            1 => Just(','),
            2 => Just('='),
            2 => Just(';'),
            1 => Just('\n'),
            1 => Just('\r'),
            1 => Just('\0'),
            1 => Just(' '),
            2 => Just(':'),
            2 => any::<char>(),
        ],
        0..24,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

const OPTIONS: [&str; 6] = ["bridge", "gw", "ip", "mtu", "name", "tag"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_written_string_parses_back_as_the_options_it_was_given(
        values in proptest::collection::vec(value(), 1..=OPTIONS.len()),
        with_default in any::<bool>(),
    ) {
        let items: Vec<(&str, String)> = OPTIONS.iter().copied().zip(values.iter().cloned()).collect();
        let default_key = with_default.then_some(items[0].0);
        if let Ok(text) = propstring::write("net1", items.clone(), default_key) {
            prop_assert!(!text.contains(['\n', '\r', '\0']), "{text:?}");
            let parsed = propstring::parse("net1", &text, default_key);
            prop_assert!(parsed.is_ok(), "{:?} -> {:?}: {:?}", items, text, parsed);
            let mut got = parsed.unwrap_or_default();
            prop_assert_eq!(got.len(), items.len(), "{:?} -> {:?}", items, text);
            let mut want: Vec<(String, String)> = items.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            want.sort();
            got.sort();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_net_value_never_smuggles_options(name in value(), bridge in value(), ip in value(), gw in value()) {
        let mut n = NetConfig::new(&name);
        n.bridge = Some(bridge);
        n.ip = Some(ip);
        n.gw = Some(gw);
        n.kind = Some("veth".into());
        if let Ok(text) = n.to_property_string("net1") {
            if let Ok(items) = propstring::parse("net1", &text, None) {
                prop_assert_eq!(items.len(), 5, "{}", text);
            }
            if let Ok(back) = NetConfig::parse("net1", &text) {
                prop_assert_eq!(back, n);
            }
        }
    }

    #[test]
    fn a_mount_point_never_smuggles_options(volume in value(), mp in value(), size in value()) {
        let m = MountPoint { volume, mp: Some(mp), size: Some(size), ..MountPoint::default() };
        if let Ok(text) = m.to_property_string("mp0")
            && let Ok(items) = propstring::parse("mp0", &text, Some("volume"))
        {
            prop_assert_eq!(items.len(), 3, "{}", text);
        }
    }
}

#[test]
fn the_smuggling_payloads_are_refused_naming_their_option() {
    for (field, value) in [
        ("name", "vmbr0,firewall=1"),
        ("ip", "10.0.0.5/24,gw=10.0.0.1"),
        ("name", "eth6,link_down=1"),
    ] {
        let mut n = NetConfig::new("eth1");
        n.bridge = Some("vmbr0".into());
        match field {
            "name" => n.name = value.into(),
            _ => n.ip = Some(value.into()),
        }
        let e = n.to_property_string("net1").unwrap_err();
        assert!(e.to_string().contains(&format!("option '{field}'")), "{e}");
    }
}
