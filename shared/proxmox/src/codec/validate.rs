//! Value checks shared by the typed property strings, following the PVE schema formats.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::error::CodecError;

pub(crate) fn boolean(key: &str, opt: &str, v: &str) -> Result<bool, CodecError> {
    match v {
        "1" | "yes" | "on" | "true" => Ok(true),
        "0" | "no" | "off" | "false" => Ok(false),
        _ => Err(CodecError::option(key, opt, format!("'{v}' is not a boolean (1 or 0)"))),
    }
}

pub(crate) fn int_in(key: &str, opt: &str, v: &str, min: u32, max: u32) -> Result<u32, CodecError> {
    match v.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(CodecError::option(
            key,
            opt,
            format!("'{v}' is not an integer from {min} to {max}"),
        )),
    }
}

/// `[-_.\w\d]+`: interface, bridge and VNet names.
pub(crate) fn name(key: &str, opt: &str, v: &str) -> Result<(), CodecError> {
    if !v.is_empty() && v.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        Ok(())
    } else {
        Err(CodecError::option(
            key,
            opt,
            format!("'{v}' must match [-_.a-zA-Z0-9]+"),
        ))
    }
}

pub(crate) fn ipv4(key: &str, opt: &str, v: &str) -> Result<(), CodecError> {
    v.parse::<Ipv4Addr>()
        .map(drop)
        .map_err(|_| CodecError::option(key, opt, format!("'{v}' is not an IPv4 address")))
}

pub(crate) fn ipv6(key: &str, opt: &str, v: &str) -> Result<(), CodecError> {
    v.parse::<Ipv6Addr>()
        .map(drop)
        .map_err(|_| CodecError::option(key, opt, format!("'{v}' is not an IPv6 address")))
}

/// `pve-ipv4-config`: `dhcp`, `manual` or an address in CIDR form.
pub(crate) fn ipv4_config(key: &str, opt: &str, v: &str) -> Result<(), CodecError> {
    if matches!(v, "dhcp" | "manual") {
        return Ok(());
    }
    let bad = || CodecError::option(key, opt, format!("'{v}' is not dhcp, manual or IPv4/CIDR"));
    let (addr, len) = v.split_once('/').ok_or_else(bad)?;
    addr.parse::<Ipv4Addr>().map_err(|_| bad())?;
    int_in(key, opt, len, 0, 32).map_err(|_| bad())?;
    Ok(())
}

/// `pve-ipv6-config`: `auto`, `dhcp`, `manual` or an address in CIDR form.
pub(crate) fn ipv6_config(key: &str, opt: &str, v: &str) -> Result<(), CodecError> {
    if matches!(v, "auto" | "dhcp" | "manual") {
        return Ok(());
    }
    let bad = || CodecError::option(key, opt, format!("'{v}' is not auto, dhcp, manual or IPv6/CIDR"));
    let (addr, len) = v.split_once('/').ok_or_else(bad)?;
    addr.parse::<Ipv6Addr>().map_err(|_| bad())?;
    int_in(key, opt, len, 0, 128).map_err(|_| bad())?;
    Ok(())
}

/// A unicast MAC address `XX:XX:XX:XX:XX:XX` (the I/G bit of the first octet not set).
pub(crate) fn mac(key: &str, opt: &str, v: &str) -> Result<(), CodecError> {
    let octets: Vec<&str> = v.split(':').collect();
    let hex = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
    if !hex {
        return Err(CodecError::option(
            key,
            opt,
            format!("'{v}' is not a MAC address XX:XX:XX:XX:XX:XX"),
        ));
    }
    match u8::from_str_radix(octets[0], 16) {
        Ok(first) if first & 1 == 0 => Ok(()),
        _ => Err(CodecError::option(
            key,
            opt,
            format!("'{v}' is a multicast address (I/G bit set)"),
        )),
    }
}

/// A disk size: a number with an optional K, M, G or T suffix.
pub(crate) fn disk_size(key: &str, opt: &str, v: &str) -> Result<(), CodecError> {
    let digits = v.strip_suffix(['K', 'M', 'G', 'T']).unwrap_or(v);
    let ok = !digits.is_empty()
        && digits
            .split_once('.')
            .map_or(digits.chars().all(|c| c.is_ascii_digit()), |(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.chars().all(|c| c.is_ascii_digit())
                    && b.chars().all(|c| c.is_ascii_digit())
            });
    if ok {
        Ok(())
    } else {
        Err(CodecError::option(key, opt, format!("'{v}' is not a size such as 8G")))
    }
}

/// A number (Mbit/s rates).
pub(crate) fn number(key: &str, opt: &str, v: &str) -> Result<(), CodecError> {
    match v.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(()),
        _ => Err(CodecError::option(
            key,
            opt,
            format!("'{v}' is not a non-negative number"),
        )),
    }
}
