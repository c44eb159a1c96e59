//! The codec against real config files from pve-container's test suite
//! (`../shared/pve-fixtures/lxc-configs`, beside the project; skipped when absent).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use pvefleet_proxmox::ConfigFile;
use pvefleet_proxmox::codec::mount::MountPoint;
use pvefleet_proxmox::codec::net::NetConfig;

fn fixtures() -> Option<Vec<(String, String)>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/pve-fixtures/lxc-configs");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!(
            "SKIPPED: {} is not there; the fixture tests need ../shared beside the project",
            dir.display()
        );
        return None;
    };
    let mut files: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    Some(files)
}

#[test]
fn every_fixture_parses_and_writes_back_byte_identical() {
    let Some(files) = fixtures() else { return };
    assert!(
        files.len() > 50,
        "expected the pve-container fixtures, found {}",
        files.len()
    );
    for (name, text) in &files {
        let parsed = ConfigFile::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&parsed.write(), text, "{name} does not round-trip");
        // Canonical form is stable: formatting twice changes nothing more.
        let canonical = parsed.write_canonical();
        assert_eq!(
            ConfigFile::parse(&canonical).unwrap().write_canonical(),
            canonical,
            "{name}"
        );
    }
}

#[test]
fn parsed_net_rootfs_and_mount_points_match_the_file() {
    let Some(files) = fixtures() else { return };
    let mut nets = 0;
    let mut mps = 0;
    for (name, text) in &files {
        let parsed = ConfigFile::parse(text).unwrap();
        for section in &parsed.sections {
            for (idx, net) in section.nets() {
                let raw = section.get(&format!("net{idx}")).unwrap();
                let net = net.unwrap_or_else(|e| panic!("{name}: {e}"));
                // PVE writes options sorted, as the builder does: the value survives intact.
                assert_eq!(net.to_property_string("net0").unwrap(), raw, "{name}");
                nets += 1;
            }
            if let Some(rootfs) = section.rootfs() {
                let rootfs = rootfs.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    rootfs.to_property_string("rootfs").unwrap(),
                    section.get("rootfs").unwrap(),
                    "{name}"
                );
                assert!(rootfs.volume.contains(':'), "{name}: {}", rootfs.volume);
            }
            for (idx, mp) in section.mount_points() {
                let mp = mp.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    mp.to_property_string("mp0").unwrap(),
                    section.get(&format!("mp{idx}")).unwrap(),
                    "{name}"
                );
                assert!(mp.mp.as_deref().unwrap_or_default().starts_with('/'));
                mps += 1;
            }
        }
    }
    assert!(nets > 100 && mps > 40, "nets {nets}, mount points {mps}");

    let create = files
        .iter()
        .find(|(n, _)| n == "snapshot-expected-create-101.conf")
        .unwrap();
    let c = ConfigFile::parse(&create.1).unwrap();
    let (_, net0) = c.main().nets().into_iter().next().unwrap();
    let net0 = net0.unwrap();
    let mut expected = NetConfig::new("eth0");
    expected.bridge = Some("vmbr0".into());
    expected.hwaddr = Some("12:34:56:78:90:12".into());
    expected.ip = Some("dhcp".into());
    expected.ip6 = Some("dhcp".into());
    expected.kind = Some("veth".into());
    assert_eq!(net0, expected);
    assert_eq!(
        c.main().rootfs().unwrap().unwrap(),
        MountPoint {
            volume: "local:snapshotable-disk-1".into(),
            ..Default::default()
        }
    );
    assert_eq!(c.main().get("parent"), Some("test"));
    assert_eq!(c.snapshot("test").unwrap().get("snaptime"), Some("1234567890"));
    assert_eq!(c.snapshot("test").unwrap().description(), "test comment");
}

/// A small xorshift generator, so the mutation run is the same every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mutated_fixtures_never_panic_and_whatever_parses_round_trips() {
    let Some(files) = fixtures() else { return };
    let alphabet = b":=,;[]#\n \t/.-_0123456789abcdefghijklmnopqrstuvwxyzABCDEF\xff";
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..20_000 {
        let (_, text) = &files[(rng.next() as usize) % files.len()];
        let mut bytes = text.as_bytes().to_vec();
        for _ in 0..(1 + rng.next() % 4) {
            if bytes.is_empty() {
                break;
            }
            let at = (rng.next() as usize) % bytes.len();
            match rng.next() % 3 {
                0 => bytes[at] = alphabet[(rng.next() as usize) % alphabet.len()],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, alphabet[(rng.next() as usize) % alphabet.len()]),
            }
        }
        let Ok(mutated) = String::from_utf8(bytes) else {
            continue;
        };
        if let Ok(parsed) = ConfigFile::parse(&mutated) {
            assert_eq!(parsed.write(), mutated, "round {round}");
            for s in &parsed.sections {
                // Typed parsing may refuse a value, but must never panic.
                let _ = s.nets();
                let _ = s.rootfs();
                let _ = s.mount_points();
                let _ = s.features();
            }
        }
    }
}
