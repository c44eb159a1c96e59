//! PVE's own formats for the names pvefleet puts in a request path or a config value (from
//! pve-common's `PVE::JSONSchema` and pve-network's SDN plugins). A name that passes cannot
//! change the path it is put in (no `/`, `.`, `?`, `%`), cannot add an option to a
//! comma-separated config value (no `,` or `=`) and cannot look like a flag (no leading `-`).
//! The Proxmox client percent-encodes every path segment as well; these checks are what make
//! the refusal a clear error naming the field rather than a PVE 400.

use crate::Invalid;

/// `pve-node`: one DNS label, letters, digits and inner hyphens, at most 63 characters.
pub fn node(name: &str) -> Result<(), Invalid> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            "node",
            format!(
                "'{}' is not a PVE node name (letters, digits and inner hyphens, 1 to 63)",
                shown(name)
            ),
        ))
    }
}

/// `pve-storage-id`: a lowercase letter first, then lowercase letters, digits, `-`, `_` or
/// `.`, ending in a letter or digit.
pub fn storage(field: &str, name: &str) -> Result<(), Invalid> {
    let b = name.as_bytes();
    let ok = b.len() >= 2
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.'))
        && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!(
                "'{}' is not a PVE storage id (a lowercase letter first, then lowercase letters, digits, '-', '_' or '.', ending in a letter or digit)",
                shown(name)
            ),
        ))
    }
}

/// `pve-sdn-vnet-id`: 2 to 8 characters, a letter first, letters and digits.
pub fn vnet(name: &str) -> Result<(), Invalid> {
    sdn_id("vnet", "VNet", name)
}

/// `pve-sdn-zone-id`: 2 to 8 characters, a letter first, letters and digits.
pub fn zone(name: &str) -> Result<(), Invalid> {
    sdn_id("zone", "zone", name)
}

fn sdn_id(field: &str, what: &str, name: &str) -> Result<(), Invalid> {
    if !(2..=8).contains(&name.len()) {
        return Err(Invalid::new(
            field,
            format!(
                "'{}' is {} characters; a {what} name has 2 to 8",
                shown(name),
                name.len()
            ),
        ));
    }
    let ok =
        name.bytes().all(|c| c.is_ascii_alphanumeric()) && name.bytes().next().is_some_and(|c| c.is_ascii_alphabetic());
    if !ok {
        return Err(Invalid::new(
            field,
            format!(
                "'{}' must start with a letter and hold only letters and digits",
                shown(name)
            ),
        ));
    }
    Ok(())
}

/// A name as it may be shown back in an error: at most 64 characters, control characters
/// escaped, so a hostile value is neither echoed whole nor able to break a log line.
pub fn shown(name: &str) -> String {
    let mut out: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    if name.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_node_name_is_one_dns_label() {
        for good in ["pve", "pve1", "pve-2", "A1", "n"] {
            assert_eq!(node(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "../../etc/passwd",
            "x,rootfs=local:100",
            "--help",
            "-pve",
            "pve-",
            "a/b",
            "a?b",
            "a.b",
            "a%2f",
            &"x".repeat(64),
        ] {
            let err = node(bad).expect_err(bad);
            assert_eq!(err.field, "node", "{bad}");
        }
    }

    #[test]
    fn storage_vnet_and_zone_follow_pve() {
        assert!(storage("storage", "local-lvm").is_ok());
        assert!(storage("storage", "ceph.pool_1").is_ok());
        for bad in ["Local", "1local", "local-", "lo/cal", "l,size=1", "l"] {
            assert_eq!(
                storage("storage", bad).map_err(|e| e.field),
                Err("storage".to_string()),
                "{bad}"
            );
        }
        assert!(vnet("web1").is_ok());
        assert!(zone("zn1").is_ok());
        for bad in ["w", "webvnet12", "1web", "web-1", "we/b"] {
            assert!(vnet(bad).is_err(), "{bad}");
            assert!(zone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_shown_name_is_cut_and_escaped() {
        assert_eq!(shown("a\nb"), "a\\nb");
        assert_eq!(shown(&"y".repeat(100)).chars().count(), 65);
    }
}
