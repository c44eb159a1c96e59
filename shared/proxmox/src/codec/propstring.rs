//! PVE property strings: `opt=value,opt=value`, where the first item may leave out the name
//! of the format's default key (`local-lvm:vm-101-disk-0,size=8G` for `volume`).

use super::error::CodecError;

/// Splits a property string into (option, value) pairs, in order. `key` names the config key
/// in errors; `default_key` is the option a bare first item stands for.
pub fn parse(key: &str, text: &str, default_key: Option<&str>) -> Result<Vec<(String, String)>, CodecError> {
    let mut out: Vec<(String, String)> = Vec::new();
    if text.is_empty() {
        return Ok(out);
    }
    for (i, part) in text.split(',').enumerate() {
        let (opt, value) = match part.split_once('=') {
            Some((o, v)) => (o.to_string(), v.to_string()),
            None => match default_key {
                Some(d) if i == 0 && !part.is_empty() => (d.to_string(), part.to_string()),
                _ => return Err(CodecError::option(key, part, "expected option=value")),
            },
        };
        if opt.is_empty() {
            return Err(CodecError::option(key, "", "empty option name"));
        }
        if out.iter().any(|(o, _)| *o == opt) {
            return Err(CodecError::option(key, &opt, "given more than once"));
        }
        out.push((opt, value));
    }
    Ok(out)
}

/// Why a value cannot be written into a property string as it is, if it cannot: a `,` would
/// start another option, a line break would end the config line, a NUL ends the string early,
/// an `=` in the bare default item would turn it into an option of its own, and an empty
/// bare item would vanish.
pub fn structural_fault(value: &str, bare: bool) -> Option<&'static str> {
    if value.contains(',') {
        Some("contains ',', which separates options")
    } else if value.contains(['\n', '\r']) {
        Some("contains a line break")
    } else if value.contains('\0') {
        Some("contains a NUL byte")
    } else if bare && value.contains('=') {
        Some("contains '=', which would make the item an option")
    } else if bare && value.is_empty() {
        Some("is empty, and a bare item needs a value")
    } else {
        None
    }
}

/// Writes options the way PVE does: the default key first and bare, the rest sorted by name.
/// `key` names the config key (such as `net1`) in errors. A value that would change the
/// string's structure (see [`structural_fault`]) is refused, naming its option, rather than
/// written: whatever a caller puts in a value, the string parses back as the same options.
pub fn write(key: &str, mut items: Vec<(&str, String)>, default_key: Option<&str>) -> Result<String, CodecError> {
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut parts = Vec::with_capacity(items.len());
    if let Some(d) = default_key
        && let Some(pos) = items.iter().position(|(k, _)| *k == d)
    {
        let (opt, v) = items.remove(pos);
        if let Some(fault) = structural_fault(&v, true) {
            return Err(CodecError::option(key, opt, fault));
        }
        parts.push(v);
    }
    for (opt, v) in items {
        if let Some(fault) = structural_fault(&v, false) {
            return Err(CodecError::option(key, opt, fault));
        }
        parts.push(format!("{opt}={v}"));
    }
    Ok(parts.join(","))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_first_item_is_the_default_key() {
        let items = parse("rootfs", "local-lvm:vm-101-disk-0,size=8G", Some("volume")).unwrap();
        assert_eq!(
            items,
            vec![
                ("volume".into(), "local-lvm:vm-101-disk-0".into()),
                ("size".into(), "8G".into())
            ]
        );
        assert_eq!(
            write(
                "rootfs",
                vec![("size", "8G".into()), ("volume", "local-lvm:vm-101-disk-0".into())],
                Some("volume")
            )
            .unwrap(),
            "local-lvm:vm-101-disk-0,size=8G"
        );
    }

    #[test]
    fn malformed_strings_name_the_key_and_option() {
        let e = parse("net0", "name=eth0,bridge", None).unwrap_err();
        assert_eq!(e.to_string(), "net0: option 'bridge': expected option=value");
        let e = parse("net0", "name=eth0,name=eth1", None).unwrap_err();
        assert!(e.to_string().contains("given more than once"));
        assert!(parse("net0", "name=eth0,,tag=2", None).is_err());
    }

    #[test]
    fn values_that_would_change_the_structure_are_refused_naming_the_option() {
        for (value, fault) in [
            ("vmbr0,firewall=1", "separates options"),
            ("eth0\nrootfs: x", "line break"),
            ("eth0\r", "line break"),
            ("eth\u{0}0", "NUL"),
        ] {
            let e = write("net1", vec![("name", value.into())], None).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("net1: option 'name': "), "{text}");
            assert!(text.contains(fault), "{text}");
        }
        // An '=' is harmless after the option's own '=', but not in the bare default item.
        assert_eq!(write("mp0", vec![("mp", "/a=b".into())], None).unwrap(), "mp=/a=b");
        let e = write("rootfs", vec![("volume", "size=1".into())], Some("volume")).unwrap_err();
        assert!(e.to_string().contains("option 'volume'"), "{e}");
    }
}
