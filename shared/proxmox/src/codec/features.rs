//! `features`: container feature flags (pve-behaviour.md §6.4).

use serde::Serialize;

use super::config::Section;
use super::error::CodecError;
use super::{propstring, validate};

/// The `features` value. All flags default to off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Features {
    /// Mount /sys read-write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_rw_sys: Option<bool>,
    /// FUSE mounts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuse: Option<bool>,
    /// keyctl() for unprivileged containers (docker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyctl: Option<bool>,
    /// mknod().
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mknod: Option<bool>,
    /// Allowed filesystem types to mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount: Option<Vec<String>>,
    /// Nested containers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nesting: Option<bool>,
}

impl Features {
    /// Parses a `features` value.
    pub fn parse(key: &str, value: &str) -> Result<Self, CodecError> {
        let mut f = Self::default();
        for (opt, v) in propstring::parse(key, value, None)? {
            let flag = |v: &str| validate::boolean(key, &opt, v).map(Some);
            match opt.as_str() {
                "force_rw_sys" => f.force_rw_sys = flag(&v)?,
                "fuse" => f.fuse = flag(&v)?,
                "keyctl" => f.keyctl = flag(&v)?,
                "mknod" => f.mknod = flag(&v)?,
                "nesting" => f.nesting = flag(&v)?,
                "mount" => {
                    let types: Vec<String> = v.split(';').map(str::to_string).collect();
                    if types
                        .iter()
                        .any(|t| t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                    {
                        return Err(CodecError::option(
                            key,
                            &opt,
                            format!("'{v}' is not a list of filesystem types"),
                        ));
                    }
                    f.mount = Some(types);
                }
                other => return Err(CodecError::option(key, other, "unknown option")),
            }
        }
        Ok(f)
    }

    /// The property string, sorted as PVE writes it.
    pub fn to_property_string(&self, key: &str) -> Result<String, CodecError> {
        let mut items: Vec<(&str, String)> = Vec::new();
        for (k, v) in [
            ("force_rw_sys", self.force_rw_sys),
            ("fuse", self.fuse),
            ("keyctl", self.keyctl),
            ("mknod", self.mknod),
            ("nesting", self.nesting),
        ] {
            if let Some(b) = v {
                items.push((k, if b { "1".into() } else { "0".into() }));
            }
        }
        if let Some(m) = &self.mount {
            items.push(("mount", m.join(";")));
        }
        propstring::write(key, items, None)
    }
}

impl Section {
    /// The parsed `features`, if set.
    pub fn features(&self) -> Option<Result<Features, CodecError>> {
        self.get("features").map(|v| Features::parse("features", v))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn features_parse_write_and_name_bad_options() {
        let f = Features::parse("features", "keyctl=1,mount=nfs;cifs,nesting=1").unwrap();
        assert_eq!(f.nesting, Some(true));
        assert_eq!(
            f.to_property_string("features").unwrap(),
            "keyctl=1,mount=nfs;cifs,nesting=1"
        );
        let msg = Features::parse("features", "nesting=1,docker=1")
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "features: option 'docker': unknown option");
    }
}
