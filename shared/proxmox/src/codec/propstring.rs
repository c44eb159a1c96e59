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

/// Writes options the way PVE does: the default key first and bare, the rest sorted by name.
pub fn write(mut items: Vec<(&str, String)>, default_key: Option<&str>) -> String {
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut parts = Vec::with_capacity(items.len());
    if let Some(d) = default_key
        && let Some(pos) = items.iter().position(|(k, _)| *k == d)
    {
        let (_, v) = items.remove(pos);
        parts.push(v);
    }
    parts.extend(items.into_iter().map(|(k, v)| format!("{k}={v}")));
    parts.join(",")
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
                vec![("size", "8G".into()), ("volume", "local-lvm:vm-101-disk-0".into())],
                Some("volume")
            ),
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
}
